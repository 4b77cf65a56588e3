"""Channel selection: which output channels each group keeps to meet a MACs budget.

Groups and the MACs model come from ``pipeline.pruning.structure.graph.channel_graph``; the
result feeds ``pipeline.pruning.structure.surgery.shrink``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.errors import InputError
from pipeline.pruning.bisection import smallest_passing
from pipeline.pruning.structure.graph import ChannelGraph

__all__ = ["lowest_macs_ratio", "select_channels"]


def select_channels(
    graph: ChannelGraph,
    scores: dict[str, torch.Tensor],
    target_macs_ratio: float,
    scope: str = "global",
    ratios: dict[str, float] | None = None,
    max_prune_fraction: float = 0.75,
    normalize: bool = True,
    group_ratios: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Channels to keep so that MACs <= ``target_macs_ratio * graph.dense_macs``.

    Args:
        graph: from ``channel_graph``.
        scores: group name -> (size,) importance, higher = keep. Groups without scores
            keep all their channels.
        target_macs_ratio: MACs of the pruned model / dense MACs, in (0, 1].
        scope: 'global' ranks all channels together, each group's scores divided by
            the group's mean absolute score (so layers with large raw scores do not
            dominate, while within-group order is unchanged); removes the lowest until
            the target is met (exact to one channel). 'layerwise': every group removes
            the same fraction f, found by bisection.
        ratios: stage -> multiplier on the removed fraction (per-stage allocation).
            When non-empty, group g loses the fraction ``f * ratio * base_g``, where
            ``base_g`` is what ``scope`` alone removes from g (global: the global
            ranking's fraction at the target; layerwise: 1), and the common factor f
            is found by bisection so that the target is met.
        max_prune_fraction: no group loses more than this fraction; one channel always stays.
        normalize: in global scope, divide each group's scores by their mean. Turn it
            off for scores already comparable across groups (OCS saliency, which is
            cost-scaled on purpose): normalising would cancel that cross-group signal.
        group_ratios: group name -> multiplier on the removed fraction, applied on top
            of ``ratios`` (a per-layer allocation, e.g. EagleEye's random directions).
            Groups not named get 1.0.

    Returns:
        Group name -> sorted int64 indices of the kept output channels.

    Raises:
        ValueError: bad arguments, or the target is below the lowest reachable ratio.
    """
    if scope not in ("global", "layerwise"):
        raise InputError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if not 0.0 < target_macs_ratio <= 1.0:
        raise InputError(f"target_macs_ratio must be in (0, 1], got {target_macs_ratio}")
    if not 0.0 <= max_prune_fraction < 1.0:
        raise InputError(f"max_prune_fraction must be in [0, 1), got {max_prune_fraction}")
    sizes = _checked_sizes(graph, scores)
    unknown = sorted(set(group_ratios or {}) - set(sizes))
    if unknown:
        raise InputError(f"group_ratios names {unknown}, which are not scored channel groups; groups: {list(sizes)}")
    caps = _caps(sizes, max_prune_fraction)
    budget = target_macs_ratio * graph.dense_macs

    def macs_of(removed: dict[str, int]) -> int:
        return graph.macs({g: sizes[g] - r for g, r in removed.items()})

    stage = {g.name: g.stage for g in graph.groups}
    mult = {g: max((ratios or {}).get(stage[g], 1.0) * (group_ratios or {}).get(g, 1.0), 0.0) for g in sizes}
    if scope == "layerwise":
        removed = _layerwise_removal(sizes, caps, mult, macs_of, budget)
    else:
        removed = _global_removal(scores, sizes, caps, macs_of, budget, normalize)
        if (ratios or group_ratios) and removed is not None:  # the global split, reshaped per stage / group
            base = {g: mult[g] * removed[g] / sizes[g] for g in sizes}
            removed = _layerwise_removal(sizes, caps, base, macs_of, budget)
    if removed is None:
        # a stage with multiplier 0 never prunes, so it is not in the lowest reachable point
        lowest = macs_of({g: caps[g] if mult[g] > 0 else 0 for g in sizes}) / graph.dense_macs
        raise InputError(
            f"target_macs_ratio {target_macs_ratio} cannot be met: removing at most {max_prune_fraction:.0%} "
            f"of each group's channels, the lowest MACs ratio reachable is {lowest:.4f}"
        )
    return {g: _keep_highest(scores[g], sizes[g] - removed[g]) for g in sizes}


def lowest_macs_ratio(graph: ChannelGraph, max_prune_fraction: float = 0.75) -> float:
    """Lowest MACs ratio (pruned / dense MACs of one image) that ``select_channels`` can
    reach when every group loses at most ``max_prune_fraction`` of its channels."""
    if not 0.0 <= max_prune_fraction < 1.0:
        raise InputError(f"max_prune_fraction must be in [0, 1), got {max_prune_fraction}")
    sizes = graph.sizes
    caps = _caps(sizes, max_prune_fraction)
    return graph.macs({g: sizes[g] - caps[g] for g in sizes}) / graph.dense_macs


def _caps(sizes: dict[str, int], max_prune_fraction: float) -> dict[str, int]:
    """Most channels each group may lose: the fraction, rounded down, and one always stays."""
    return {g: min(int(max_prune_fraction * n + 1e-9), n - 1) for g, n in sizes.items()}


def _checked_sizes(graph: ChannelGraph, scores: dict[str, torch.Tensor]) -> dict[str, int]:
    sizes = graph.sizes
    for name, s in scores.items():
        if name not in sizes:
            raise InputError(f"scores name {name!r}, which is not a channel group; groups: {list(sizes)}")
        if tuple(s.shape) != (sizes[name],) or not torch.isfinite(s).all():
            raise InputError(f"scores[{name!r}] must be finite with shape ({sizes[name]},), got {tuple(s.shape)}")
    if not scores:
        raise InputError(f"scores is empty; score at least one of the groups {list(sizes)}")
    return {n: sizes[n] for n in sizes if n in scores}


MacsOf = Callable[[dict[str, int]], int]  # removed channels per group -> MACs of one image


def _global_removal(
    scores: dict[str, torch.Tensor],
    sizes: dict[str, int],
    caps: dict[str, int],
    macs_of: MacsOf,
    budget: float,
    normalize: bool = True,
) -> dict[str, int] | None:
    """Removed count per group for the smallest prefix of the global order meeting ``budget``."""
    names = list(sizes)
    normed = [scores[n].detach().float() / (scores[n].detach().float().abs().mean().clamp_min(1e-12) if normalize else 1.0) for n in names]
    owner = torch.cat([torch.full((sizes[n],), i) for i, n in enumerate(names)])
    owner = owner[torch.sort(torch.cat(normed), stable=True).indices]
    cap = torch.tensor([caps[n] for n in names])

    def removed(k: int) -> dict[str, int]:
        counts = torch.minimum(torch.bincount(owner[:k], minlength=len(names)), cap)
        return dict(zip(names, counts.tolist()))

    k = smallest_passing(lambda k: macs_of(removed(k)) <= budget, -1, owner.numel())
    return None if k is None else removed(k)


def _layerwise_removal(sizes: dict[str, int], caps: dict[str, int], mult: dict[str, float], macs_of: MacsOf, budget: float) -> dict[str, int] | None:
    """Removed counts for the smallest common fraction f (times ``mult``) meeting ``budget``."""

    def removed(f: float) -> dict[str, int]:
        return {g: min(int(round(f * mult[g] * n)), caps[g]) for g, n in sizes.items()}

    if macs_of(removed(0.0)) <= budget:
        return removed(0.0)
    hi = max((1.0 / m for m in mult.values() if m > 0), default=0.0)  # every group at its cap
    f = smallest_passing(lambda f: macs_of(removed(f)) <= budget, 0.0, hi, steps=50)
    return None if f is None else removed(f)


def _keep_highest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted int64 indices of the ``k`` highest scores (ties: the lower index is removed first)."""
    order = torch.sort(scores.detach().float(), stable=True).indices
    return torch.sort(order[scores.numel() - k :]).values.to(torch.int64)
