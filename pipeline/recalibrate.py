"""REFLOW: recompute BatchNorm running statistics of a pruned network, weights frozen.

One-shot pruning shrinks each layer's output variance while every BatchNorm still
divides by the dense network's running variance; the shrinkage compounds with depth
("signal collapse"). Re-estimating the statistics on a few hundred calibration
images undoes it without touching a single weight (methods.md, section 1).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pipeline.spec import RecalSpec


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every BatchNorm module of ``model`` by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor, spec: RecalSpec, seed: int = 0) -> bool:
    """Recompute the running statistics of every BatchNorm of ``model`` in place.

    Args:
        model: the pruned network; only BatchNorm buffers change.
        images: calibration images (N, C, H, W), normalised; the first
            ``spec.images`` are used.
        spec: number of images, batch size, cumulative or EMA, augmentation.
        seed: seeds the augmentation.

    Returns:
        False (with a warning) when the model has no BatchNorm, so nothing was done.
    """
    bns = batchnorms(model)
    if not bns:
        warnings.warn("model has no BatchNorm layers: recalibration skipped", RuntimeWarning, stacklevel=2)
        return False
    if spec.images == 0:
        return False
    saved = {n: m.momentum for n, m in bns.items()}
    for m in bns.values():
        if spec.mode == "cumulative":
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over all batches
        else:
            m.momentum = spec.momentum
    was_training = model.training
    model.eval()  # dropout and friends stay off; only BN layers gather statistics
    for m in bns.values():
        m.train()
    g = torch.Generator().manual_seed(seed)
    x = images[: spec.images]
    try:
        for i in range(0, len(x), spec.batch_size):
            xb = x[i : i + spec.batch_size]
            model(_augment(xb, g) if spec.augment else xb)
    finally:
        for n, m in bns.items():
            m.momentum = saved[n]
        model.train(was_training)
    return True


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (the CIFAR training recipe)."""
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
