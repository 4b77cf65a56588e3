"""Optimal Brain Surgeon: choose what goes and update what stays from second-order
statistics of the calibration inputs (methods.md, 10).

For one layer with im2col inputs X, changing an output row w by dw changes the squared
output error by dw^T H dw, H = X^T X + lambda I (lambda: ``damp`` times the mean diagonal).
Removing weight q with the best compensation costs w_q^2 / [H^-1]_qq.

- ``unstructured`` and ``nm``: SparseGPT's block sweep (Frantar & Alistarh 2023), not
  ExactOBS. Why: one Cholesky factor U of H^-1 = U^T U per layer serves every row, so a
  layer costs about d^3 + rows * d^2 (ExactOBS: rows * d^3, since each row updates its own
  inverse after every removal). On ResNet-20 (d <= 577) both would do; on torchvision
  models (d = 4,608 for a 512-channel 3x3 conv) ExactOBS takes hours per candidate on a
  CPU, and N:M fits the sweep directly. Columns are visited left to right in blocks of
  ``block``; once a block is done its weights are frozen and only the columns after it
  compensate later removals. The inverse Hessian over the columns not yet visited is
  U[i:, i:]^T U[i:, i:], so inside a block the update is exact OBS: each row's removed set
  Q is compensated jointly, dw = -Hinv[:, Q] Hinv[Q, Q]^-1 w_Q, by every column not yet
  frozen, and the removals are chosen in greedy rounds (4 for unstructured, M - N for
  N:M: one weight of each group per round) by w_q^2 / [H^-1]_qq, the inverse conditioned
  on the row's earlier removals. (SparseGPT's own per-column update lets only columns to
  the right compensate; its mask rule w^2 / U_qq^2 then removed the wrong weight of a
  planted pair, and at 90 % on ResNet-20 with reconstruction it scored 73.9 % validation
  against 76.4 % for this sweep.) Unstructured: each layer removes the count that global
  magnitude pruning (``global`` scope) or the uniform split (``layerwise``) gives it,
  reshaped by ``allocation``, spread evenly over its blocks. N:M: each row keeps N of
  every M consecutive weights. A bias (not pruned) takes its share of the compensation.
- ``channel``: structured OBS group saliency with a greedy order (ThiNet's criterion,
  with the OBS update between steps). Removing input channel c of a consumer removes the
  group Q of its columns and costs w_Q^T ([H^-1]_QQ)^-1 w_Q per row; costs are summed over
  the group's consumers, each divided by that consumer's output energy (so costs of
  different layers compare), the cheapest channel goes, every consumer's weights and H^-1
  are updated, and so on. A channel's score is the accumulated relative error when it
  went; ``structure.select_channels`` (unnormalised: the scores already compare across
  groups) then keeps channel groups intact and meets the MACs target, and each consumer
  is refit to its kept inputs by least squares on the same statistics.
- ``sequential`` (knob, unstructured and nm): 0 takes H from the dense network (one
  pass, cached per actor for every candidate); 1 (default) visits layers in order with
  inputs from the network pruned so far and the dense network's outputs as targets, and
  starts the sweep from the damped least-squares fit w* = (H + lambda I)^-1 X^T Y, so the
  sweep minimises exactly the error that reconstruction then refits (one partial forward
  of both networks per layer, per candidate: about twice the cost). Shared ResNet-20 at
  90 %, with reconstruction (1024 images) and recalibration: validation 78.5 % against
  76.4 % for 0 (test 79.0 / 77.2; global magnitude with the same refit: 75.7 / 75.6).
- ``split`` (knob, unstructured global scope): 0 takes the layer sparsities from global
  magnitude pruning; 1 from a global ranking of every weight's OBS cost alone, divided by
  its layer's output energy (w_q^2 / [H^-1]_qq / ||Y||^2, dense statistics). On the
  shared ResNet-20 at 90 % (sequential 0, with reconstruction) 1 scored 61.0 % validation
  against 76.4 % for 0: relative layer error is no guide to where sparsity is cheap.

The statistics come from ``pipeline.repair.lsq.LayerFit`` (the accumulation reconstruction
uses) through ``_Stats``, the one place that touches it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, cast

import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.pruning import structure
from pipeline.pruning.capture import hooked_pass
from pipeline.pruning.layers import stage_of
from pipeline.pruning.methods.activation import reads_channels
from pipeline.pruning.methods.base import Knob, PruneContext, PruningMethod, weights_of
from pipeline.pruning.methods.magnitude import filter_norms
from pipeline.pruning.methods.registry import register_method
from pipeline.pruning.obs_sweep import sweep
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.thresholds import global_masks, layerwise_masks
from pipeline.repair.lsq import LayerFit, Refittable

if TYPE_CHECKING:
    from pipeline.spec import CandidateSpec

Layer = nn.Conv2d | nn.Linear
#: ``prune(name, layer, stats, start_rows)`` -> the layer's new rows (G, o, d)
Pruner = Callable[[str, Layer, "_Stats", torch.Tensor], torch.Tensor]
_BATCH = 64  # calibration images per forward while accumulating (im2col of 64 images: ~40 MB)


class _Stats:
    """X^T X, X^T Y and ||Y||^2 of one layer, accumulated by reconstruction's ``LayerFit``.

    The adapter between this method and ``pipeline.repair.lsq``: rows (G, o, d) with a bias
    column last when the layer has a bias, as ``LayerFit`` lays them out.
    """

    def __init__(self, layer: "Refittable") -> None:
        self._fit = LayerFit(layer, None)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._fit.add(x, y)

    def hessian(self) -> torch.Tensor:
        """X^T X, float64 (G, d, d) (accumulated on the device in float32)."""
        assert self._fit.h is not None, "add() a batch first"
        return self._fit.h.double()

    def energy(self) -> float:
        """||Y||^2 of the targets."""
        return self._fit.yy

    def width(self) -> int:
        """Weight columns per row (the bias column, if any, comes after them)."""
        return self._fit.layer.weight[0].numel()

    def rows(self) -> torch.Tensor:
        """The layer's current weights as (G, o, d) float64 rows."""
        return self._fit.current()

    def fit(self, damp: float, mask: torch.Tensor | None) -> torch.Tensor:
        """Rows (G, o, d) of (X^T X + damp * mean diag I)^-1 X^T Y, solved under the weight's ``mask``."""
        return self._fit.solve(damp, mask)


@register_method("obs")
class OBS(PruningMethod):
    """SparseGPT-style OBS masks and updates (unstructured, N:M); greedy OBS channel selection."""

    granularities = ("unstructured", "channel", "nm")
    allocates = True
    knobs = {
        "damp": Knob(0.003, 0.1, log=True, default=0.01, limits=(0.0, 10.0)),
        "images": Knob(128, 1024, log=True, integer=True, default=512, limits=(1, 1e7)),
        "block": Knob(8, 128, log=True, integer=True, default=32, limits=(1, 1e7)),
        "sequential": Knob(0, 1, integer=True, default=1, limits=(0, 1)),
        "split": Knob(0, 1, integer=True, default=0, limits=(0, 1)),
    }
    fast_knobs = {"images": 128}

    def plan(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec") -> PrunePlan:
        if spec.granularity == "channel":
            return self._channel_plan(model, ctx, spec)
        weights = weights_of(model, spec)
        damp, block = self.knob(spec, "damp"), int(self.knob(spec, "block"))
        images = ctx.calib_x[: int(self.knob(spec, "images"))]
        layers = [n.rsplit(".", 1)[0] for n in weights]
        remove = None
        if spec.granularity != "nm":
            split = None
            if self.knob(spec, "split") and spec.scope == "global":
                stats = dense_stats(model, ctx, layers, images)
                split = {f"{n}.weight": _alone_costs(stats[n], damp).reshape(weights[f"{n}.weight"].shape) for n in layers}
            remove = _removal_counts(weights, spec, split)
        masks: dict[str, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}

        def prune(name: str, layer: Layer, stats: _Stats, start: torch.Tensor) -> torch.Tensor:
            key = f"{name}.weight"
            rows, mask = sweep(start, stats.hessian(), stats.width(), damp, block, None if remove is None else remove[key], spec.nm)
            if mask is not None:
                masks[key] = mask.reshape(layer.weight.shape)
                out.update(_state_entries(name, layer, rows))
            return rows

        if self.knob(spec, "sequential"):
            _sequential(model, images, layers, prune, damp)
        else:
            stats = dense_stats(model, ctx, layers, images)
            modules: dict[str, Any] = dict(model.named_modules())  # conv / linear layers where indexed
            for name in layers:
                prune(name, modules[name], stats[name], stats[name].rows())
        return PrunePlan(masks=masks, weights=out)

    def _channel_plan(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec") -> PrunePlan:
        if spec.target_macs_ratio is None:
            raise InputError("method 'obs' needs target_macs_ratio for channel pruning")
        graph = structure.cached_graph(model, ctx, spec.prune_stem, spec.prune_head)
        modules: dict[str, Any] = dict(model.named_modules())  # conv / linear layers where indexed
        ends = {g.name: [c for c in g.consumers if _reads_group(modules[c], g.size)] for g in graph.groups}
        images = ctx.calib_x[: int(self.knob(spec, "images"))]
        stats = dense_stats(model, ctx, sorted({c for cs in ends.values() for c in cs}), images)
        damp = self.knob(spec, "damp")
        key = ("obs:channel-scores", id(model), spec.prune_stem, spec.prune_head, len(images), damp)
        if key not in ctx.cache:
            ctx.cache[key] = {g.name: greedy_channel_scores([stats[c] for c in ends[g.name]], g.size, damp) for g in graph.groups}
        scores = {g: s if s is not None else filter_norms(modules[g].weight) for g, s in ctx.cache[key].items()}
        kept = structure.select_channels(graph, scores, spec.target_macs_ratio, scope=spec.scope, ratios=dict(spec.allocation), normalize=False)
        out: dict[str, torch.Tensor] = {}
        for g in graph.groups:
            for c in ends[g.name]:
                mask = _column_mask(modules[c], g.size, kept[g.name])
                if not bool(mask.all()):
                    out.update(_state_entries(c, modules[c], stats[c].fit(damp, mask)))
        return PrunePlan(channels=kept, weights=out)


# ---------------------------------------------------------------- statistics


def dense_stats(model: nn.Module, ctx: PruneContext, layers: list[str], images: torch.Tensor) -> dict[str, _Stats]:
    """Layer name -> statistics of its inputs in the dense ``model`` on ``images`` (target:
    its own output), cached per actor."""
    key = ("obs:stats", id(model), tuple(layers), len(images))
    if key not in ctx.cache:
        modules: dict[str, Any] = dict(model.named_modules())  # conv / linear layers where indexed
        stats = {n: _Stats(modules[n]) for n in layers}
        hooked_pass(model, images, layers, lambda n, mod, x, rows: stats[n].add(x, mod.forward(x)), inputs=True, batch=_BATCH)
        ctx.cache[key] = stats
    return ctx.cache[key]


def _sequential(model: nn.Module, images: torch.Tensor, layers: list[str], prune: Pruner, damp: float) -> None:
    """Visit ``layers`` in order: inputs from a copy of ``model`` pruned so far, targets the
    dense outputs; ``prune(name, layer, stats, start)`` returns the new rows, written into the copy."""
    pruned = copy.deepcopy(model)
    mods: dict[str, Any] = dict(pruned.named_modules())
    dense_mods: dict[str, Any] = dict(model.named_modules())
    order = _execution_order(model, images[:1], layers)
    for name in order:
        stats = _pair_stats(model, pruned, name, dense_mods[name], images)
        rows = prune(name, mods[name], stats, stats.fit(damp, None))
        _write(mods[name], rows)


def _pair_stats(dense: nn.Module, pruned: nn.Module, name: str, layer: nn.Module, images: torch.Tensor) -> _Stats:
    """Statistics of layer ``name``: its inputs in ``pruned``, its outputs in ``dense`` as targets
    (both forwards stop after the layer)."""
    targets: list[torch.Tensor] = []
    hooked_pass(dense, images, [name], lambda n, mod, y, rows: targets.append(y), inputs=False, batch=_BATCH, stop=True)
    stats = _Stats(cast(Refittable, layer))  # a prunable layer: Conv2d or Linear
    hooked_pass(pruned, images, [name], lambda n, mod, x, rows: stats.add(x, targets[rows.start // _BATCH]), inputs=True, batch=_BATCH, stop=True)
    return stats


def _execution_order(model: nn.Module, x: torch.Tensor, layers: list[str]) -> list[str]:
    """``layers`` in the order of their first call on ``x`` (layers not called go last)."""
    seen: list[str] = []
    hooked_pass(model, x, layers, lambda n, mod, a, rows: None if n in seen else seen.append(n), inputs=True)
    return seen + [n for n in layers if n not in seen]


def _removal_counts(weights: dict[str, nn.Parameter], spec: "CandidateSpec", split: dict[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Weights each tensor loses: the split of a global ranking of ``split`` (default |w|:
    global magnitude's) in ``global`` scope, or uniform, reshaped by allocation."""
    assert spec.target_sparsity is not None  # CandidateSpec gives unstructured specs a target
    mags = {n: w.detach().abs() for n, w in weights.items()}
    base = None
    if spec.scope == "global":
        gm = global_masks(split or mags, spec.target_sparsity)
        base = {n: int((~m).sum()) / m.numel() for n, m in gm.items()}
    ratios = {n: spec.allocation.get(stage_of(n), 1.0) for n in mags} if spec.allocation else None
    return {n: int((~m).sum()) for n, m in layerwise_masks(mags, spec.target_sparsity, ratios, base).items()}


def _alone_costs(stats: _Stats, damp: float) -> torch.Tensor:
    """(G * o, width) relative output error of removing each weight alone with the OBS
    update, w_q^2 / [H^-1]_qq / ||Y||^2: comparable across layers (``split`` knob)."""
    h = stats.hessian().clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    diag[diag == 0] = 1.0
    width = stats.width()
    diag.add_(damp * diag[:, :width].mean(dim=1, keepdim=True))
    hinv = torch.diagonal(torch.cholesky_inverse(torch.linalg.cholesky(h)), dim1=1, dim2=2)[:, None, :width]
    return (stats.rows()[..., :width] ** 2 / hinv / max(stats.energy(), 1e-300)).reshape(-1, width).float()


# ---------------------------------------------------------------- channels


@dataclass
class _Consumer:
    """A consumer's state in the greedy channel order: rows (o, d), inverse Hessian (d, d),
    columns per input channel, output energy."""

    w: torch.Tensor
    hinv: torch.Tensor
    k: int
    energy: float

    def costs(self, left: list[int]) -> torch.Tensor:
        """Relative output error (len(left),) of removing each channel of ``left`` alone."""
        idx = torch.tensor(left)[:, None] * self.k + torch.arange(self.k)  # (left, k) columns of each channel
        a = torch.linalg.inv(self.hinv[idx[:, :, None], idx[:, None, :]])
        wq = self.w[:, idx]  # (o, left, k)
        return torch.einsum("onk,nkl,onl->n", wq, a, wq) / self.energy

    def remove(self, c: int) -> None:
        """Remove channel ``c``: the OBS group update of the rows, and of the inverse Hessian."""
        q = torch.arange(self.k) + c * self.k
        a = torch.linalg.inv(self.hinv[q][:, q])
        self.w -= (self.w[:, q] @ a) @ self.hinv[q, :]
        self.hinv = self.hinv - self.hinv[:, q] @ a @ self.hinv[q, :]


def greedy_channel_scores(stats: list[_Stats], size: int, damp: float) -> torch.Tensor | None:
    """Score (size,) of a group's channels from its consumers' statistics: the accumulated
    relative output error when the greedy OBS order removes each (the last channel scores
    above all); None without a consumer."""
    if not stats:
        return None
    state = []
    for s in stats:
        h, width = s.hessian()[0].clone(), s.width()
        diag = torch.diagonal(h)
        h[diag == 0, diag == 0] = 1.0
        diag.add_(damp * float(diag[:width].mean()))
        state.append(_Consumer(s.rows()[0].clone(), torch.cholesky_inverse(torch.linalg.cholesky(h)), width // size, max(s.energy(), 1e-300)))
    left = list(range(size))
    score = torch.zeros(size, dtype=torch.float64)
    total = 0.0
    for step in range(size - 1):
        cost = sum((c.costs(left) for c in state), torch.zeros(len(left), dtype=torch.float64))
        j = int(torch.argmin(cost))
        total += float(cost[j])
        score[left[j]] = total + step * 1e-12  # strictly increasing along the greedy order
        for c in state:
            c.remove(left[j])
        left.pop(j)
    score[left[0]] = 2 * total + 1.0
    return score.float()


def _reads_group(m: nn.Module, size: int) -> bool:
    """Whether ``m`` mixes ``size`` input channels (the group's) in a dense conv or Linear."""
    return reads_channels(m) and int(cast(Layer, m).weight.shape[1]) == size


def _column_mask(layer: Layer, size: int, kept: torch.Tensor) -> torch.Tensor:
    """Bool mask of ``layer.weight``'s shape keeping the input channels ``kept``."""
    cols = torch.zeros(size, dtype=torch.bool)
    cols[kept] = True
    shape = (1, size) + (1,) * (layer.weight.dim() - 2)
    return cols.reshape(shape).expand(layer.weight.shape).clone()


# ---------------------------------------------------------------- writing


def _state_entries(name: str, layer: Layer, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """State-dict entries ``name.weight`` (and ``name.bias``) of ``rows`` (G, o, d), float32."""
    width = layer.weight[0].numel()
    out = {f"{name}.weight": rows[..., :width].reshape(layer.weight.shape).float()}
    if layer.bias is not None:
        out[f"{name}.bias"] = rows[..., width].reshape(layer.bias.shape).float()
    return out


@torch.no_grad()
def _write(layer: Layer, rows: torch.Tensor) -> None:
    for key, v in _state_entries("", layer, rows).items():
        getattr(layer, key.lstrip(".")).copy_(v)
