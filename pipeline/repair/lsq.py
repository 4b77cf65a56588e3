"""Ridge least squares of one layer against a target output, accumulated over batches.

The math of reconstruction (``pipeline.repair.reconstruct`` walks the network): a layer's
im2col inputs X (one row per image and output position; a constant column for a bias)
and the target outputs Y give the normal equations X^T X and X^T Y, summed over batches
in float64 (each batch's product in float32, at BLAS speed). ``LayerFit.solve`` returns

    W = (X^T X + lambda I)^-1 X^T Y,   lambda = ridge * mean diag(X^T X)

per group of a grouped conv; with a mask, each output row solves its kept subsystem
exactly (Cholesky of the kept block only), so masked-out weights are exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import UsageError

_CHUNK_BYTES = 64 * 2**20  # memory for a batch of masked row systems


class LayerFit:
    """Normal equations of ``layer`` (conv or linear, possibly grouped) for one refit.

    Args:
        layer: the pruned network's layer (its current weights are the starting point).
        out_idx: the dense layer's output channels the layer keeps (None: all).
    """

    def __init__(self, layer: nn.Module, out_idx: torch.Tensor | None) -> None:
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            raise UsageError(f"LayerFit refits Conv2d and Linear layers, not {type(layer).__name__}")
        self.layer, self.out_idx = layer, out_idx
        self.groups = getattr(layer, "groups", 1)
        self.xtx: torch.Tensor | None = None  # (G, d, d) float64
        self.xty: torch.Tensor | None = None  # (G, d, o) float64
        self.yy = 0.0  # sum of squared targets

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate one batch: ``x`` the layer's input in the pruned network, ``y`` the
        dense layer's output on the same images."""
        u, t = _columns(self.layer, x), _targets(y, self.groups, self.out_idx)
        u = u.permute(0, 2, 1, 3).reshape(u.shape[0], u.shape[2], -1)  # (G, d, B*L)
        t = t.permute(0, 2, 1, 3).reshape(t.shape[0], t.shape[2], -1)
        a = torch.bmm(u, u.transpose(1, 2)).double()
        b = torch.bmm(u, t.transpose(1, 2)).double()
        self.xtx, self.xty = (a, b) if self.xtx is None or self.xty is None else (self.xtx + a, self.xty + b)
        self.yy += float(t.double().square().sum())

    def current(self) -> torch.Tensor:
        """The layer's weights now, as (G, o, d) float64 rows."""
        return _as_rows(self.layer)

    def solve(self, ridge: float, mask: torch.Tensor | None) -> torch.Tensor:
        """Refit rows (G, o, d) under ``mask`` (the weight's bool mask, or None)."""
        return _solve(self.xtx, self.xty, ridge, _row_mask(self.layer, mask), self.layer.bias is not None)

    def error(self, w: torch.Tensor) -> float:
        """||Y - X W^T||^2 / ||Y||^2 on the accumulated images."""
        assert self.xtx is not None and self.xty is not None, "add() a batch before error()"
        return _rel_error(w, self.xtx, self.xty, self.yy)

    @torch.no_grad()
    def write(self, w: torch.Tensor) -> None:
        """Store rows ``w`` into the layer's weight (and bias)."""
        _write(self.layer, w)


def _columns(layer: nn.Conv2d | nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """im2col of ``layer``'s input as (G, B, d, L): B images, d = in/G * kh * kw (plus a
    bias row of ones), L positions. A linear layer's input is one image of L rows."""
    if isinstance(layer, nn.Linear):
        u = x.reshape(-1, x.shape[-1]).t()[None, None]
    else:
        assert not isinstance(layer.padding, str), "string padding is not reproduced by im2col"  # reconstruct skips it
        u = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        u = u.view(u.shape[0], layer.groups, -1, u.shape[-1]).transpose(0, 1)
    if layer.bias is not None:
        u = torch.cat([u, u.new_ones(*u.shape[:2], 1, u.shape[-1])], dim=2)
    return u


def _targets(out: torch.Tensor, groups: int, out_idx: torch.Tensor | None) -> torch.Tensor:
    """The dense layer's output as (G, B, o, L), at the kept output channels."""
    if out.ndim == 2:
        out = out.t()[None]
    else:
        out = out.reshape(out.shape[0], out.shape[1], -1)
    if out_idx is not None:
        out = out[:, out_idx.to(out.device)]
    return out.view(out.shape[0], groups, -1, out.shape[-1]).transpose(0, 1)


def _as_rows(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """The layer's weights (and bias) as (G, o, d) float64 rows matching ``_columns``."""
    groups = getattr(layer, "groups", 1)
    out = layer.weight.shape[0]
    w = layer.weight.detach().double().reshape(groups, out // groups, -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double().reshape(groups, -1, 1)], dim=2)
    return w


def _row_mask(layer: nn.Conv2d | nn.Linear, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The weight mask as (G, o, d) rows (bias column kept), or None when unmasked."""
    if mask is None:
        return None
    groups = getattr(layer, "groups", 1)
    m = mask.to(layer.weight.device).bool().reshape(groups, layer.weight.shape[0] // groups, -1)
    if layer.bias is not None:
        m = torch.cat([m, m.new_ones(*m.shape[:2], 1)], dim=2)
    return m


def _regularised(xtx: torch.Tensor, ridge: float, has_bias_col: bool) -> torch.Tensor:
    d = xtx.shape[-1] - int(has_bias_col)
    diag = torch.diagonal(xtx, dim1=1, dim2=2)[:, :d]
    lam = ridge * diag.mean(dim=1).clamp_min(1e-12)  # relative: one knob for every layer's scale
    reg = torch.zeros_like(xtx)
    idx = torch.arange(d, device=xtx.device)
    reg[:, idx, idx] = lam[:, None]
    return xtx + reg


def _solve(xtx, xty, ridge: float, mask, has_bias: bool) -> torch.Tensor:
    """Refit rows (G, o, d); masked rows solve their kept subsystem, masked-out entries are 0.
    The bias column (last, when ``has_bias``) is not regularised."""
    a = _regularised(xtx, ridge, has_bias)
    if mask is None:
        return _spd_solve(a, xty).transpose(1, 2)
    g, o, d = mask.shape
    out = torch.zeros(g, o, d, dtype=torch.float64, device=xtx.device)
    flat = mask.reshape(g * o, d)
    kept = flat.sum(dim=1)
    order = torch.argsort(kept, descending=True).tolist()  # similar sizes share a padded batch
    s = 0
    while s < len(order):
        k = max(int(kept[order[s]]), 1)
        rows = torch.tensor(order[s : s + max(1, _CHUNK_BYTES // (k * k * 8))], device=xtx.device)
        s += len(rows)
        gi, ri = rows // o, rows % o
        # the kept coordinates of each row, padded to k with coordinate 0 (masked out by v)
        idx = torch.sort(flat[rows].to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
        v = torch.gather(flat[rows], 1, idx).double()
        sub = a[gi[:, None, None], idx[:, :, None], idx[:, None, :]] * v[:, :, None] * v[:, None, :]
        sub = sub + torch.diag_embed(1 - v)  # padding solves to 0
        rhs = xty[gi[:, None], idx, ri[:, None]] * v
        sol = _spd_solve(sub, rhs[:, :, None])[:, :, 0] * v
        out[gi[:, None], ri[:, None], idx] = sol
    return out


def _spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve batched symmetric positive (semi)definite systems; Cholesky, else least squares."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info.max()) == 0:
        return torch.cholesky_solve(b, chol)
    return torch.linalg.lstsq(a, b).solution  # singular (ridge 0 with dead inputs): minimum-norm


def _rel_error(w: torch.Tensor, xtx: torch.Tensor, xty: torch.Tensor, yy: float) -> float:
    """||Y - X W^T||^2 / ||Y||^2 from the accumulated statistics."""
    cross = torch.einsum("goi,gio->", w, xty)
    quad = torch.einsum("goi,gij,goj->", w, xtx, w)
    return float((yy - 2 * cross + quad) / max(yy, 1e-300))


def _write(layer: nn.Conv2d | nn.Linear, w: torch.Tensor) -> None:
    d = w.shape[-1] - int(layer.bias is not None)
    layer.weight.copy_(w[..., :d].reshape(layer.weight.shape).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(w[..., d].reshape(layer.bias.shape).to(layer.bias.dtype))
