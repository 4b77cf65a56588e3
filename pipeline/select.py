"""Turning importance scores into masks: exact global or per-layer thresholds."""

from __future__ import annotations

import torch


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
    scores: dict[str, torch.Tensor], sparsity: float, ratios: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """Masks that remove ``sparsity * ratios[name]`` of each tensor separately.

    ``ratios`` (default 1 for every name) lets a per-stage allocation scale each
    layer's share; each layer's sparsity is clipped to [0, 1).
    """
    ratios = ratios or {}
    out = {}
    for name, s in scores.items():
        layer_sparsity = min(max(sparsity * ratios.get(name, 1.0), 0.0), 1.0 - 1.0 / s.numel())
        out[name] = _bottom_k_mask(s, int(round(layer_sparsity * s.numel())))
    return out
