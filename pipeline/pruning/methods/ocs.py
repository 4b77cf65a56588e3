"""OCSPruner: one-cycle structured pruning, stability-driven (docs/methods.md, 5).

A deep copy of the trained base model trains for ``epochs`` x ``steps_per_epoch`` SGD
steps. After every epoch the channel groups are scored and the subnetwork for the MACs
target is chosen; once the kept sets stop changing (Jaccard stability) the structure is
fixed and the rest of the cycle trains only the kept channels.

Choices left open by the paper (documented here):
- An "epoch" is a fixed number of optimiser steps (``steps_per_epoch``), not a pass over
  the data: on our small data sets a real epoch is a handful of steps.
- Weights: SGD, momentum 0.9, weight decay 5e-4, lr 0.01 (a fine-tuning rate, since we
  start from a trained model) decayed by cosine to 0 over the whole budget; batches of
  64, BatchNorm in train mode, all seeded by ``spec.seed``.
- Selection history starts with the subnetwork of the base weights (epoch 0), so the
  earliest stable epoch is ``lag + window - 1`` = 4.
- MAC cost of a group's channel = dense MACs minus MACs with that group one channel
  smaller; the softmax runs over costs in millions of MACs (as the authors' code,
  ocspruner/cost.py, does), since a softmax of raw MAC counts is one-hot.
- Saliencies are ranked raw across groups (``select_channels(normalize=False)``), as
  the paper does: per-group normalisation would cancel the MAC-cost factor and every
  cross-group difference. Measured (DigitsCNN, 0.5 MACs, 3 seeds, 10x20 steps): with
  normalisation, kept widths (24-25, 47, 73-74) and 90.7 % validation accuracy for base
  weights after recalibration; raw ranking keeps (31-32, 31-32, 128) and 96.7 %.
- After the stable epoch the removed channels are masked, not shrunk: producer rows,
  BatchNorm affine (and depthwise members) and consumer input slices are zeroed after
  every step. The masked dense network computes exactly what ``structure.shrink`` of
  it computes, and its state dict keeps the base model's shapes.
- Group lasso weight: ``reg`` x epoch (1-based), i.e. ``reg``, 2 ``reg``, ... (paper:
  1e-4 + 1e-4 per epoch) on the L2 norm of each removed channel's concatenated group
  slices (conv rows/columns, BN gamma). The knob reaches 1e-2 because our cycles are a
  few epochs, not the paper's ~80 epochs of growth.
- ``plan`` returns the structure and the trained weights (``PrunePlan.weights``, removed
  channels zeroed): measured on DigitsCNN at 0.5 / 0.3 MACs, trained weights score
  96.9 / 96.3 % after recalibration against 90.7 / 77.7 % for base weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.pruning import structure
from pipeline.pruning.methods.base import Knob, PruneContext, TrainingMethod
from pipeline.pruning.methods.registry import register_method
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec
from pipeline.train import batches

LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.01, 0.9, 5e-4, 64
LAG, WINDOW = 2, 3

KeptSets = dict[str, set[int]]


@register_method("ocs")
class Ocs(TrainingMethod):
    """Stability-driven subnetwork search during one training cycle, for a MACs target."""

    granularities = ("channel",)
    knobs = {
        "epochs": Knob(4, 40, integer=True, default=10, limits=(1, math.inf)),
        "steps_per_epoch": Knob(5, 200, integer=True, log=True, default=20, limits=(1, math.inf)),
        "stability": Knob(0.9, 1.0, default=0.999, limits=(0.0, 1.0)),
        "reg": Knob(0.0, 1e-2, default=1e-4, limits=(0.0, math.inf)),
        "max_prune_fraction": Knob(0.5, 0.9, default=0.75, limits=(0.0, 0.99)),
    }
    fast_knobs = {"epochs": 4, "steps_per_epoch": 5}
    train_batch = BATCH

    def training_steps(self, spec: CandidateSpec) -> int:
        return int(self.knob(spec, "epochs")) * int(self.knob(spec, "steps_per_epoch"))

    def check(self, spec: CandidateSpec) -> None:
        super().check(spec)
        if spec.target_macs_ratio is None:
            raise InputError("method 'ocs' needs target_macs_ratio (fraction of dense MACs kept)")

    def plan(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> PrunePlan:
        out = train_ocs(model, ctx, spec)
        return PrunePlan(channels=out.plan.channels, weights=out.state_dict, diagnostics=out.diagnostics(int(self.knob(spec, "epochs"))))


@dataclass
class OcsOutcome:
    """What one OCS cycle produced.

    Attributes:
        plan: kept channels (group name -> sorted int64 indices).
        state_dict: trained weights in the base model's shapes, removed channels zeroed.
        stable_epoch: epoch (1-based) at which stability fired; ``None`` if it never did
            and the structure was fixed at the last epoch.
        stability_history: running-mean stability after each search epoch (NaN while
            the history is too short).
        removed_norm_history: after each search epoch, the sum of the group L2 norms
            of the channels penalised during it (the group-lasso term without lambda).
    """

    plan: PrunePlan
    state_dict: dict[str, torch.Tensor]
    stable_epoch: int | None
    stability_history: list[float] = field(default_factory=list)
    removed_norm_history: list[float] = field(default_factory=list)

    def diagnostics(self, epochs: int) -> dict[str, float | list[float]]:
        """For ``PrunePlan.diagnostics``: ``stable_epoch`` (the epoch the structure was fixed
        at: ``epochs`` when stability never fired), ``stabilized`` (1.0 / 0.0) and the histories."""
        return {
            "stable_epoch": float(self.stable_epoch if self.stable_epoch is not None else epochs),
            "stabilized": float(self.stable_epoch is not None),
            "stability_history": list(self.stability_history),
            "removed_norm_history": list(self.removed_norm_history),
        }


def jaccard(a: set[int], b: set[int]) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    return 1.0 if not (a or b) else len(a & b) / len(a | b)


def stability(history: list[KeptSets], lag: int = LAG, window: int = WINDOW) -> float:
    """Mean over the last ``window`` epochs t of the group-averaged Jaccard similarity of
    kept sets at t and t - ``lag``. NaN when ``history`` has fewer than lag + window entries."""
    if len(history) < lag + window:
        return math.nan
    sims = [
        sum(jaccard(history[t][g], history[t - lag].get(g, set())) for g in history[t]) / max(len(history[t]), 1)
        for t in range(len(history) - window, len(history))
    ]
    return sum(sims) / window


def is_stable(history: list[KeptSets], threshold: float = 0.999, lag: int = LAG, window: int = WINDOW) -> bool:
    """Whether ``stability(history)`` has reached ``threshold`` (never while it is NaN)."""
    return stability(history, lag, window) >= threshold


def _member(modules: dict[str, nn.Module], name: str) -> nn.Conv2d | nn.Linear | nn.BatchNorm2d:
    """The module of a channel group's producer or member (a group holds no other types)."""
    m = modules[name]
    assert isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)), f"{name!r} is a {type(m).__name__}"
    return m


def _member_norms(modules: dict[str, nn.Module], group: structure.ChannelGroup) -> list[tuple[torch.Tensor, int]]:
    """Per member of ``group``: (squared L2 norm of each channel's slice, shape (size,); slice size)."""
    w = _member(modules, group.name).weight
    out = [(w.pow(2).flatten(1).sum(1), w[0].numel())]
    for name in filter(None, (group.norm, *group.consumers)):
        m = _member(modules, name)
        if isinstance(m, nn.BatchNorm2d):
            if m.weight is not None:
                out.append((m.weight.pow(2), 1))
        elif isinstance(m, nn.Conv2d) and m.groups > 1:  # depthwise member: output channel c
            out.append((m.weight.pow(2).flatten(1).sum(1), m.weight[0].numel()))
        else:  # conv / linear consumer: input slice c
            wt = m.weight.transpose(0, 1)
            out.append((wt.pow(2).flatten(1).sum(1), wt[0].numel()))
    return out


def channel_costs(graph: structure.ChannelGraph) -> dict[str, float]:
    """MACs (per image) that one channel of each group costs at dense widths."""
    return {g.name: float(graph.dense_macs - graph.macs({g.name: g.size - 1})) for g in graph.groups}


@torch.no_grad()
def group_saliency(modules: dict[str, nn.Module], graph: structure.ChannelGraph) -> dict[str, torch.Tensor]:
    """Group name -> (size,) OCS saliency on CPU: mean over members of ||slice||^2 / sqrt(slice
    size), times (1 - softmax over groups of the per-channel MAC cost in millions)."""
    costs = channel_costs(graph)
    soft = torch.softmax(torch.tensor([costs[g.name] / 1e6 for g in graph.groups], dtype=torch.float64), 0)
    out = {}
    for g, p in zip(graph.groups, soft.tolist()):
        per_member = [sq / math.sqrt(n) for sq, n in _member_norms(modules, g)]
        out[g.name] = (torch.stack(per_member).mean(0) * (1.0 - p)).float().cpu()
    return out


def group_lasso(modules: dict[str, nn.Module], graph: structure.ChannelGraph, removed: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over removed channels of the L2 norm of their concatenated group slices (differentiable)."""
    total = torch.zeros((), device=_member(modules, graph.groups[0].name).weight.device)
    for g in graph.groups:
        idx = removed[g.name]
        if idx.numel():
            sq = sum(s[idx] for s, _ in _member_norms(modules, g))
            assert isinstance(sq, torch.Tensor)  # a group has members: the sum is not 0
            total = total + (sq + 1e-12).sqrt().sum()  # eps: finite gradient at a zero slice
    return total


@torch.no_grad()
def mask_removed(modules: dict[str, nn.Module], graph: structure.ChannelGraph, removed: dict[str, torch.Tensor]) -> None:
    """Zero, in place, every parameter slice of the removed channels (producer rows and bias,
    BatchNorm affine, depthwise members, consumer input columns)."""
    for g in graph.groups:
        idx = removed[g.name]
        if not idx.numel():
            continue
        for name in filter(None, (g.name, g.norm, *g.consumers)):
            m = _member(modules, name)
            if name == g.name or isinstance(m, nn.BatchNorm2d) or (isinstance(m, nn.Conv2d) and m.groups > 1):
                for p in (m.weight, m.bias):
                    if p is not None:
                        p[idx] = 0
            else:
                m.weight[:, idx] = 0


def train_ocs(model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> OcsOutcome:
    """Run one OCS cycle on a deep copy of ``model`` (never modified) for ``spec``.

    Raises:
        ValueError: ``spec`` is not an OCS channel spec, or its MACs target is unreachable.
    """
    method = Ocs()
    method.check(spec)
    epochs, spe, reg = (method.knob(spec, k) for k in ("epochs", "steps_per_epoch", "reg"))
    threshold, max_prune = method.knob(spec, "stability"), method.knob(spec, "max_prune_fraction")
    graph = structure.cached_graph(model, ctx, spec.prune_stem, spec.prune_head)
    net = copy.deepcopy(model).train()
    modules = dict(net.named_modules())
    device = next(net.parameters()).device

    def select() -> tuple[dict[str, torch.Tensor], KeptSets, dict[str, torch.Tensor]]:
        """Kept indices, kept sets and removed indices (on the model's device) for the MACs target."""
        assert spec.target_macs_ratio is not None  # method.check (Ocs.check) raised otherwise
        kept = structure.select_channels(
            graph, group_saliency(modules, graph), spec.target_macs_ratio, "global", max_prune_fraction=max_prune, normalize=False
        )
        sets = {g: set(k.tolist()) for g, k in kept.items()}
        removed = {g.name: torch.tensor(sorted(set(range(g.size)) - sets[g.name]), dtype=torch.int64, device=device) for g in graph.groups}
        return kept, sets, removed

    kept, sets, removed = select()  # epoch 0: the subnetwork of the base weights
    history, stab_hist, norm_hist = [sets], [], []
    stable_epoch: int | None = None
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, int(epochs * spe))
    loss_fn = nn.CrossEntropyLoss()
    it = batches(ctx.train_x, ctx.train_y, min(BATCH, len(ctx.train_x)), torch.Generator().manual_seed(spec.seed))
    done = 0
    for epoch in range(1, int(epochs) + 1):
        lam = reg * epoch if stable_epoch is None else 0.0
        for _ in range(int(spe)):
            xb, yb = next(it)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            if lam > 0:
                loss = loss + lam * group_lasso(modules, graph, removed)
            loss.backward()
            opt.step()
            sched.step()
            if stable_epoch is not None:
                mask_removed(modules, graph, removed)  # structure fixed: train kept channels only
            done += 1
            ctx.step(done, int(epochs) * int(spe))
        if stable_epoch is not None:
            continue
        with torch.no_grad():
            norm_hist.append(float(group_lasso(modules, graph, removed)))
        kept, sets, removed = select()
        history.append(sets)
        stab_hist.append(stability(history))
        if stab_hist[-1] >= threshold:
            stable_epoch = epoch
            mask_removed(modules, graph, removed)
    if stable_epoch is None:
        mask_removed(modules, graph, removed)  # never stable: prune at the last epoch
    net.eval()
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return OcsOutcome(PrunePlan(channels=kept), state, stable_epoch, stab_hist, norm_hist)
