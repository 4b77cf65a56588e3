"""Hyperflows (methods.md, 4): learned presence gates on digits; sparsity is an outcome of pressure."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.splits import DataConfig, load_data
from pipeline.models.digits import DigitsCNN
from pipeline.pruning.layers import prunable_weights
from pipeline.pruning.methods import PruneContext, get_method
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec
from pipeline.train import train_classifier

torch.set_num_threads(1)

# 300 + 50 steps at the default flow_lr 3e-3 (a presence moves <= 3e-3 a step from
# [0.2, 0.5], so the budget can reach zero).
STEPS, REGROWTH = 300, 50


@pytest.fixture(scope="session")
def trained():
    """A DigitsCNN trained for 300 steps, a context over the digits splits, and a copy of its state."""
    data = load_data(DataConfig())
    torch.manual_seed(0)
    model = train_classifier(DigitsCNN(width=16), data.train.x, data.train.y, steps=300, seed=0)
    ctx = PruneContext.from_splits(data)
    return model, ctx, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def plans(trained):
    """Pressure -> plan at the test budget (each plan trains once, shared by the tests)."""
    model, ctx, _ = trained
    return {gamma: _plan(model, ctx, gamma) for gamma in (1e-4, 0.003, 0.03, 0.3)}


def _plan(model, ctx, pressure: float, seed: int = 0, **spec) -> PrunePlan:
    knobs = {"pressure": pressure, "steps": STEPS, "regrowth_steps": REGROWTH}
    return get_method("hyperflows").plan(model, ctx, CandidateSpec(method="hyperflows", target_sparsity=None, knobs=knobs, seed=seed, **spec))


def _sparsity(plan: PrunePlan) -> float:
    return 1 - sum(int(m.sum()) for m in plan.masks.values()) / sum(m.numel() for m in plan.masks.values())


def test_masks_cover_prunable_weights_and_base_is_untouched(trained, plans):
    model, _, before = trained  # ``plans`` trained four copies; weights and BN statistics must not move
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not model.training
    weights = prunable_weights(model)
    for plan in plans.values():
        assert set(plan.masks) == set(weights)
        assert all(m.dtype == torch.bool and m.shape == weights[n].shape for n, m in plan.masks.items())


def test_sparsity_grows_with_pressure(plans):
    s = {gamma: _sparsity(p) for gamma, p in plans.items()}
    assert s[1e-4] < 0.01, s  # tiny pressure: nearly nothing is pruned
    assert s[1e-4] <= s[0.003] and s[0.003] + 0.05 < s[0.03] and s[0.03] + 0.3 < s[0.3], s


def test_plan_carries_the_trained_weights(trained, plans):
    model, _, before = trained
    weights = plans[0.3].weights
    assert set(weights) >= {"conv1.weight", "bn1.running_var", "fc.bias"}
    assert not torch.equal(weights["conv2.weight"], before["conv2.weight"])  # trained alongside the mask


def test_same_seed_same_masks(trained, plans):
    model, ctx, _ = trained
    again = _plan(model, ctx, 0.03).masks
    assert all(torch.equal(again[n], m) for n, m in plans[0.03].masks.items())


def test_stem_and_head_excluded_when_asked(trained):
    model, ctx, _ = trained
    spec = CandidateSpec(
        method="hyperflows",
        target_sparsity=None,
        prune_stem=False,
        prune_head=False,
        knobs={"pressure": 0.3, "steps": 50, "regrowth_steps": 0},
    )
    masks = get_method("hyperflows").plan(model, ctx, spec).masks
    assert set(masks) == {"conv2.weight", "conv3.weight"}
    assert all(m.all() for m in masks.values())  # 50 steps of lr 1e-3 cannot bring m from >= 0.2 below 0


def test_pressure_is_required(trained):
    model, ctx, _ = trained
    with pytest.raises(ValueError, match="pressure"):
        get_method("hyperflows").plan(model, ctx, CandidateSpec(method="hyperflows", target_sparsity=None))


# the controller: 300 + 50 steps, one controller period per 10 steps; flow_lr 0.01 lets a
# presence move 0.1 per period, so density answers within a few periods (methods.md, 4)
CONTROLLER = {"pressure_schedule": 1, "steps": 300, "regrowth_steps": 50, "flow_lr": 0.01, "controller_every": 10}


@pytest.fixture(scope="session")
def controlled(trained):
    model, ctx, _ = trained
    spec = CandidateSpec(method="hyperflows", target_sparsity=0.85, knobs=CONTROLLER)
    return get_method("hyperflows").plan(model, ctx, spec)


def test_controller_run_ends_at_its_target_sparsity(controlled):
    assert abs(_sparsity(controlled) - 0.85) <= 0.02, _sparsity(controlled)


def test_controller_trajectory_is_recorded_in_the_plan(controlled):
    d = PrunePlan.from_parquet(controlled.to_parquet()).diagnostics
    assert d["trajectory_step"] == [float(s) for s in range(10, 301, 10)]  # one row per controller period
    assert len(d["trajectory_gamma"]) == len(d["trajectory_density"]) == len(d["trajectory_expected"]) == 30
    assert d["trajectory_expected"][-1] == pytest.approx(d["target_pruning_density"], rel=1e-6)
    assert max(d["trajectory_gamma"]) > 0 and d["trajectory_density"][-1] == d["pruning_density"]
    assert all(a >= b for a, b in zip(d["trajectory_expected"], d["trajectory_expected"][1:]))


def test_controller_takes_a_target_and_constant_pressure_does_not():
    method = get_method("hyperflows")
    assert method.target_for({"pressure_schedule": 1}) == "sparsity" and method.target_for({"pressure": 0.1}) == "outcome"
    with pytest.raises(ValueError, match="target_sparsity"):
        method.check(CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure_schedule": 1}))
    with pytest.raises(ValueError, match="index of one of"):
        method.check(CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure": 0.1, "pressure_schedule": 2}))


def test_search_space_gives_the_controller_a_target_sparsity():
    from optuna.trial import FixedTrial

    from search.config import parse_config
    from search.study.space import suggest

    cfg = parse_config({"space": {"methods": ["hyperflows"], "sparsity": [0.8, 0.95], "knobs": {"hyperflows": {"pressure_schedule": [1, 1]}}}})
    spec = suggest(FixedTrial({"hyperflows.pressure": 0.01, "hyperflows.pressure_schedule": 1, "target_sparsity": 0.9}), cfg)
    assert spec.target_sparsity == 0.9 and get_method("hyperflows").choice(spec, "pressure_schedule") == "controller"
    constant = parse_config({"space": {"methods": ["hyperflows"]}})
    assert suggest(FixedTrial({"hyperflows.pressure": 0.01}), constant).target_sparsity is None


def test_paper_preset_counts_epochs_of_the_training_split():
    method = get_method("hyperflows")
    spec = CandidateSpec(
        method="hyperflows", target_sparsity=0.9, knobs={"pressure_schedule": 1, "preset": 1, "pruning_epochs": 3, "regrowth_epochs": 2}
    )
    sched = method.schedule(spec, train_size=640)
    assert (sched.steps, sched.regrowth_steps, sched.every, sched.flow_lr, sched.paper) == (30, 20, 10, 1e-3, True)
    assert method.training_steps(spec, train_size=640) == 50
    assert sched.weight_lr(0) == pytest.approx(0.1) and sched.weight_lr(29) > 0.1 / 30 and sched.weight_lr(30) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="size"):
        method.training_steps(spec)
