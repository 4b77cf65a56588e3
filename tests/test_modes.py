"""Eval mode for a block restores every submodule's training flag, at each place it is used."""

from __future__ import annotations

import torch
from torch import nn

from pipeline import measure
from pipeline.models.digits import DigitsCNN
from pipeline.modes import eval_mode
from pipeline.pruning.capture import hooked_pass
from pipeline.repair.collapse import bn_output_variance
from pipeline.repair.recalibrate import recalibrate
from pipeline.spec import RecalSpec

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def mixed() -> tuple[nn.Module, dict[str, bool]]:
    """A model in train mode with two submodules in eval mode: a root-only restore loses them."""
    model = DigitsCNN(width=4).train()
    model.bn2.eval()
    model.relu.eval()
    return model, {n: m.training for n, m in model.named_modules()}


def test_eval_mode_restores_each_submodule_flag_even_after_an_error():
    model, flags = mixed()
    with eval_mode(model) as m:
        assert m is model and not any(s.training for s in model.modules())
    assert {n: s.training for n, s in model.named_modules()} == flags
    try:
        with eval_mode(model):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert {n: s.training for n, s in model.named_modules()} == flags


def test_measure_collapse_hooks_and_recalibration_restore_submodule_flags():
    model, flags = mixed()
    seen: list[bool] = []
    measure.macs(model, X)
    bn_output_variance(model, X)
    hooked_pass(model, X, ["conv1"], lambda *_: seen.append(model.bn1.training), inputs=True)
    assert recalibrate(model, X, RecalSpec(images=4, batch_size=2, augment=False))
    assert seen == [False]  # eval during the pass
    assert {n: s.training for n, s in model.named_modules()} == flags
