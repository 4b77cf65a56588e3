"""The trial encoding: one owner for the names a candidate's settings carry outside the spec.

A candidate is a ``CandidateSpec``; around it live two flat encodings, both spelled here
and nowhere else:

- **Optuna parameters** (what the sampler draws; ``space.suggest`` asks for them,
  ``baselines`` and ``steering`` enqueue them): ``method``, ``METHOD.granularity``,
  ``METHOD.scope``, ``target_sparsity``, ``macs_ratio_target``, ``METHOD.KNOB``,
  ``allocate``, ``alloc.STAGE``, ``reconstruct``, ``recon.SETTING`` (the searched
  reconstruction settings of an ``lsq`` trial: ``space.recon``), ``nm`` (``"2:4"``). A
  choice with one option is no parameter.
- **MLflow params** of a candidate run (``spec_params``; read back by ``row_settings``):
  the spec's field names, nested settings dotted as in ``spec.json``
  (``reconstruct.images``, ``recal.images``), ``knob.NAME``, ``alloc.STAGE``, and the
  whole spec as ``spec``.

Targets and measurements have different names: ``target_sparsity`` / ``target_macs_ratio``
(and the Optuna ``macs_ratio_target``) are what a candidate was *asked* for;
the metrics ``sparsity`` / ``macs_ratio`` are what it *measured* (``macs_ratio`` is effective
MACs over the base model's dense MACs, ``base_macs``; ``macs_dense`` is the candidate's own
count with its zeros multiplied: see ``pipeline.evaluator``). The Optuna name of the MACs
target sorts where its old name ``macs_ratio`` did: the multivariate TPE sampler draws its
dimensions in name order, so the rename keeps every sampled value.

Records and studies written before this module keep loading: ``LEGACY_OPTUNA`` maps old
Optuna names (``macs_ratio``) to the current ones, and ``row_settings`` reads old MLflow
param names (``recon_images``, ``recal_images``, ...) as well as the current ones (records
are rebuilt from ``spec.json``, whose format did not change).
"""

from __future__ import annotations

from typing import Any, Mapping

from pipeline.spec import CandidateSpec

METHOD = "method"
TARGET_SPARSITY = "target_sparsity"
TARGET_MACS_RATIO = "macs_ratio_target"
ALLOCATE = "allocate"
RECONSTRUCT = "reconstruct"
NM = "nm"  # the N:M pattern of granularity nm, "2:4"
#: Optuna names of studies written by earlier versions -> the current names
LEGACY_OPTUNA = {"macs_ratio": TARGET_MACS_RATIO}
#: MLflow params of records written by earlier versions -> the current names
LEGACY_MLFLOW = {
    "recon_images": "reconstruct.images",
    "recon_ridge": "reconstruct.ridge",
    "recon_layers": "reconstruct.layers",
    "recal_images": "recal.images",
    "recal_mode": "recal.mode",
    "recal_augment": "recal.augment",
    "recal_pad": "recal.pad",
}
KNOB_PREFIX = "knob."
ALLOC_PREFIX = "alloc."


def recon_param(setting: str) -> str:
    """Optuna name of a searched reconstruction setting (``images``, ``ridge``, ``layers``)."""
    return f"recon.{setting}"


def granularity_param(method: str) -> str:
    """Optuna name of ``method``'s granularity choice (names carry the method, so each
    keeps one distribution across the study)."""
    return f"{method}.granularity"


def scope_param(method: str) -> str:
    return f"{method}.scope"


def knob_param(method: str, knob: str) -> str:
    return f"{method}.{knob}"


def alloc_param(stage: str) -> str:
    return f"{ALLOC_PREFIX}{stage}"


def upgrade_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna parameters of an older study under the current names (re-enqueued trials)."""
    return {LEGACY_OPTUNA.get(k, k): v for k, v in params.items()}


def spec_params(spec: CandidateSpec) -> dict[str, str]:
    """The spec as flat MLflow params (strings; numbers to 6 significant digits); ``spec``
    holds the exact JSON."""
    p = {
        "method": spec.method,
        "granularity": spec.granularity,
        "scope": spec.scope,
        "target_sparsity": _num(spec.target_sparsity),
        "target_macs_ratio": _num(spec.target_macs_ratio),
        NM: "" if spec.nm is None else f"{spec.nm[0]}:{spec.nm[1]}",
        RECONSTRUCT: spec.reconstruct.mode,
        "recal.images": str(spec.recal.images),
        "recal.mode": spec.recal.mode,
        "recal.augment": str(spec.recal.augment),
        "recal.pad": str(spec.recal.pad),
        "finetune_steps": str(spec.finetune_steps),
        "finetune_lr": _num(spec.finetune_lr),
        "seed": str(spec.seed),
        "spec": spec.to_json(),
    }
    if spec.reconstruct.mode != "none":
        r = spec.reconstruct
        p.update({"reconstruct.images": str(r.images), "reconstruct.ridge": _num(r.ridge), "reconstruct.layers": r.layers})
    p.update({f"{KNOB_PREFIX}{k}": _num(v) for k, v in spec.knobs.items()})
    p.update({alloc_param(k): _num(v) for k, v in spec.allocation.items()})
    return p


def target_metrics(spec: CandidateSpec) -> dict[str, float]:
    """The asked-for targets and numeric knobs as MLflow metrics (so users filter and sort
    on them): ``target_sparsity``, ``target_macs_ratio``, ``knob_NAME``."""
    vals = {f"knob_{k}": float(v) for k, v in spec.knobs.items()}
    if spec.target_sparsity is not None:
        vals["target_sparsity"] = spec.target_sparsity
    if spec.target_macs_ratio is not None:
        vals["target_macs_ratio"] = spec.target_macs_ratio
    return vals


def row_settings(params: Mapping[str, str]) -> dict[str, Any]:
    """What distinguishes candidates in a table, from a run's MLflow params (current or
    older spelling): method, granularity, scope, reconstruct (mode), knobs, allocation."""
    p = {LEGACY_MLFLOW.get(k, k): v for k, v in params.items()}
    return {
        "method": p.get("method", ""),
        "granularity": p.get("granularity", ""),
        "scope": p.get("scope", ""),
        "reconstruct": p.get(RECONSTRUCT, "none"),
        "knobs": {k.removeprefix(KNOB_PREFIX): float(v) for k, v in p.items() if k.startswith(KNOB_PREFIX)},
        "allocation": {k.removeprefix(ALLOC_PREFIX): float(v) for k, v in p.items() if k.startswith(ALLOC_PREFIX)},
    }


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"
