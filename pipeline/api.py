"""Prune an in-memory network without a search: one method, one target, one call.

``prune(model, method="magnitude", sparsity=0.8, calib=(x, y))`` runs the same code
path as a search candidate (``pipeline.build.build_candidate``): the method's plan,
channels removed, masks applied, (the kept weights refit, with ``reconstruct=True``,)
BatchNorm statistics recalibrated on the calibration images.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from pipeline.build import BuildContext, build_candidate
from pipeline.errors import InputError
from pipeline.modes import eval_mode
from pipeline.pruning.methods import get_method
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec, Granularity, RecalSpec, ReconSpec, Scope

Data = tuple[torch.Tensor, torch.Tensor] | torch.Tensor


def prune(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float | None = None,
    macs_ratio: float | None = None,
    calib: Data | None = None,
    *,
    granularity: Granularity | None = None,
    scope: Scope = "global",
    knobs: Mapping[str, float] | None = None,
    allocation: Mapping[str, float] | None = None,
    train: Data | None = None,
    recal_images: int = 256,
    reconstruct: bool = False,
    prune_stem: bool = True,
    prune_head: bool = True,
    seed: int = 0,
) -> tuple[nn.Module, PrunePlan]:
    """A pruned copy of ``model`` (eval mode; ``model`` itself is not changed) and its plan.

    Args:
        model: a trained network taking (N, C, H, W) float images.
        method: a registered method (``pipeline.pruning.methods.list_methods()``).
        sparsity: fraction of prunable (conv and linear) weights to remove, unstructured.
        macs_ratio: fraction of dense MACs to keep, by removing channels (0.5: 2x fewer).
        calib: calibration images (N, C, H, W), normalised as for ``model``, and their
            int64 labels (N,) (``(x, y)``; labels only for methods that use them, e.g.
            ``screening``); they score weights and recalibrate BatchNorm.
        granularity: ``unstructured`` or ``channel``; by default from the target given.
        scope, knobs, allocation, prune_stem, prune_head, seed: as in ``CandidateSpec``.
        train: training images and labels for methods that train (hyperflows, ocs);
            the calibration data by default.
        recal_images: calibration images used to recompute BatchNorm statistics (0: keep
            the stored ones).
        reconstruct: refit the kept weights on the calibration images first
            (``pipeline.repair.reconstruct``, default settings); the plan then carries them.

    Raises:
        ValueError: no or two targets, missing data or labels, or a method that does not
            support the request (the message names it).
    """
    impl = get_method(method)
    if (sparsity is None) == (macs_ratio is None) and impl.target != "outcome":
        raise InputError("give exactly one target: sparsity= (weights removed) or macs_ratio= (MACs kept)")
    if calib is None:
        raise InputError("calib=(images, labels) is needed: images (N, C, H, W) normalised as the model expects")
    cx, cy = _split(calib)
    tx, ty = _split(train) if train is not None else (cx, cy)
    spec = CandidateSpec(
        method=method,
        granularity=granularity or ("channel" if macs_ratio is not None else "unstructured"),
        scope=scope,
        target_sparsity=sparsity,
        target_macs_ratio=macs_ratio,
        knobs=dict(knobs or {}),
        allocation=dict(allocation or {}),
        prune_stem=prune_stem,
        prune_head=prune_head,
        recal=RecalSpec(images=min(recal_images, len(cx))),
        reconstruct=ReconSpec(mode="lsq" if reconstruct else "none", images=min(ReconSpec().images, len(cx))),
        seed=seed,
    )
    with eval_mode(model):  # the caller's train/eval flags are restored after
        with torch.no_grad():
            num_classes = int(model(cx[:1]).shape[1])
        if cy is None:
            if impl.needs_labels or impl.trains:
                raise InputError(f"method {method!r} needs labels: pass calib=(images, labels)")
            cy = torch.zeros(len(cx), dtype=torch.int64)
            ty = cy if ty is None else ty
        if ty is None:  # train images without labels (the calibration images have some)
            if impl.trains:
                raise InputError(f"method {method!r} trains: pass train=(images, labels)")
            ty = torch.zeros(len(tx), dtype=torch.int64)  # never read: the method does not train
        ctx = BuildContext(calib_x=cx, calib_y=cy, train_x=tx, train_y=ty, example_input=cx[:1], num_classes=num_classes)
        built = build_candidate(model, ctx, spec)
    return built.model.eval(), built.plan


def _split(data: Data) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, torch.Tensor):
        return data, None
    x, y = data
    return x, y
