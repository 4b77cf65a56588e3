"""Rebuild a recorded candidate from its record alone: the code path export and the API share.

The record holds plain data only: the search config (``config.json`` on the parent
run), the candidate spec (``spec.json``) and its plan (``plan.parquet``). Rebuilding
creates the base model from its checkpoint (or the run folder's cached base model),
applies the plan through ``Evaluator.rebuild`` (``pipeline.build.build_candidate``, the code path the search used),
replays reconstruction when the record keeps no refit weights (``records.refit_weights``),
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
from pipeline.evaluator import Evaluator
from pipeline.models import ModelConfig
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec
from search.config import SearchConfig
from search.export import validate
from search.export.validate import ExportError
from search.records.runs import PARENT_TAG
from search.runner.basemodel import base_state


@dataclass(frozen=True)
class Rebuilt:
    """A recorded candidate rebuilt: the network (eval mode, CPU), what it came from, and
    its fresh measurements (``metrics``: the evaluator's, as the search records them;
    ``accuracy`` equals ``rebuilt_accuracy``). ``plan`` holds the refit weights, replayed
    when the record kept none."""

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
    if run.data.tags.get("state") == "pruned":
        rung = run.data.metrics.get("fidelity")
        raise ExportError(
            f"run {run_id} was stopped by the trial pruner at fidelity rung {rung:.0f}: its accuracy is that cheap rung's, not the "
            "candidate's; export a full-fidelity candidate (`prunesearch best`)"
            if rung is not None
            else f"run {run_id} was stopped by the trial pruner below full fidelity; export a full-fidelity candidate (`prunesearch best`)"
        )
    if run.data.tags.get("state") != "ok":
        raise ExportError(f"run {run_id} is a failed candidate ({run.data.tags.get('error', 'no reason recorded')}); nothing to export")
    parent = run.data.tags.get(PARENT_TAG)
    if parent is None:
        raise ExportError(f"run {run_id} has no parent search run (tag {PARENT_TAG}); was it recorded by prunesearch?")
    with tempfile.TemporaryDirectory() as d:  # each piece checked before use: one line per problem (search.export.validate)
        cfg = validate.read_config(artifact(client, parent, "config.json", d), f"config.json of search run {parent}")
        spec = validate.read_spec(artifact(client, run_id, "spec.json", d), f"spec.json of run {run_id}", run.data.params.get("spec"))
        refuse_imports(cfg.model, allow_import, f"run {run_id}")
        if cfg.data.name == "import" and not allow_import:
            raise ExportError(
                f"run {run_id} names data factory {cfg.data.import_path!r}; rebuilding it would import and run that code. "
                "Pass --allow-import (allow_import=True) only if you trust it"
            )
        plan = validate.read_plan(artifact(client, run_id, "plan.parquet", d), f"plan.parquet of run {run_id}", cfg.model)
    recorded_subsets = cfg.inside_run_dir(f"data/{cfg.name}-subsets.npz")  # the images the search scored
    splits = load_data(cfg.data, record=recorded_subsets if recorded_subsets.exists() else None)
    tags = run.data.tags
    replay = spec.reconstruct.mode == "lsq" and not plan.refit  # recorded without its refit weights
    evaluator = Evaluator(
        cfg.model,
        base_state(cfg, splits),
        splits,
        cfg.measure.model_copy(update={"latency_repeats": 1}),
        # a replayed fit sums in the order the search's actor did: its thread count
        threads=int(tags.get("info.threads", 1)) if replay else torch.get_num_threads(),
        device="cpu",
    )
    if replay and tags.get("info.calib_sha256") != evaluator.calibration_fingerprint():
        raise ExportError(
            f"run {run_id} was recorded without its refit weights (records.refit_weights) and its calibration images "
            "are not the ones the data now gives (fingerprint differs): the data changed since the search, so the fit cannot be replayed"
        )
    model, result = evaluator.rebuild(spec, plan)
    if replay:
        plan = PrunePlan.from_parquet(result.plan)  # with the refit weights the replay fitted
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
