"""Prune an in-memory network without a search: one method, one target, one call.

``prune(model, method="magnitude", sparsity=0.8, calib=(x, y))`` runs the same code
path as a search candidate (``pipeline.build.build_candidate``): the method's plan,
channels removed, masks applied, (the kept weights refit, with ``reconstruct=True``,)
BatchNorm statistics recalibrated on the calibration images.

Its arguments are checked first, as the config path checks a config: every problem is an
``InputError`` naming the argument (``sparsity=``, ``calib`` labels, ``allocation``) and
what it expects.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from pydantic import ValidationError
from torch import nn

from pipeline.build import BuildContext, build_candidate
from pipeline.errors import InputError, excerpt
from pipeline.modes import eval_mode
from pipeline.pruning.layers import prunable_layers, stages
from pipeline.pruning.methods import get_method, list_methods
from pipeline.pruning.methods.base import PruningMethod
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec, Granularity, RecalSpec, ReconSpec, Scope

Data = tuple[torch.Tensor, torch.Tensor] | torch.Tensor
# CandidateSpec field -> the argument of ``prune`` that sets it
_ARGUMENT = {"target_sparsity": "sparsity", "target_macs_ratio": "macs_ratio", "recal": "recal_images"}


def prune(
    model: nn.Module,
    method: str = "magnitude",
    sparsity: float | None = None,
    macs_ratio: float | None = None,
    calib: Data | None = None,
    *,
    granularity: Granularity | None = None,
    scope: Scope = "global",
    knobs: Mapping[str, float] | None = None,
    allocation: Mapping[str, float] | None = None,
    train: Data | None = None,
    recal_images: int = 256,
    reconstruct: bool = False,
    prune_stem: bool = True,
    prune_head: bool = True,
    seed: int = 0,
) -> tuple[nn.Module, PrunePlan]:
    """A pruned copy of ``model`` (eval mode) and its plan. ``model`` itself is not changed,
    its train/eval flags included.

    Args:
        model: a trained network taking (N, C, H, W) float images.
        method: a registered method (``pipeline.pruning.methods.list_methods()``).
        sparsity: fraction of prunable (conv and linear) weights to remove, unstructured, in (0, 1).
        macs_ratio: fraction of dense MACs to keep, by removing channels, in (0, 1] (0.5: 2x fewer).
        calib: calibration images (N, C, H, W), finite floats normalised as for ``model``,
            and their integer class labels (N,) (``(x, y)``; labels only for methods that
            use them, e.g. ``screening``); they score weights and recalibrate BatchNorm.
        granularity: ``unstructured`` or ``channel``; by default from the target given.
        scope, knobs, prune_stem, prune_head, seed: as in ``CandidateSpec``.
        allocation: stage name (a module name's first component, e.g. ``layer1``) ->
            multiplier >= 0 on that stage's pruned fraction.
        train: training images and labels for methods that train (hyperflows, ocs);
            the calibration data by default.
        recal_images: calibration images used to recompute BatchNorm statistics (0: keep
            the stored ones).
        reconstruct: refit the kept weights on the calibration images first
            (``pipeline.repair.reconstruct``, default settings); the plan then carries them.

    Raises:
        InputError: a bad argument (the message names it and what it expects), or a
            method that does not support the request.
    """
    impl = _method(method)
    _check_model(model)
    _check_targets(impl, sparsity, macs_ratio, granularity)
    if calib is None:
        raise InputError("calib=(images, labels) is needed: images (N, C, H, W) normalised as the model expects")
    cx, cy = _data("calib", calib)
    tx, ty = _data("train", train) if train is not None else (cx, cy)
    _check_allocation(model, allocation, prune_stem, prune_head)
    spec = _spec(
        method=method,
        granularity=granularity or ("channel" if macs_ratio is not None else "unstructured"),
        scope=scope,
        target_sparsity=sparsity,
        target_macs_ratio=macs_ratio,
        knobs=dict(knobs or {}),
        allocation=dict(allocation or {}),
        prune_stem=prune_stem,
        prune_head=prune_head,
        recal=RecalSpec(images=min(recal_images, len(cx))) if isinstance(recal_images, int) and recal_images >= 0 else {"images": recal_images},
        reconstruct=ReconSpec(mode="lsq" if reconstruct else "none", images=min(ReconSpec().images, len(cx))),
        seed=seed,
    )
    with eval_mode(model):  # the caller's train/eval flags are restored after
        num_classes = _num_classes(model, cx)
        for name, y in (("calib", cy), ("train", ty)):
            if y is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                raise InputError(
                    f"{name} labels: class indices must be in [0, {num_classes}) for this model's {num_classes} outputs, got {int(y.min())}..{int(y.max())}"
                )
        if cy is None:
            if impl.needs_labels or impl.trains:
                raise InputError(f"method {method!r} needs labels: pass calib=(images, labels)")
            cy = torch.zeros(len(cx), dtype=torch.int64)
            ty = cy if ty is None else ty
        if ty is None:  # train images without labels (the calibration images have some)
            if impl.trains:
                raise InputError(f"method {method!r} trains: pass train=(images, labels)")
            ty = torch.zeros(len(tx), dtype=torch.int64)  # never read: the method does not train
        ctx = BuildContext(calib_x=cx, calib_y=cy, train_x=tx, train_y=ty, example_input=cx[:1], num_classes=num_classes)
        built = build_candidate(model, ctx, spec)
    return built.model.eval(), built.plan


def _method(method: Any) -> PruningMethod:
    if not isinstance(method, str):
        raise InputError(f"method={excerpt(method)}: give a method's name, one of {list_methods()}")
    return get_method(method)  # an unknown name: a RegistryError naming the closest


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"model: a torch nn.Module is expected, got {type(model).__name__}")
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise InputError(
            "model: its tensors are on the meta device (shapes without values); materialise them first, "
            "e.g. model.to_empty(device='cpu') and then model.load_state_dict(trained_weights)"
        )
    if not prunable_layers(model):
        raise InputError(f"model: {type(model).__name__} has no Conv2d or Linear layer, so there is nothing to prune")


def _check_targets(impl: PruningMethod, sparsity: Any, macs_ratio: Any, granularity: Any) -> None:
    for name, value, bounds, what in (
        ("sparsity", sparsity, "(0, 1)", "the fraction of prunable weights to remove, e.g. 0.8"),
        ("macs_ratio", macs_ratio, "(0, 1]", "the fraction of dense MACs to keep, e.g. 0.5 for 2x fewer"),
    ):
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or not (0 < value < 1 if name == "sparsity" else 0 < value <= 1):
            raise InputError(f"{name}={excerpt(value)}: a number in {bounds} is expected, {what}")
    if granularity not in (None, "unstructured", "channel"):
        raise InputError(f"granularity={excerpt(granularity)}: 'unstructured' (single weights) or 'channel' (whole channels) is expected")
    if impl.target == "outcome":
        return  # the knobs set the size
    if (sparsity is None) == (macs_ratio is None):
        raise InputError("give exactly one target: sparsity= (weights removed) or macs_ratio= (MACs kept)")
    if granularity == "channel" and macs_ratio is None:
        raise InputError(
            "granularity='channel' removes whole channels to a MACs target: pass macs_ratio= (fraction of dense MACs kept, e.g. 0.5), not sparsity="
        )
    if granularity == "unstructured" and sparsity is None:
        raise InputError(
            "granularity='unstructured' removes single weights to a sparsity: pass sparsity= (fraction of weights removed, e.g. 0.8), not macs_ratio="
        )


def _data(name: str, data: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images and (int64) labels of argument ``name``, checked."""
    if isinstance(data, torch.Tensor):
        x, y = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise InputError(f"{name}: images (N, C, H, W) or a pair (images, labels) is expected, got {type(data).__name__}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point() or len(x) == 0:
        raise InputError(f"{name} images: a non-empty float tensor (N, C, H, W) is expected, got {_describe(x)}")
    bad = int((~torch.isfinite(x).flatten(1).all(1)).sum())
    if bad:
        raise InputError(f"{name} images: {bad} of {len(x)} images hold NaN or infinite values; pass finite, normalised images")
    if y is None:
        return x, None
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{name} labels: integer class indices of shape (N,) are expected, got {_describe(y)} (class indices: labels.long())")
    if len(y) != len(x):
        raise InputError(f"{name}: {len(x)} images but {len(y)} labels")
    return x, y.to(torch.int64)


def _describe(t: Any) -> str:
    return f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Outputs of ``model`` on one calibration image; images that do not fit it are refused."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None and x.shape[1] != first.in_channels:
        raise InputError(f"calib images: {x.shape[1]} channels (N, C, H, W), but the model's first conv takes {first.in_channels}")
    try:
        with torch.no_grad():
            out = model(x[:1])
    except RuntimeError as e:
        raise InputError(f"calib images of shape {tuple(x.shape[1:])} (C, H, W) do not fit the model: {str(e)[:200]}") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise InputError(f"model: class logits (N, classes) are expected from it, got {_describe(out)}")
    return int(out.shape[1])


def _check_allocation(model: nn.Module, allocation: Mapping[str, float] | None, prune_stem: bool, prune_head: bool) -> None:
    if not allocation:
        return
    for stage, mult in allocation.items():
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult < 0:
            raise InputError(
                f"allocation[{stage!r}]={excerpt(mult)}: a multiplier >= 0 is expected (0: the stage is not pruned; 1: as scope alone would)"
            )
    known = stages(model, prune_stem, prune_head)
    unknown = sorted(set(allocation) - set(known))
    if unknown:
        raise InputError(
            f"allocation: {', '.join(map(repr, unknown))} is no stage of this model with prunable layers; its stages are {', '.join(known)}"
        )


def _spec(**fields: Any) -> CandidateSpec:
    """The spec of ``prune``'s arguments; a field it refuses is named by its argument."""
    try:
        return CandidateSpec(**fields)
    except ValidationError as e:
        problems = [f"{_ARGUMENT.get(str(err['loc'][0]), err['loc'][0]) if err['loc'] else 'arguments'}: {err['msg']}" for err in e.errors()]
        raise InputError("; ".join(problems)) from None
