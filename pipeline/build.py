"""From a spec to a pruned network: the one code path shared by search and export."""

from __future__ import annotations

import copy

from torch import nn

from pipeline.pruning.methods import PruneContext, get_method
from pipeline.pruning.plan import PrunePlan, apply_masks
from pipeline.pruning.structure import ChannelGraph, shrink
from pipeline.spec import CandidateSpec


def plan_candidate(base: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> PrunePlan:
    """Ask ``spec.method`` what to prune. Raises ``ValueError`` for an unsupported spec."""
    method = get_method(spec.method)
    method.check(spec)
    return method.plan(base, ctx, spec)


def apply_plan(base: nn.Module, plan: PrunePlan, graph: ChannelGraph | None = None) -> nn.Module:
    """A pruned copy of ``base``: trained weights loaded, channels physically removed,
    weights masked, then reconstructed weights (``plan.refit``) loaded. ``base`` is never
    modified. ``graph``: ``base``'s channel graph (``structure.cached_graph``), so
    channels are cut without tracing ``base`` again.
    """
    if plan.weights:
        base = copy.deepcopy(base)
        state = base.state_dict()
        unknown = set(plan.weights) - set(state)
        if unknown:
            raise KeyError(f"plan carries weights for {sorted(unknown)[:5]}, which the model does not have")
        base.load_state_dict({k: plan.weights.get(k, v).to(v.device, v.dtype) for k, v in state.items()})
    if plan.channels:
        model = shrink(base, plan.channels, graph=graph)
    else:
        model = copy.deepcopy(base)
    apply_masks(model, plan.masks)
    if plan.refit:
        load_refit(model, plan.refit)
        apply_masks(model, plan.masks)  # refit weights are zero where masked; keep that exact
    return model


def load_refit(model: nn.Module, refit: dict) -> None:
    """Load reconstructed state-dict entries into the pruned ``model`` in place."""
    state = model.state_dict()
    for k, v in refit.items():
        if k not in state or tuple(state[k].shape) != tuple(v.shape):
            got = tuple(state[k].shape) if k in state else "nothing"
            raise KeyError(f"plan refits {k!r} with shape {tuple(v.shape)}, the pruned model has {got}")
        state[k].copy_(v.to(state[k].device, state[k].dtype))
