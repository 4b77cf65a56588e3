"""Magnitude pruning: the baseline every method is compared with (docs/methods.md, 2)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.pruning.methods.base import ImportanceMethod, Knob, PruneContext, weights_of
from pipeline.pruning.methods.registry import register_method
from pipeline.spec import CandidateSpec


@register_method("magnitude")
class Magnitude(ImportanceMethod):
    """|w| per weight (unstructured and N:M); the Lp norm of its filter per output channel
    (``norm`` knob: 1 or 2)."""

    granularities = ("unstructured", "channel", "nm")

    knobs = {"norm": Knob(1, 2, integer=True, default=1, limits=(1, 2))}
    score_knobs = ("norm",)

    def weight_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> dict[str, torch.Tensor]:
        return {n: w.detach().abs().clone() for n, w in weights_of(model, spec).items()}

    def channel_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec, groups: list) -> dict[str, torch.Tensor]:
        p = int(self.knob(spec, "norm"))
        modules = dict(model.named_modules())
        return {g.name: filter_norms(modules[g.name].weight, p) for g in groups}


def filter_norms(weight: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Lp norm of each output channel's filter: (out, ...) -> (out,)."""
    return weight.detach().reshape(weight.shape[0], -1).norm(p=p, dim=1)
