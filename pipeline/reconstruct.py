"""Reconstruction: refit a pruned network's kept weights so each layer reproduces the dense one.

Layer by layer in execution order (sequential reconstruction, methods.md section 8):
the inputs of layer k come from the pruned network whose layers before k are already
refit, the targets from the dense network on the same calibration images. Each layer
solves ridge least squares on its im2col inputs, accumulated over batches in float64,

    W = (X^T X + lambda I)^-1 X^T Y,   lambda = ridge * mean diag(X^T X),

one solve per layer (per group of a grouped conv), with a constant column when the
layer has a bias. The target is the layer's own output (a conv under a BatchNorm is
fit before the BN). What stays fixed:
- channel plans: kept channels; consumers whose input channels were removed are
  refit from their kept inputs (ThiNet / He et al. 2017, second step). A refit layer
  that is itself a pruned producer fits the dense output at its kept channels.
- unstructured plans: masks; each output row solves its masked subsystem of the
  shared X^T X exactly (the OBS-family update), so zeros stay zero.

Skipped, with reason: a layer whose output channels differ from the dense layer's
without being a pruned producer (a depthwise conv inside a channel group: each of its
outputs sees only its own, unchanged input channel), non-zero padding modes and string
padding (``same``), which im2col does not reproduce.

Cost per candidate: for refit layer k both networks run forward on ``images`` up to
layer k only (so about L/2 full forwards per network for L refit layers) plus one
(G, d, d) Cholesky per layer; unstructured layers solve each row, R * d^3 / 3 flops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.plan import PrunePlan
from pipeline.spec import ReconSpec

_LAYERS = (nn.Conv2d, nn.Linear)
_CHUNK_BYTES = 64 * 2**20  # memory for a batch of masked row systems


@dataclass
class ReconReport:
    """What reconstruction did.

    Attributes:
        layers: names of the refit layers, in execution order.
        skipped: layer name -> why it was not refit.
        error_before, error_after: per refit layer, relative squared output error
            ||Y - X W||^2 / ||Y||^2 on the calibration images, before and after its
            refit (inputs already from the refit layers before it).
    """

    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error_before: list[float] = field(default_factory=list)
    error_after: list[float] = field(default_factory=list)

    def mean(self, which: list[float]) -> float:
        return float(sum(which) / len(which)) if which else 0.0


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def reconstruct(
    dense: nn.Module, pruned: nn.Module, images: torch.Tensor, spec: ReconSpec, plan: PrunePlan
) -> tuple[dict[str, torch.Tensor], ReconReport]:
    """Refit ``pruned`` in place on ``images`` against ``dense``.

    Args:
        dense: the dense base model (not modified); module names as in ``pruned``.
        pruned: the network ``plan`` produced (``pipeline.build.apply_plan``).
        images: calibration images (N, C, H, W), normalised; all are used.
        spec: ridge, batch size, which layers.
        plan: what was pruned (masks stay masks, kept channels stay kept).

    Returns:
        The refit state-dict entries (``NAME.weight``, ``NAME.bias``) of ``pruned``, and
        the report.
    """
    flags = {m: m.training for m in (*dense.modules(), *pruned.modules())}
    dense.eval(), pruned.eval()  # BN uses stored statistics; recalibration follows after
    try:
        return _reconstruct(dense, pruned, images, spec, plan)
    finally:
        for m, flag in flags.items():
            m.training = flag


def _reconstruct(dense, pruned, images, spec, plan):
    order, calls = _execution_order(pruned, images[:1])
    ref = dict(dense.named_modules())
    mods = dict(pruned.named_modules())
    refit: dict[str, torch.Tensor] = {}
    report = ReconReport()
    for name in order:
        layer, dlayer = mods[name], ref.get(name)
        why = _skip_reason(name, layer, dlayer, plan, spec)
        if why:
            if why != "unchanged":
                report.skipped[name] = why
            continue
        out_idx = plan.channels.get(name)
        mask = plan.masks.get(f"{name}.weight")
        xtx, xty, yy = _accumulate(pruned, dense, layer, dlayer, out_idx, calls[name], images, spec.batch_size)
        w0 = _as_rows(layer)
        w = _solve(xtx, xty, spec.ridge, _row_mask(layer, mask), layer.bias is not None)
        report.layers.append(name)
        report.error_before.append(_rel_error(w0, xtx, xty, yy))
        report.error_after.append(_rel_error(w, xtx, xty, yy))
        _write(layer, w)
        refit[f"{name}.weight"] = layer.weight.detach().clone()
        if layer.bias is not None:
            refit[f"{name}.bias"] = layer.bias.detach().clone()
    return refit, report


def _execution_order(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, int]]:
    """Conv/linear module names in the order of their first call, and their call counts."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, _LAYERS)}
    calls: dict[str, int] = {}

    def hook(m, inp, out):
        calls[names[m]] = calls.get(names[m], 0) + 1

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return list(calls), calls


def _skip_reason(name: str, layer: nn.Module, dlayer: nn.Module | None, plan: PrunePlan, spec: ReconSpec) -> str:
    """Why ``layer`` is not refit; ``unchanged`` when pruning left it alone and only pruned
    layers are refit; empty when it is refit."""
    if dlayer is None or type(dlayer) is not type(layer):
        return "the dense model has no layer of this name and type"
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return f"padding {layer.padding!r} ({layer.padding_mode}) is not reproduced by im2col"
        fan_in_cut = layer.in_channels != dlayer.in_channels
    else:
        fan_in_cut = layer.in_features != dlayer.in_features
    out_idx = plan.channels.get(name)
    want = dlayer.weight.shape[0] if out_idx is None else len(out_idx)
    if layer.weight.shape[0] != want:
        return "its output channels follow another layer's (a depthwise conv in a channel group)"
    changed = fan_in_cut or f"{name}.weight" in plan.masks
    return "" if changed or spec.layers == "all" else "unchanged"


def _capture(model: nn.Module, layer: nn.Module, x: torch.Tensor, calls: int, want_input: bool) -> list[torch.Tensor]:
    """Inputs (or outputs) of ``layer``'s ``calls`` calls on ``x``, stopping the forward after the last."""
    got: list[torch.Tensor] = []

    def hook(m, inp, out):
        got.append(inp[0] if want_input else out)
        if len(got) == calls:
            raise _Stop

    h = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return got


def _columns(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col of ``layer``'s input as (G, B, d, L): B images, d = in/G * kh * kw (plus a
    bias row of ones), L positions. A linear layer's input is one image of L rows."""
    if isinstance(layer, nn.Linear):
        u = x.reshape(-1, x.shape[-1]).t()[None, None]
    else:
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


def _accumulate(pruned, dense, layer, dlayer, out_idx, calls, images, batch_size):
    """X^T X (G, d, d), X^T Y (G, d, o) and sum Y^2 of ``layer`` over ``images``."""
    groups = getattr(layer, "groups", 1)
    xtx = xty = None
    yy = 0.0
    for i in range(0, len(images), batch_size):
        xb = images[i : i + batch_size]
        ins = _capture(pruned, layer, xb, calls, want_input=True)
        outs = _capture(dense, dlayer, xb, calls, want_input=False)
        for x, y in zip(ins, outs):
            u, t = _columns(layer, x), _targets(y, groups, out_idx)
            u = u.permute(0, 2, 1, 3).reshape(u.shape[0], u.shape[2], -1)  # (G, d, B*L)
            t = t.permute(0, 2, 1, 3).reshape(t.shape[0], t.shape[2], -1)
            # per-batch products in float32 (BLAS speed), summed over batches in float64
            a = torch.bmm(u, u.transpose(1, 2)).double()
            b = torch.bmm(u, t.transpose(1, 2)).double()
            xtx, xty = (a, b) if xtx is None else (xtx + a, xty + b)
            yy += float(t.double().square().sum())
    return xtx, xty, yy


def _as_rows(layer: nn.Module) -> torch.Tensor:
    """The layer's weights (and bias) as (G, o, d) float64 rows matching ``_columns``."""
    groups = getattr(layer, "groups", 1)
    out = layer.weight.shape[0]
    w = layer.weight.detach().double().reshape(groups, out // groups, -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach().double().reshape(groups, -1, 1)], dim=2)
    return w


def _row_mask(layer: nn.Module, mask: torch.Tensor | None) -> torch.Tensor | None:
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


def _write(layer: nn.Module, w: torch.Tensor) -> None:
    d = w.shape[-1] - int(layer.bias is not None)
    layer.weight.copy_(w[..., :d].reshape(layer.weight.shape).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_(w[..., d].reshape(layer.bias.shape).to(layer.bias.dtype))
