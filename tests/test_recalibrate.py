"""REFLOW recalibration: statistics change, weights do not, accuracy comes back."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from pipeline.build import apply_plan, plan_candidate
from pipeline.measure import accuracy
from pipeline.repair.recalibrate import augment, batchnorms, recalibrate
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


def test_augment_crops_each_image_from_a_black_padded_copy():
    black = (-2.0, -1.0, -0.5)
    n, pad = 64, 4
    x = 10 + torch.arange(n * 3 * 8 * 8, dtype=torch.float32).reshape(n, 3, 8, 8)  # unique, never black
    out = augment(x, torch.Generator().manual_seed(0), pad=pad, black=black)
    assert out.shape == x.shape
    offsets = set()
    for i in range(n):
        border = out[i] < 10
        assert torch.equal(out[i][border], torch.tensor(black)[:, None, None].expand(3, 8, 8)[border])
        matches = []
        for img in (x[i], x[i].flip(-1)):
            padded = torch.nn.functional.pad(img + 100, (pad,) * 4) - 100  # -100 marks the border
            for dy in range(2 * pad + 1):
                for dx in range(2 * pad + 1):
                    crop = padded[:, dy : dy + 8, dx : dx + 8]
                    if torch.equal(torch.where(crop == -100, out[i], crop), out[i]) and torch.equal(crop == -100, border):
                        matches.append((dy, dx))
        assert len(matches) == 1, f"image {i}: not a crop of its padded (flipped) source"
        offsets.add(matches[0])
    assert len(offsets) > 10  # one offset per image, not one per batch


def test_augment_without_pad_only_flips():
    x = torch.randn(32, 1, 5, 5)
    out = augment(x, torch.Generator().manual_seed(1), pad=0)
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    assert all(flipped[i] or torch.equal(out[i], x[i]) for i in range(len(x)))
    assert 0 < sum(flipped) < len(x)


def test_splits_know_the_normalised_black_pixel():
    from pipeline.data.splits import DataConfig, load_data

    s = load_data(DataConfig(name="digits", mean=(0.25,), std=(0.5,), calib_size=32, val_size=32, test_size=32))
    assert s.black == (-0.5,)
    assert s.to("cpu").black == (-0.5,)
