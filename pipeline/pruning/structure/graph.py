"""Which output channels of a conv net can be removed together: the fx dependency analysis.

A *channel group* is a ``Conv2d`` (``groups=1``) whose output channels can be removed
on their own: every path from its output, through its BatchNorm, elementwise
activations, depthwise convs and global pooling, ends in layers whose *input*
channels can shrink with it (a conv, or a ``Linear`` after pooling to 1x1 and
flattening). A conv whose output reaches an add, a concat, the model output or any
op not known to be channel-wise is left alone. That one rule is what makes residual
networks safe: the residual stream (including the CIFAR option-A shortcut
``F.pad(x[:, :, ::2, ::2], ...)``, which general pruners cannot follow) is never
pruned; only block-internal channels are.

The graph comes from ``torch.fx.symbolic_trace``; shapes (for the MACs model of
``pipeline.pruning.structure.macs`` only) from one forward of ``example_input``. Membership is
decided from the graph alone, so ``surgery.shrink`` finds the same groups without an input.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pipeline.errors import InputError
from pipeline.modes import eval_mode
from pipeline.pruning.layers import stage_of
from pipeline.pruning.structure.macs import MacTerm, count_macs, mac_terms
from pipeline.pruning.structure.trace import UnsupportedModelError, trace_model

__all__ = ["ChannelGraph", "ChannelGroup", "UnsupportedModelError", "cached_graph", "channel_graph"]


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable set of coupled channels.

    Attributes:
        name: module name of the producer ``Conv2d`` whose output channels are pruned.
        size: its number of output channels.
        norm: module name of the ``BatchNorm2d`` directly after it, or ``None``.
        consumers: modules whose input channels shrink with it (next conv / linear,
            plus any depthwise conv and BatchNorm on the way).
        stage: first dotted component of ``name``, the unit of per-stage allocation.
    """

    name: str
    size: int
    norm: str | None
    consumers: tuple[str, ...]
    stage: str


@dataclass
class ChannelGraph:
    """The channel groups of a model and an exact analytic MACs model.

    Attributes:
        groups: prunable groups, in graph order.
        dense_macs: MACs of one forward of the dense model for one image of
            ``example_input``'s size (conv: out_h*out_w*weight.numel(); linear:
            weight.numel(); every call counted).
        excluded: Conv2d name -> why it is not a group (for error messages).
    """

    groups: list[ChannelGroup]
    dense_macs: int
    _terms: list[MacTerm] = field(default_factory=list, repr=False)
    excluded: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def sizes(self) -> dict[str, int]:
        """Group name -> its number of output channels, in ``groups`` order."""
        return {g.name: g.size for g in self.groups}

    def macs(self, keep: dict[str, int]) -> int:
        """MACs (one image) when group ``g`` keeps ``keep[g]`` channels (missing = all)."""
        sizes = self.sizes
        for name, k in keep.items():
            size = sizes.get(name)
            if size is None:
                raise InputError(f"keep names {name!r}, which is not a channel group of this graph")
            if not 1 <= k <= size:
                raise InputError(f"group {name!r} must keep 1..{size} channels, got {k}")
        return count_macs(self._terms, {**sizes, **keep})


# ---------------------------------------------------------------- dependency analysis

_ACT_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish,
    nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip
_ACT_FUNCS = {
    F.relu, F.relu6, F.hardswish, F.silu, F.gelu, F.leaky_relu, F.elu, F.mish, F.sigmoid,
    F.hardsigmoid, F.tanh, F.dropout, F.dropout2d, torch.relu, torch.sigmoid, torch.tanh,
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.mul,
}  # fmt: skip
_ACT_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "add", "mul", "div"}
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_SHAPE_METHODS = {"size", "dim", "numel"}
_SHAPE_ARITH = {operator.getitem, operator.add, operator.sub, operator.mul, operator.floordiv}


def _is_shape_value(node: Any) -> bool:
    """Whether ``node`` is a number derived from tensor shapes (not a tensor)."""
    if not isinstance(node, fx.Node):
        return True
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr:
        return bool(node.args[1] == "shape")
    if node.op == "call_function" and node.target in _SHAPE_ARITH:
        return all(_is_shape_value(a) for a in node.all_input_nodes)
    return False


def _only_input(node: fx.Node, src: fx.Node) -> bool:
    """True if ``src`` is ``node``'s only tensor operand (others are numbers/shapes)."""
    return all(a is src or _is_shape_value(a) for a in node.all_input_nodes)


def is_depthwise(m: nn.Module | None) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _is_global_pool(node: fx.Node, m: nn.Module | None) -> bool:
    if m is not None:
        size = getattr(m, "output_size", None)
    else:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
    return size in (1, (1, 1), [1, 1])


def _is_flatten(node: fx.Node) -> bool:
    """``flatten(x, 1)`` or ``view/reshape(x, n, -1)``: (N, C, 1, 1) -> (N, C)."""
    if node.target in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return bool(start == 1 and end == -1)
    if node.target in (torch.reshape, "view", "reshape"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        return bool(len(sizes) == 2 and sizes[1] == -1)
    return False


def _module_name(node: fx.Node) -> str:
    """The module a ``call_module`` node calls (fx types every target as ``str | Callable``)."""
    assert isinstance(node.target, str), f"{node.op} node {node.name!r} has no module name"
    return node.target


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[_module_name(node)]).__name__} module {node.target!r}"
    if node.op == "output":
        return "the model output"
    return f"{getattr(node.target, '__name__', node.target)} (graph node {node.name!r})"


def _step(node: fx.Node, src: fx.Node, state: str, modules: dict[str, nn.Module]) -> tuple[str, str | None]:
    """How a channel-tracked tensor in ``state`` ('map', 'pooled' or 'vec') passes ``node``.

    Returns (action, new state or None): action 'pass' (member-free), 'member' (a
    depthwise conv / BN whose channels follow), 'end' (a consumer), 'ignore' (a shape
    query) or 'stop' (channels are tied or unknown there).
    """
    if node.op == "call_module":
        m = modules[_module_name(node)]
        if isinstance(m, nn.BatchNorm2d) and state != "vec":
            return "member", state
        if is_depthwise(m) and state == "map":
            return "member", state
        if isinstance(m, nn.Conv2d) and m.groups == 1 and state != "vec":
            return "end", None
        if isinstance(m, nn.Linear) and state == "vec":
            return "end", None
        if isinstance(m, _ACT_MODULES):
            return "pass", state
        if isinstance(m, _POOL_MODULES) and state == "map":
            return "pass", "pooled" if _is_global_pool(node, m) else "map"
        if isinstance(m, nn.Flatten) and (m.start_dim, m.end_dim) == (1, -1) and state in ("pooled", "vec"):
            return "pass", "vec"
        return "stop", None
    if node.op not in ("call_function", "call_method"):
        return "stop", None
    if node.target in _SHAPE_METHODS or node.target is getattr:
        return "ignore", None
    if not _only_input(node, src):
        return "stop", None  # a second tensor operand (add, cat, mul by a tensor) ties channels
    if node.target in _ACT_FUNCS or node.target in _ACT_METHODS:
        return "pass", state
    if node.target in _POOL_FUNCS and state == "map" and not node.kwargs.get("return_indices"):
        return "pass", "pooled" if _is_global_pool(node, None) else "map"
    if _is_flatten(node) and state in ("pooled", "vec"):
        return "pass", "vec"
    return "stop", None


def _walk(start: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> ChannelGroup | str:
    """Follow ``start``'s output channels; the group found, or why there is none."""
    members: list[fx.Node] = []
    ends = 0
    stack = [(user, start, "map") for user in start.users]
    seen: set[fx.Node] = set()
    while stack:
        node, src, state = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        action, new_state = _step(node, src, state, modules)
        if action == "stop":
            return f"its output reaches {_describe(node, modules)}, which ties its channels or is not channel-wise"
        if action in ("member", "end"):
            if calls[_module_name(node)] > 1:
                return f"its output reaches module {node.target!r}, which is called more than once"
            members.append(node)
            ends += action == "end"
        if action in ("pass", "member"):
            assert new_state is not None  # _step gives a state with these actions
            stack.extend((user, node, new_state) for user in node.users)
    if not ends:
        return "its output reaches no conv or linear layer"
    order = {n: i for i, n in enumerate(start.graph.nodes)}
    names = [_module_name(n) for n in sorted(members, key=order.__getitem__)]
    first = next(iter(start.users))
    bn = len(start.users) == 1 and isinstance(first.target, str) and isinstance(modules.get(first.target), nn.BatchNorm2d)
    norm = _module_name(first) if bn else None
    consumers = tuple(n for n in names if n != norm)
    name = _module_name(start)
    conv = modules[name]
    assert isinstance(conv, nn.Conv2d)  # _analyse walks from convs only
    return ChannelGroup(name, conv.out_channels, norm, consumers, stage_of(name))


def _conv_nodes(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """Conv2d/Linear call nodes in graph (execution) order."""
    return [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], (nn.Conv2d, nn.Linear))]


def _analyse(gm: fx.GraphModule) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """Groups by producer name (graph order), and the reason each other Conv2d is not one."""
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    found: dict[str, ChannelGroup] = {}
    excluded: dict[str, str] = {}
    for node in _conv_nodes(gm, modules):
        name = _module_name(node)
        m = modules[name]
        if not isinstance(m, nn.Conv2d):
            continue
        if m.groups != 1:
            excluded[name] = f"it is a grouped conv (groups={m.groups}); its channels follow its input"
        elif calls[name] > 1:
            excluded[name] = "it is called more than once"
        else:
            result = _walk(node, modules, calls)
            if isinstance(result, str):
                excluded[name] = result
            else:
                found[name] = result
    return found, excluded


def traced_groups(model: nn.Module) -> tuple[dict[str, ChannelGroup], dict[str, str]]:
    """Groups of ``model`` by producer name, from its traced graph alone (no input, all
    convs eligible), and the reason each other Conv2d is not one."""
    return _analyse(trace_model(model))


def channel_graph(model: nn.Module, example_input: torch.Tensor, prune_stem: bool = True, prune_head: bool = True) -> ChannelGraph:
    """The channel groups of ``model`` and its MACs model at ``example_input``'s size.

    Args:
        model: the dense model (not modified; its train/eval flags are restored).
        example_input: a batch (N, C, H, W); MACs are per image.
        prune_stem: if False, the first conv (graph order) is not a group.
        prune_head: if False, the last conv/linear (the classifier) keeps its inputs,
            so a group it consumes is dropped.

    Raises:
        UnsupportedModelError: the model does not trace, or has no prunable group.
    """
    gm = trace_model(model)
    modules = dict(gm.named_modules())
    found, excluded = _analyse(gm)
    layers = _conv_nodes(gm, modules)
    if layers and not prune_stem and layers[0].target in found:
        excluded[layers[0].target] = "it is the stem and prune_stem is False"
        del found[layers[0].target]
    if layers and not prune_head:
        head = layers[-1].target
        for name in [n for n, f in found.items() if head in f.consumers]:
            excluded[name] = f"it feeds the head {head!r} and prune_head is False"
            del found[name]
    if not found:
        why = "; ".join(f"{n}: {r}" for n, r in list(excluded.items())[:6]) or "it has no Conv2d"
        raise UnsupportedModelError(f"no prunable channel group in {type(model).__name__}: {why}. Use granularity 'unstructured' for this model.")
    try:
        with eval_mode(model), torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{type(model).__name__} fails on example_input of shape {tuple(example_input.shape)}: {exc}; pass an input batch the model accepts"
        ) from exc
    consumed_by = {c: g for g, f in found.items() for c in f.consumers}
    graph = ChannelGraph(list(found.values()), 0, mac_terms(layers, modules, consumed_by, set(found)), excluded)
    graph.dense_macs = graph.macs({})
    return graph


def cached_graph(model: nn.Module, ctx: Any, prune_stem: bool, prune_head: bool) -> ChannelGraph:
    """``channel_graph`` of ``model`` at ``ctx.example_input``, memoised in ``ctx.cache``."""
    key = ("channel_graph", id(model), prune_stem, prune_head)
    if key not in ctx.cache:
        ctx.cache[key] = channel_graph(model, ctx.example_input, prune_stem, prune_head)
    return ctx.cache[key]
