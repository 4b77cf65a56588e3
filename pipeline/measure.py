"""Measuring a candidate: accuracy, MACs, sparsity, parameters, latency.

Units: accuracy is a fraction in [0, 1]; MACs are multiply-accumulates of one forward
pass of one image; latency is the median wall time in milliseconds of one forward
pass of ``latency_batch`` images on the evaluator's device with its torch thread count.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Literal

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
        precision: ``fp32`` (default), ``bf16`` or ``fp16``: evaluation, recalibration and
            latency run under ``torch.autocast`` to that type (and ``channels_last`` on CUDA).
    """

    eval_batch: int = Field(512, ge=1)
    latency_batch: int = Field(1, ge=1)
    latency_repeats: int = Field(20, ge=1, le=10_000)
    latency_budget_s: float = Field(10.0, gt=0, le=600)
    test_accuracy: bool = True
    collapse_plot: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 / fp16 on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class NumericsError(PrunesearchError, RuntimeError):
    """The candidate produced NaN or Inf outputs."""


@torch.no_grad()
def accuracy(model: nn.Module, x: Any, y: torch.Tensor, batch: int = 512, precision: str = "fp32") -> float:
    """Top-1 accuracy of ``model`` (eval mode) on images ``x`` and labels ``y`` (N,).

    ``x`` is a float32 (N, C, H, W) tensor, or a data split (``pipeline.data.store.Split``)
    whose raw images are normalised one batch at a time. ``precision`` (``fp32``, ``bf16``,
    ``fp16``) runs the forward passes under ``torch.autocast`` (``autocast``).

    Raises:
        NumericsError: if any logit is NaN or Inf.
    """
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    get = x.batch if hasattr(x, "batch") else (lambda i, j: x[i:j])
    for i in range(0, len(x), batch):
        with autocast(device, precision):
            logits = model(get(i, i + batch).to(device))
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
def latency_ms(
    model: nn.Module, input_shape: tuple[int, ...], batch: int, repeats: int, precision: str = "fp32", warmup: int = 3, budget_s: float | None = None
) -> float:
    """Median milliseconds of one eval forward pass of a (batch, *input_shape) input, after
    ``warmup`` untimed passes, under ``precision``'s autocast, over ``repeats`` timed passes
    (with ``budget_s``: those that fit in that many wall seconds, at least one). On CUDA each
    pass is timed with CUDA events (GPU time of the pass, not the launch); on CPU by wall clock."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.randn(batch, *input_shape, device=device)
    if device.type == "cuda" and precision != "fp32":
        x = x.contiguous(memory_format=torch.channels_last)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s if budget_s is not None else math.inf
    with autocast(device, precision):
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() >= deadline:
                break
    return statistics.median(times)
