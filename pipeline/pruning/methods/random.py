"""Random pruning: the control every method must beat."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.pruning.methods.base import ImportanceMethod, PruneContext, weights_of
from pipeline.pruning.methods.registry import register_method
from pipeline.spec import CandidateSpec


@register_method("random")
class Random(ImportanceMethod):
    """Uniform random scores, seeded by the candidate's ``seed``."""

    seeded = True

    def weight_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(spec.seed)
        return {n: torch.rand(w.shape, generator=g) for n, w in weights_of(model, spec).items()}

    def channel_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec, groups: list) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(spec.seed)
        return {grp.name: torch.rand(grp.size, generator=g) for grp in groups}
