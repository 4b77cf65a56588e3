"""Physical (structured) channel pruning of conv nets, with its own dependency analysis.

A *channel group* is a ``Conv2d`` (``groups=1``) whose output channels can be removed
on their own: every path from its output, through its BatchNorm, elementwise
activations, depthwise convs and global pooling, ends in layers whose *input*
channels can shrink with it (a conv, or a ``Linear`` after pooling to 1x1 and
flattening). A conv whose output reaches an add, a concat, the model output or any
op not known to be channel-wise is left alone. That one rule is what makes residual
networks safe: the residual stream (including the CIFAR option-A shortcut
``F.pad(x[:, :, ::2, ::2], ...)``, which general pruners cannot follow) is never
pruned; only block-internal channels are.

The graph comes from ``torch.fx.symbolic_trace``; shapes (for MACs only) from one
forward of ``example_input``. Membership is decided from the graph alone, so
``shrink`` finds the same groups without an input.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pipeline.layers import stage_of

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "UnsupportedModelError",
    "cached_graph",
    "channel_graph",
    "check_forward",
    "select_channels",
    "shrink",
]


class UnsupportedModelError(ValueError):
    """The model cannot be channel-pruned; the message names the layer, why, and what to do."""


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


class _Term(NamedTuple):
    """MACs of one conv/linear call: ``coef * out * inp``, where ``out``/``inp`` are a
    fixed channel count or the name of the group that sets it."""

    coef: int
    out: int | str
    inp: int | str


@dataclass
class ChannelGraph:
    """The channel groups of a model and an exact analytic MACs model.

    Attributes:
        groups: prunable groups, in graph order.
        dense_macs: MACs of one forward of the dense model for one image of
            ``example_input``'s size (conv: out_h*out_w*weight.numel(); linear:
            weight.numel(); every call counted).
    """

    groups: list[ChannelGroup]
    dense_macs: int
    _terms: list[_Term] = field(default_factory=list, repr=False)

    def macs(self, keep: dict[str, int]) -> int:
        """MACs (one image) when group ``g`` keeps ``keep[g]`` channels (missing = all)."""
        sizes = {g.name: g.size for g in self.groups}
        for name, k in keep.items():
            if name not in sizes:
                raise ValueError(f"keep names {name!r}, which is not a channel group of this graph")
            if not 1 <= k <= sizes[name]:
                raise ValueError(f"group {name!r} must keep 1..{sizes[name]} channels, got {k}")
        width = {**sizes, **keep}

        def val(x: int | str) -> int:
            return width[x] if isinstance(x, str) else x

        return sum(t.coef * val(t.out) * val(t.inp) for t in self._terms)


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
        return node.args[1] == "shape"
    if node.op == "call_function" and node.target in _SHAPE_ARITH:
        return all(_is_shape_value(a) for a in node.all_input_nodes)
    return False


def _only_input(node: fx.Node, src: fx.Node) -> bool:
    """True if ``src`` is ``node``'s only tensor operand (others are numbers/shapes)."""
    return all(a is src or _is_shape_value(a) for a in node.all_input_nodes)


def _is_depthwise(m: nn.Module) -> bool:
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
        return start == 1 and end == -1
    if node.target in (torch.reshape, "view", "reshape"):
        sizes = node.args[1:]
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        return len(sizes) == 2 and sizes[1] == -1
    return False


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} module {node.target!r}"
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
        m = modules[node.target]
        if isinstance(m, nn.BatchNorm2d) and state != "vec":
            return "member", state
        if _is_depthwise(m) and state == "map":
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
            if calls[node.target] > 1:
                return f"its output reaches module {node.target!r}, which is called more than once"
            members.append(node)
            ends += action == "end"
        if action in ("pass", "member"):
            stack.extend((user, node, new_state) for user in node.users)
    if not ends:
        return "its output reaches no conv or linear layer"
    order = {n: i for i, n in enumerate(start.graph.nodes)}
    names = [n.target for n in sorted(members, key=order.__getitem__)]
    first = next(iter(start.users))
    norm = first.target if len(start.users) == 1 and isinstance(modules.get(first.target), nn.BatchNorm2d) else None
    consumers = tuple(n for n in names if n != norm)
    return ChannelGroup(start.target, modules[start.target].out_channels, norm, consumers, stage_of(start.target))


def _conv_nodes(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """Conv2d/Linear call nodes in graph (execution) order."""
    return [
        n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], (nn.Conv2d, nn.Linear))
    ]


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
        m = modules[node.target]
        if not isinstance(m, nn.Conv2d):
            continue
        if m.groups != 1:
            excluded[node.target] = f"it is a grouped conv (groups={m.groups}); its channels follow its input"
        elif calls[node.target] > 1:
            excluded[node.target] = "it is called more than once"
        else:
            result = _walk(node, modules, calls)
            if isinstance(result, str):
                excluded[node.target] = result
            else:
                found[node.target] = result
    return found, excluded


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:
        raise UnsupportedModelError(
            f"torch.fx cannot trace {_failing_module(model, exc)}: {type(exc).__name__}: {exc}. "
            "Channel pruning needs a traceable graph to know which layers share channels; "
            "use granularity 'unstructured' for this model, or remove data-dependent control flow from that forward."
        ) from exc


def _failing_module(model: nn.Module, exc: BaseException) -> str:
    """The innermost submodule whose forward was running when tracing failed."""
    names = {id(m): n for n, m in model.named_modules()}
    where = model
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        obj = frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in names:
            where = obj
    name = names[id(where)]
    return f"module {name!r} ({type(where).__name__})" if name else f"the model ({type(where).__name__})"


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block; every module's own flag is restored after."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags.items():
            m.training = flag


# ---------------------------------------------------------------- graph and MACs


def channel_graph(
    model: nn.Module, example_input: torch.Tensor, prune_stem: bool = True, prune_head: bool = True
) -> ChannelGraph:
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
    gm = _trace(model)
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
        raise UnsupportedModelError(
            f"no prunable channel group in {type(model).__name__}: {why}. "
            "Use granularity 'unstructured' for this model."
        )
    try:
        with _eval_mode(model):
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:
        raise UnsupportedModelError(
            f"{type(model).__name__} fails on example_input of shape {tuple(example_input.shape)}: {exc}; "
            "pass an input batch the model accepts"
        ) from exc
    graph = ChannelGraph(list(found.values()), 0, _mac_terms(layers, modules, found))
    graph.dense_macs = graph.macs({})
    return graph


def _mac_terms(layers: list[fx.Node], modules: dict[str, nn.Module], found: dict[str, ChannelGroup]) -> list[_Term]:
    """One ``_Term`` per conv/linear call, with widths tied to the groups that set them."""
    shrinks_in = {c: g for g, f in found.items() for c in f.consumers}
    terms = []
    for node in layers:
        m, name = modules[node.target], node.target
        group = shrinks_in.get(name)
        if isinstance(m, nn.Linear):
            terms.append(_Term(1, m.out_features, group or m.in_features))
            continue
        shape = node.meta["tensor_meta"].shape
        coef = shape[-1] * shape[-2] * m.kernel_size[0] * m.kernel_size[1]
        if m.groups > 1:  # depthwise in a group: one input per output channel
            terms.append(_Term(coef, group or m.out_channels, m.in_channels // m.groups))
        else:
            terms.append(_Term(coef, name if name in found else m.out_channels, group or m.in_channels))
    return terms


def cached_graph(model: nn.Module, ctx: Any, prune_stem: bool, prune_head: bool) -> ChannelGraph:
    """``channel_graph`` of ``model`` at ``ctx.example_input``, memoised in ``ctx.cache``."""
    key = ("channel_graph", id(model), prune_stem, prune_head)
    if key not in ctx.cache:
        ctx.cache[key] = channel_graph(model, ctx.example_input, prune_stem, prune_head)
    return ctx.cache[key]


# ---------------------------------------------------------------- selection


def select_channels(
    graph: ChannelGraph,
    scores: dict[str, torch.Tensor],
    target_macs_ratio: float,
    scope: str = "global",
    ratios: dict[str, float] | None = None,
    max_prune_fraction: float = 0.75,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """Channels to keep so that MACs <= ``target_macs_ratio * graph.dense_macs``.

    Args:
        graph: from ``channel_graph``.
        scores: group name -> (size,) importance, higher = keep. Groups without scores
            keep all their channels.
        target_macs_ratio: MACs of the pruned model / dense MACs, in (0, 1].
        scope: 'global' ranks all channels together, each group's scores divided by
            the group's mean absolute score (so layers with large raw scores do not
            dominate, while within-group order is unchanged); removes the lowest until
            the target is met (exact to one channel). 'layerwise': every group removes
            the same fraction f, found by bisection.
        ratios: stage -> multiplier on the removed fraction (per-stage allocation).
            When non-empty, group g loses the fraction ``f * ratio * base_g``, where
            ``base_g`` is what ``scope`` alone removes from g (global: the global
            ranking's fraction at the target; layerwise: 1), and the common factor f
            is found by bisection so that the target is met.
        max_prune_fraction: no group loses more than this fraction; one channel always stays.
        normalize: in global scope, divide each group's scores by their mean. Turn it
            off for scores already comparable across groups (OCS saliency, which is
            cost-scaled on purpose): normalising would cancel that cross-group signal.

    Returns:
        Group name -> sorted int64 indices of the kept output channels.

    Raises:
        ValueError: bad arguments, or the target is below the lowest reachable ratio.
    """
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if not 0.0 < target_macs_ratio <= 1.0:
        raise ValueError(f"target_macs_ratio must be in (0, 1], got {target_macs_ratio}")
    if not 0.0 <= max_prune_fraction < 1.0:
        raise ValueError(f"max_prune_fraction must be in [0, 1), got {max_prune_fraction}")
    sizes = _checked_sizes(graph, scores)
    caps = {g: min(int(max_prune_fraction * n + 1e-9), n - 1) for g, n in sizes.items()}
    budget = target_macs_ratio * graph.dense_macs

    def macs_of(removed: dict[str, int]) -> int:
        return graph.macs({g: sizes[g] - r for g, r in removed.items()})

    stage = {g.name: g.stage for g in graph.groups}
    mult = {g: max((ratios or {}).get(stage[g], 1.0), 0.0) for g in sizes}
    if scope == "layerwise":
        removed = _layerwise_removal(sizes, caps, mult, macs_of, budget)
    else:
        removed = _global_removal(scores, sizes, caps, macs_of, budget, normalize)
        if ratios and removed is not None:  # the global split, reshaped per stage
            base = {g: mult[g] * removed[g] / sizes[g] for g in sizes}
            removed = _layerwise_removal(sizes, caps, base, macs_of, budget)
    if removed is None:
        # a stage with multiplier 0 never prunes, so it is not in the lowest reachable point
        lowest = macs_of({g: caps[g] if mult[g] > 0 else 0 for g in sizes}) / graph.dense_macs
        raise ValueError(
            f"target_macs_ratio {target_macs_ratio} cannot be met: removing at most {max_prune_fraction:.0%} "
            f"of each group's channels, the lowest MACs ratio reachable is {lowest:.4f}"
        )
    return {g: _keep_highest(scores[g], sizes[g] - removed[g]) for g in sizes}


def _checked_sizes(graph: ChannelGraph, scores: dict[str, torch.Tensor]) -> dict[str, int]:
    sizes = {g.name: g.size for g in graph.groups}
    for name, s in scores.items():
        if name not in sizes:
            raise ValueError(f"scores name {name!r}, which is not a channel group; groups: {list(sizes)}")
        if tuple(s.shape) != (sizes[name],) or not torch.isfinite(s).all():
            raise ValueError(f"scores[{name!r}] must be finite with shape ({sizes[name]},), got {tuple(s.shape)}")
    if not scores:
        raise ValueError(f"scores is empty; score at least one of the groups {list(sizes)}")
    return {n: sizes[n] for n in sizes if n in scores}


def _global_removal(scores, sizes, caps, macs_of, budget, normalize: bool = True) -> dict[str, int] | None:
    """Removed count per group for the smallest prefix of the global order meeting ``budget``."""
    names = list(sizes)
    normed = [
        scores[n].detach().float() / (scores[n].detach().float().abs().mean().clamp_min(1e-12) if normalize else 1.0)
        for n in names
    ]
    owner = torch.cat([torch.full((sizes[n],), i) for i, n in enumerate(names)])
    owner = owner[torch.sort(torch.cat(normed), stable=True).indices]
    cap = torch.tensor([caps[n] for n in names])

    def removed(k: int) -> dict[str, int]:
        counts = torch.minimum(torch.bincount(owner[:k], minlength=len(names)), cap)
        return dict(zip(names, counts.tolist()))

    lo, hi = -1, owner.numel()  # macs at lo > budget >= macs at hi
    if macs_of(removed(hi)) > budget:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if macs_of(removed(mid)) <= budget else (mid, hi)
    return removed(hi)


def _layerwise_removal(sizes, caps, mult, macs_of, budget) -> dict[str, int] | None:
    """Removed counts for the smallest common fraction f (times ``mult``) meeting ``budget``."""

    def removed(f: float) -> dict[str, int]:
        return {g: min(int(round(f * mult[g] * n)), caps[g]) for g, n in sizes.items()}

    hi = max((1.0 / m for m in mult.values() if m > 0), default=0.0)  # every group at its cap
    if macs_of(removed(hi)) > budget:
        return None
    lo = 0.0
    if macs_of(removed(lo)) <= budget:
        return removed(lo)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if macs_of(removed(mid)) <= budget else (mid, hi)
    return removed(hi)


def _keep_highest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Sorted int64 indices of the ``k`` highest scores (ties: the lower index is removed first)."""
    order = torch.sort(scores.detach().float(), stable=True).indices
    return torch.sort(order[scores.numel() - k :]).values.to(torch.int64)


# ---------------------------------------------------------------- physical pruning


def shrink(model: nn.Module, channels: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with the channels not in ``channels`` physically removed.

    Args:
        model: the dense model (not modified).
        channels: group (producer conv) name -> int indices of the output channels to
            keep. Its BN, depthwise convs and consumers' inputs shrink with it.

    Raises:
        ValueError: a name is not a channel group of ``model``, or indices are invalid.
    """
    found, excluded = _analyse(_trace(model))
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    cut_out: dict[str, torch.Tensor] = {}
    cut_in: dict[str, torch.Tensor] = {}
    for name, idx in channels.items():
        if name not in found:
            why = excluded.get(name, "it is not a Conv2d of this model")
            raise ValueError(f"cannot prune channels of {name!r}: {why}; channel groups: {sorted(found)}")
        idx = _checked_index(name, idx, modules[name].out_channels)
        cut_out[name] = idx
        for member in (found[name].norm, *found[name].consumers):
            m = modules.get(member) if member else None
            if isinstance(m, nn.BatchNorm2d) or _is_depthwise(m):
                cut_out[member] = idx
            elif m is not None:
                cut_in[member] = idx
    with torch.no_grad():
        for name in {**cut_out, **cut_in}:
            _cut(modules[name], cut_out.get(name), cut_in.get(name))
    return out


def _checked_index(name: str, idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = torch.as_tensor(idx)
    if idx.ndim != 1 or idx.numel() == 0 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        got = f"{idx.dtype} {tuple(idx.shape)}"
        raise ValueError(f"channels[{name!r}] must be a non-empty 1-D integer tensor, got {got}")
    idx = torch.sort(idx.to(torch.int64)).values
    if idx[0] < 0 or idx[-1] >= size or torch.unique(idx).numel() != idx.numel():
        raise ValueError(f"channels[{name!r}] must be distinct indices in [0, {size}), got {idx.tolist()}")
    return idx


def _param(p: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(p.clone(), requires_grad=like.requires_grad)


def _cut(m: nn.Module, out: torch.Tensor | None, inp: torch.Tensor | None) -> None:
    """Keep output channels ``out`` and input channels ``inp`` of one module, in place."""
    if isinstance(m, nn.BatchNorm2d):
        m.num_features = len(out)
        for key in ("weight", "bias"):
            if getattr(m, key) is not None:
                setattr(m, key, _param(getattr(m, key)[out], getattr(m, key)))
        for key in ("running_mean", "running_var"):
            if getattr(m, key) is not None:
                setattr(m, key, getattr(m, key)[out].clone())
        return
    w = m.weight
    if out is not None:
        w = w[out]
        if m.bias is not None:
            m.bias = _param(m.bias[out], m.bias)
    if isinstance(m, nn.Linear):
        w = w[:, inp]
        m.in_features = len(inp)
    elif m.groups > 1:  # depthwise: groups and inputs follow the kept channels
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
        with _eval_mode(model):
            y = model(example_input)
    except Exception as exc:
        raise UnsupportedModelError(
            f"the pruned {type(model).__name__} fails on input {tuple(example_input.shape)}: "
            f"{type(exc).__name__}: {exc}. Its channel groups are inconsistent; use granularity 'unstructured'."
        ) from exc
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(expected_shape):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise UnsupportedModelError(
            f"the pruned {type(model).__name__} outputs {got}, expected {tuple(expected_shape)}; "
            "use granularity 'unstructured' for this model."
        )
