"""Export: rebuild a recorded candidate from its record alone and write a loadable model.

The record holds plain data only: the search config (``config.json`` on the parent
run), the candidate spec (``spec.json``) and its plan (``plan.parquet``). Rebuilding
creates the base model from its checkpoint (or the run folder's cached base model),
applies the plan through ``Evaluator.rebuild`` (the code path the search used),
recalibrates, and checks that the accuracy reproduces the recorded one. No code
stored in a record is ever executed or unpickled.

The written ``.pt`` file is a dict of tensors and plain data, loadable with
``torch.load(path, weights_only=True)`` and rebuilt into a module by ``load_exported``;
a TorchScript file is written beside it for runtimes without prunesearch.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient
from torch import nn

from pipeline.data import load_data
from pipeline.evaluator import Evaluator
from pipeline.models import ModelConfig, build_model
from pipeline.plan import PrunePlan
from pipeline.spec import CandidateSpec

from search.basemodel import base_state
from search.config import SearchConfig
from search.records import PARENT_TAG

FORMAT = "prunesearch-export/1"


class ExportError(RuntimeError):
    """The record cannot be rebuilt, or the rebuilt candidate does not reproduce it."""


@dataclass(frozen=True)
class Exported:
    path: Path
    torchscript: Path
    recorded_accuracy: float
    rebuilt_accuracy: float


def export(tracking_uri: str, run_id: str, output: str | Path, tolerance: float = 1e-6, allow_import: bool = False) -> Exported:
    """Rebuild candidate ``run_id`` and write ``output`` (.pt) and ``output``.ts.

    A record whose model is ``import`` names a Python class; rebuilding it imports and
    runs that code, so it is refused unless ``allow_import`` says the user trusts it.

    Raises:
        ExportError: missing record pieces, failed candidate, or accuracy that does
            not reproduce within ``tolerance`` (a fraction).
    """
    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise ExportError(f"no run {run_id!r} in {tracking_uri} ({type(e).__name__})") from None
    if run.data.tags.get("state") != "ok":
        raise ExportError(f"run {run_id} is a failed candidate ({run.data.tags.get('error', 'no reason recorded')}); nothing to export")
    with tempfile.TemporaryDirectory() as d:
        cfg = SearchConfig.model_validate_json(_artifact(client, run.data.tags[PARENT_TAG], "config.json", d))
        spec = CandidateSpec.from_json(_artifact(client, run_id, "spec.json", d))
        plan = PrunePlan.from_parquet(_artifact(client, run_id, "plan.parquet", d))
    _refuse_imports(cfg.model, allow_import, f"run {run_id}")
    splits = load_data(cfg.data)
    evaluator = Evaluator(cfg.model, base_state(cfg, splits), splits, cfg.measure.model_copy(update={"latency_repeats": 1}), threads=torch.get_num_threads(), device="cpu")
    model, result = evaluator.rebuild(spec, plan)
    recorded, rebuilt = run.data.metrics["accuracy"], result.metrics["accuracy"]
    if abs(recorded - rebuilt) > tolerance:
        raise ExportError(f"rebuilt accuracy {rebuilt:.6f} differs from the recorded {recorded:.6f}; the base model or data changed since the search")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe = {"format": FORMAT, "model": cfg.model.model_dump_json(), "spec": spec.to_json(), "run_id": run_id,
              "channels": {k: v.tolist() for k, v in plan.channels.items()}, "input_shape": list(splits.input_shape)}
    torch.save({"recipe": json.dumps(recipe), "state_dict": model.state_dict()}, out)
    ts = out.with_suffix(".ts")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream yet still the most portable format
        torch.jit.trace(model.eval(), splits.val.x[:1]).save(str(ts))
    return Exported(out, ts, recorded, rebuilt)


def load_exported(path: str | Path, allow_import: bool = False) -> nn.Module:
    """Rebuild an exported candidate as an ``nn.Module`` (weights_only loading, no pickled
    code; an ``import`` model class is refused unless ``allow_import``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    recipe = json.loads(blob["recipe"])
    if recipe.get("format") != FORMAT:
        raise ExportError(f"{path} is not a prunesearch export (format {recipe.get('format')!r})")
    model_cfg = ModelConfig.model_validate_json(recipe["model"])
    _refuse_imports(model_cfg, allow_import, str(path))
    base = build_model(model_cfg.model_copy(update={"checkpoint": None}))
    if recipe["channels"]:
        from pipeline.structure import shrink

        base = shrink(base, {k: torch.tensor(v, dtype=torch.int64) for k, v in recipe["channels"].items()})
    base.load_state_dict(blob["state_dict"])
    return base.eval()


def _refuse_imports(model_cfg: ModelConfig, allow: bool, where: str) -> None:
    if model_cfg.name == "import" and not allow:
        raise ExportError(
            f"{where} names model class {model_cfg.import_path!r}; rebuilding it would import and run that code. "
            "Pass --allow-import (allow_import=True) only if you trust it"
        )


def _artifact(client: MlflowClient, run_id: str, name: str, folder: str) -> str | bytes:
    try:
        local = Path(client.download_artifacts(run_id, name, folder))
    except Exception as e:
        raise ExportError(f"run {run_id} has no artifact {name!r} ({type(e).__name__}); was it recorded by prunesearch?") from None
    return local.read_bytes() if name.endswith(".parquet") else local.read_text()
