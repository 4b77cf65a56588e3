"""One contract, run against every registered pruning method (as Optuna tests its samplers)."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.build import apply_plan, plan_candidate
from pipeline.measure import macs
from pipeline.pruning.methods import get_method, list_methods
from pipeline.spec import CandidateSpec
from search.config import parse_config
from search.study.space import suggest


def _specs(name: str) -> list[CandidateSpec]:
    m = get_method(name)
    knobs = m.fast_knobs  # each method's own small budget, so the contract stays fast
    out = []
    if "unstructured" in m.granularities:
        out.append(CandidateSpec(method=name, target_sparsity=None if m.target == "outcome" else 0.7, knobs=knobs, seed=1))
    if "channel" in m.granularities:
        out.append(CandidateSpec(method=name, granularity="channel", target_sparsity=None, target_macs_ratio=0.5, knobs=knobs, seed=1))
    if "nm" in m.granularities:
        out.append(CandidateSpec(method=name, granularity="nm", nm=(2, 4), knobs=knobs, seed=1))
    return out


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name, digits_model, ctx, digits):
    before = copy.deepcopy(digits_model.state_dict())
    dense, _ = macs(digits_model, ctx.example_input)
    for spec in _specs(name):
        plan = plan_candidate(digits_model, ctx, spec)
        model = apply_plan(digits_model, plan)
        out = model(digits.val.x[:4])
        assert out.shape == (4, digits.num_classes) and torch.isfinite(out).all()
        if spec.granularity == "channel":
            _, eff = macs(model, ctx.example_input)
            assert abs(eff / dense - 0.5) <= 0.02, f"{name}: MACs ratio {eff / dense:.4f} for target 0.5"
        elif spec.nm is not None:
            assert plan.masks and all(bool((m.reshape(m.shape[0], -1, 4).sum(-1) == 2).all()) for m in plan.masks.values()), f"{name}: not 2:4"
        elif spec.target_sparsity is not None:
            kept = sum(int(m.sum()) for m in plan.masks.values())
            total = sum(m.numel() for m in plan.masks.values())
            assert abs(1 - kept / total - spec.target_sparsity) <= 0.01
        again = plan_candidate(digits_model, ctx, spec)
        assert all(torch.equal(again.masks[k], plan.masks[k]) for k in plan.masks), f"{name} is not deterministic"
        assert all(torch.equal(again.channels[k], plan.channels[k]) for k in plan.channels)
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} modified the base model ({k})"


@pytest.mark.parametrize("name", list_methods())
def test_fast_knobs_and_training_budget_are_declared_by_the_method(name):
    m = get_method(name)
    assert set(m.fast_knobs) <= set(m.knobs)
    for k, v in m.fast_knobs.items():
        assert m.knobs[k].low <= v <= m.knobs[k].high, k
    for spec in _specs(name):
        m.check(spec)
        budget = m.training_budget(spec)
        assert (budget["optimizer_steps"] > 0) == m.trains and budget["images_seen"] == budget["optimizer_steps"] * budget["batch"]
        if m.trains:  # a fast test trains for at most a hundred steps
            assert budget["optimizer_steps"] <= 100 and budget["batch"] > 0


def test_training_budget_counts_every_optimiser_step():
    hf = CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure": 0.1, "steps": 70, "regrowth_steps": 30})
    assert get_method("hyperflows").training_budget(hf) == {"optimizer_steps": 100, "batch": 64, "images_seen": 6400}
    ocs = CandidateSpec(method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=0.5, knobs={"epochs": 6})
    assert get_method("ocs").training_budget(ocs)["optimizer_steps"] == 6 * 20  # steps_per_epoch default


def test_knob_values_fill_in_the_defaults_and_keep_the_spec_s_own():
    ocs = CandidateSpec(method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=0.5, knobs={"epochs": 6})
    values = get_method("ocs").knob_values(ocs)
    assert values["epochs"] == 6 and values["steps_per_epoch"] == 20 and values["max_prune_fraction"] == 0.75
    assert set(values) == set(get_method("ocs").knobs)
    hf = CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure": 0.1})
    assert get_method("hyperflows").knob_values(hf)["pressure"] == 0.1


@pytest.mark.parametrize("name", list_methods())
def test_every_declared_knob_is_in_the_search_space(name):
    import optuna

    m = get_method(name)
    cfg = parse_config(
        {"space": {"methods": [name], "granularity": list(m.granularities), "knobs": {name: {k: [kn.low, kn.high] for k, kn in m.knobs.items()}}}}
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    spec = suggest(study.ask(), cfg)
    assert spec.method == name and set(spec.knobs) == set(m.knobs)
    for k, kn in m.knobs.items():
        assert kn.low <= spec.knobs[k] <= kn.high
    get_method(name).check(spec)


def test_allocation_is_searched_with_the_scope_split_as_one_choice():
    from optuna.trial import FixedTrial

    cfg = parse_config({"space": {"methods": ["magnitude"], "allocation": {"layer1": [0.5, 1.5]}}})
    on = suggest(FixedTrial({"magnitude.scope": "global", "target_sparsity": 0.8, "allocate": True, "alloc.layer1": 0.7}), cfg)
    off = suggest(FixedTrial({"magnitude.scope": "global", "target_sparsity": 0.8, "allocate": False}), cfg)
    assert on.allocation == {"layer1": 0.7} and off.allocation == {}
