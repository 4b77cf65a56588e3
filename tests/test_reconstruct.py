"""Reconstruction: refit kept weights on calibration images (pipeline.repair.reconstruct)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.build import apply_plan, plan_candidate
from pipeline.evaluator import Evaluator
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig, build_model
from pipeline.pruning.methods import PruneContext, list_methods
from pipeline.pruning.plan import PrunePlan
from pipeline.repair.reconstruct import reconstruct
from pipeline.spec import CandidateSpec, ReconSpec

LSQ = ReconSpec(mode="lsq", images=256, ridge=1e-3, batch_size=64, layers="pruned")


@torch.no_grad()
def _layer_errors(dense: nn.Module, pruned: nn.Module, x: torch.Tensor, names: list[str], plan: PrunePlan) -> dict[str, float]:
    """Relative squared error of each named layer's output against the dense one on ``x``."""
    outs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for k, net in enumerate((dense, pruned)):
        mods = dict(net.named_modules())
        for n in names:
            handles.append(mods[n].register_forward_hook(lambda m, i, o, key=(k, n): outs.__setitem__(key, o)))
    dense.eval(), pruned.eval()
    dense(x), pruned(x)
    for h in handles:
        h.remove()
    errs = {}
    for n in names:
        ref = outs[(0, n)]
        if n in plan.channels:
            ref = ref[:, plan.channels[n]]
        errs[n] = float((outs[(1, n)] - ref).square().sum() / ref.square().sum())
    return errs


def _refit_and_compare(dense, plan, calib, held_out, spec=LSQ):
    pruned = apply_plan(dense, plan)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    refit, report = reconstruct(dense, pruned, calib, spec, plan)
    assert report.layers, "nothing was refit"
    errs_before = _layer_errors(dense, apply_plan(dense, plan), held_out, report.layers, plan)
    errs_after = _layer_errors(dense, pruned, held_out, report.layers, plan)
    return pruned, before, refit, report, errs_before, errs_after


def test_unstructured_refit_lowers_held_out_error_and_keeps_every_zero(digits_model, ctx, digits):
    plan = plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=0.9))
    pruned, before, refit, report, eb, ea = _refit_and_compare(digits_model, plan, digits.calib.x, digits.val.x)
    assert set(report.layers) == {n.removesuffix(".weight") for n in plan.masks}
    # sequential: every layer is closer to the dense one on images it was not fit on
    assert all(ea[n] < eb[n] for n in report.layers), (eb, ea)
    assert sum(ea.values()) < 0.7 * sum(eb.values())
    params = dict(pruned.named_parameters())
    for name, mask in plan.masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0  # zeros stay exactly zero
        assert not torch.equal(params[name], before[name])  # the kept ones moved
        assert torch.equal(refit[name], params[name].detach())
    assert report.mean(report.error_after) < report.mean(report.error_before)


def test_channel_refit_lowers_held_out_error_and_keeps_the_channels(digits_model, ctx, digits):
    spec = CandidateSpec(granularity="channel", target_sparsity=None, target_macs_ratio=0.5)
    plan = plan_candidate(digits_model, ctx, spec)
    pruned, before, refit, report, eb, ea = _refit_and_compare(digits_model, plan, digits.calib.x, digits.val.x)
    # the consumers whose inputs were cut are refit; conv1 (inputs untouched) is not
    assert "conv1" not in report.layers and {"conv2", "fc"} <= set(report.layers) | {"conv3"}
    assert all(ea[n] < eb[n] for n in report.layers), (eb, ea)
    for k, v in pruned.state_dict().items():
        assert v.shape == before[k].shape  # no channel added or removed
    assert set(refit) <= set(before) and all(refit[k].shape == before[k].shape for k in refit)


def test_all_layers_mode_also_refits_untouched_layers(digits_model, ctx, digits):
    spec = CandidateSpec(granularity="channel", target_sparsity=None, target_macs_ratio=0.5)
    plan = plan_candidate(digits_model, ctx, spec)
    _, report = reconstruct(digits_model, apply_plan(digits_model, plan), digits.calib.x, LSQ.model_copy(update={"layers": "all"}), plan)
    assert report.layers == ["conv1", "conv2", "conv3", "fc"]
    assert ReconSpec().layers == "all"  # the default: measured better on ResNet-20


def test_ridge_shrinks_towards_zero(digits_model, ctx, digits):
    plan = plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=0.5))
    norms = []
    for ridge in (1e-4, 1e3):
        pruned = apply_plan(digits_model, plan)
        reconstruct(digits_model, pruned, digits.calib.x, LSQ.model_copy(update={"ridge": ridge}), plan)
        norms.append(float(pruned.conv3.weight.detach().norm()))
    assert norms[1] < 0.5 * norms[0]


def _tiny_ctx(model: nn.Module, n: int = 48, size: int = 32) -> tuple[PruneContext, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return PruneContext(calib_x=x, calib_y=y, train_x=x, train_y=y, example_input=x[:1], num_classes=10), x


def _warm_bn(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Random-init BN statistics describe nothing: estimate them once, as a trained net would have."""
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


@pytest.mark.parametrize(
    "name, granularity",
    [
        ("cifar_resnet20", "channel"),
        ("cifar_resnet20", "unstructured"),
        ("torchvision:resnet18", "channel"),
        ("torchvision:mobilenet_v2", "channel"),
        ("torchvision:mobilenet_v2", "unstructured"),
    ],
)
def test_option_a_resnets_and_torchvision_models(name, granularity):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, num_classes=10))
    ctx, x = _tiny_ctx(model)
    _warm_bn(model, x)
    spec = CandidateSpec(
        granularity=granularity,
        target_sparsity=0.9 if granularity == "unstructured" else None,
        target_macs_ratio=0.6 if granularity == "channel" else None,
        prune_stem=False,
        prune_head=False,
    )
    plan = plan_candidate(model, ctx, spec)
    pruned = apply_plan(model, plan)
    refit, report = reconstruct(model, pruned, x[:32], LSQ.model_copy(update={"batch_size": 16}), plan)
    assert report.layers and report.mean(report.error_after) < report.mean(report.error_before)
    params = dict(pruned.named_parameters())
    for pname, mask in plan.masks.items():
        assert torch.count_nonzero(params[pname][~mask]) == 0
    if granularity == "channel":
        assert torch.isfinite(pruned(x[:2])).all()
    if name.endswith("mobilenet_v2") and granularity == "channel":
        # depthwise convs inside a channel group follow their input: skipped, with the reason
        assert any("depthwise" in why for why in report.skipped.values())
    if name.endswith("mobilenet_v2") and granularity == "unstructured":
        assert any(dict(model.named_modules())[n].groups > 1 for n in report.layers)  # grouped convs per group


@pytest.fixture(scope="module")
def evaluator(digits, digits_model):
    return Evaluator(ModelConfig(), digits_model.state_dict(), digits, MeasureConfig(latency_repeats=2, collapse_plot=False), threads=1)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_is_reconstructed_and_rebuilds_from_its_plan(name, evaluator):
    from pipeline.pruning.methods import get_method

    m = get_method(name)
    gran = "unstructured" if "unstructured" in m.granularities else "channel"
    spec = CandidateSpec(
        method=name,
        granularity=gran,
        knobs=dict(m.fast_knobs),
        reconstruct=LSQ,
        target_sparsity=0.8 if gran == "unstructured" and m.target == "sparsity" else None,
        target_macs_ratio=0.5 if gran == "channel" else None,
    )
    r = evaluator.evaluate(spec)
    assert r.state == "ok", r.error
    assert r.metrics["recon_layers"] > 0 and r.metrics["recon_s"] > 0
    assert r.metrics["recon_error"] < r.metrics["recon_error_before"]
    plan = PrunePlan.from_parquet(r.plan)
    assert plan.refit
    model, again = evaluator.rebuild(spec, plan)
    assert "recon_s" not in again.metrics  # replayed from the plan, not re-run
    assert again.metrics["accuracy"] == pytest.approx(r.metrics["accuracy"], abs=1e-9)
    assert again.metrics["sparsity"] == pytest.approx(r.metrics["sparsity"], abs=1e-12)


def test_reconstruction_off_is_the_plain_pipeline(evaluator):
    spec = CandidateSpec(target_sparsity=0.9)
    r = evaluator.evaluate(spec)
    assert "recon_s" not in r.metrics and not PrunePlan.from_parquet(r.plan).refit
    lsq = evaluator.evaluate(spec.model_copy(update={"reconstruct": LSQ}))
    assert lsq.metrics["accuracy_before_recon"] == pytest.approx(r.metrics["accuracy_before_recal"])
    assert lsq.metrics["accuracy_before_recal"] > lsq.metrics["accuracy_before_recon"]


def test_plan_refit_round_trips_and_old_plans_still_load():
    plan = PrunePlan(masks={"a.weight": torch.tensor([[True, False]])}, refit={"a.weight": torch.tensor([[0.5, 0.0]]), "a.bias": torch.tensor([1.0])})
    back = PrunePlan.from_parquet(plan.to_parquet())
    assert torch.equal(back.refit["a.weight"], plan.refit["a.weight"]) and torch.equal(back.refit["a.bias"], plan.refit["a.bias"])
    old = PrunePlan.from_parquet(PrunePlan(masks=plan.masks).to_parquet())
    assert old.refit == {} and torch.equal(old.masks["a.weight"], plan.masks["a.weight"])


def test_a_refit_of_the_wrong_shape_is_refused(digits_model):
    with pytest.raises(KeyError, match="conv1.weight"):
        apply_plan(digits_model, PrunePlan(refit={"conv1.weight": torch.zeros(1, 1)}))


@pytest.mark.parametrize(
    "data, field",
    [
        ({"reconstruction": {"ridge": -1}}, "reconstruction.ridge"),
        ({"reconstruction": {"images": 0}}, "reconstruction.images"),
        ({"reconstruction": {"mode": "lsq"}}, "reconstruction.mode: Extra inputs"),
        ({"space": {"reconstruct": ["lsq", "sgd"]}}, "space.reconstruct"),
        ({"space": {"reconstruct": ["lsq"]}, "reconstruction": {"images": 5000}}, "reconstruction.images: 5000"),
    ],
)
def test_config_errors_name_the_field(data, field):
    from search.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        parse_config(data)


def test_spec_refuses_unknown_modes_and_the_space_offers_the_choice():
    from optuna.trial import FixedTrial
    from pydantic import ValidationError

    from search.config import parse_config
    from search.study.encoding import spec_params
    from search.study.space import suggest

    with pytest.raises(ValidationError, match="mode"):
        ReconSpec(mode="sgd")
    cfg = parse_config({"space": {"reconstruct": ["none", "lsq"]}, "reconstruction": {"images": 128, "ridge": 0.01}})
    spec = suggest(FixedTrial({"target_sparsity": 0.8, "reconstruct": "lsq"}), cfg)
    assert spec.reconstruct == ReconSpec(mode="lsq", images=128, ridge=0.01, layers="all")
    assert spec_params(spec)["reconstruct"] == "lsq" and spec_params(spec)["reconstruct.images"] == "128"
    assert suggest(FixedTrial({"target_sparsity": 0.8, "reconstruct": "none"}), cfg).reconstruct.mode == "none"
    assert CandidateSpec.from_json(spec.to_json()) == spec


@pytest.mark.slow
def test_a_search_records_reconstructed_candidates_and_export_reproduces_them(tmp_path, ray_local):
    from search.export.formats import export
    from search.records.query import candidate_rows
    from search.runner.driver import run_search

    from conftest import search_config

    cfg = search_config(tmp_path, "recon", 4, space={"sparsity": [0.85, 0.95], "reconstruct": ["lsq"]}, reconstruction={"images": 128})
    out = run_search(cfg, quiet=True)
    assert out.evaluated == 4 and out.failed == 0
    rows = candidate_rows(out.tracking_uri, cfg.name)
    assert all(r["reconstruct"] == "lsq" and r["recon_s"] > 0 and "recal_s" in r for r in rows)
    top = max(rows, key=lambda r: r["accuracy"])
    exported = export(out.tracking_uri, top["run_id"], tmp_path / "exp" / "best.pt")
    assert exported.rebuilt_accuracy == pytest.approx(top["accuracy"], abs=1e-9)


def test_a_model_fx_cannot_trace_is_walked_with_hooks_to_the_same_weights(digits_model, ctx, digits):
    import copy

    from pipeline.models.digits import DigitsCNN

    class Untraceable(DigitsCNN):
        def forward(self, x):
            if x.sum() > -1e30:  # data-dependent control flow: torch.fx cannot trace it
                return super().forward(x)
            return x

    odd = Untraceable()
    odd.load_state_dict(digits_model.state_dict())
    plan = plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=0.8))
    by_graph, r_graph = reconstruct(digits_model, apply_plan(digits_model, plan), digits.calib.x, LSQ, plan)
    by_hooks, r_hooks = reconstruct(copy.deepcopy(odd), apply_plan(odd, plan), digits.calib.x, LSQ, plan)
    assert (r_graph.walk, r_hooks.walk) == ("graph", "hooks") and r_graph.layers == r_hooks.layers
    for k, v in by_graph.items():
        assert torch.allclose(v, by_hooks[k], atol=1e-5, rtol=1e-4), k


def test_the_prune_api_reconstructs_on_request(digits_model, digits):
    from pipeline.api import prune

    calib = (digits.calib.x, digits.calib.y)
    plain, p0 = prune(digits_model, sparsity=0.9, calib=calib, recal_images=0)
    refit, p1 = prune(digits_model, sparsity=0.9, calib=calib, recal_images=0, reconstruct=True)
    assert not p0.refit and p1.refit and all(torch.equal(p0.masks[k], p1.masks[k]) for k in p0.masks)
    acc = [float((m(digits.val.x).argmax(1) == digits.val.y).float().mean()) for m in (plain, refit)]
    assert acc[1] > acc[0]
