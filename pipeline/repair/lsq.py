"""Ridge least squares of one layer against a target output, accumulated over batches.

The math of reconstruction (``pipeline.repair.reconstruct`` walks the network): a layer's
inputs X (one row per image and output position: im2col for a conv, one row per token
for a Linear on (B, T, C); a constant column for a bias) and the target outputs Y give
the normal equations H = X^T X and X^T Y, summed over batches (:class:`NormalEquations`,
the accumulation shared with the OBS-family methods). The products run on the inputs'
device in float32 (TF32 on CUDA when torch allows it); the sums are float32 too, since
each batch adds a positive semi-definite block and the d x d solve below is float64.
``LayerFit.solve`` returns

    W = (H + lambda I)^-1 X^T Y,   lambda = ridge * mean diag(H)

per group of a grouped conv (a depthwise conv: one 1-input system per channel); with a
mask, the kept weights of every row solve their subsystem (``pipeline.repair.masked``):
one factorisation per layer, the rows batched, masked-out weights exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UsageError
from pipeline.repair.masked import masked_solve, spd_solve

_CHUNK_ELEMENTS = 32 * 2**20  # im2col elements unfolded at once (128 MB of float32)


@dataclass
class LinearView:
    """A linear map held by another module: ``weight`` (out, in) and ``bias`` (out,) or
    None, e.g. ``nn.MultiheadAttention``'s ``in_proj_weight`` / ``in_proj_bias``."""

    weight: torch.Tensor
    bias: torch.Tensor | None


Refittable = nn.Conv2d | nn.Linear | LinearView


class NormalEquations:
    """H = X^T X and X^T Y of one layer, summed over batches of its inputs.

    Args:
        layer: a Conv2d (im2col rows, per group), a Linear or a :class:`LinearView` (the
            last dimension of the input holds the features, every other dimension is a
            position: (B, C) images or (B, T, C) tokens).
        out_idx: the target's output channels to fit (None: all).

    Attributes:
        h: (G, d, d) float32 X^T X; d = in/G * kh * kw (+1 for the bias column).
        xty: (G, d, o/G) float32 X^T Y (None until a target is added).
        yy: sum of squared targets (float). rows: rows of X summed (images x positions).
    """

    def __init__(self, layer: Refittable, out_idx: torch.Tensor | None = None) -> None:
        if not isinstance(layer, (nn.Conv2d, nn.Linear, LinearView)):
            raise UsageError(f"NormalEquations takes Conv2d, Linear or LinearView layers, not {type(layer).__name__}")
        self.layer, self.out_idx = layer, out_idx
        self.groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
        self.h: torch.Tensor | None = None
        self.xty: torch.Tensor | None = None
        self.yy = 0.0
        self.rows = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Accumulate one batch: ``x`` the layer's input, ``y`` (optional) the target
        output on the same images, shaped like the layer's output."""
        per = max(1, _CHUNK_ELEMENTS // max(1, _columns_per_image(self.layer, x)))
        for i in range(0, x.shape[0], per):
            self._add(x[i : i + per], None if y is None else y[i : i + per])

    def _add(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        u = _columns(self.layer, x.float())  # (G, d, R)
        a = torch.bmm(u, u.transpose(1, 2))
        self.h = a if self.h is None else self.h.add_(a)
        self.rows += u.shape[-1]
        if y is not None:
            t = _targets(self.layer, y.float(), self.groups, self.out_idx)  # (G, o, R)
            b = torch.bmm(u, t.transpose(1, 2))
            self.xty = b if self.xty is None else self.xty.add_(b)
            self.yy += float(t.double().square().sum())


class LayerFit(NormalEquations):
    """Normal equations of ``layer`` for one refit, and its solve.

    Args:
        layer: the pruned network's layer (its current weights are the starting point).
        out_idx: the dense layer's output channels the layer keeps (None: all).
    """

    @property
    def samples(self) -> int:
        """Rows of X accumulated: images times output positions."""
        return self.rows

    @property
    def inputs(self) -> int:
        """Unknowns per output row (d: inputs per group times kernel area, plus a bias)."""
        return 0 if self.h is None else int(self.h.shape[-1])

    def current(self) -> torch.Tensor:
        """The layer's weights now, as (G, o, d) float64 rows."""
        return _as_rows(self.layer)

    def solve(self, ridge: float, mask: torch.Tensor | None) -> torch.Tensor:
        """Refit rows (G, o, d) float64 under ``mask`` (the weight's bool mask, or None)."""
        assert self.h is not None and self.xty is not None, "add() a batch with targets before solve()"
        has_bias = self.layer.bias is not None
        a = _regularised(self.h.double(), ridge, has_bias)
        b = self.xty.double()
        rows = _row_mask(self.layer, mask)
        if rows is None:
            return spd_solve(a, b).transpose(1, 2)
        return masked_solve(a, b, rows, self.yy)

    def error(self, w: torch.Tensor) -> float:
        """||Y - X W^T||^2 / ||Y||^2 on the accumulated images."""
        assert self.h is not None and self.xty is not None, "add() a batch with targets before error()"
        return _rel_error(w, self.h.double(), self.xty.double(), self.yy)

    @torch.no_grad()
    def write(self, w: torch.Tensor) -> None:
        """Store rows ``w`` into the layer's weight (and bias)."""
        _write(self.layer, w)


def _columns_per_image(layer: Refittable, x: torch.Tensor) -> int:
    if isinstance(layer, nn.Conv2d):
        w = layer.weight
        return w[0].numel() * layer.groups * max(1, x[0, 0].numel() // max(1, layer.stride[0] * layer.stride[1]))
    return x[0].numel()


def _columns(layer: Refittable, x: torch.Tensor) -> torch.Tensor:
    """The layer's input rows as (G, d, R): d = in/G * kh * kw (plus a bias row of ones),
    R = images x positions (a Linear's positions are every dimension but the last)."""
    if isinstance(layer, nn.Conv2d):
        assert not isinstance(layer.padding, str), "string padding is not reproduced by im2col"  # reconstruct skips it
        u = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        b, _, positions = u.shape
        u = u.view(b, layer.groups, -1, positions).permute(1, 2, 0, 3).reshape(layer.groups, -1, b * positions)
    else:
        u = x.reshape(-1, x.shape[-1]).t()[None]
    if layer.bias is not None:
        u = torch.cat([u, u.new_ones(u.shape[0], 1, u.shape[-1])], dim=1)
    return u


def _targets(layer: Refittable, out: torch.Tensor, groups: int, out_idx: torch.Tensor | None) -> torch.Tensor:
    """The target output as (G, o/G, R), at the kept output channels."""
    if isinstance(layer, nn.Conv2d):
        if out_idx is not None:
            out = out[:, out_idx.to(out.device)]
        b, c = out.shape[:2]
        return out.reshape(b, groups, c // groups, -1).permute(1, 2, 0, 3).reshape(groups, c // groups, -1)
    out = out.reshape(-1, out.shape[-1])
    if out_idx is not None:
        out = out[:, out_idx.to(out.device)]
    return out.t()[None]


def _as_rows(layer: Refittable) -> torch.Tensor:
    """The layer's weights (and bias) as (G, o, d) float64 rows matching ``_columns``."""
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    out = layer.weight.shape[0]
    w = layer.weight.detach().double().reshape(groups, out // groups, -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double().reshape(groups, -1, 1)], dim=2)
    return w


def _row_mask(layer: Refittable, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The weight mask as (G, o, d) rows (bias column kept), or None when unmasked."""
    if mask is None:
        return None
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    m = mask.to(layer.weight.device).bool().reshape(groups, layer.weight.shape[0] // groups, -1)
    if layer.bias is not None:
        m = torch.cat([m, m.new_ones(*m.shape[:2], 1)], dim=2)
    return m


def _regularised(xtx: torch.Tensor, ridge: float, has_bias_col: bool) -> torch.Tensor:
    """``xtx`` plus lambda on the weight diagonal (the bias column is not regularised)."""
    d = xtx.shape[-1] - int(has_bias_col)
    diag = torch.diagonal(xtx, dim1=1, dim2=2)[:, :d]
    lam = ridge * diag.mean(dim=1).clamp_min(1e-12)  # relative: one knob for every layer's scale
    out = xtx.clone()
    torch.diagonal(out, dim1=1, dim2=2)[:, :d] += lam[:, None]
    return out


def _rel_error(w: torch.Tensor, xtx: torch.Tensor, xty: torch.Tensor, yy: float) -> float:
    """||Y - X W^T||^2 / ||Y||^2 from the accumulated statistics."""
    cross = torch.einsum("goi,gio->", w, xty)
    quad = torch.einsum("goi,gij,goj->", w, xtx, w)
    return float((yy - 2 * cross + quad) / max(yy, 1e-300))


def _write(layer: Refittable, w: torch.Tensor) -> None:
    d = w.shape[-1] - int(layer.bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w[..., :d].reshape(layer.weight.shape).to(layer.weight.dtype))
        if layer.bias is not None:
            layer.bias.copy_(w[..., d].reshape(layer.bias.shape).to(layer.bias.dtype))
