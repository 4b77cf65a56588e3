"""Reconstruction: refit a pruned network's kept weights so each layer reproduces the dense one.

Layer by layer in execution order (sequential reconstruction, docs/methods.md section 8):
the inputs of layer k come from the pruned network whose layers before k are already
refit, the targets from the dense network on the same calibration images; each layer
solves ridge least squares on its im2col inputs (``pipeline.repair.lsq``). The target is the
layer's own output (a conv under a BatchNorm is fit before the BN). What stays fixed:
- channel plans: kept channels; consumers whose input channels were removed are
  refit from their kept inputs (ThiNet / He et al. 2017, second step). A refit layer
  that is itself a pruned producer fits the dense output at its kept channels.
- unstructured plans: masks; each output row solves its masked subsystem of the
  shared X^T X exactly (the OBS-family update), so zeros stay zero.

Skipped, with the reason in the report: a layer whose output channels differ from the
dense layer's without being a pruned producer (a depthwise conv inside a channel group:
each output sees only its own, unchanged input channel), non-zero padding modes and
string padding (``same``), which im2col does not reproduce, and (graph walk) a layer
called more than once.

How the networks are run, and the cost per candidate:
- graph walk (models torch.fx traces, e.g. every built-in model): both networks are
  executed node by node on all calibration images together, keeping only the live
  activations; at a refit layer the statistics are accumulated, the layer solved and
  rewritten, then the walk goes on with the new weights. Each layer runs once per
  network: about 2 forwards of ``images`` in all, plus the live activations of all
  images in memory, plus one (G, d, d) Cholesky per layer (unstructured: each row's
  kept block, k^3 / 3 flops for k kept weights).
- otherwise, forward hooks: for refit layer k both networks run on the images up to
  layer k only (about L/2 forwards each for L refit layers), batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch
from torch import fx, nn

from pipeline.pruning.plan import PrunePlan
from pipeline.repair.lsq import LayerFit
from pipeline.spec import ReconSpec

_LAYERS = (nn.Conv2d, nn.Linear)
_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)  # a pruned layer and its dense twin have one type


@dataclass
class ReconReport:
    """What reconstruction did.

    Attributes:
        layers: names of the refit layers, in execution order.
        skipped: layer name -> why it was not refit.
        error_before, error_after: per refit layer, relative squared output error
            ||Y - X W||^2 / ||Y||^2 on the calibration images, before and after its
            refit (inputs already from the refit layers before it).
        walk: ``graph`` (torch.fx walk, each layer run once) or ``hooks``.
    """

    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error_before: list[float] = field(default_factory=list)
    error_after: list[float] = field(default_factory=list)
    walk: str = ""

    def mean(self, which: list[float]) -> float:
        return float(sum(which) / len(which)) if which else 0.0


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def reconstruct(
    dense: nn.Module, pruned: nn.Module, images: torch.Tensor, spec: ReconSpec, plan: PrunePlan
) -> tuple[dict[str, torch.Tensor], ReconReport]:
    """Refit ``pruned`` in place on ``images`` against ``dense``.

    Args:
        dense: the dense base model (not modified); module names as in ``pruned``.
        pruned: the network ``plan`` produced (``pipeline.build.apply_plan``).
        images: calibration images (N, C, H, W), normalised; the first ``spec.images``
            are used (the stage takes its own count: callers pass all they have).
        spec: image count, ridge, batch size, which layers.
        plan: what was pruned (masks stay masks, kept channels stay kept).

    Returns:
        The refit state-dict entries (``NAME.weight``, ``NAME.bias``) of ``pruned``, and
        the report.
    """
    images = images[: spec.images]
    flags = {m: m.training for m in (*dense.modules(), *pruned.modules())}
    dense.eval(), pruned.eval()  # BN uses stored statistics; recalibration follows after
    try:
        graphs = _graphs(dense, pruned)
        report = ReconReport(walk="graph" if graphs else "hooks")
        if graphs:
            _graph_walk(dense, pruned, images, spec, plan, report, *graphs)
        else:
            _hook_walk(dense, pruned, images, spec, plan, report)
    finally:
        for m, flag in flags.items():
            m.training = flag
    mods = dict(pruned.named_modules())
    refit = {}
    for name in report.layers:
        for key in ("weight", "bias"):
            p = getattr(mods[name], key)
            if p is not None:
                refit[f"{name}.{key}"] = p.detach().clone()
    return refit, report


def _refit(fit: LayerFit, name: str, spec: ReconSpec, plan: PrunePlan, report: ReconReport) -> None:
    w0 = fit.current()
    w = fit.solve(spec.ridge, plan.masks.get(f"{name}.weight"))
    report.layers.append(name)
    report.error_before.append(fit.error(w0))
    report.error_after.append(fit.error(w))
    fit.write(w)


def _skip_reason(name: str, layer: _Layer, dlayer: _Layer | None, plan: PrunePlan, spec: ReconSpec) -> str:
    """Why ``layer`` is not refit; ``unchanged`` when pruning left it alone and only pruned
    layers are refit; empty when it is refit."""
    if dlayer is None or type(dlayer) is not type(layer):
        return "the dense model has no layer of this name and type"
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            return f"padding {layer.padding!r} ({layer.padding_mode}) is not reproduced by im2col"
        fan_in_cut = layer.in_channels != dlayer.in_channels
    else:
        fan_in_cut = layer.in_features != dlayer.in_features
    out_idx = plan.channels.get(name)
    want = dlayer.weight.shape[0] if out_idx is None else len(out_idx)
    if layer.weight.shape[0] != want:
        return "its output channels follow another layer's (a depthwise conv in a channel group)"
    changed = fan_in_cut or f"{name}.weight" in plan.masks
    return "" if changed or spec.layers == "all" else "unchanged"


def _selected(name: str, mods: dict, ref: dict, plan: PrunePlan, spec: ReconSpec, report: ReconReport) -> bool:
    why = _skip_reason(name, mods[name], ref.get(name), plan, spec)
    if why and why != "unchanged":
        report.skipped[name] = why
    return not why


# ---------------------------------------------------------------- graph walk


def _graphs(dense: nn.Module, pruned: nn.Module) -> tuple[fx.Graph, fx.Graph] | None:
    """Both networks' fx graphs when they trace and match node for node, else None."""
    try:
        gd, gp = fx.Tracer().trace(dense), fx.Tracer().trace(pruned)
    except Exception:  # untraceable forward: the hook walk needs no graph
        return None
    same = len(gd.nodes) == len(gp.nodes) and all((a.op, a.target) == (b.op, b.target) for a, b in zip(gd.nodes, gp.nodes))
    return (gd, gp) if same else None


def _graph_walk(dense, pruned, images, spec, plan, report, gd: fx.Graph, gp: fx.Graph) -> None:
    ref, mods = dict(dense.named_modules()), dict(pruned.named_modules())
    calls: dict[str, int] = {}
    for n in gp.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    twin = dict(zip(gp.nodes, gd.nodes))  # pruned node -> the same node of the dense graph
    last_use = {a: i for i, n in enumerate(gp.nodes) for a in n.all_input_nodes}
    batches = [images[i : i + spec.batch_size] for i in range(0, len(images), spec.batch_size)]
    env_d: dict[fx.Node, list[Any]] = {}
    env_p: dict[fx.Node, list[Any]] = {}
    for i, np_ in enumerate(gp.nodes):
        if np_.op == "output":
            break
        nd = twin[np_]
        env_d[nd] = _run(nd, dense, env_d, batches)
        name = np_.target if np_.op == "call_module" and isinstance(mods[np_.target], _LAYERS) else None
        if name is not None and calls[name] > 1:
            report.skipped[name] = "it is called more than once"
        elif name is not None and _selected(name, mods, ref, plan, spec, report):
            fit = LayerFit(mods[name], plan.channels.get(name))
            for b, y in enumerate(env_d[nd]):
                fit.add(env_p[np_.args[0]][b], y)
            _refit(fit, name, spec, plan, report)
        env_p[np_] = _run(np_, pruned, env_p, batches)  # with the refit weights
        for a in np_.all_input_nodes:
            if last_use[a] == i:  # keep only live activations
                env_p.pop(a, None)
                env_d.pop(twin[a], None)


def _batch_of(env: dict, b: int) -> Callable[[fx.Node], Any]:
    return lambda a: env[a][b]


def _run(node: fx.Node, model: nn.Module, env: dict, batches: list[torch.Tensor]) -> list[Any]:
    """The node's value for every batch."""
    if node.op == "placeholder":
        return list(batches)
    if node.op == "get_attr":
        assert isinstance(node.target, str)
        value = model
        for part in node.target.split("."):
            value = getattr(value, part)
        return [value] * len(batches)
    out = []
    target = node.target
    for b in range(len(batches)):
        args = fx.node.map_arg(node.args, _batch_of(env, b))
        kwargs = fx.node.map_arg(node.kwargs, _batch_of(env, b))
        if callable(target):  # call_function
            out.append(target(*args, **kwargs))
        elif node.op == "call_module":
            out.append(model.get_submodule(target)(*args, **kwargs))
        else:  # call_method
            out.append(getattr(args[0], target)(*args[1:], **kwargs))
    return out


# ---------------------------------------------------------------- hook walk


def _hook_walk(dense, pruned, images, spec, plan, report) -> None:
    order, calls = _execution_order(pruned, images[:1])
    ref, mods = dict(dense.named_modules()), dict(pruned.named_modules())
    for name in order:
        if not _selected(name, mods, ref, plan, spec, report):
            continue
        fit = LayerFit(mods[name], plan.channels.get(name))
        for i in range(0, len(images), spec.batch_size):
            xb = images[i : i + spec.batch_size]
            ins = _capture(pruned, mods[name], xb, calls[name], want_input=True)
            outs = _capture(dense, ref[name], xb, calls[name], want_input=False)
            for x, y in zip(ins, outs):
                fit.add(x, y)
        _refit(fit, name, spec, plan, report)


def _execution_order(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, int]]:
    """Conv/linear module names in the order of their first call, and their call counts."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, _LAYERS)}
    calls: dict[str, int] = {}

    def hook(m, inp, out):
        calls[names[m]] = calls.get(names[m], 0) + 1

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return list(calls), calls


def _capture(model: nn.Module, layer: nn.Module, x: torch.Tensor, calls: int, want_input: bool) -> list[torch.Tensor]:
    """Inputs (or outputs) of ``layer``'s ``calls`` calls on ``x``, stopping the forward after the last."""
    got: list[torch.Tensor] = []

    def hook(m, inp, out):
        got.append(inp[0] if want_input else out)
        if len(got) == calls:
            raise _Stop

    h = layer.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return got
