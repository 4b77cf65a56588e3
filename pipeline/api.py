"""Prune an in-memory network without a search: one method, one target, one call.

``prune(model, method="magnitude", sparsity=0.8, calib=(x, y))`` runs the same code
path as a search candidate (``pipeline.build``): the method's plan, channels removed,
masks applied, (the kept weights refit, with ``reconstruct=True``,) BatchNorm
statistics recalibrated on the calibration images.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Mapping

import torch
from torch import nn

from pipeline.build import apply_plan, plan_candidate
from pipeline.pruning.methods import PruneContext, get_method
from pipeline.pruning.plan import PrunePlan
from pipeline.repair.cost import estimate_seconds
from pipeline.repair.recalibrate import recalibrate
from pipeline.repair.reconstruct import reconstruct as run_reconstruction
from pipeline.spec import CandidateSpec, Granularity, RecalSpec, ReconSpec, Scope

Data = tuple[torch.Tensor, torch.Tensor] | torch.Tensor

log = logging.getLogger("prunesearch")
PROGRESS_EVERY_S = 10.0  # how often a long reconstruction says how far it is


def _say(message: str) -> None:
    """To the ``prunesearch`` logger when something listens to it, else to stderr."""
    if log.hasHandlers() and log.isEnabledFor(logging.INFO):
        log.info(message)
    else:
        print(message, file=sys.stderr, flush=True)


class _ReconProgress:
    """``on_progress(done, total)`` of reconstruction as a line every ``PROGRESS_EVERY_S``."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            _say(f"reconstruction: {done}/{total} layers refit, {now - self.t0:.0f} s")


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
    quiet: bool = False,
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
            An estimate of its seconds is printed first, then the layers done of the total
            and the seconds every ``PROGRESS_EVERY_S`` (to the ``prunesearch`` logger when
            it has a handler, else to stderr).
        quiet: print nothing.

    Raises:
        ValueError: no or two targets, missing data or labels, or a method that does not
            support the request (the message names it).
    """
    impl = get_method(method)
    if (sparsity is None) == (macs_ratio is None) and impl.target != "outcome":
        raise ValueError("give exactly one target: sparsity= (weights removed) or macs_ratio= (MACs kept)")
    if calib is None:
        raise ValueError("calib=(images, labels) is needed: images (N, C, H, W) normalised as the model expects")
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
    model = model.eval()
    with torch.no_grad():
        num_classes = int(model(cx[:1]).shape[1])
    if cy is None:
        if impl.needs_labels or impl.trains:
            raise ValueError(f"method {method!r} needs labels: pass calib=(images, labels)")
        cy = torch.zeros(len(cx), dtype=torch.int64)
        ty = cy if ty is None else ty
    if ty is None:  # train images without labels (the calibration images have some)
        if impl.trains:
            raise ValueError(f"method {method!r} trains: pass train=(images, labels)")
        ty = torch.zeros(len(tx), dtype=torch.int64)  # never read: the method does not train
    ctx = PruneContext(calib_x=cx, calib_y=cy, train_x=tx, train_y=ty, example_input=cx[:1], num_classes=num_classes)
    if spec.reconstruct.mode == "lsq" and not quiet:  # the long stage: say what to expect
        images = cx[: spec.reconstruct.images]
        est, layers = estimate_seconds(model, images, masked=spec.granularity == "unstructured")
        _say(f"reconstruction: about {layers} layers on {len(images)} images, estimated {est:.0f} s on {images.device.type}")
    plan = plan_candidate(model, ctx, spec)
    pruned = apply_plan(model, plan)
    if spec.reconstruct.mode == "lsq":
        progress = None if quiet else _ReconProgress()
        refit, _ = run_reconstruction(model, pruned, cx[: spec.reconstruct.images], spec.reconstruct, plan, on_progress=progress)
        plan = dataclasses.replace(plan, refit=refit)
    recalibrate(pruned, cx, spec.recal, seed=seed)
    return pruned.eval(), plan


def _split(data: Data) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(data, torch.Tensor):
        return data, None
    x, y = data
    return x, y
