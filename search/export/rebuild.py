"""Rebuild a recorded candidate from its record alone: the code path export and the API share.

The record holds plain data only: the search config (``config.json`` on the parent
run), the candidate spec (``spec.json``) and its plan (``plan.parquet``). Rebuilding
creates the base model from its checkpoint (or the run folder's cached base model),
applies the plan through ``Evaluator.rebuild`` (the code path the search used),
recalibrates, and checks that the accuracy reproduces the recorded one. No code
stored in a record is ever executed or unpickled.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from torch import nn

from pipeline.data.splits import Splits, load_data
from pipeline.errors import InputError
from pipeline.evaluator import Evaluator
from pipeline.models import ModelConfig
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec
from search.config import SearchConfig
from search.records.runs import PARENT_TAG
from search.runner.basemodel import base_state


class ExportError(InputError, RuntimeError):
    """The record cannot be rebuilt, or the rebuilt candidate does not reproduce it."""


@dataclass(frozen=True)
class Rebuilt:
    """A recorded candidate rebuilt: the network (eval mode, CPU), what it came from, and
    its fresh measurements (``metrics``: the evaluator's, as the search records them;
    ``accuracy`` equals ``rebuilt_accuracy``)."""

    model: nn.Module
    run_id: str
    cfg: SearchConfig
    spec: CandidateSpec
    plan: PrunePlan
    splits: Splits
    recorded_accuracy: float
    rebuilt_accuracy: float
    metrics: dict[str, float]


def rebuild(tracking_uri: str, run_id: str, tolerance: float = 1e-6, allow_import: bool = False) -> Rebuilt:
    """Rebuild candidate ``run_id`` of the store at ``tracking_uri``.

    A record whose model is ``import`` names a Python class; rebuilding it imports and
    runs that code, so it is refused unless ``allow_import`` says the user trusts it.

    Raises:
        ExportError: missing record pieces, failed candidate, or validation accuracy
            that does not reproduce within ``tolerance`` (a fraction).
    """
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise ExportError(f"no run {run_id!r} in {tracking_uri} ({type(e).__name__})") from None
    if run.data.tags.get("prunesearch.role") == "search":
        raise ExportError(
            f"run {run_id} is the parent run of search {run.info.run_name!r}, not a candidate; pick a candidate's run id from `prunesearch best`"
        )
    if run.data.tags.get("state") != "ok":
        raise ExportError(f"run {run_id} is a failed candidate ({run.data.tags.get('error', 'no reason recorded')}); nothing to export")
    with tempfile.TemporaryDirectory() as d:
        cfg = SearchConfig.model_validate_json(artifact(client, run.data.tags[PARENT_TAG], "config.json", d))
        spec = CandidateSpec.from_json(artifact(client, run_id, "spec.json", d).decode())
        plan = PrunePlan.from_parquet(artifact(client, run_id, "plan.parquet", d))
    refuse_imports(cfg.model, allow_import, f"run {run_id}")
    if cfg.data.name == "import" and not allow_import:
        raise ExportError(
            f"run {run_id} names data factory {cfg.data.import_path!r}; rebuilding it would import and run that code. "
            "Pass --allow-import (allow_import=True) only if you trust it"
        )
    recorded_subsets = cfg.inside_run_dir(f"data/{cfg.name}-subsets.npz")  # the images the search scored
    splits = load_data(cfg.data, record=recorded_subsets if recorded_subsets.exists() else None)
    evaluator = Evaluator(
        cfg.model,
        base_state(cfg, splits),
        splits,
        cfg.measure.model_copy(update={"latency_repeats": 1}),
        threads=torch.get_num_threads(),
        device="cpu",
    )
    model, result = evaluator.rebuild(spec, plan)
    recorded, rebuilt = run.data.metrics["accuracy"], result.metrics["accuracy"]
    if abs(recorded - rebuilt) > tolerance:
        raise ExportError(f"rebuilt accuracy {rebuilt:.6f} differs from the recorded {recorded:.6f}; the base model or data changed since the search")
    return Rebuilt(model.eval(), run_id, cfg, spec, plan, splits, recorded, rebuilt, dict(result.metrics))


def refuse_imports(model_cfg: ModelConfig, allow: bool, where: str) -> None:
    """Refuse a model config naming an ``import`` class unless the user trusts it."""
    if model_cfg.name == "import" and not allow:
        raise ExportError(
            f"{where} names model class {model_cfg.import_path!r}; rebuilding it would import and run that code. "
            "Pass --allow-import (allow_import=True) only if you trust it"
        )


def artifact(client: MlflowClient, run_id: str, name: str, folder: str) -> bytes:
    try:
        local = Path(client.download_artifacts(run_id, name, folder))
    except Exception as e:
        raise ExportError(f"run {run_id} has no artifact {name!r} ({type(e).__name__}); was it recorded by prunesearch?") from None
    return local.read_bytes()
