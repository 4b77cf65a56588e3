"""Surgery: physically removing channels from a model, and checking the result runs.

``shrink`` cuts the producer conv's output channels of each group, and with them its
BatchNorm, depthwise convs and the consumers' input channels (groups from
``pipeline.pruning.structure.graph``). ``check_forward`` is the guard after it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.modes import eval_mode
from pipeline.pruning.structure.graph import ChannelGraph, ChannelGroup, UnsupportedModelError, is_depthwise, traced_groups

__all__ = ["check_forward", "shrink"]


def shrink(model: nn.Module, channels: dict[str, torch.Tensor], graph: ChannelGraph | None = None) -> nn.Module:
    """A deep copy of ``model`` with the channels not in ``channels`` physically removed.

    Args:
        model: the dense model (not modified).
        channels: group (producer conv) name -> int indices of the output channels to
            keep. Its BN, depthwise convs and consumers' inputs shrink with it.
        graph: ``model``'s channel graph (e.g. from ``cached_graph``), so ``model`` is
            not traced again; only its groups can then be cut (one built with
            ``prune_stem=False`` refuses the stem). None: trace ``model``.

    Raises:
        ValueError: a name is not a channel group of ``model``, indices are invalid,
            or ``graph`` does not describe ``model``.
    """
    found, excluded = traced_groups(model) if graph is None else ({g.name: g for g in graph.groups}, graph.excluded)
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    cut_out: dict[str, torch.Tensor] = {}
    cut_in: dict[str, torch.Tensor] = {}
    for name, idx in channels.items():
        if name not in found:
            why = excluded.get(name, "it is not a Conv2d of this model")
            raise InputError(f"cannot prune channels of {name!r}: {why}; channel groups: {sorted(found)}")
        if graph is not None:
            _check_group_of(found[name], modules)
        idx = _checked_index(name, idx, modules[name].out_channels)
        cut_out[name] = idx
        for member in (found[name].norm, *found[name].consumers):
            if not member:
                continue
            m = modules.get(member)
            if isinstance(m, nn.BatchNorm2d) or is_depthwise(m):
                cut_out[member] = idx
            elif m is not None:
                cut_in[member] = idx
    with torch.no_grad():
        for name in {**cut_out, **cut_in}:
            _cut(modules[name], cut_out.get(name), cut_in.get(name))
    return out


def _check_group_of(group: ChannelGroup, modules: dict[str, nn.Module]) -> None:
    """Raise ``ValueError`` unless ``group`` (from a given graph) names layers of this model."""
    conv = modules.get(group.name)
    missing = [n for n in (group.norm, *group.consumers) if n and n not in modules]
    if not isinstance(conv, nn.Conv2d) or conv.out_channels != group.size or missing:
        raise InputError(
            f"the graph passed to shrink is not this model's: its group {group.name!r} ({group.size} channels"
            f"{', members ' + str(missing) if missing else ''}) does not match; pass this model's graph or none"
        )


def _checked_index(name: str, idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = torch.as_tensor(idx)
    if idx.ndim != 1 or idx.numel() == 0 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        got = f"{idx.dtype} {tuple(idx.shape)}"
        raise InputError(f"channels[{name!r}] must be a non-empty 1-D integer tensor, got {got}")
    idx = torch.sort(idx.to(torch.int64)).values
    if idx[0] < 0 or idx[-1] >= size or torch.unique(idx).numel() != idx.numel():
        raise InputError(f"channels[{name!r}] must be distinct indices in [0, {size}), got {idx.tolist()}")
    return idx


def _param(p: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(p.clone(), requires_grad=like.requires_grad)


def _cut(m: nn.Module, out: torch.Tensor | None, inp: torch.Tensor | None) -> None:
    """Keep output channels ``out`` and input channels ``inp`` of one module, in place."""
    if isinstance(m, nn.BatchNorm2d):
        assert out is not None  # a norm's channels follow its group's producer
        m.num_features = len(out)
        for key in ("weight", "bias"):
            if getattr(m, key) is not None:
                setattr(m, key, _param(getattr(m, key)[out], getattr(m, key)))
        for key in ("running_mean", "running_var"):
            if getattr(m, key) is not None:
                setattr(m, key, getattr(m, key)[out].clone())
        return
    assert isinstance(m, (nn.Conv2d, nn.Linear)), f"cannot cut channels of {type(m).__name__}"
    w = m.weight
    if out is not None:
        w = w[out]
        if m.bias is not None:
            m.bias = _param(m.bias[out], m.bias)
    if isinstance(m, nn.Linear):
        assert inp is not None  # a linear layer is only ever a consumer
        w = w[:, inp]
        m.in_features = len(inp)
    elif m.groups > 1:  # depthwise: groups and inputs follow the kept channels
        assert out is not None  # a depthwise conv is a member: cut_out
        m.groups = m.in_channels = len(out)
    elif inp is not None:
        w = w[:, inp]
        m.in_channels = len(inp)
    if isinstance(m, nn.Conv2d):
        m.out_channels = w.shape[0]
    m.weight = _param(w, m.weight)


def check_forward(model: nn.Module, example_input: torch.Tensor, expected_shape: tuple[int, ...]) -> None:
    """Run an eval, no-grad forward; raise ``UnsupportedModelError`` if it fails or the
    output shape is not ``expected_shape``. Train/eval flags are restored."""
    try:
        with eval_mode(model), torch.no_grad():
            y = model(example_input)
    except Exception as exc:
        raise UnsupportedModelError(
            f"the pruned {type(model).__name__} fails on input {tuple(example_input.shape)}: "
            f"{type(exc).__name__}: {exc}. Its channel groups are inconsistent; use granularity 'unstructured'."
        ) from exc
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(expected_shape):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise UnsupportedModelError(
            f"the pruned {type(model).__name__} outputs {got}, expected {tuple(expected_shape)}; use granularity 'unstructured' for this model."
        )
