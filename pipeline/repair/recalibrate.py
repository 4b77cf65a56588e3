"""REFLOW: recompute BatchNorm running statistics of a pruned network, weights frozen.

One-shot pruning shrinks each layer's output variance while every BatchNorm still
divides by the dense network's running variance; the shrinkage compounds with depth
("signal collapse"). Re-estimating the statistics on a few hundred calibration
images undoes it without touching a single weight (docs/methods.md, section 1).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pipeline.modes import eval_mode
from pipeline.spec import RecalSpec


def batchnorms(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every BatchNorm module of ``model`` by name, in model order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor, spec: RecalSpec, seed: int = 0, black: Sequence[float] | None = None) -> bool:
    """Recompute the running statistics of every BatchNorm of ``model`` in place.

    Args:
        model: the pruned network; only BatchNorm buffers change.
        images: calibration images (N, C, H, W), normalised; the first
            ``spec.images`` are used.
        spec: number of images, batch size, cumulative or EMA, augmentation.
        seed: seeds the augmentation.
        black: a black pixel after normalisation, per channel (``Splits.black``): the
            augmentation pads with it, as the training recipe padded raw pixels with 0.
            None pads with 0 (the mean pixel).

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
    g = torch.Generator().manual_seed(seed)
    x = images[: spec.images]
    try:
        with eval_mode(model):  # dropout and friends stay off; only BN layers gather statistics
            for m in bns.values():
                m.train()
            for i in range(0, len(x), spec.batch_size):
                xb = x[i : i + spec.batch_size]
                model(augment(xb, g, spec.pad, black) if spec.augment else xb)
    finally:
        for n, m in bns.items():
            m.momentum = saved[n]
    return True


def augment(x: torch.Tensor, g: torch.Generator, pad: int, black: Sequence[float] | None = None) -> torch.Tensor:
    """Per-image random horizontal flips and random (H, W) crops of ``x`` (N, C, H, W)
    padded by ``pad`` pixels of ``black`` on every side."""
    n, c, h, w = x.shape
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if pad == 0:
        return x
    fill = torch.zeros(c, device=x.device, dtype=x.dtype) if black is None else torch.tensor(black, device=x.device, dtype=x.dtype)
    padded = F.pad(x - fill[:, None, None], (pad, pad, pad, pad)) + fill[:, None, None]
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    return cropped.gather(3, cols)
