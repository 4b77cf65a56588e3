"""REFLOW recalibration: statistics change, weights do not, accuracy comes back."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from pipeline.build import apply_plan, plan_candidate
from pipeline.measure import accuracy
from pipeline.recalibrate import batchnorms, recalibrate
from pipeline.spec import CandidateSpec, RecalSpec


def _pruned(digits_model, ctx, sparsity=0.9):
    return apply_plan(digits_model, plan_candidate(digits_model, ctx, CandidateSpec(target_sparsity=sparsity)))


def test_recalibration_changes_statistics_and_keeps_weights_bit_identical(digits_model, ctx, digits):
    model = _pruned(digits_model, ctx)
    params = {k: v.clone() for k, v in model.named_parameters()}
    stats = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in batchnorms(model).items()}
    assert recalibrate(model, digits.calib.x, RecalSpec(images=256))
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), f"{k} changed"
    for n, m in batchnorms(model).items():
        assert not torch.allclose(m.running_var, stats[n][1]), f"{n} running_var unchanged"
        assert m.momentum == 0.1  # restored


def test_recalibration_rescues_a_90_percent_sparse_network(digits_model, ctx, digits):
    model = _pruned(digits_model, ctx, 0.9)
    before = accuracy(model, digits.val.x, digits.val.y)
    recalibrate(model, digits.calib.x, RecalSpec(images=256))
    after = accuracy(model, digits.val.x, digits.val.y)
    assert before < 0.5 and after > 0.85, (before, after)


def test_cumulative_mode_equals_batch_statistics(digits_model, ctx, digits):
    """With one batch, the cumulative average is exactly that batch's statistics."""
    model = _pruned(digits_model, ctx, 0.5)
    x = digits.calib.x[:128]
    recalibrate(model, x, RecalSpec(images=128, batch_size=128))
    feats = {}
    h = model.conv1.register_forward_hook(lambda m, i, o: feats.setdefault("c1", o))
    model(x)
    h.remove()
    assert torch.allclose(model.bn1.running_mean, feats["c1"].mean((0, 2, 3)), atol=1e-5)


def test_ema_mode_moves_statistics_partially(digits_model, ctx, digits):
    model = _pruned(digits_model, ctx, 0.9)
    old = model.bn1.running_var.clone()
    recalibrate(model, digits.calib.x, RecalSpec(images=64, batch_size=64, mode="ema", momentum=0.1))
    fresh = _pruned(digits_model, ctx, 0.9)
    recalibrate(fresh, digits.calib.x, RecalSpec(images=64, batch_size=64))
    assert torch.allclose(model.bn1.running_var, 0.9 * old + 0.1 * fresh.bn1.running_var, rtol=1e-4)


def test_model_without_batchnorm_is_skipped_with_a_warning():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert recalibrate(model, torch.randn(8, 1, 8, 8), RecalSpec()) is False
    assert any("no BatchNorm" in str(x.message) for x in w)
