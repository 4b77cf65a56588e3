"""An independent count of MACs for tests: forward hooks on conv and linear layers.

Deliberately not ``pipeline.measure``: tests compare the product's numbers with this one.
"""

from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(dense, effective) multiply-accumulates of one image through ``model``'s conv and
    linear layers: every weight, and only the non-zero ones. ``example`` is (1, C, H, W)."""
    dense = effective = 0

    def hook(m: nn.Module, inp, out) -> None:
        nonlocal dense, effective
        w = m.weight
        # each weight is used once per output position (conv) or once (linear)
        positions = out[0, 0].numel() if isinstance(m, nn.Conv2d) else 1
        dense += w.numel() * positions
        effective += int((w != 0).sum()) * positions

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return dense, effective
