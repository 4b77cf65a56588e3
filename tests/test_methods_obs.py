"""The obs method: OBS masks and updates on planted layers, greedy OBS channel selection."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.build import apply_plan, plan_candidate
from pipeline.measure import macs
from pipeline.pruning import structure
from pipeline.pruning.methods import PruneContext
from pipeline.repair.lsq import LayerFit
from pipeline.spec import CandidateSpec


def _ctx(x: torch.Tensor) -> PruneContext:
    y = torch.zeros(len(x), dtype=torch.int64)
    return PruneContext(calib_x=x, calib_y=y, train_x=x, train_y=y, example_input=x[:1], num_classes=1)


def _planted_inputs(n: int = 512) -> torch.Tensor:
    """Features 0 and 1 nearly equal (either can stand in for the other), feature 2 independent."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, generator=g)
    return torch.stack([x0, x0 + 0.01 * torch.randn(n, generator=g), torch.randn(n, generator=g)], dim=1)


def _error(layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((layer(x) - y).square().sum() / y.square().sum())


def _lsq_refit(layer: nn.Module, mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """``layer`` masked, its kept weights refit by least squares (reconstruction's solver)."""
    fit = LayerFit(layer, None)
    fit.add(x, y)
    refit = nn.Linear(layer.in_features, layer.out_features, bias=False)
    fit.layer = refit
    fit.write(fit.solve(0.0, mask))
    return refit


def test_obs_removes_the_weight_whose_removal_costs_least_and_its_update_beats_magnitude_plus_refit():
    x = _planted_inputs()
    dense = nn.Sequential(nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        dense[0].weight.copy_(torch.tensor([[1.0, 0.8, 0.5]]))  # the smallest (0.5) is the costliest to lose
    y = dense(x).detach()
    spec = CandidateSpec(method="obs", target_sparsity=1 / 3, knobs={"damp": 1e-6})
    plan = plan_candidate(dense, _ctx(x), spec)
    mask = plan.masks["0.weight"]
    # the cheapest removal, by brute force over the three weights with least-squares refits
    costs = [_error(_lsq_refit(dense[0], torch.tensor([[j != q for j in range(3)]]), x, y), x, y) for q in range(3)]
    assert int((~mask).sum()) == 1 and int((~mask[0]).nonzero()) == min(range(3), key=costs.__getitem__)
    assert bool(mask[0, 2])  # not the smallest weight
    obs_error = _error(apply_plan(dense, plan)[0], x, y)
    magnitude = plan_candidate(dense, _ctx(x), spec.model_copy(update={"method": "magnitude", "knobs": {}}))
    assert not bool(magnitude.masks["0.weight"][0, 2])  # magnitude drops the smallest weight
    refit_error = _error(_lsq_refit(dense[0], magnitude.masks["0.weight"], x, y), x, y)
    assert obs_error < 0.01 * refit_error
    assert obs_error < 1e-3


def test_obs_update_lowers_a_conv_layer_s_output_error_below_magnitude_masking_plus_refit():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(256, 4, 6, 6, generator=g)
    x = torch.cat([base, base[:, :2] + 0.05 * torch.randn(256, 2, 6, 6, generator=g)], dim=1)  # channels 4, 5 echo 0, 1
    dense = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, bias=False))
    y = dense(x).detach()
    spec = CandidateSpec(method="obs", target_sparsity=0.5)
    plan = plan_candidate(dense, _ctx(x), spec)
    obs = apply_plan(dense, plan)[0]
    assert int((~plan.masks["0.weight"]).sum()) == dense[0].weight.numel() // 2
    mag = plan_candidate(dense, _ctx(x), spec.model_copy(update={"method": "magnitude"})).masks["0.weight"]
    fit = LayerFit(dense[0], None)
    fit.add(x, y)
    refit = nn.Conv2d(6, 8, 3, padding=1, bias=False)
    fit.layer = refit
    fit.write(fit.solve(0.0, mag))
    assert _error(obs, x, y) < _error(refit, x, y)


def test_sequential_obs_meets_the_layer_counts_and_keeps_zeros_exact(digits_model, ctx, digits):
    spec = CandidateSpec(method="obs", target_sparsity=0.8, knobs={"sequential": 1, "images": 64})
    plan = plan_candidate(digits_model, ctx, spec)
    magnitude = plan_candidate(digits_model, ctx, spec.model_copy(update={"method": "magnitude", "knobs": {}}))
    for name, mask in plan.masks.items():  # the layer split is global magnitude's
        assert int((~mask).sum()) == int((~magnitude.masks[name]).sum())
        assert float(plan.weights[name][~mask].abs().max()) == 0.0
    model = apply_plan(digits_model, plan)
    assert torch.isfinite(model(digits.val.x[:8])).all()


class _Branchy(nn.Module):
    """stem -> conv1 (4 channels, a block-internal group) -> conv2; channel 3 of conv1
    repeats channel 0 (planted), the residual stream (stem + conv2) is not prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        s = self.stem(x)
        s = s + self.conv2(torch.relu(self.bn1(self.conv1(s))))
        return self.fc(s.mean((2, 3)))


def test_channel_obs_keeps_groups_meets_the_macs_target_and_removes_the_cheapest_channel():
    torch.manual_seed(0)
    model = _Branchy().eval()
    with torch.no_grad():
        model.conv1.weight[0] *= 10.0  # the largest filter: magnitude keeps it
        model.conv1.weight[3] = model.conv1.weight[0]  # channel 3 duplicates channel 0 ...
        model.conv2.weight[:, 3] *= 4.0  # ... with the largest weights downstream: not the smallest
    x = torch.randn(128, 2, 6, 6)
    ctx = _ctx(x)
    graph = structure.cached_graph(model, ctx, True, True)
    assert [g.name for g in graph.groups] == ["conv1"]  # stem and conv2 feed the residual add
    # the MACs of one conv1 channel: removing one meets this target, removing none does not
    target = (graph.dense_macs - (graph.dense_macs - graph.macs({"conv1": 3})) / 2) / graph.dense_macs
    spec = CandidateSpec(method="obs", granularity="channel", target_macs_ratio=target, knobs={"damp": 1e-6})
    plan = plan_candidate(model, ctx, spec)
    assert set(plan.channels) == {"conv1"}
    pruned = apply_plan(model, plan)
    dense_macs, _ = macs(model, x[:1])
    _, eff = macs(pruned, x[:1])
    assert eff <= target * dense_macs and len(plan.channels["conv1"]) == 3
    removed = sorted(set(range(4)) - set(plan.channels["conv1"].tolist()))
    assert removed in ([0], [3])  # either copy goes, the other takes over its weights
    with torch.no_grad():
        assert float((pruned(x) - model(x)).abs().max()) < 1e-3 * float(model(x).abs().max())
    magnitude = plan_candidate(model, ctx, spec.model_copy(update={"method": "magnitude", "knobs": {}}))
    assert sorted(set(range(4)) - set(magnitude.channels["conv1"].tolist())) not in ([0], [3])


def test_channel_obs_respects_every_group_of_a_residual_network(digits_model, ctx):
    spec = CandidateSpec(method="obs", granularity="channel", target_macs_ratio=0.6, knobs={"images": 64}, scope="layerwise")
    plan = plan_candidate(digits_model, ctx, spec)
    graph = structure.cached_graph(digits_model, ctx, True, True)
    assert set(plan.channels) <= set(graph.sizes)
    model = apply_plan(digits_model, plan, graph)
    dense, _ = macs(digits_model, ctx.example_input)
    _, eff = macs(model, ctx.example_input)
    assert eff <= 0.6 * dense


def test_split_by_obs_cost_meets_the_target_with_its_own_layer_sparsities(digits_model, ctx):
    spec = CandidateSpec(method="obs", target_sparsity=0.8, knobs={"split": 1, "images": 64})
    plan = plan_candidate(digits_model, ctx, spec)
    magnitude = plan_candidate(digits_model, ctx, CandidateSpec(method="magnitude", target_sparsity=0.8))
    removed = {n: int((~m).sum()) for n, m in plan.masks.items()}
    total = sum(m.numel() for m in plan.masks.values())
    assert sum(removed.values()) == round(0.8 * total)
    assert removed != {n: int((~m).sum()) for n, m in magnitude.masks.items()}
