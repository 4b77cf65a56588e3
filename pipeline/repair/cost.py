"""What a reconstruction will cost, before it runs: an estimate in seconds.

From one forward of one image with hooks (each Conv2d/Linear's input rows d, output
channels o and positions L per image, per group) and the device's measured float32
matrix-product rate, the flops of the walk for N images:

    products:  2 N L d (d + o) per layer     (X^T X and X^T Y)
    forwards:  2 N L d o x 3 per layer        (both networks, the dense layer again)
    solve:     d^3 (float64, counted at half the float32 rate), plus for masked rows
               about 20 conjugate-gradient products of 2 o d^2 each

The estimate is a guide for a progress message (within about 2x on the machines it was
checked on), not a measurement.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from pipeline.modes import eval_mode

_CG_PRODUCTS = 20


@torch.no_grad()
def matmul_rate(device: torch.device, n: int = 384) -> float:
    """Float32 multiply-adds x 2 per second of one (n, n) x (n, n) product on ``device``."""
    a = torch.randn(n, n, device=device)
    a @ a  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 3 * 2 * n**3 / max(time.perf_counter() - t0, 1e-9)


@torch.no_grad()
def estimate_seconds(model: nn.Module, images: torch.Tensor, masked: bool) -> tuple[float, int]:
    """Estimated seconds to reconstruct ``model`` on ``images`` (N, C, H, W), and the
    number of layers it will refit (every Conv2d/Linear; ``masked``: unstructured)."""
    shapes: list[tuple[int, int, int, int]] = []  # groups, d, o, positions per image

    def hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            g = m.groups
            shapes.append((g, m.weight[0].numel() + 1, m.out_channels // g, out[0, 0].numel()))
        elif isinstance(m, nn.Linear):
            shapes.append((1, m.in_features + 1, m.out_features, out[0].numel() // m.out_features))
        elif isinstance(m, nn.MultiheadAttention):  # in_proj and out_proj over the tokens
            e, tokens = m.embed_dim, out[0][0].numel() // m.embed_dim
            shapes.extend([(1, e + 1, 3 * e, tokens), (1, e + 1, e, tokens)])

    kinds = (nn.Conv2d, nn.Linear, nn.MultiheadAttention)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with eval_mode(model):
            model(images[:1])
    finally:
        for h in handles:
            h.remove()
    n = len(images)
    flops = 0.0
    for g, d, o, pos in shapes:
        flops += g * (2 * n * pos * d * (d + o) + 6 * n * pos * d * o + 2 * d**3)
        if masked:
            flops += g * _CG_PRODUCTS * 2 * o * d * d * 2
    return flops / matmul_rate(images.device), len(shapes)
