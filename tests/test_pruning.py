"""One candidate's pruning: exact targets, masks, plans, and the method registry contract."""

from __future__ import annotations

import copy
import io
import json
import math

import pyarrow.parquet as pq
import pytest
import torch

from pipeline.build import apply_plan, plan_candidate
from pipeline.pruning.layers import prunable_weights
from pipeline.pruning.methods import PruneContext, get_method, list_methods
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.thresholds import global_masks, layerwise_masks
from pipeline.spec import CandidateSpec


def _zeros(model, names):
    params = dict(model.named_parameters())
    return sum(int((params[n] == 0).sum()) for n in names)


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.97])
def test_global_magnitude_hits_target_within_one_weight(digits_model, ctx, sparsity):
    spec = CandidateSpec(target_sparsity=sparsity)
    model = apply_plan(digits_model, plan_candidate(digits_model, ctx, spec))
    weights = prunable_weights(model)
    total = sum(w.numel() for w in weights.values())
    assert abs(_zeros(model, weights) - sparsity * total) <= 1


def test_global_magnitude_removes_smallest_weights(digits_model, ctx):
    model = apply_plan(digits_model, plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=0.6)))
    dense = torch.cat([w.detach().abs().flatten() for w in prunable_weights(digits_model).values()])
    pruned = torch.cat([w.detach().flatten() for w in prunable_weights(model).values()])
    kept, removed = dense[pruned != 0], dense[pruned == 0]
    assert kept.min() >= removed.max()


def test_base_model_is_untouched(digits_model, ctx):
    before = copy.deepcopy(digits_model.state_dict())
    apply_plan(digits_model, plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=0.8)))
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_layerwise_prunes_every_layer_equally():
    scores = {"a": torch.rand(100), "b": torch.rand(40, 5)}
    masks = layerwise_masks(scores, 0.3)
    assert int((~masks["a"]).sum()) == 30 and int((~masks["b"]).sum()) == 60


def test_global_masks_break_ties_exactly():
    masks = global_masks({"a": torch.ones(7), "b": torch.ones(3)}, 0.5)
    assert sum(int((~m).sum()) for m in masks.values()) == 5


def test_plan_roundtrips_through_parquet():
    plan = PrunePlan(
        masks={"conv.weight": torch.rand(4, 3, 3, 3) > 0.5, "fc.weight": torch.rand(10, 7) > 0.2},
        channels={"conv1": torch.tensor([0, 2, 5])},
        weights={"bn1.running_var": torch.rand(16), "conv.weight": torch.randn(4, 3, 3, 3)},
    )
    back = PrunePlan.from_parquet(plan.to_parquet())
    assert set(back.weights) == set(plan.weights)
    assert all(torch.equal(back.weights[k], plan.weights[k]) for k in plan.weights)
    assert set(back.masks) == set(plan.masks)
    for k in plan.masks:
        assert torch.equal(back.masks[k], plan.masks[k])
    assert torch.equal(back.channels["conv1"], plan.channels["conv1"])
    assert back.diagnostics == {}


def test_plan_diagnostics_roundtrip_and_old_plans_read_without_them():
    plan = PrunePlan(channels={"conv1": torch.tensor([1])}, diagnostics={"stable_epoch": 4.0, "history": [float("nan"), 0.5]})
    back = PrunePlan.from_parquet(plan.to_parquet())
    assert back.diagnostics["stable_epoch"] == 4.0 and math.isnan(back.diagnostics["history"][0]) and back.diagnostics["history"][1] == 0.5
    assert back.scalar_diagnostics("ocs_") == {"ocs_stable_epoch": 4.0}  # lists stay in the plan only
    buf = io.BytesIO()  # a plan.parquet written before diagnostics existed: no schema metadata
    pq.write_table(pq.read_table(io.BytesIO(plan.to_parquet())).replace_schema_metadata(None), buf)
    old = PrunePlan.from_parquet(buf.getvalue())
    assert old.diagnostics == {} and torch.equal(old.channels["conv1"], torch.tensor([1]))


def test_spec_carries_the_fine_tuning_learning_rate():
    spec = CandidateSpec(finetune_steps=10, finetune_lr=0.003)
    assert CandidateSpec.from_json(spec.to_json()).finetune_lr == 0.003
    recorded = json.loads(CandidateSpec().to_json())
    del recorded["finetune_lr"]  # a record written before the field existed
    old = CandidateSpec.from_json(json.dumps(recorded))
    assert "finetune_lr" not in old.model_fields_set and old.finetune_lr == 0.01  # records before the field replay 0.01
    with pytest.raises(ValueError, match="finetune_lr"):
        CandidateSpec(finetune_lr=0)


def test_plan_weights_replace_the_base_weights(digits_model):
    new = torch.full_like(digits_model.fc.weight, 0.5)
    model = apply_plan(digits_model, PrunePlan(weights={"fc.weight": new}, masks={"fc.weight": torch.rand(new.shape) > 0.5}))
    assert set(model.fc.weight.unique().tolist()) == {0.0, 0.5}
    assert not torch.equal(digits_model.fc.weight, model.fc.weight)


def test_spec_roundtrips_through_json():
    spec = CandidateSpec(method="random", target_sparsity=0.7, knobs={"norm": 2.0}, allocation={"layer1": 0.5}, seed=3)
    assert CandidateSpec.from_json(spec.to_json()) == spec


def test_unknown_method_names_the_closest():
    with pytest.raises(ValueError, match="did you mean 'magnitude'"):
        get_method("magnitud")


@pytest.mark.parametrize("name", list_methods())
def test_every_method_declares_a_valid_interface(name):
    m = get_method(name)
    assert m.name == name
    assert set(m.granularities) <= {"unstructured", "channel", "nm"}
    for knob in m.knobs.values():
        assert knob.low <= knob.high


def test_random_is_seeded_and_differs_from_magnitude(digits_model, ctx):
    a = plan_candidate(digits_model, ctx, CandidateSpec(method="random", target_sparsity=0.5, seed=1))
    b = plan_candidate(digits_model, ctx, CandidateSpec(method="random", target_sparsity=0.5, seed=1))
    c = plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=0.5))
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert any(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


def test_scores_are_computed_once_per_actor_not_per_candidate(digits_model, ctx):
    for seed, sparsity in enumerate([0.5, 0.6, 0.7, 0.8, 0.9]):
        plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=sparsity, seed=seed))
    assert len(ctx.cache) == 1  # one set of magnitude scores served five candidates
    for seed in range(40):  # seeded scores are bounded, not one entry per candidate forever
        plan_candidate(digits_model, ctx, CandidateSpec(method="random", target_sparsity=0.5, seed=seed))
    assert len(ctx.cache) <= ctx.cache.maxsize


def test_allocation_reshapes_the_split_and_keeps_the_target():
    torch.manual_seed(0)
    scores = {"layer1.a": torch.rand(400), "layer2.b": torch.rand(300) * 2, "layer3.c": torch.rand(300) * 3}
    ratios = {"layer1.a": 0.0, "layer2.b": 1.0, "layer3.c": 2.0}
    masks = layerwise_masks(scores, 0.4, ratios)
    removed = {n: int((~m).sum()) for n, m in masks.items()}
    assert removed["layer1.a"] == 0
    assert sum(removed.values()) == pytest.approx(400, abs=2)  # 40 % of 1000 weights
    assert removed["layer3.c"] / 300 == pytest.approx(2 * removed["layer2.b"] / 300, abs=0.01)
    # a prior split with unit ratios reproduces the global ranking exactly
    glob = global_masks(scores, 0.4)
    split = {n: int((~m).sum()) / m.numel() for n, m in glob.items()}
    same = layerwise_masks(scores, 0.4, None, split)
    assert all(torch.equal(same[n], glob[n]) for n in scores)


@pytest.mark.parametrize("method", ["magnitude", "screening"])
def test_global_allocation_meets_the_target_sparsity(digits_model, ctx, method):
    from pipeline.pruning.layers import stage_of

    plain = plan_candidate(digits_model, ctx, CandidateSpec(method=method, target_sparsity=0.8, prune_stem=False, prune_head=False))
    stages = sorted({stage_of(n) for n in plain.masks})
    alloc = {stages[0]: 0.5}
    plan = plan_candidate(digits_model, ctx, CandidateSpec(method=method, target_sparsity=0.8, allocation=alloc, prune_stem=False, prune_head=False))
    total = sum(m.numel() for m in plan.masks.values())
    assert sum(int((~m).sum()) for m in plan.masks.values()) / total == pytest.approx(0.8, abs=0.005)

    def frac(p, stage):
        ms = [m for n, m in p.masks.items() if stage_of(n) == stage]
        return sum(int((~m).sum()) for m in ms) / sum(m.numel() for m in ms)

    assert frac(plan, stages[0]) < frac(plain, stages[0])  # the halved stage is pruned less


def test_prune_context_is_built_from_splits_or_by_keyword(digits):
    ctx = PruneContext.from_splits(digits)
    assert torch.equal(ctx.calib_x, digits.calib.x) and torch.equal(ctx.train_y, digits.train.y) and ctx.num_classes == digits.num_classes
    assert torch.equal(ctx.example_input, digits.val.x[:1]) and len(ctx.cache) == 0
    assert PruneContext.from_splits(digits).cache is not ctx.cache  # each context caches for itself
    with pytest.raises(TypeError):
        PruneContext(digits.calib.x, digits.calib.y, digits.train.x, digits.train.y, digits.val.x[:1], 10)  # positional: refused
