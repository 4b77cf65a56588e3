"""From a spec to a pruned network: the one code path shared by search and export."""

from __future__ import annotations

import copy

from torch import nn

from pipeline.methods import PruneContext, get_method
from pipeline.plan import PrunePlan, apply_masks
from pipeline.spec import CandidateSpec


def plan_candidate(base: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> PrunePlan:
    """Ask ``spec.method`` what to prune. Raises ``ValueError`` for an unsupported spec."""
    method = get_method(spec.method)
    method.check(spec)
    return method.plan(base, ctx, spec)


def apply_plan(base: nn.Module, plan: PrunePlan) -> nn.Module:
    """A pruned copy of ``base``: channels physically removed first, then weights masked.

    ``base`` is never modified.
    """
    if plan.channels:
        from pipeline.structure import shrink

        model = shrink(base, plan.channels)
    else:
        model = copy.deepcopy(base)
    apply_masks(model, plan.masks)
    return model
