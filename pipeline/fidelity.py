"""Fidelity levels ("rungs") of one candidate, cheapest first, and the work an evaluator
keeps between them.

A rung lowers the candidate's own settings: fewer recalibration images, reconstruction
on fewer images (0: none), accuracy on the first ``val_images`` validation images. The
last rung (``final``) is the candidate's full settings and measures everything a plain
evaluation does. Terms: *trial pruning* (Optuna stopping a candidate early) is the
driver's business; here "pruned network" always means the network with weights removed.

Reuse (``run_rung``): an evaluator keeps, per candidate, the method's plan, the pruned
network, the reconstructed one and the recalibrated one. A later rung re-runs only what
its settings change: the method is never asked again for a plan; reconstruction runs
again only when the rung asks for other reconstruction settings (its weights change, so
recalibration follows it); recalibration again only when its own settings change; a
rung that only measures on more images measures. An evaluator that lost the candidate
(it restarted, or the driver sent the rung elsewhere) redoes the work, and says so in
``info["rung_cache"] = "miss"``.
"""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import Field
from torch import nn

from pipeline import measure
from pipeline.build import BuildContext, apply_plan, prune_stage, reconstruct_stage
from pipeline.data.splits import Splits
from pipeline.measure import MeasureConfig
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.structure import cached_graph
from pipeline.repair.recalibrate import recalibrate
from pipeline.spec import CandidateResult, CandidateSpec, Frozen, RecalSpec, ReconSpec


class RungHost(Protocol):
    """What ``run_rung`` needs of its evaluator (``pipeline.evaluator.Evaluator``; named by
    this protocol so that the evaluator, which imports this module, is not imported back)."""

    base: nn.Module
    ctx: BuildContext
    splits: Splits
    cfg: MeasureConfig

    def _evaluate(self, spec: CandidateSpec, plan: PrunePlan | None = None) -> tuple[CandidateResult, nn.Module]: ...
    def _size_metrics(self, model: nn.Module, spec: CandidateSpec) -> dict[str, float]: ...
    def _info(self) -> dict[str, str]: ...


HELD = 16  # candidates an evaluator keeps between rungs (least recently used dropped first)


class RungSettings(Frozen):
    """One cheap fidelity level (the config's ``fidelity.rungs`` items). None: the candidate's own.

    Attributes:
        recal_images: calibration images of BatchNorm recalibration (at most the candidate's).
        recon_images: calibration images of reconstruction; 0 skips it (at most the candidate's).
        val_images: the first this many validation images measure the rung's accuracy.
    """

    recal_images: int | None = Field(None, ge=0)
    recon_images: int | None = Field(None, ge=0)
    val_images: int | None = Field(None, ge=1)


class Rung(RungSettings):
    """A rung as sent to an evaluator: its settings, its position, and whether it is the full one."""

    index: int = Field(0, ge=0)
    final: bool = False


def rung_spec(spec: CandidateSpec, rung: Rung) -> CandidateSpec:
    """``spec`` with the rung's settings (the spec itself at the final rung)."""
    if rung.final:
        return spec
    recal = spec.recal.model_dump()
    if rung.recal_images is not None:
        recal["images"] = min(rung.recal_images, spec.recal.images)
    recon = spec.reconstruct.model_dump()
    if rung.recon_images == 0:
        recon["mode"] = "none"
    elif rung.recon_images is not None:
        recon["images"] = min(rung.recon_images, spec.reconstruct.images)
    return spec.model_copy(update={"recal": recal, "reconstruct": recon})


@dataclass
class _Held:
    """What an evaluator keeps of one candidate between rungs."""

    plan: PrunePlan  # the method's plan, before reconstruction
    before: nn.Module  # pruned (and reconstructed as ``recon`` says), statistics as stored
    metrics: dict[str, float] = field(default_factory=dict)  # prune_s, method diagnostics, recon_*
    recon: ReconSpec | None = None  # the reconstruction ``before`` carries (None: none)
    refit: PrunePlan | None = None  # ``plan`` with the refit weights of ``recon``
    recal: RecalSpec | None = None  # the recalibration ``after`` carries
    after: nn.Module | None = None
    applied: bool = False  # whether that recalibration ran (0 images: it does not)


class RungCache:
    """Candidates' work between rungs, by spec; at most ``size`` of them (LRU)."""

    def __init__(self, size: int = HELD) -> None:
        self.size = size
        self._held: OrderedDict[str, _Held] = OrderedDict()

    def take(self, spec: CandidateSpec) -> _Held | None:
        return self._held.pop(spec.to_json(), None)

    def keep(self, spec: CandidateSpec, held: _Held) -> None:
        self._held[spec.to_json()] = held
        while len(self._held) > self.size:
            self._held.popitem(last=False)

    def __len__(self) -> int:
        return len(self._held)


def run_rung(ev: RungHost, spec: CandidateSpec, rung: Rung, cache: RungCache) -> CandidateResult:
    """Evaluate ``spec`` at ``rung`` on evaluator ``ev``, reusing what ``cache`` holds of it.

    Below the final rung the result carries the rung's ``accuracy`` (and
    ``accuracy_before_recal``) on ``val_images`` images, the size metrics and the plan;
    its ``spec`` is the rung's (``rung_spec``), so the record rebuilds what was measured.
    The final rung's result is a plain evaluation's, built from the kept plan. Metric
    ``fidelity`` = ``rung.index``. Raises what the candidate's pruning raises.
    """
    t0 = time.perf_counter()
    s = rung_spec(spec, rung)
    held = cache.take(spec)
    hit = held is not None
    if held is None:
        m: dict[str, float] = {}
        model, plan = prune_stage(ev.base, ev.ctx, spec, None, m)
        held = _Held(plan, model, m)
    want = s.reconstruct if s.reconstruct.mode == "lsq" else None
    if want != held.recon:  # reconstruction starts again from the pruned network
        graph = cached_graph(ev.base, ev.ctx, spec.prune_stem, spec.prune_head) if held.plan.channels else None
        held.before = apply_plan(ev.base, held.plan, graph)
        held.refit = reconstruct_stage(ev.base, held.before, held.plan, ev.ctx, s, held.metrics) if want is not None else None
        held.recon, held.recal, held.after = want, None, None
    if rung.final:
        result, _ = ev._evaluate(s, held.refit or held.plan)
        kept = {k: v for k, v in held.metrics.items() if k not in result.metrics or k == "prune_s"}
        metrics = {**result.metrics, **kept, "fidelity": float(rung.index), "val_images": float(len(ev.splits.val.y))}
        metrics["rung_s"] = time.perf_counter() - t0
        return CandidateResult(
            spec, "ok", metrics, {**result.info, "rung_cache": "hit" if hit else "miss"}, result.plan, result.diagnostics, result.diagnostics_png
        )
    if held.after is None or held.recal != s.recal:
        t1 = time.perf_counter()
        held.after = copy.deepcopy(held.before)
        held.applied = recalibrate(held.after, ev.ctx.calib_x, s.recal, seed=s.seed, black=ev.splits.black)
        held.recal = s.recal
        held.metrics["recal_s"] = time.perf_counter() - t1
    n = rung.val_images or len(ev.splits.val.y)
    x, y = ev.splits.val.batch(0, n), ev.splits.val.y[:n]
    m = dict(held.metrics)
    m["accuracy_before_recal"] = measure.accuracy(held.before, x, y, ev.cfg.eval_batch)
    m["accuracy"] = measure.accuracy(held.after, x, y, ev.cfg.eval_batch) if held.applied else m["accuracy_before_recal"]
    applied = held.applied and not (s.recal.keep_better and m["accuracy"] < m["accuracy_before_recal"])
    m["accuracy"] = m["accuracy"] if applied else m["accuracy_before_recal"]
    m.update(ev._size_metrics(held.before, s), recal_applied=float(applied), fidelity=float(rung.index), val_images=float(len(y)))
    m["rung_s"] = time.perf_counter() - t0
    cache.keep(spec, held)
    info = {**ev._info(), "rung_cache": "hit" if hit else "miss"}
    return CandidateResult(spec=s, state="ok", metrics=m, info=info, plan=(held.refit or held.plan).to_parquet())
