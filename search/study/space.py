"""The search space: turning an Optuna trial into a ``CandidateSpec``.

The space is conditional on the method: one-shot methods get a target sparsity
(unstructured) or a MACs ratio (channel); outcome methods (hyperflows) get their
knobs, pressure first, on the method's declared prior (log-uniform for pressure), and a
target as well where their knobs ask for one (``PruningMethod.target_for``: hyperflows'
``pressure_schedule`` 1, the controller, fixed by a range ``[1, 1]``).
Parameter names are spelled by ``search.study.encoding`` (they carry the method,
``hyperflows.pressure``, so that every name keeps one distribution across the study).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.pruning.methods import Knob, get_method
from pipeline.spec import CandidateSpec, ReconSpec
from search.config import ConfigError
from search.study import encoding as enc

if TYPE_CHECKING:
    import optuna

    from search.config import SearchConfig, SpaceConfig


def suggest(trial: "optuna.Trial", cfg: "SearchConfig") -> CandidateSpec:
    """Sample one candidate of ``cfg.space`` from ``trial``."""
    space = cfg.space
    method_name = _categorical(trial, enc.METHOD, space.methods)
    method = get_method(method_name)
    grans = [g for g in space.granularity if g in method.granularities]
    if not grans:
        raise ConfigError(f"space.granularity: method {method_name!r} supports {list(method.granularities)}, none of {space.granularity}")
    gran = _categorical(trial, enc.granularity_param(method_name), grans)
    scope = _categorical(trial, enc.scope_param(method_name), [s for s in space.scope if s in method.scopes] or [method.scopes[0]])
    # an outcome method may take a target under some knobs (hyperflows' controller): its
    # knobs come first; the others keep the order their studies were sampled in
    knobs = {} if method.target == "sparsity" else _suggest_knobs(trial, space, method_name)
    target_sparsity = target_macs = nm = None
    if gran == "nm":
        nm = nm_pattern(_categorical(trial, enc.NM, [nm_name(p) for p in space.nm]))
    elif method.target_for(knobs) == "sparsity" and gran == "unstructured":
        target_sparsity = trial.suggest_float(enc.TARGET_SPARSITY, *space.sparsity)
    elif method.target_for(knobs) == "sparsity":
        target_macs = trial.suggest_float(enc.TARGET_MACS_RATIO, *space.macs_ratio)
    if method.target == "sparsity":
        knobs = _suggest_knobs(trial, space, method_name)
    allocation = {}
    # the scope's own split is a point of the space too: with ranges alone a search
    # can only move away from it (on ResNet-20 at 90 % that lost 4.5 points)
    if method.allocates and gran != "nm" and space.allocation and trial.suggest_categorical(enc.ALLOCATE, [True, False]):
        allocation = {stage: trial.suggest_float(enc.alloc_param(stage), *rng) for stage, rng in space.allocation.items()}
    reconstruct = cfg.reconstruction.with_mode(_categorical(trial, enc.RECONSTRUCT, space.reconstruct))
    if reconstruct.mode == "lsq":
        reconstruct = ReconSpec.model_validate({**reconstruct.model_dump(), **_recon_settings(trial, space)})
    return CandidateSpec(
        method=method_name,
        granularity=gran,
        scope=scope,
        target_sparsity=target_sparsity,
        target_macs_ratio=target_macs,
        nm=nm,
        knobs=knobs,
        allocation=allocation,
        prune_stem=space.prune_stem,
        prune_head=space.prune_head,
        reconstruct=reconstruct,
        recal=cfg.recalibration,
        finetune_steps=cfg.finetune_steps,
        finetune_lr=cfg.finetune_lr,
        seed=cfg.seed + trial.number,
    )


def _recon_settings(trial: "optuna.Trial", space: "SpaceConfig") -> dict[str, Any]:
    """The searched reconstruction settings (``space.recon``) of an ``lsq`` trial."""
    r = space.recon
    out: dict[str, Any] = {}
    if len(r.images) > 1:
        out["images"] = trial.suggest_categorical(enc.recon_param("images"), r.images)
    elif r.images:
        out["images"] = r.images[0]
    if r.ridge is not None:
        out["ridge"] = trial.suggest_float(enc.recon_param("ridge"), *r.ridge, log=True) if r.ridge[0] < r.ridge[1] else r.ridge[0]
    if r.layers:
        out["layers"] = _categorical(trial, enc.recon_param("layers"), r.layers)
    return out


def _suggest_knobs(trial: "optuna.Trial", space: "SpaceConfig", method_name: str) -> dict[str, float]:
    method = get_method(method_name)
    ranges = space.knobs.get(method_name, {})
    return {
        name: _suggest_knob(trial, enc.knob_param(method_name, name), method.knobs[name], ranges.get(name))
        for name in searched_knobs(space, method_name)
    }


def searched_knobs(space: "SpaceConfig", method_name: str) -> list[str]:
    """Knobs of ``method_name`` that are trial parameters (named ``method.knob``): those
    given a range in ``space.knobs`` or without a default (``encoding.knob_param``); the others keep their default."""
    method = get_method(method_name)
    ranges = space.knobs.get(method_name, {})
    return [name for name, knob in method.knobs.items() if name in ranges or knob.default is None]


def nm_name(pattern: tuple[int, int]) -> str:
    """The Optuna value of an N:M pattern: ``"2:4"``."""
    return f"{pattern[0]}:{pattern[1]}"


def nm_pattern(name: str) -> tuple[int, int]:
    """``nm_name``'s inverse."""
    n, m = name.split(":")
    return int(n), int(m)


def _categorical(trial: "optuna.Trial", name: str, choices: Sequence[str]) -> str:
    # a single choice is fixed, not a parameter: keeps the sampler's space small
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


def _suggest_knob(trial: "optuna.Trial", name: str, knob: Knob, rng: tuple[float, float] | None) -> float:
    low, high = rng if rng is not None else (knob.low, knob.high)
    if knob.integer:
        return float(trial.suggest_int(name, int(low), int(high), log=knob.log))
    return trial.suggest_float(name, low, high, log=knob.log)
