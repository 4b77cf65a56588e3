"""Measuring a candidate: accuracy, MACs, sparsity, parameters, latency.

Units: accuracy is a fraction in [0, 1]; MACs are multiply-accumulates of one forward
pass of one image; latency is the median wall time in milliseconds of one forward
pass of ``latency_batch`` images on the evaluator's device with its torch thread count.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from pydantic import Field
from torch import nn

from pipeline.errors import PrunesearchError
from pipeline.modes import eval_mode
from pipeline.pruning.layers import prunable_weights
from pipeline.spec import Frozen


class MeasureConfig(Frozen):
    """How candidates are measured.

    Attributes:
        eval_batch: images per forward pass when scoring accuracy.
        latency_batch: images per timed forward pass.
        latency_repeats: timed repetitions (the median is reported), after 3 warm-ups;
            at most 10000, and the timing stops after
            ``latency_budget_s`` seconds whatever the count (a large model on a slow
            device still finishes its candidate).
        latency_budget_s: wall seconds the timed repetitions of one candidate may take.
        test_accuracy: also score the test split (``test_accuracy``; report only,
            never used for selection).
        collapse_plot: draw each candidate's signal-collapse PNG in the actor
            (about 0.1 s of CPU per candidate; the Parquet table is always kept).
    """

    eval_batch: int = Field(512, ge=1)
    latency_batch: int = Field(1, ge=1)
    latency_repeats: int = Field(20, ge=1, le=10_000)
    latency_budget_s: float = Field(10.0, gt=0, le=600)
    test_accuracy: bool = True
    collapse_plot: bool = True


class NumericsError(PrunesearchError, RuntimeError):
    """The candidate produced NaN or Inf outputs."""


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on images ``x`` (N, C, H, W) and labels ``y`` (N,).

    Raises:
        NumericsError: if any logit is NaN or Inf.
    """
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch].to(device))
        if not torch.isfinite(logits).all():
            raise NumericsError("the pruned network produced NaN or Inf logits")
        correct += int((logits.argmax(1) == y[i : i + batch].to(device)).sum())
    return correct / max(len(y), 1)


@torch.no_grad()
def macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """(dense MACs, effective MACs) of one image through ``model``.

    Dense counts every weight of every Conv2d and Linear; effective counts only
    non-zero weights (what a sparse kernel would execute). Conv: out_h * out_w *
    weights; Linear: weights per output position. Bias additions, BatchNorm and
    activations are not MACs and are left out.
    """
    dense, effective = [0], [0]

    def hook(m: nn.Module, _inp, out: torch.Tensor) -> None:
        assert isinstance(m, (nn.Conv2d, nn.Linear))  # hooked below on these only
        positions = out[0, 0].numel() if isinstance(m, nn.Conv2d) else out[0].numel() // m.out_features
        dense[0] += positions * m.weight.numel()
        effective[0] += positions * int(torch.count_nonzero(m.weight))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with eval_mode(model):
            model(example_input[:1].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return dense[0], effective[0]


def nonzero_params(model: nn.Module) -> int:
    """Number of non-zero parameters (weights, biases, BatchNorm affine) of ``model``."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def weight_sparsity(model: nn.Module, weight_names: list[str], dense_count: int) -> float:
    """Fraction of the dense model's prunable weights that are gone (zeroed or removed).

    ``dense_count`` is the number of prunable weights of the dense model, so channels
    removed physically count as pruned.
    """
    params = dict(model.named_parameters())
    kept = sum(int(torch.count_nonzero(params[n])) for n in weight_names if n in params)
    return 1.0 - kept / dense_count


def pruned_fraction(model: nn.Module, base: nn.Module, prune_stem: bool = True, prune_head: bool = True) -> float:
    """``weight_sparsity`` of ``model`` over ``base``'s prunable weights under the stem/head
    choice (``layers.prunable_weights``): the ``sparsity`` metric."""
    dense = prunable_weights(base, prune_stem, prune_head)
    return weight_sparsity(model, list(dense), sum(w.numel() for w in dense.values()))


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: tuple[int, ...], batch: int, repeats: int, budget_s: float | None = None) -> float:
    """Median milliseconds of one eval forward pass of a (batch, *input_shape) input, over
    ``repeats`` timed passes after 3 warm-ups; with ``budget_s``, over those that fit in
    that many wall seconds (at least one)."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(batch, *input_shape, device=device)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s if budget_s is not None else math.inf
    for i in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() >= deadline:
                break
    return statistics.median(times)
