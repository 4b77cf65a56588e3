"""Screening (methods.md, 3): ANOVA F scores, rank mix with magnitude, plans on digits."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import f_oneway, rankdata
from torch import nn

from pipeline.data.splits import DataConfig, load_data
from pipeline.models.digits import DigitsCNN
from pipeline.pruning.layers import prunable_weights
from pipeline.pruning.methods import PruneContext, get_method
from pipeline.pruning.methods.screening import anova_f
from pipeline.pruning.structure import ChannelGroup
from pipeline.spec import CandidateSpec
from pipeline.train import train_classifier

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained():
    """A DigitsCNN trained for 300 steps and a fresh-cache context over the digits splits."""
    data = load_data(DataConfig())
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(width=16), data.train.x, data.train.y, steps=300, seed=0)
    return model, data


def _ctx(data, calib_y: torch.Tensor | None = None) -> PruneContext:
    ctx = PruneContext.from_splits(data)
    return ctx if calib_y is None else dataclasses.replace(ctx, calib_y=calib_y)


def test_anova_f_matches_scipy_and_handles_degenerate_units():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 4
    x = torch.randn(300, 4, generator=g) + y[:, None] * torch.tensor([0.0, 0.1, 0.5, 2.0])
    expected = f_oneway(*[x[y == k].double().numpy() for k in range(4)]).statistic
    np.testing.assert_allclose(anova_f(x, y).numpy(), expected, rtol=1e-9)
    # a constant unit separates nothing (F = 0, not NaN); a noise-free separator is large but finite
    f = anova_f(torch.stack([torch.full((300,), 3.3), 0.7 * y.double()], 1), y)
    assert f[0] == 0
    assert torch.isfinite(f[1]) and f[1] > 1e10


class _Planted(nn.Module):
    """conv(1->6, 3x3, no padding)-BN-ReLU-GAP-linear with hand-set filters (see the test)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_planted_class_channel_ranks_first_and_weight_one_follows_f():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 4
    x = torch.randn(400, 1, 8, 8, generator=g) + y[:, None, None, None].float()  # class = brightness
    model = _Planted().eval()
    with torch.no_grad():
        w = torch.randn(6, 1, 3, 3, generator=g)
        w = w - w.mean((1, 2, 3), keepdim=True)  # zero-sum filters: blind to brightness, see noise only
        w[0] = 1.2  # the planted channel: a box filter, its mean output is the class brightness
        w[1] *= 10  # largest filter, but BN gain 0 makes its output constant (F = 0)
        model.conv.weight.copy_(w)
        model.bn.weight[1] = 0.0
    l1 = model.conv.weight.detach().abs().sum((1, 2, 3))
    assert rankdata(l1)[0] == 5  # second-largest magnitude: magnitude alone would not put it first
    ctx = PruneContext(calib_x=x, calib_y=y, train_x=x, train_y=y, example_input=x[:1], num_classes=4)
    method = get_method("screening")
    groups = [ChannelGroup("conv", 6, "bn", ("fc",), "conv")]

    def scores(weight: float, grps: list = groups) -> torch.Tensor:
        spec = CandidateSpec(method="screening", granularity="channel", knobs={"screening_weight": weight})
        return method.channel_scores(model, ctx, spec, grps)["conv"]

    assert scores(0.5).argmax() == 0
    with torch.no_grad():  # F of the spatially averaged BN output, computed independently
        act = model.bn(model.conv(x)).mean((2, 3))
    f_ref = np.nan_to_num(f_oneway(*[act[y == k].double().numpy() for k in range(4)]).statistic)  # constant unit: NaN -> 0
    np.testing.assert_array_equal(rankdata(scores(1.0)), rankdata(f_ref))
    np.testing.assert_array_equal(rankdata(scores(0.0)), rankdata(l1))
    # without a BatchNorm the conv output itself is scored; the planted channel still leads
    assert scores(1.0, [ChannelGroup("conv", 6, None, ("fc",), "conv")]).argmax() == 0


def test_unstructured_plan_hits_target_and_reuses_cached_scores(trained):
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx, method = _ctx(data), get_method("screening")
    total = sum(w.numel() for w in prunable_weights(model).values())

    def removed(sparsity: float, weight: float = 0.5) -> int:
        spec = CandidateSpec(method="screening", target_sparsity=sparsity, knobs={"screening_weight": weight})
        return sum(int((~m).sum()) for m in method.plan(model, ctx, spec).masks.values())

    assert abs(removed(0.5) - 0.5 * total) <= 1
    keys, cached = set(ctx.cache), dict(ctx.cache)
    assert len(keys) == 2  # the F statistics (one calibration pass) and the mixed scores
    assert abs(removed(0.8) - 0.8 * total) <= 1
    assert set(ctx.cache) == keys and all(ctx.cache[k] is cached[k] for k in keys)  # nothing recomputed
    removed(0.8, weight=1.0)  # another mix: new scores, same F statistics
    assert len(ctx.cache) == 3 and all(ctx.cache[k] is cached[k] for k in keys)
    scores = next(v for k, v in ctx.cache.items() if k not in keys)
    assert (scores["fc.weight"] == scores["fc.weight"][:1]).all()  # weight 1: a weight's score is its input's F
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training


def test_weight_zero_is_global_magnitude(trained):
    model, data = trained
    ctx = _ctx(data)
    spec = CandidateSpec(method="screening", target_sparsity=0.8, knobs={"screening_weight": 0.0})
    mine = get_method("screening").plan(model, ctx, spec).masks
    magnitude = get_method("magnitude").plan(model, ctx, CandidateSpec(target_sparsity=0.8)).masks
    assert all(torch.equal(mine[n], magnitude[n]) for n in magnitude)


def test_channel_plan_on_digits(trained):
    model, data = trained
    spec = CandidateSpec(method="screening", granularity="channel", target_sparsity=None, target_macs_ratio=0.5)
    plan = get_method("screening").plan(model, _ctx(data), spec)
    assert plan.channels and all(0 < len(k) for k in plan.channels.values())
    assert sum(len(k) for k in plan.channels.values()) < sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    # the network the plan leaves has the MACs asked for, by an independent count
    from pipeline.pruning.structure import shrink

    from macs_count import count_macs

    example = data.val.x[:1]
    dense, _ = count_macs(model, example)
    small, _ = count_macs(shrink(copy.deepcopy(model), plan.channels), example)
    assert 0.40 <= small / dense <= 0.5 + 1e-9, small / dense


def test_single_class_calibration_set_is_refused(trained):
    model, data = trained
    ctx = _ctx(data, calib_y=torch.zeros_like(data.calib.y))
    with pytest.raises(ValueError, match="screening needs calibration images of at least 2 classes; "):
        get_method("screening").plan(model, ctx, CandidateSpec(method="screening", target_sparsity=0.5))
