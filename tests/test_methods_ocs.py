"""OCSPruner (pipeline.pruning.methods.ocs): the stability test, the MACs target, masking, the penalty."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pipeline import measure
from pipeline.build import apply_plan
from pipeline.pruning import structure
from pipeline.pruning.methods import PruneContext, get_method
from pipeline.pruning.methods.ocs import is_stable, stability, train_ocs
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec

A = {"conv1": {0, 1, 2, 3}, "conv2": {0, 1, 2, 3, 4, 5}}
B = {"conv1": {0, 1, 2, 4}, "conv2": {0, 1, 2, 3, 4, 5}}  # conv1: one channel swapped


def _spec(seed: int = 0, **knobs: float) -> CandidateSpec:
    knobs = {"epochs": 4, "steps_per_epoch": 5, **knobs}  # tiny budget: 20 steps
    return CandidateSpec(method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=0.5, knobs=knobs, seed=seed)


@pytest.fixture(scope="module")
def octx(digits):
    torch.set_num_threads(1)
    return PruneContext.from_splits(digits)


OUTCOME_KNOBS = {"epochs": 6, "stability": 0.9}  # fires at epoch 4, then 2 epochs of masked training


@pytest.fixture(scope="module")
def outcome(digits_model, octx):
    return train_ocs(digits_model, octx, _spec(**OUTCOME_KNOBS))


def test_stability_fires_on_a_stable_sequence():
    history = [B, B, A, A, A, A, A]  # changes older than lag + window epochs do not count
    assert stability(history) == 1.0 and is_stable(history)


def test_stability_does_not_fire_on_an_unstable_sequence():
    history = [A, A, A, B, A, A]  # B at t=3 differs from t=1 and from t=5
    j = (1.0 + 3 / 5) / 2  # group mean of conv2 (same) and conv1 (|{0,1,2}| / |{0,..,4}|)
    assert stability(history) == pytest.approx((j + 1.0 + j) / 3)
    assert not is_stable(history)
    assert not is_stable(history, threshold=0.9) and is_stable(history, threshold=0.85)


def test_stability_needs_lag_plus_window_epochs():
    assert math.isnan(stability([A] * 4)) and not is_stable([A] * 4)
    assert stability([A] * 5) == 1.0


def test_plan_meets_macs_target_runs_and_keeps_shapes(digits_model, octx, outcome):
    plan = get_method("ocs").plan(digits_model, octx, _spec(**OUTCOME_KNOBS))
    assert {k: v.tolist() for k, v in plan.channels.items()} == {k: v.tolist() for k, v in outcome.plan.channels.items()}
    model = apply_plan(digits_model, plan)
    dense, _ = measure.macs(digits_model, octx.example_input)
    pruned, _ = measure.macs(model, octx.example_input)
    assert pruned <= 0.5 * dense  # select_channels never exceeds the budget
    assert pruned == pytest.approx(0.5 * dense, rel=0.02)
    structure.check_forward(model, octx.example_input, (1, 10))
    assert model(octx.calib_x[:3]).shape == (3, 10)
    # the plan records how the cycle went, and plan.parquet keeps it
    back = PrunePlan.from_parquet(plan.to_parquet()).diagnostics
    assert back["stable_epoch"] == outcome.stable_epoch == 4 and back["stabilized"] == 1.0
    assert len(back["stability_history"]) == 4 and back["stability_history"][-1] == pytest.approx(outcome.stability_history[-1])
    assert back["removed_norm_history"] == pytest.approx(outcome.removed_norm_history)


def test_base_model_is_untouched(digits_model, octx):
    before = copy.deepcopy(digits_model.state_dict())
    train_ocs(digits_model, octx, _spec())
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_same_seed_gives_same_plan(digits_model, octx, outcome):
    again = train_ocs(digits_model, octx, _spec(**OUTCOME_KNOBS))
    assert again.stable_epoch == outcome.stable_epoch
    for name, kept in outcome.plan.channels.items():
        assert torch.equal(again.plan.channels[name], kept), name
    for k, v in outcome.state_dict.items():
        assert torch.equal(again.state_dict[k], v), k


def test_trained_weights_are_masked_like_the_shrunk_network(digits_model, octx, outcome):
    assert outcome.stable_epoch == 4 and len(outcome.stability_history) == 4  # search stops when stable
    trained = copy.deepcopy(digits_model)
    trained.load_state_dict(outcome.state_dict)  # dense shapes, removed channels zeroed
    small = structure.shrink(trained, outcome.plan.channels)
    x = octx.calib_x[:32]
    with torch.no_grad():
        torch.testing.assert_close(trained.eval()(x), small.eval()(x), rtol=1e-5, atol=1e-5)
    kept = outcome.plan.channels["conv2"]
    removed = torch.ones(64, dtype=torch.bool)
    removed[kept] = False
    assert outcome.state_dict["conv2.weight"][removed].abs().sum() == 0
    assert outcome.state_dict["conv3.weight"][:, removed].abs().sum() == 0


def test_group_lasso_shrinks_channels_marked_for_removal(digits_model, octx):
    # epoch 1 penalises the same channels in every run (those removed from the base weights)
    norms = [train_ocs(digits_model, octx, _spec(reg=r, steps_per_epoch=10)).removed_norm_history[0] for r in (0.0, 1e-3, 1e-2)]
    assert norms[0] > norms[1] > norms[2]
    assert norms[0] - norms[2] > 0.1  # about lr * steps * sum of lambda over channels


def test_never_stable_prunes_at_the_last_epoch(digits_model, octx):
    never = train_ocs(digits_model, octx, _spec(reg=0.0, stability=1.0, macs_cost=1))  # the flat authors' factor: selections keep moving
    assert never.stable_epoch is None and len(never.stability_history) == 4
    assert never.diagnostics(4)["stable_epoch"] == 4.0 and never.diagnostics(4)["stabilized"] == 0.0  # fixed at the last epoch
    assert math.isnan(never.stability_history[0]) and never.stability_history[-1] < 1.0
    removed = torch.ones(32, dtype=torch.bool)
    removed[never.plan.channels["conv1"]] = False
    assert removed.any() and never.state_dict["bn1.weight"][removed].abs().sum() == 0


def test_rejects_specs_it_cannot_honour(digits_model, octx):
    method = get_method("ocs")
    with pytest.raises(ValueError, match="scope"):
        method.check(_spec().model_copy(update={"scope": "layerwise"}))
    with pytest.raises(ValueError, match="target_macs_ratio"):
        method.check(_spec().model_copy(update={"target_macs_ratio": None}))
    with pytest.raises(ValueError, match="granularity"):
        method.check(_spec().model_copy(update={"granularity": "unstructured"}))


def test_one_cycle_prunes_at_the_first_epoch_whose_stability_reaches_the_threshold(digits_model, octx):
    planted = [math.nan, 0.5, 0.9989, 0.9995, 1.0]  # the threshold 0.999 is first reached at epoch 4
    calls: list[int] = []

    def planted_stability(history):
        calls.append(len(history) - 1)  # the epoch whose selection was just added
        return planted[len(history) - 2]

    spec = _spec(mode=1, epochs=5, stability=0.999)
    steps = []
    octx.on_step = lambda done, total: steps.append((done, total))
    try:
        out = train_ocs(digits_model, octx, spec, stability_of=planted_stability)
    finally:
        octx.on_step = None
    per_epoch = len(octx.train_x) // 64  # one_cycle: an epoch is a pass over the training split
    assert steps[-1] == (5 * per_epoch, 5 * per_epoch) and get_method("ocs").training_steps(spec, len(octx.train_x)) == 5 * per_epoch
    assert out.stable_epoch == 4 and calls == [1, 2, 3, 4]  # no search after the stable epoch
    assert out.stability_history[1:] == planted[1:4] and math.isnan(out.stability_history[0])
    removed = torch.ones(32, dtype=torch.bool)
    removed[out.plan.channels["conv1"]] = False
    assert removed.any() and out.state_dict["conv1.weight"][removed].abs().sum() == 0  # pruned at epoch 4 and kept so


def test_macs_cost_factor_spreads_and_is_recorded(digits_model, octx):
    from pipeline.pruning.methods.ocs import macs_factors

    graph = structure.cached_graph(digits_model, octx, True, True)
    spread = {how: (min(f.values()), max(f.values())) for how in ("standardized", "millions", "off") for f in [macs_factors(graph, how)]}
    assert spread["off"] == (1.0, 1.0)
    assert spread["standardized"][1] - spread["standardized"][0] > 2 * (spread["millions"][1] - spread["millions"][0])
    plan = get_method("ocs").plan(digits_model, octx, _spec())
    d = plan.diagnostics
    assert (d["macs_factor_min"], d["macs_factor_max"]) == pytest.approx(spread["standardized"])
    assert d["macs_cost_changed_channels"] >= 0 and d["macs_cost_changed_channels"] == int(d["macs_cost_changed_channels"])
    off = get_method("ocs").plan(digits_model, octx, _spec(macs_cost=2)).diagnostics
    assert off["macs_cost_changed_channels"] == 0 and off["macs_factor_min"] == 1.0
