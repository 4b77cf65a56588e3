"""``measure.pruned_fraction``: the sparsity metric counts zeroed and removed weights alike."""

from __future__ import annotations

import pytest
import torch

from pipeline.measure import pruned_fraction
from pipeline.models.digits import DigitsCNN
from pipeline.pruning import structure
from pipeline.pruning.layers import prunable_weights


def test_pruned_fraction_counts_zeroed_and_physically_removed_weights():
    base = DigitsCNN().eval()
    assert pruned_fraction(base, base) == 0.0
    weights = prunable_weights(base)
    total = sum(w.numel() for w in weights.values())
    zeroed = DigitsCNN()
    zeroed.load_state_dict(base.state_dict())
    name, w = next(iter(prunable_weights(zeroed).items()))
    with torch.no_grad():
        w.view(-1)[:10] = 0.0
    assert pruned_fraction(zeroed, base) == pytest.approx(10 / total)
    # without the stem the fraction is of the other layers' weights: zeros in the stem do not count
    assert pruned_fraction(zeroed, base, prune_stem=False) == 0.0
    graph = structure.channel_graph(base, torch.zeros(1, 1, 8, 8))
    group = graph.groups[0]
    small = structure.shrink(base, {group.name: torch.arange(group.size // 2)}, graph=graph)
    assert 0.0 < pruned_fraction(small, base) < 1.0  # removed channels count as pruned
