"""N:M semi-structured sparsity: masks, specs, the search space and baselines, and export."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from pipeline.build import apply_plan, plan_candidate
from pipeline.measure import macs
from pipeline.pruning.methods import PruneContext
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.thresholds import nm_mask
from pipeline.spec import CandidateSpec
from search.config import parse_config
from search.study.baselines import baseline_params
from search.study.space import suggest

NM_METHODS = ("magnitude", "obs")


def _holds_nm(w: torch.Tensor, n: int, m: int) -> bool:
    """Whether every output row keeps at most N non-zeros in each M consecutive input weights,
    and exactly N kept entries of ``w``'s mask would show as N non-zeros."""
    blocks = (w.reshape(w.shape[0], -1) != 0).reshape(w.shape[0], -1, m)
    return bool((blocks.sum(-1) <= n).all())


def _mixed_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Flatten(), nn.Linear(8 * 16, 5))


def _ctx(x: torch.Tensor) -> PruneContext:
    y = torch.zeros(len(x), dtype=torch.int64)
    return PruneContext(calib_x=x, calib_y=y, train_x=x, train_y=y, example_input=x[:1], num_classes=5)


@pytest.mark.parametrize("method", NM_METHODS)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_masks_keep_exactly_n_of_every_m_inputs_for_convs_and_linears(method, nm):
    model, x = _mixed_model(), torch.randn(64, 8, 4, 4)
    plan = plan_candidate(model, _ctx(x), CandidateSpec(method=method, granularity="nm", nm=nm))
    n, m = nm
    assert set(plan.masks) == {"0.weight", "2.weight", "4.weight"}  # 72, 8 and 128 inputs per row
    for name, mask in plan.masks.items():
        per_group = mask.reshape(mask.shape[0], -1, m).sum(-1)
        assert bool((per_group == n).all()), name
    pruned = apply_plan(model, plan)
    for name, p in pruned.named_parameters():
        if name in plan.masks:
            assert _holds_nm(p.detach(), n, m) and not bool(p.detach()[~plan.masks[name]].any())
    dense, eff = macs(pruned, x[:1])
    assert eff == pytest.approx(dense * n / m, rel=0.02)  # effective MACs count the kept weights (a few may be 0 anyway)


def test_a_layer_whose_row_is_not_a_multiple_of_m_stays_dense(digits_model, ctx):
    plan = plan_candidate(digits_model, ctx, CandidateSpec(method="magnitude", granularity="nm", nm=(2, 4)))
    assert "conv1.weight" not in plan.masks  # 1 x 3 x 3 = 9 inputs per row
    assert {"conv2.weight", "conv3.weight", "fc.weight"} <= set(plan.masks)
    assert nm_mask(torch.ones(3, 9), 2, 4) is None


def test_nm_mask_keeps_the_highest_scores_of_each_group():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 4.0, 3.0, 2.0, 1.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]


def test_nm_masks_survive_the_plan_record_and_a_state_dict_round_trip(digits_model, ctx, tmp_path):
    plan = plan_candidate(digits_model, ctx, CandidateSpec(method="obs", granularity="nm", nm=(2, 4), knobs={"images": 64}))
    again = PrunePlan.from_parquet(plan.to_parquet())
    model = apply_plan(digits_model, again)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    for name in plan.masks:
        assert torch.equal(again.masks[name], plan.masks[name]) and _holds_nm(state[name], 2, 4)


def test_nm_spec_checks_its_pattern_and_takes_no_other_target():
    assert CandidateSpec(granularity="nm").nm == (2, 4) and CandidateSpec(granularity="nm").target_sparsity is None
    spec = CandidateSpec(method="obs", granularity="nm", nm=(4, 8))
    assert CandidateSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="1 <= N < M"):
        CandidateSpec(granularity="nm", nm=(4, 4))
    with pytest.raises(ValueError, match="drop target_sparsity"):
        CandidateSpec(granularity="nm", target_sparsity=0.5)
    with pytest.raises(ValueError, match="granularity 'nm'"):
        CandidateSpec(granularity="unstructured", nm=(2, 4))
    with pytest.raises(ValueError, match="allocation"):
        from pipeline.pruning.methods import get_method

        get_method("magnitude").check(CandidateSpec(granularity="nm", allocation={"layer1": 0.5}))


def test_space_nm_is_a_parameter_and_every_pattern_gets_a_baseline():
    cfg = parse_config(
        {
            "space": {
                "methods": ["magnitude", "obs", "random"],
                "granularity": ["unstructured", "nm"],
                "nm": [[2, 4], [4, 8]],
                "allocation": {"layer1": [0.5, 1.5]},
            }
        },
        check_paths=False,
    )
    params = baseline_params(cfg)
    nm = [p for p in params if p.get(f"{p['method']}.granularity") == "nm"]
    assert sorted((p["method"], p["nm"]) for p in nm) == [("magnitude", "2:4"), ("magnitude", "4:8"), ("obs", "2:4"), ("obs", "4:8")]
    assert not any("allocate" in p for p in nm)
    assert any(p["method"] == "obs" and p.get("obs.granularity") == "unstructured" for p in params)
    for p in params:
        trial = optuna.trial.FixedTrial(p)
        spec = suggest(trial, cfg)
        assert set(trial.params) == set(p)
        assert spec.nm == ((int(p["nm"][0]), int(p["nm"][2])) if "nm" in p else None)
    with pytest.raises(ValueError, match="1 <= N < M"):
        parse_config({"space": {"granularity": ["nm"], "nm": [[4, 2]]}}, check_paths=False)


@pytest.mark.slow
def test_an_nm_search_records_its_pattern_and_its_export_keeps_it(tmp_path, ray_local):
    """A real digits search (Ray, MLflow, Optuna) of the nm baselines, its best candidate exported."""
    import search as ps
    from search.export.formats import load_exported

    from conftest import search_config

    cfg = search_config(tmp_path, "digits-nm", 2, actors={"count": 1}, space={"methods": ["magnitude", "obs"], "granularity": ["nm"], "nm": [[2, 4]]})
    res = ps.run(cfg)
    frame = res.frame
    assert sorted(frame.method) == ["magnitude", "obs"] and set(frame.granularity) == {"nm"}
    rid = res.best(top=1).run_id[0]
    out = res.export(rid, tmp_path / "best.pt")
    assert out.rebuilt_accuracy == pytest.approx(out.recorded_accuracy, abs=1e-9)
    model, _ = load_exported(tmp_path / "best.pt")
    program = torch.export.load(str(tmp_path / "best.pt2")).module()
    for name, w in model.state_dict().items():
        if name.endswith("weight") and w.dim() > 1 and w[0].numel() % 4 == 0:
            assert _holds_nm(w, 2, 4), name
            assert _holds_nm(dict(program.named_parameters())[name], 2, 4), name
