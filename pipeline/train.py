"""Training loops: the digits base model on first use, and candidate fine-tuning."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from pipeline.pruning.plan import apply_masks


def batches(x: Any, y: torch.Tensor | None, batch_size: int, generator: torch.Generator):
    """Endless shuffled mini-batches of (x, y): tensors, or a data split (``Split``,
    ``StreamSplit``: raw images normalised batch by batch, in the same order; ``y`` unused)."""
    if not isinstance(x, torch.Tensor):
        yield from x.shuffled_batches(batch_size, generator)
        return
    assert y is not None
    while True:
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]


def train_classifier(
    model: nn.Module,
    x: Any,
    y: torch.Tensor | None,
    steps: int,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    masks: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """SGD (momentum 0.9, cosine schedule) on cross-entropy for ``steps`` steps, in place.

    With ``masks``, pruned weights are re-zeroed after every step so the sparsity
    pattern is kept (fine-tuning a candidate). ``on_step(done, steps)`` is called after
    every step (progress reports). Returns ``model`` in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    it = batches(x, y, min(batch_size, len(x)), g)
    for step in range(steps):
        xb, yb = next(it)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()
        sched.step()
        if masks:
            apply_masks(model, masks)
        if on_step is not None:
            on_step(step + 1, steps)
    return model.eval()
