"""Reconstruction: refit a pruned network's kept weights so each layer reproduces the dense one.

Layer by layer in execution order (sequential reconstruction, docs/methods.md section 8):
the inputs of layer k come from the pruned network whose layers before k are already
refit, the targets from the dense network on the same calibration images; each layer
solves ridge least squares on its inputs (``pipeline.repair.lsq``: im2col for a conv,
one row per token for a Linear on (B, T, C)). The target is the layer's own output (a
conv under a BatchNorm is fit before the BN). What stays fixed:
- channel plans: kept channels; consumers whose input channels were removed are
  refit from their kept inputs (ThiNet / He et al. 2017, second step). A refit layer
  that is itself a pruned producer fits the dense output at its kept channels; a
  depthwise conv inside a channel group fits them per channel (its own input only).
- unstructured plans: masks; each output row solves its masked subsystem of the
  shared X^T X exactly (``pipeline.repair.masked``), so zeros stay zero.
- ``nn.MultiheadAttention`` (self-attention): its ``in_proj_weight`` against the dense
  q, k, v projections, then its ``out_proj`` on the refit attention output.

Skipped, with the reason in the report: non-zero padding modes and string padding
(``same``), which im2col does not reproduce, a layer called more than once, attention
calls other than plain self-attention, and (hook walk) attention modules.

How the networks are run:
- segment walk (models torch.fx traces, e.g. every built-in model;
  ``pipeline.repair.walk``): the graph is cut before each refit layer and run segment
  by segment, batch by batch; only the values crossing a cut are held for all images,
  within ``max_memory_gb`` (offloaded to CPU memory or files beyond it). Each node runs
  once per network: about 2 forwards of ``images`` in all.
- otherwise, forward hooks: for refit layer k both networks run on the images up to
  layer k only (about L/2 forwards each for L refit layers), batch by batch.
Progress: ``on_progress(done, total)`` after each refit layer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import fx, nn

from pipeline.pruning.plan import PrunePlan
from pipeline.repair.held import HeldValues
from pipeline.repair.lsq import LayerFit
from pipeline.repair.walk import Cut, SegmentWalk, attention_unsupported
from pipeline.spec import ReconSpec

log = logging.getLogger(__name__)

_LAYERS = (nn.Conv2d, nn.Linear)
_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)  # a pruned layer and its dense twin have one type
Progress = Callable[[int, int], None]


@dataclass
class ReconReport:
    """What reconstruction did.

    Attributes:
        layers: names of the refit layers, in execution order (an attention module's
            ``NAME`` (in_proj) and ``NAME.out_proj``).
        skipped: layer name -> why it was not refit.
        error_before, error_after: per refit layer, relative squared output error
            ||Y - X W||^2 / ||Y||^2 on the calibration images, before and after its
            refit (inputs already from the refit layers before it).
        walk: ``graph`` (segment walk, each layer run once) or ``hooks``.
        underdetermined: refit layer name -> (samples, inputs) where the calibration
            images gave fewer rows of X than the layer has inputs per output: the fit
            then rests on the ridge alone (more ``images`` fix it).
        solve_s: seconds spent in the solves (the rest: forwards and X^T X products).
        held_peak_bytes: most bytes of held activations resident at once; offloaded_bytes:
            bytes moved to CPU memory or files because the budget was full.
    """

    layers: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    error_before: list[float] = field(default_factory=list)
    error_after: list[float] = field(default_factory=list)
    walk: str = ""
    underdetermined: dict[str, tuple[int, int]] = field(default_factory=dict)
    solve_s: float = 0.0
    held_peak_bytes: int = 0
    offloaded_bytes: int = 0

    def mean(self, which: list[float]) -> float:
        return float(sum(which) / len(which)) if which else 0.0


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


@torch.no_grad()
def reconstruct(
    dense: nn.Module, pruned: nn.Module, images: torch.Tensor, spec: ReconSpec, plan: PrunePlan, on_progress: Progress | None = None
) -> tuple[dict[str, torch.Tensor], ReconReport]:
    """Refit ``pruned`` in place on ``images`` against ``dense``.

    Args:
        dense: the dense base model (not modified); module names as in ``pruned``.
        pruned: the network ``plan`` produced (``pipeline.build.apply_plan``).
        images: calibration images (N, C, H, W), normalised; the first ``spec.images``
            are used (the stage takes its own count: callers pass all they have).
        spec: image count, ridge, batch size, memory budget, which layers.
        plan: what was pruned (masks stay masks, kept channels stay kept).
        on_progress: called as ``on_progress(layers done, layers to refit)``.

    Returns:
        The refit state-dict entries (``NAME.weight``, ``NAME.bias``; attention:
        ``NAME.in_proj_weight``, ``NAME.in_proj_bias``) of ``pruned``, and the report.
    """
    images = images[: spec.images]
    flags = {m: m.training for m in (*dense.modules(), *pruned.modules())}
    dense.eval(), pruned.eval()  # BN uses stored statistics; recalibration follows after
    follows = _depthwise_followers(dense, pruned, plan)
    try:
        graphs = _graphs(dense, pruned)
        report = ReconReport(walk="graph" if graphs else "hooks")
        if graphs:
            _segment_walk(dense, pruned, images, spec, plan, report, follows, on_progress, *graphs)
        else:
            _hook_walk(dense, pruned, images, spec, plan, report, follows, on_progress)
    finally:
        for m, flag in flags.items():
            m.training = flag
    params = dict(pruned.named_parameters())
    refit = {}
    for name in report.layers:
        is_mha = isinstance(pruned.get_submodule(name), nn.MultiheadAttention)
        for key in ("in_proj_weight", "in_proj_bias") if is_mha else ("weight", "bias"):
            if f"{name}.{key}" in params:
                refit[f"{name}.{key}"] = params[f"{name}.{key}"].detach().clone()
    return refit, report


class _Solver:
    """Solves a layer's accumulated fit, writes it and reports it (and the progress)."""

    def __init__(self, spec: ReconSpec, plan: PrunePlan, report: ReconReport, total: int, on_progress: Progress | None) -> None:
        self.spec, self.plan, self.report, self.total, self.on_progress = spec, plan, report, total, on_progress
        self.done = 0
        self.t0 = time.monotonic()

    def __call__(self, fit: LayerFit, name: str, mask_key: str) -> None:
        t0 = time.perf_counter()
        if fit.samples < fit.inputs:
            self.report.underdetermined[name] = (fit.samples, fit.inputs)
            log.warning(
                "reconstruction of %s: %d calibration samples for %d inputs per output (underdetermined; "
                "the fit rests on the ridge alone): raise reconstruction.images",
                name,
                fit.samples,
                fit.inputs,
            )
        w0 = fit.current()
        w = fit.solve(self.spec.ridge, self.plan.masks.get(mask_key))
        self.report.layers.append(name)
        self.report.error_before.append(fit.error(w0))
        self.report.error_after.append(fit.error(w))
        fit.write(w)
        self.report.solve_s += time.perf_counter() - t0

    def step(self) -> None:
        self.done += 1
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)


def _depthwise_followers(dense: nn.Module, pruned: nn.Module, plan: PrunePlan) -> dict[str, torch.Tensor]:
    """Depthwise convs whose channels follow a pruned group: name -> the kept channels."""
    if not plan.channels:
        return {}
    from pipeline.pruning.structure.graph import traced_groups  # only channel plans need the graph

    mods = dict(pruned.named_modules())
    out = {}
    for g in traced_groups(dense)[0].values():
        for c in g.consumers if g.name in plan.channels else ():
            m = mods.get(c)
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels:
                out[c] = plan.channels[g.name]
    return out


def _skip_reason(name: str, layer: _Layer, dlayer: _Layer | None, plan: PrunePlan, spec: ReconSpec, follows: dict) -> str:
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
    out_idx = plan.channels.get(name, follows.get(name))
    want = dlayer.weight.shape[0] if out_idx is None else len(out_idx)
    if layer.weight.shape[0] != want:
        return "its output channels follow another layer's in a way the plan does not name"
    changed = fan_in_cut or f"{name}.weight" in plan.masks
    return "" if changed or spec.layers == "all" else "unchanged"


def _attention_reason(name: str, mha: nn.Module, node: fx.Node, plan: PrunePlan, spec: ReconSpec) -> str:
    assert isinstance(mha, nn.MultiheadAttention)
    why = attention_unsupported(mha, node)
    changed = f"{name}.in_proj_weight" in plan.masks or f"{name}.out_proj.weight" in plan.masks
    return why or ("" if changed or spec.layers == "all" else "unchanged")


def _note(report: ReconReport, name: str, why: str) -> bool:
    if why and why != "unchanged":
        report.skipped[name] = why
    return not why


def _graphs(dense: nn.Module, pruned: nn.Module) -> tuple[fx.Graph, fx.Graph] | None:
    """Both networks' fx graphs when they trace and match node for node, else None."""
    try:
        gd, gp = fx.Tracer().trace(dense), fx.Tracer().trace(pruned)
    except Exception:  # untraceable forward: the hook walk needs no graph
        return None
    same = len(gd.nodes) == len(gp.nodes) and all((a.op, a.target) == (b.op, b.target) for a, b in zip(gd.nodes, gp.nodes))
    return (gd, gp) if same else None


def _cuts(gp: fx.Graph, dense: nn.Module, pruned: nn.Module, plan: PrunePlan, spec: ReconSpec, report: ReconReport, follows: dict) -> list[Cut]:
    ref, mods = dict(dense.named_modules()), dict(pruned.named_modules())
    calls: dict[str, int] = {}
    for n in gp.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    cuts = []
    for i, n in enumerate(gp.nodes):
        m = mods.get(n.target) if n.op == "call_module" else None
        if not isinstance(m, (*_LAYERS, nn.MultiheadAttention)):
            continue
        name = str(n.target)
        if calls[name] > 1:
            report.skipped[name] = "it is called more than once"
        elif isinstance(m, nn.MultiheadAttention):
            if _note(report, name, _attention_reason(name, m, n, plan, spec)):
                cuts.append(Cut(i, name, None, attention=True))
        elif _note(report, name, _skip_reason(name, m, ref.get(name), plan, spec, follows)):
            cuts.append(Cut(i, name, plan.channels.get(name, follows.get(name))))
    return cuts


def _segment_walk(dense, pruned, images, spec: ReconSpec, plan, report, follows, on_progress, gd: fx.Graph, gp: fx.Graph) -> None:
    cuts = _cuts(gp, dense, pruned, plan, spec, report, follows)
    budget = math.inf if spec.max_memory_gb is None else spec.max_memory_gb * 2**30
    held = HeldValues(budget)
    solve = _Solver(spec, plan, report, len(cuts), on_progress)
    try:
        walk = SegmentWalk(dense, pruned, gd, gp, images, spec.batch_size, held)
        for cut in cuts:
            walk.run_to(cut.index)
            if cut.attention:
                walk.fit_attention(cut, solve)
            else:
                walk.fit_layer(cut, pruned.get_submodule(cut.name), f"{cut.name}.weight", solve)
            solve.step()
    finally:
        report.held_peak_bytes, report.offloaded_bytes = held.peak_resident, held.offloaded
        held.close()


# ---------------------------------------------------------------- hook walk


def _hook_walk(dense, pruned, images, spec, plan, report, follows, on_progress) -> None:
    order, calls = _execution_order(pruned, images[:1])
    ref, mods = dict(dense.named_modules()), dict(pruned.named_modules())
    for name, m in mods.items():
        if isinstance(m, nn.MultiheadAttention):
            report.skipped[name] = "attention is refit by the segment walk only (this model does not trace with torch.fx)"
    order = [n for n in order if _note(report, n, _skip_reason(n, mods[n], ref.get(n), plan, spec, follows))]
    solve = _Solver(spec, plan, report, len(order), on_progress)
    for name in order:
        fit = LayerFit(mods[name], plan.channels.get(name, follows.get(name)))
        for i in range(0, len(images), spec.batch_size):
            xb = images[i : i + spec.batch_size]
            ins = _capture(pruned, mods[name], xb, calls[name], want_input=True)
            outs = _capture(dense, ref[name], xb, calls[name], want_input=False)
            for x, y in zip(ins, outs):
                fit.add(x, y)
        solve(fit, name, f"{name}.weight")
        solve.step()


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
