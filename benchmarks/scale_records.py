"""The ``records`` part of ``benchmarks/scale.py``: what a candidate's record weighs, and
whether a record without refit weights rebuilds to its recorded accuracy.

- Bytes: the ``plan.parquet`` the product writes (``PrunePlan.to_parquet``) for
  torchvision ResNet-50 at 224 px (random weights), a channel plan at 0.5 of the dense
  MACs and an unstructured plan at 80 % weight sparsity (``magnitude``, global), with
  the refit weights of every prunable layer (``layers: all``: the pruned network's conv and
  linear weights, their shapes as reconstruction writes them) for ``all`` and ``front``
  candidates on the front, and none for ``replay`` (and ``front`` candidates off it).
- Exactness: a real search on the shared ResNet-20 (``configs/resnet20_cifar10.yaml``)
  with ``records.refit_weights: replay``, one channel and one unstructured ``lsq``
  candidate; each rebuilt with ``search.export.rebuild`` (replaying the fit), the
  difference between rebuilt and recorded validation accuracy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient
from torch import nn

from pipeline.build import apply_plan, plan_candidate
from pipeline.models import ModelConfig, build_model
from pipeline.pruning.methods import PruneContext
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.structure import cached_graph
from pipeline.spec import CandidateSpec
from search.export.rebuild import ExportError, artifact, rebuild

import common

RESNET50_SPECS = {
    "channel": CandidateSpec(method="magnitude", granularity="channel", target_macs_ratio=0.5),
    "unstructured": CandidateSpec(method="magnitude", granularity="unstructured", target_sparsity=0.8),
}


def _refit_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """What ``reconstruct`` returns with ``layers: all``: every conv/linear weight and bias."""
    return {
        f"{n}.{k}": p.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        for k, p in m.named_parameters(recurse=False)
    }


def resnet50_bytes(image_size: int = 224) -> list[dict[str, Any]]:
    """``records`` rows of plan sizes for ResNet-50 (channel and unstructured) per setting."""
    torch.manual_seed(0)
    base = build_model(ModelConfig(name="torchvision:resnet50", num_classes=1000)).eval()
    x = torch.randn(2, 3, image_size, image_size)
    ctx = PruneContext(
        calib_x=x,
        calib_y=torch.zeros(2, dtype=torch.int64),
        train_x=x,
        train_y=torch.zeros(2, dtype=torch.int64),
        example_input=x[:1],
        num_classes=1000,
    )
    rows = []
    for granularity, spec in RESNET50_SPECS.items():
        plan = plan_candidate(base, ctx, spec)
        graph = cached_graph(base, ctx, spec.prune_stem, spec.prune_head) if plan.channels else None
        pruned = apply_plan(base, plan, graph)
        with_refit = PrunePlan(masks=plan.masks, channels=plan.channels, refit=_refit_of(pruned)).to_parquet()
        without = plan.to_parquet()
        for setting, size in (("all", len(with_refit)), ("front", len(with_refit)), ("replay", len(without))):
            rows.append(
                {
                    "model": "resnet50",
                    "granularity": granularity,
                    "refit_weights": setting,
                    "artifact_bytes": size,
                    "rebuild_accuracy_diff": None,
                    "note": "front: a candidate on the front; off it, as replay" if setting == "front" else "",
                }
            )
    return rows


def resnet20_replay(shared: Path, images: int) -> list[dict[str, Any]]:
    """``records`` rows of a real ResNet-20 search recorded with ``refit_weights: replay``."""
    space = {
        "methods": ["magnitude"],
        "granularity": ["unstructured", "channel"],
        "scope": ["global"],
        "reconstruct": ["lsq"],
        "sparsity": [0.8, 0.8],
        "macs_ratio": [0.5, 0.5],
        "prune_stem": False,
        "prune_head": False,
    }
    rows = []
    with tempfile.TemporaryDirectory() as d:
        srch = common.run_resnet20_search(
            shared,
            {
                "name": "scale-records",
                "run_dir": d,
                "space": space,
                "budget": {"trials": 2},
                "objective": {"mode": "pareto"},
                "reconstruction": {"images": images},
                "records": {"refit_weights": "replay"},
                "actors": {"count": 2},
            },
            replace=("space",),
        )
        for row in srch.rows:
            try:
                rebuilt = rebuild(srch.outcome.tracking_uri, row["run_id"], tolerance=1.0)
                diff = abs(rebuilt.rebuilt_accuracy - rebuilt.recorded_accuracy)
            except ExportError as e:  # a replay that cannot run is a figure too
                diff, row["error"] = None, str(e)
            else:
                rows.append({**_row20(row, "all"), "artifact_bytes": len(rebuilt.plan.to_parquet()), "rebuild_accuracy_diff": None})
            recorded = artifact(MlflowClient(srch.outcome.tracking_uri), row["run_id"], "plan.parquet", d)
            rows.append({**_row20(row, "replay"), "artifact_bytes": len(recorded), "rebuild_accuracy_diff": diff})
    return rows


def _row20(row: dict[str, Any], setting: str) -> dict[str, Any]:
    return {"model": "cifar_resnet20", "granularity": row["granularity"], "refit_weights": setting, "error": row.get("error", "")}


def records_rows(shared: Path, images: int = 512) -> list[dict[str, Any]]:
    """Every ``records`` row: ResNet-50 bytes per setting, then the ResNet-20 replay search."""
    return resnet50_bytes() + resnet20_replay(shared, images)
