"""Screening: class-wise ANOVA F statistics decide what to keep (docs/methods.md, 3).

A unit matters if its activation separates the classes of a labelled calibration set.
Units are a layer's input channels / features (unstructured: every weight inherits the
F of its input unit) or a channel group's output channels (structured: the output of
the group's BatchNorm, or of the conv itself when it has none). Conv activations are
spatially averaged, so each unit gives one number per image.

Choices left open by the paper (measured on digits, DigitsCNN, 300 validation images):
- ``s = wF * rank(F) + (1 - wF) * rank(|w|)``, ``wF`` = knob ``screening_weight``, with
  average ranks scaled to [0, 1] within each weight tensor (unstructured) or channel
  group. F only compares units of one layer: it grows with depth (1.4 for the image,
  about 100 before the classifier), and ranking it across layers pruned the stem first
  (chance accuracy at 70 % sparsity, wF = 0.5).
- Unstructured ``global`` scope: within-tensor ranks say nothing across layers, so each
  layer loses what global magnitude pruning takes from it at the same sparsity; the mix
  chooses which weights go (wF = 0 is exactly global magnitude). A global threshold on
  the ranks instead (uniform layer sparsity) kept 45 % accuracy at 70 %; this keeps 96 %.
  Channel groups are balanced by ``structure.select_channels``, which normalises each
  group's scores.
- Channel magnitude: L1 norm of the producer conv's filter (magnitude's default).
- F from per-class sums in float64, each unit shifted by its first value, so a constant
  unit (dead ReLU, BN with zero gain) gets exactly F = 0. Zero within-class variance with
  distinct class means would give F = inf: the within-class sum of squares is floored at
  1e-12 of the total, so F stays large but finite (<= about 1e12 (N - K) / (K - 1)).
"""

from __future__ import annotations

import torch
from scipy.stats import rankdata
from torch import nn

from pipeline.errors import InputError
from pipeline.pruning.capture import hooked_pass, per_weight_inputs
from pipeline.pruning.methods.base import ImportanceMethod, Knob, PruneContext, weights_of
from pipeline.pruning.methods.magnitude import filter_norms
from pipeline.pruning.methods.registry import register_method
from pipeline.spec import CandidateSpec


@register_method("screening")
class Screening(ImportanceMethod):
    """Rank-mix of each unit's ANOVA F over the classes and the weight magnitude."""

    needs_labels = True
    knobs = {"screening_weight": Knob(0.0, 1.0, default=0.5, limits=(0.0, 1.0))}
    score_knobs = ("screening_weight",)
    global_split_by = "magnitude"  # each layer loses what global magnitude takes from it (module docstring)

    def weight_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> dict[str, torch.Tensor]:
        weights = weights_of(model, spec)
        f = per_weight_inputs(model, weights, lambda layers: cached_f(model, ctx, layers, inputs=True))
        mag = {n: w.detach().abs() for n, w in weights.items()}
        return rank_mix(f, mag, self.knob(spec, "screening_weight"))

    def channel_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec, groups: list) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        source = {g.name: g.norm or g.name for g in groups}  # BN after the conv, else the conv
        f_out = cached_f(model, ctx, sorted(set(source.values())), inputs=False)
        f = {g.name: f_out[source[g.name]] for g in groups}
        mag = {g.name: filter_norms(modules[g.name].weight, 1) for g in groups}
        return rank_mix(f, mag, self.knob(spec, "screening_weight"))


def cached_f(model: nn.Module, ctx: PruneContext, names: list[str], inputs: bool) -> dict[str, torch.Tensor]:
    """``unit_f`` through ``ctx.cache``: one calibration pass per actor, whatever ``screening_weight``."""
    key = ("screening:F", id(model), inputs, tuple(names))
    if key not in ctx.cache:
        ctx.cache[key] = unit_f(model, ctx.calib_x, ctx.calib_y, names, inputs)
    return ctx.cache[key]


def unit_f(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str], inputs: bool) -> dict[str, torch.Tensor]:
    """F statistic of every unit of the modules ``names``, one eval pass over ``x``.

    Args:
        x: calibration images (N, C, H, W); y: int64 labels (N,).
        names: module names; ``inputs`` scores each module's input units (the input
            channels of a conv, input features of a Linear), else its output units.

    Returns:
        Module name -> float64 F per unit, (C,).
    """
    k = int(y.max()) + 1
    sums = {n: ClassSums(k) for n in names}

    def add(name: str, mod: nn.Module, a: torch.Tensor, rows: slice) -> None:
        # one value per image and unit: Linear units are the last dim, conv/BN dim 1
        linear = isinstance(mod, nn.Linear)
        a = a.reshape(len(a), -1, a.shape[-1]).mean(1) if linear else a.reshape(len(a), a.shape[1], -1).mean(2)
        sums[name].add(a, y[rows])

    hooked_pass(model, x, names, add, inputs)
    return {n: sums[n].f() for n in names}


def anova_f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F per column of activations ``x`` (N, U) with labels ``y`` (N,): the statistic on its own."""
    sums = ClassSums(int(y.max()) + 1)
    sums.add(x, y)
    return sums.f()


class ClassSums:
    """Streamed per-class counts (K,), sums and sums of squares (K, U) of activations, float64.

    Each unit is shifted by its first value, which keeps the sums small (less
    cancellation) and makes a constant unit exactly zero.
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.shift: torch.Tensor | None = None
        self.n = self.s = self.ss = torch.zeros((), dtype=torch.float64)

    def add(self, a: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch: activations (B, U), labels (B,)."""
        a = a.double()
        if self.shift is None:
            self.shift = a[0].clone()
        a = a - self.shift
        onehot = nn.functional.one_hot(y, self.k).double()
        self.n, self.s, self.ss = self.n + onehot.sum(0), self.s + onehot.T @ a, self.ss + onehot.T @ (a * a)

    def f(self) -> torch.Tensor:
        """One-way ANOVA F per unit, (U,).

        Raises:
            ValueError: fewer than 2 classes present, or no more images than classes.
        """
        present = self.n > 0
        k, total = int(present.sum()), float(self.n.sum())
        if k < 2:
            raise InputError(
                "screening needs calibration images of at least 2 classes; the calibration labels "
                f"hold {k} class, so the F statistic is undefined (use a larger or stratified calib split)"
            )
        if total <= k:
            raise InputError(f"screening needs more calibration images than classes; got {int(total)} images of {k} classes")
        n, s = self.n[present, None], self.s[present]
        explained = (s * s / n).sum(0)
        between = (explained - s.sum(0) ** 2 / total).clamp_min(0)
        within = (self.ss[present].sum(0) - explained).clamp_min(0)
        within = torch.maximum(within, 1e-12 * (between + within)).clamp_min(1e-300)  # see module docstring
        return (between / (k - 1)) / (within / (total - k))


def rank_mix(f: dict[str, torch.Tensor], mag: dict[str, torch.Tensor], w_f: float) -> dict[str, torch.Tensor]:
    """``w_f * rank(f) + (1 - w_f) * rank(mag)`` per tensor, ranks scaled to [0, 1] within each tensor."""
    return {n: (w_f * _ranks(f[n]) + (1 - w_f) * _ranks(mag[n])).float() for n in f}


def _ranks(t: torch.Tensor) -> torch.Tensor:
    """Average ranks of ``t``'s entries scaled to [0, 1] (ties share one), shaped like ``t``."""
    r = rankdata(t.detach().reshape(-1).double().numpy(), method="average") - 1
    return torch.from_numpy(r / max(t.numel() - 1, 1)).reshape(t.shape)
