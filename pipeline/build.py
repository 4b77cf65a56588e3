"""From a spec to a pruned network: the one candidate lifecycle shared by search, ``ps.prune`` and export.

``build_candidate`` runs the stages in their one order::

    plan (the method, or a recorded plan) -> apply (copy, cut channels, mask)
      -> reconstruct (refit kept weights; a recorded plan carries them, or is replayed without them)
      -> recalibrate BatchNorm (keep-better against the stored statistics)
      -> fine-tune

Each stage takes the images it needs from the ``BuildContext`` (calibration images for
reconstruction and recalibration, each slicing its own count; training images for
fine-tuning; validation images for keep-better and the measured accuracies); no caller
slices for them.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn

from pipeline import measure
from pipeline.errors import InputError
from pipeline.pruning.methods import PruneContext, get_method
from pipeline.pruning.plan import PlanError, PrunePlan, apply_masks
from pipeline.pruning.structure import ChannelGraph, cached_graph, check_forward, shrink
from pipeline.repair.recalibrate import batchnorms, recalibrate
from pipeline.repair.reconstruct import reconstruct
from pipeline.spec import CandidateSpec
from pipeline.train import train_classifier

if TYPE_CHECKING:
    from pipeline.data.splits import Splits

#: ``observe(stage, model)`` is called with ``before_recal`` and ``after_recal`` (diagnostics)
Observer = Callable[[str, nn.Module], None]


@dataclass(kw_only=True)
class BuildContext(PruneContext):
    """A ``PruneContext`` plus what the later stages read.

    Attributes:
        val_x, val_y: validation images (float32 (N, C, H, W), or a data split whose raw
            pixels are normalised batch by batch) and int64 labels (N,): keep-better
            recalibration and the ``accuracy*`` metrics; None (``ps.prune``): no accuracy
            is measured and keep-better is refused.
        black: a black pixel after normalisation, per channel (``Splits.black``), for the
            recalibration's augmentation padding; None pads with 0.
        eval_batch: images per forward pass when scoring accuracy.
        precision: ``fp32``, ``bf16`` or ``fp16``: accuracy and recalibration run under that
            autocast (``measure.precision``).
        on_layer: called as ``on_layer(layers done, layers to refit)`` while reconstruction
            runs (an actor's progress, ``ps.prune``'s log); None: nobody listens.
    """

    val_x: Any = None
    val_y: torch.Tensor | None = None
    black: Sequence[float] | None = None
    eval_batch: int = 512
    precision: str = "fp32"
    on_layer: Callable[[int, int], None] | None = None

    @classmethod
    def from_splits(cls, splits: "Splits", eval_batch: int = 512, precision: str = "fp32") -> "BuildContext":
        """``PruneContext.from_splits`` plus the validation split (normalised batch by
        batch), its black pixel, ``eval_batch`` and ``precision``."""
        method_part = PruneContext.from_splits(splits)
        shared = {f.name: getattr(method_part, f.name) for f in dataclasses.fields(PruneContext)}
        return cls(**shared, val_x=splits.val, val_y=splits.val.y, black=splits.black, eval_batch=eval_batch, precision=precision)

    def val_accuracy(self, model: nn.Module) -> float | None:
        """Top-1 of ``model`` on the validation images (a fraction), or None without them."""
        if self.val_x is None or self.val_y is None:
            return None
        return measure.accuracy(model, self.val_x, self.val_y, self.eval_batch, self.precision)


@dataclass
class Candidate:
    """A built candidate: the network (pruned copy; the base is never modified), its plan
    (with the refit weights when reconstructed) and what the stages measured (``prune_s``,
    ``recon_*``, ``accuracy_before_recal``, ``accuracy``, ``recal_applied``, ...; seconds,
    accuracy fractions in [0, 1])."""

    model: nn.Module
    plan: PrunePlan
    metrics: dict[str, float] = field(default_factory=dict)


def build_candidate(
    base: nn.Module, ctx: BuildContext, spec: CandidateSpec, plan: PrunePlan | None = None, *, observe: Observer | None = None
) -> Candidate:
    """Run every stage of ``spec`` on ``base`` (eval mode; not modified).

    ``plan`` given (a recorded candidate): the method and reconstruction are not re-run,
    the plan's weights and refit weights are loaded instead. Raises whatever a stage
    raises (``ValueError``/``InputError`` for an unsupported spec).
    """
    if spec.recal.keep_better and ctx.val_x is None:
        raise InputError("recal.keep_better needs validation images to compare against; this context has none")
    m: dict[str, float] = {}
    model, plan = prune_stage(base, ctx, spec, plan, m)
    if spec.reconstruct.mode == "lsq" and not plan.refit:  # a recorded plan carries them, or (records.refit_weights) replays the fit
        plan = reconstruct_stage(base, model, plan, ctx, spec, m)

    t0 = time.perf_counter()
    _put(m, "accuracy_before_recal", ctx.val_accuracy(model))
    if observe is not None:
        observe("before_recal", model)
    _recalibrate(model, ctx, spec, m)
    if observe is not None:
        observe("after_recal", model)
    m["recal_s"] = time.perf_counter() - t0

    if spec.finetune_steps:
        t0 = time.perf_counter()
        _put(m, "accuracy_before_finetune", m.get("accuracy"))
        train_classifier(
            model, ctx.train_x, ctx.train_y, spec.finetune_steps, lr=spec.finetune_lr, seed=spec.seed, masks=plan.masks or None, on_step=ctx.on_step
        )
        _put(m, "accuracy", ctx.val_accuracy(model))
        m["finetune_s"] = time.perf_counter() - t0
    m["finetune_steps"] = float(spec.finetune_steps)
    return Candidate(model, plan, m)


def prune_stage(base: nn.Module, ctx: PruneContext, spec: CandidateSpec, plan: PrunePlan | None, m: dict[str, float]) -> tuple[nn.Module, PrunePlan]:
    """The pruned network of ``spec`` (the method asked for a plan unless ``plan`` is given)
    and its plan; sets ``m["prune_s"]`` and the method's scalar diagnostics."""
    t0 = time.perf_counter()
    if plan is None:
        plan = plan_candidate(base, ctx, spec)
    graph = cached_graph(base, ctx, spec.prune_stem, spec.prune_head) if plan.channels else None
    model = apply_plan(base, plan, graph)  # the graph the method used: no re-trace per candidate
    if plan.channels:
        check_forward(model, ctx.example_input, (1, ctx.num_classes))
    m["prune_s"] = time.perf_counter() - t0
    m.update(plan.scalar_diagnostics(f"{spec.method}_"))  # e.g. ocs_stable_epoch
    return model, plan


def _put(m: dict[str, float], key: str, value: float | None) -> None:
    if value is not None:
        m[key] = value


def keep_better(model: nn.Module, stored: dict[str, torch.Tensor], before: float, after: float) -> bool:
    """The keep-better rule of recalibration and reconstruction: when ``after`` (validation
    accuracy of ``model`` as changed) is below ``before`` (its accuracy with the ``stored``
    state dict), load ``stored`` back. Returns whether the change was kept."""
    if after < before:
        model.load_state_dict(stored)
        return False
    return True


def reconstruct_stage(base: nn.Module, model: nn.Module, plan: PrunePlan, ctx: BuildContext, spec: CandidateSpec, m: dict[str, float]) -> PrunePlan:
    """Refit ``model`` in place; the plan returned carries the refit weights, or none when
    ``reconstruct.keep_better`` kept the unrefit weights (they scored higher on validation,
    both before recalibration; metric ``recon_applied``)."""
    _put(m, "accuracy_before_recon", ctx.val_accuracy(model))
    compare = spec.reconstruct.keep_better and "accuracy_before_recon" in m
    stored = {k: v.clone() for k, v in model.state_dict().items()} if compare else None
    t0 = time.perf_counter()
    refit, report = reconstruct(base, model, ctx.calib_x, spec.reconstruct, plan, on_progress=ctx.on_layer)
    m["recon_s"] = time.perf_counter() - t0
    m["recon_layers"] = float(len(report.layers))
    m["recon_underdetermined"] = float(len(report.underdetermined))
    m["recon_error_before"] = report.mean(report.error_before)
    m["recon_error"] = report.mean(report.error_after)
    m["recon_solve_s"] = report.solve_s
    m["recon_offloaded_mb"] = report.offloaded_bytes / 2**20
    if stored is not None:
        after = ctx.val_accuracy(model)
        assert after is not None  # compare: validation images exist
        m["accuracy_after_recon"] = after
        if not keep_better(model, stored, m["accuracy_before_recon"], after):
            m["recon_applied"] = 0.0  # a rebuild replays the fit and comes to the same choice
            return plan
    m["recon_applied"] = 1.0
    return dataclasses.replace(plan, refit=refit)


def _recalibrate(model: nn.Module, ctx: BuildContext, spec: CandidateSpec, m: dict[str, float]) -> None:
    """Recalibrate ``model`` in place with ``spec.recal``; with ``keep_better``, keep the
    stored statistics when they score higher on validation than ``m["accuracy_before_recal"]``.
    Sets ``m["recal_applied"]`` and (with validation images) ``m["accuracy"]``."""
    stored = {k: v.clone() for k, v in model.state_dict().items()} if spec.recal.keep_better else None
    with measure.autocast(ctx.calib_x.device, ctx.precision):
        recalibrated = recalibrate(model, ctx.calib_x, spec.recal, seed=spec.seed, black=ctx.black)
    _put(m, "accuracy", ctx.val_accuracy(model) if recalibrated else m.get("accuracy_before_recal"))
    if recalibrated and stored is not None and not keep_better(model, stored, m["accuracy_before_recal"], m["accuracy"]):
        m["accuracy"] = m["accuracy_before_recal"]  # the stored statistics scored higher: kept
        recalibrated = False
    m["recal_applied"] = float(recalibrated)
    if not batchnorms(model):  # LayerNorm models: nothing to recalibrate, and the record says so
        m["recal_no_batchnorm"] = 1.0


def plan_candidate(base: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> PrunePlan:
    """Ask ``spec.method`` what to prune. Raises ``ValueError`` for an unsupported spec."""
    method = get_method(spec.method)
    method.check(spec)
    return method.plan(base, ctx, spec)


def apply_plan(base: nn.Module, plan: PrunePlan, graph: ChannelGraph | None = None) -> nn.Module:
    """A pruned copy of ``base``: trained weights loaded, channels physically removed,
    weights masked, then reconstructed weights (``plan.refit``) loaded. ``base`` is never
    modified. ``graph``: ``base``'s channel graph (``structure.cached_graph``), so
    channels are cut without tracing ``base`` again.
    """
    if plan.weights:
        base = copy.deepcopy(base)
        state = base.state_dict()
        unknown = set(plan.weights) - set(state)
        if unknown:
            raise PlanError(f"plan carries weights for {sorted(unknown)[:5]}, which the model does not have")
        base.load_state_dict({k: plan.weights.get(k, v).to(v.device, v.dtype) for k, v in state.items()})
    if plan.channels:
        model = shrink(base, plan.channels, graph=graph)
    else:
        model = copy.deepcopy(base)
    apply_masks(model, plan.masks)
    if plan.refit:
        load_refit(model, plan.refit)
        apply_masks(model, plan.masks)  # refit weights are zero where masked; keep that exact
    return model


def load_refit(model: nn.Module, refit: dict) -> None:
    """Load reconstructed state-dict entries into the pruned ``model`` in place."""
    state = model.state_dict()
    for k, v in refit.items():
        if k not in state or tuple(state[k].shape) != tuple(v.shape):
            got = tuple(state[k].shape) if k in state else "nothing"
            raise PlanError(f"plan refits {k!r} with shape {tuple(v.shape)}, the pruned model has {got}")
        state[k].copy_(v.to(state[k].device, state[k].dtype))
