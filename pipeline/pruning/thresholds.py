"""Turning importance scores into masks: exact global or per-layer thresholds."""

from __future__ import annotations

import torch

from pipeline.pruning.bisection import smallest_passing


def _bottom_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of ``scores``' shape with the ``k`` lowest entries False.

    Ties are broken by position (stable sort), so exactly ``k`` entries are removed.
    """
    flat = scores.detach().reshape(-1).float()
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = False
    return keep.reshape(scores.shape)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Masks that remove the ``sparsity`` fraction of all weights with the lowest score.

    Args:
        scores: parameter name -> importance tensor of the parameter's shape.
        sparsity: fraction in [0, 1) of the weights (all tensors together) to remove.

    Returns:
        Parameter name -> bool mask (True = kept). Exactly ``round(sparsity * N)``
        weights are removed, N the total number of scored weights.
    """
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    flat = torch.cat([scores[n].detach().reshape(-1).float() for n in names])
    keep = _bottom_k_mask(flat, int(round(sparsity * flat.numel())))
    out, start = {}, 0
    for n, size in zip(names, sizes):
        out[n] = keep[start : start + size].reshape(scores[n].shape)
        start += size
    return out


def layerwise_masks(
    scores: dict[str, torch.Tensor],
    sparsity: float,
    ratios: dict[str, float] | None = None,
    base: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks that prune each tensor separately, ``sparsity`` of all weights in total.

    Without ``ratios`` and ``base`` every tensor loses the fraction ``sparsity``. With
    them, tensor ``name`` loses ``c * ratios[name] * base[name]`` (defaults 1), clipped
    to [0, 1) per tensor, and the common factor ``c`` is found by bisection so that the
    total removed is ``round(sparsity * N)`` up to per-tensor rounding (N: all scored
    weights). ``base`` is a prior per-tensor fraction, e.g. a global ranking's.
    """
    if not ratios and not base:
        return {n: _bottom_k_mask(s, _count(sparsity, s.numel())) for n, s in scores.items()}
    share = {n: max((ratios or {}).get(n, 1.0), 0.0) * (base or {}).get(n, 1.0) for n in scores}
    want = round(sparsity * sum(s.numel() for s in scores.values()))

    def counts(c: float) -> dict[str, int]:
        return {n: _count(c * share[n], s.numel()) for n, s in scores.items()}

    hi = max((1.0 / v for v in share.values() if v > 0), default=0.0)  # every tensor at its cap
    c = smallest_passing(lambda c: sum(counts(c).values()) >= want, 0.0, hi, steps=60)
    c = hi if c is None else c  # the target is out of reach: every tensor at its cap
    return {n: _bottom_k_mask(scores[n], k) for n, k in counts(c).items()}


def _count(fraction: float, numel: int) -> int:
    """Weights to remove for ``fraction`` of ``numel``; at least one always stays."""
    return int(round(min(max(fraction, 0.0), 1.0 - 1.0 / numel) * numel))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """N:M mask of one weight: in each output row (``scores.reshape(out, -1)``, the row of
    the im2col matmul) every M consecutive entries keep their N highest scores (ties: the
    lower position is kept). None when the row length is not a multiple of M: such a
    layer (e.g. a stem conv with 3 * 3 * 3 inputs) has no N:M form and stays dense."""
    rows = scores.detach().reshape(scores.shape[0], -1).float()
    if rows.shape[1] % m:
        return None
    blocks = rows.reshape(rows.shape[0], -1, m)
    # stable descending sort: the N first of each block are kept
    order = torch.sort(blocks, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    return keep.reshape(scores.shape)


def nm_masks(scores: dict[str, torch.Tensor], n: int, m: int) -> dict[str, torch.Tensor]:
    """``nm_mask`` of every scored tensor; tensors without an N:M form are left out (dense)."""
    out = {}
    for name, s in scores.items():
        mask = nm_mask(s, n, m)
        if mask is not None:
            out[name] = mask
    return out
