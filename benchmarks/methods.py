#!/usr/bin/env python
"""Every pruning method on the shared ResNet-20 and the exact CIFAR-10 images.

For each method, top-1 on the **test** split before and after BatchNorm recalibration at
50 / 70 / 80 / 90 % weight sparsity (unstructured) and at 1.5x / 2x / 2.5x fewer MACs
(structured, channel granularity). Everything that is *chosen* (the recalibration
setting, stem/head pruning, the screening weight, hyperflows' pressure, OCS knobs) is
chosen on **validation** images, which come from ``train_exact.npz`` like the
calibration images; the test split (``test_exact.npz``) is only reported.

Candidates go through ``pipeline.evaluator.Evaluator`` in this process (no Ray), so the
numbers are what a search records. ``test_accuracy`` of a result is after
recalibration; the accuracy before recalibration on the test split is measured here by
applying the result's plan to the base model (``pipeline.build.apply_plan``) and scoring
it with the stored statistics.

Run (about 25 minutes on 2 contended CPU cores; ``--quick``: a couple of minutes):

    .venv/bin/python benchmarks/methods.py [--shared ../shared] [--quick]

Writes ``benchmarks/results/methods.json`` (one row per method and point, plus the
selection tables, diagnostics and machine information) and ``methods.md`` beside it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import measure, structure  # noqa: E402
from pipeline.build import apply_plan, plan_candidate  # noqa: E402
from pipeline.evaluator import Evaluator  # noqa: E402
from pipeline.layers import prunable_weights  # noqa: E402
from pipeline.measure import MeasureConfig  # noqa: E402
from pipeline.methods import get_method  # noqa: E402
from pipeline.methods.hyperflows import BATCH as HF_BATCH  # noqa: E402
from pipeline.methods.ocs import BATCH as OCS_BATCH  # noqa: E402
from pipeline.plan import PrunePlan  # noqa: E402
from pipeline.recalibrate import recalibrate  # noqa: E402
from pipeline.spec import CandidateResult, CandidateSpec, RecalSpec, ReconSpec  # noqa: E402

import common  # noqa: E402
from common import Timer, log, md_table, pct  # noqa: E402

# The targets (issue 11): test top-1, no fine-tuning; "now" is the previous run's best.
TARGETS = [
    {"granularity": "unstructured", "point": 0.8, "beat": 0.84, "reference": "global magnitude + REFLOW, 80 %: 79.4 %"},
    {"granularity": "unstructured", "point": 0.9, "beat": 0.65, "reference": "global magnitude + REFLOW, 90 %: 49.6 %"},
    {"granularity": "channel", "point": 2.0, "beat": 0.78, "reference": "OCS (trains 120 steps), 2x fewer MACs: 74.5 % (search)"},
    {"granularity": "channel", "point": 2.5, "beat": 0.68, "reference": "OCS (trains 120 steps), 2.5x fewer MACs: 60.5 %"},
]
ONE_SHOT = ("magnitude", "random", "screening", "activation", "bn_activation")


@dataclass
class BenchConfig:
    """What one run measures. ``quick()`` is the smoke-test variant."""

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    reductions: tuple[float, ...] = (1.5, 2.0, 2.5)  # MACs reduction factors: target_macs_ratio = 1 / r
    calib_size: int = 2048  # calibration pool (recalibration uses its first `images`); fixes the split
    val_size: int = 1000
    seed: int = 0
    threads: int = 2
    # recalibration settings compared on validation (keep_better is always on: it is a
    # per-candidate choice made on validation, so it can only help there)
    recal_grid: tuple[RecalSpec, ...] = tuple(
        RecalSpec(images=i, augment=a, batch_size=64, keep_better=True) for i in (512, 1024) for a in (False, True)
    )
    probe_sparsities: tuple[float, ...] = (0.8, 0.9)  # where the unstructured setting is chosen
    probe_reductions: tuple[float, ...] = (2.0,)  # where the structured setting is chosen
    # screening weight wF alternatives, chosen per point on validation (a first look on
    # validation put the useful range near 0.1 for weights and 0.25-0.5 for channels)
    screening_weights_unstructured: tuple[float, ...] = (0.05, 0.1)
    screening_weights_channel: tuple[float, ...] = (0.25, 0.5)
    # hyperflows: (pressure, steps, regrowth_steps) runs; each row is reported at its
    # achieved sparsity, in the column of the nearest target. Trajectory on the training
    # split at the default flow_lr 3e-3 (prep): pressure 10 prunes 10 % by step 100, 54 %
    # by 200, 75 % by 300, 84 % by 375; pressure 40 prunes 90 % by step 200 but fast
    # enough that the random initial presence decides more than the flow.
    hyperflows_runs: tuple[tuple[float, int, int], ...] = ((10.0, 190, 40), (10.0, 270, 50), (10.0, 360, 50), (10.0, 560, 60))
    # OCS: 8 "epochs" x 15 steps; stability 0.9 lets the structure freeze at the earliest
    # epoch (4) so the remaining steps train the pruned network; max_prune_fraction 0.6
    # (0.7 where 0.6 cannot reach the MACs target). Chosen on validation at 2x: default
    # knobs (never stable) 38.2 %, stability 0.98 40.4 %, 0.9 69.3 %, 0.9 + cap 0.6 71.3 %.
    ocs_knobs: dict[str, float] = field(default_factory=lambda: {"epochs": 8, "steps_per_epoch": 15, "stability": 0.9, "max_prune_fraction": 0.6})
    # reconstruction (pipeline.reconstruct): its setting is chosen on validation at the probes
    # (global magnitude at 90 %, layerwise L1 channels at 2x), then every method below runs
    # with it at the target points
    recon_grid: tuple[ReconSpec, ...] = (
        ReconSpec(mode="lsq", images=512, ridge=1e-3, layers="pruned"),
        ReconSpec(mode="lsq", images=512, ridge=1e-3, layers="all"),
        ReconSpec(mode="lsq", images=1024, ridge=1e-3, layers="all"),
        ReconSpec(mode="lsq", images=512, ridge=1e-2, layers="all"),
    )
    recon_probe_unstructured: float = 0.9
    recon_probe_channel: float = 2.0
    recon_sparsities: tuple[float, ...] = (0.8, 0.9)
    recon_reductions: tuple[float, ...] = (2.0, 2.5)
    # (label, method, scope); methods missing from the registry are skipped
    recon_unstructured: tuple[tuple[str, str, str], ...] = (
        ("magnitude global", "magnitude", "global"),
        ("magnitude layerwise", "magnitude", "layerwise"),
        ("activation (Wanda) global", "activation", "global"),
        ("activation (Wanda) layerwise", "activation", "layerwise"),
    )
    recon_channel: tuple[tuple[str, str, str], ...] = (
        ("magnitude layerwise (L1)", "magnitude", "layerwise"),
        ("magnitude global (L1)", "magnitude", "global"),
        ("activation global", "activation", "global"),
        ("activation layerwise", "activation", "layerwise"),
        ("bn_activation global", "bn_activation", "global"),
        ("ocs", "ocs", "global"),
    )
    latency_repeats: int = 20  # the evaluator's latency_ms (batch 1)
    latency_b64_repeats: int = 3  # the extra batch-64 latency of structured candidates
    latency_rounds: int = 3  # structured latency: lowest median of this many rounds
    quick: bool = False

    @classmethod
    def quick_config(cls) -> "BenchConfig":
        return cls(
            sparsities=(0.8,),
            reductions=(2.0,),
            calib_size=512,
            val_size=300,
            recal_grid=tuple(RecalSpec(images=256, augment=a, keep_better=True) for a in (False, True)),
            probe_sparsities=(0.8,),
            screening_weights_unstructured=(0.1,),
            screening_weights_channel=(0.25,),
            hyperflows_runs=((10.0, 30, 5),),  # exercises the code path; prunes nothing this early
            recon_grid=(ReconSpec(mode="lsq", images=128), ReconSpec(mode="lsq", images=128, layers="all")),
            recon_sparsities=(0.8,),
            recon_reductions=(2.0,),
            recon_probe_unstructured=0.8,
            ocs_knobs={"epochs": 4, "steps_per_epoch": 5, "stability": 0.9, "max_prune_fraction": 0.6},
            latency_repeats=5,
            latency_b64_repeats=1,
            latency_rounds=1,
            quick=True,
        )


# ---------------------------------------------------------------- candidates


def unstructured(method: str, sparsity: float | None, setting: "Setting", **kw: Any) -> CandidateSpec:
    return CandidateSpec(
        method=method,
        granularity="unstructured",
        target_sparsity=sparsity,
        prune_stem=setting.prune_stem,
        prune_head=setting.prune_head,
        recal=setting.recal,
        **kw,
    )


def channel(method: str, reduction: float, setting: "Setting", **kw: Any) -> CandidateSpec:
    return CandidateSpec(
        method=method,
        granularity="channel",
        target_sparsity=None,
        target_macs_ratio=1.0 / reduction,
        prune_stem=setting.prune_stem,
        prune_head=setting.prune_head,
        recal=setting.recal,
        **kw,
    )


@dataclass(frozen=True)
class Setting:
    """The recalibration and stem/head choice applied to every candidate of one granularity."""

    recal: RecalSpec
    prune_stem: bool = True
    prune_head: bool = True


def light_accuracy(ev: Evaluator, model: torch.nn.Module, recal: RecalSpec, seed: int = 0) -> float:
    """Validation top-1 of a copy of ``model`` after ``recalibrate`` with ``recal``: the
    evaluator's own recalibration and accuracy calls, without its other measurements.
    With ``keep_better`` the stored statistics are scored too and the higher accuracy is
    returned, as ``Evaluator.evaluate`` does."""
    v = ev.splits.val
    m = copy.deepcopy(model)
    recalibrate(m, ev.ctx.calib_x, recal, seed=seed, black=ev.splits.black)
    acc = measure.accuracy(m, v.x, v.y, ev.cfg.eval_batch)
    if recal.keep_better and recal.images:
        acc = max(acc, measure.accuracy(model, v.x, v.y, ev.cfg.eval_batch))
    return acc


def robust_latency_ms(model: torch.nn.Module, shape: tuple[int, ...], batch: int, threads: int, rounds: int, repeats: int) -> float:
    """Lowest of ``rounds`` medians of ``measure.latency_ms`` with ``threads`` torch threads:
    on a shared machine a round that other jobs slowed down is discarded instead of averaged."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return min(measure.latency_ms(model, shape, batch, repeats) for _ in range(rounds))
    finally:
        torch.set_num_threads(saved)


def latency_set(model: torch.nn.Module, shape: tuple[int, ...], cfg: "BenchConfig") -> dict[str, float]:
    """Batch-1 latency with 1 thread and with ``cfg.threads``, and batch-64 latency with ``cfg.threads``."""
    return {
        "b1_1thread_ms": robust_latency_ms(model, shape, 1, 1, cfg.latency_rounds, cfg.latency_repeats),
        f"b1_{cfg.threads}threads_ms": robust_latency_ms(model, shape, 1, cfg.threads, cfg.latency_rounds, cfg.latency_repeats),
        f"b64_{cfg.threads}threads_ms": robust_latency_ms(model, shape, 64, cfg.threads, cfg.latency_rounds, cfg.latency_b64_repeats),
    }


class ResultCache:
    """``Evaluator.evaluate`` results stored by spec JSON in a JSON-lines file (``--cache``),
    so that a run killed part-way (shared machines) resumes without re-training. Every
    other attribute is the evaluator's."""

    def __init__(self, ev: Evaluator, path: Path) -> None:
        import base64
        import json

        self._ev, self._path, self._b64, self._json = ev, path, base64, json
        self._store: dict[str, dict[str, Any]] = {}
        self.hits = 0
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self._store[rec["spec"]] = rec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ev, name)

    def evaluate(self, spec: CandidateSpec) -> CandidateResult:
        key = spec.to_json()
        rec = self._store.get(key)
        if rec is not None:
            self.hits += 1
            return CandidateResult(
                spec=spec, state=rec["state"], metrics=rec["metrics"], info=rec["info"], plan=self._b64.b64decode(rec["plan"]), error=rec["error"]
            )
        res = self._ev.evaluate(spec)
        rec = {
            "spec": key,
            "state": res.state,
            "metrics": dict(res.metrics),
            "info": dict(res.info),
            "plan": self._b64.b64encode(res.plan).decode(),
            "error": res.error,
        }
        self._store[key] = rec
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as f:
            f.write(self._json.dumps(rec) + "\n")
        return res


# ---------------------------------------------------------------- rows


def row_of(ev: Evaluator, res: CandidateResult, label: str, point: float, selected: bool = True, test_before: bool = True) -> dict[str, Any]:
    """One JSON row: the spec, every metric, and the test accuracy before recalibration."""
    spec, m = res.spec, res.metrics
    row: dict[str, Any] = {
        "method": spec.method,
        "label": label,
        "granularity": spec.granularity,
        "scope": spec.scope,
        "point": point,
        "target_sparsity": spec.target_sparsity,
        "target_macs_ratio": spec.target_macs_ratio,
        "knobs": dict(spec.knobs),
        "prune_stem": spec.prune_stem,
        "prune_head": spec.prune_head,
        "recal": spec.recal.model_dump(),
        "selected": selected,
        "state": res.state,
        "_plan": res.plan,  # dropped before writing; used for latency and rebuilding
    }
    if res.state != "ok":
        row["error"] = res.error
        log(f"  FAILED {label} @ {point}: {res.error}")
        return row
    row.update(
        {
            "val_accuracy_before_recal": m["accuracy_before_recal"],
            "val_accuracy": m["accuracy"],
            "test_accuracy_before_recal": None,
            "test_accuracy": m.get("test_accuracy"),
            "recal_applied": bool(m["recal_applied"]),
            "sparsity": m["sparsity"],
            "macs": m["macs"],
            "macs_dense": m["macs_dense"],
            "base_macs": m["base_macs"],
            "macs_ratio": m["macs_ratio"],
            "macs_reduction": 1.0 / m["macs_ratio"] if m["macs_ratio"] > 0 else None,
            "params": m["params"],
            "latency_ms": m["latency_ms"],  # evaluator metric: median batch-1 forward, evaluator threads
            "latency_batch": int(res.info.get("latency_batch", "1")),
            "threads": int(res.info.get("threads", "0")),
            "prune_s": m["prune_s"],
            "recal_s": m["recal_s"],
            "eval_s": m["eval_s"],
            "reconstruct": spec.reconstruct.model_dump(),
            "recon_s": m.get("recon_s"),
            "val_accuracy_before_recon": m.get("accuracy_before_recon"),
            "recon_error_before": m.get("recon_error_before"),
            "recon_error": m.get("recon_error"),
        }
    )
    model = common.plan_model(ev, res.plan)  # with the refit weights of a reconstructed plan
    if spec.granularity == "channel":
        row["kept_per_stage"] = _kept_per_stage(PrunePlan.from_parquet(res.plan).channels)
    if test_before:
        t = ev.splits.test
        row["test_accuracy_before_recal"] = measure.accuracy(model, t.x, t.y, ev.cfg.eval_batch)
    # sparsity over *all* conv/linear weights (the metric counts only the prunable ones,
    # which exclude the stem/head when they are not pruned)
    all_w = prunable_weights(ev.base, True, True)
    row["sparsity_all_weights"] = measure.weight_sparsity(model, list(all_w), sum(w.numel() for w in all_w.values()))
    if get_method(spec.method).trains:
        row["training"] = training_budget(ev, spec, m["prune_s"])
    log(
        f"  {label:<28} @ {point:<4}  val {pct(m['accuracy_before_recal'])}->{pct(m['accuracy'])}  "
        f"test {pct(row['test_accuracy_before_recal'])}->{pct(m.get('test_accuracy'))}  "
        f"sparsity {m['sparsity']:.3f} macs {m['macs_ratio']:.3f}  prune {m['prune_s']:.1f}s"
    )
    return row


def training_budget(ev: Evaluator, spec: CandidateSpec, wall_s: float) -> dict[str, Any]:
    """Optimiser steps, batch, images seen and wall time of a method that trains."""
    method = get_method(spec.method)
    if spec.method == "hyperflows":
        steps = int(method.knob(spec, "steps")) + int(method.knob(spec, "regrowth_steps"))
        batch = HF_BATCH
    else:  # ocs
        steps = int(method.knob(spec, "epochs")) * int(method.knob(spec, "steps_per_epoch"))
        batch = OCS_BATCH
    return {
        "optimizer_steps": steps,
        "knobs_with_defaults": {k: method.knob(spec, k) for k in method.knobs if k in spec.knobs or method.knobs[k].default is not None},
        "batch": batch,
        "images_seen": steps * batch,
        "train_images": len(ev.splits.train),
        "epochs_equivalent": steps * batch / len(ev.splits.train),
        "wall_s": wall_s,
        "s_per_step": wall_s / max(steps, 1),
    }


# ---------------------------------------------------------------- phases


def select_recal(ev: Evaluator, cfg: BenchConfig) -> tuple[dict[str, Setting], list[dict[str, Any]]]:
    """Choose the recalibration setting (and stem/head pruning) per granularity on validation.

    Probes are global magnitude candidates at ``cfg.probe_sparsities`` (unstructured) and
    ``cfg.probe_reductions`` (channel). Each grid setting recalibrates the same pruned
    network; the setting with the highest mean validation accuracy over the probes wins
    (ties: the earlier, cheaper grid entry). Then, for unstructured candidates, keeping
    the stem and classifier dense is tried with the winning setting.
    """
    table: list[dict[str, Any]] = []
    chosen: dict[str, Setting] = {}
    base = Setting(cfg.recal_grid[0])
    probes = {
        "unstructured": [(s, unstructured("magnitude", s, base)) for s in cfg.probe_sparsities],
        "channel": [(r, channel("magnitude", r, base)) for r in cfg.probe_reductions],
    }
    for gran, specs in probes.items():
        models = {p: apply_plan(ev.base, plan_candidate(ev.base, ev.ctx, s)) for p, s in specs}
        before = {p: measure.accuracy(m, ev.splits.val.x, ev.splits.val.y, ev.cfg.eval_batch) for p, m in models.items()}
        best: tuple[float, RecalSpec] | None = None
        for recal in cfg.recal_grid:
            with Timer() as t:
                no_keep = recal.model_copy(update={"keep_better": False})  # `before` is already measured
                accs = {p: light_accuracy(ev, m, no_keep) for p, m in models.items()}
                if recal.keep_better:
                    accs = {p: max(a, before[p]) for p, a in accs.items()}
            mean = sum(accs.values()) / len(accs)
            table.append(
                {
                    "granularity": gran,
                    "recal": recal.model_dump(),
                    "prune_stem": True,
                    "prune_head": True,
                    "val_accuracy": accs,
                    "val_before": before,
                    "mean": mean,
                    "seconds": t.s,
                }
            )
            log(f"  recal {gran:<12} images={recal.images:<5} augment={recal.augment!s:<5} val {[pct(a) for a in accs.values()]} mean {pct(mean, 2)}")
            if best is None or mean > best[0]:
                best = (mean, recal)
        assert best is not None
        chosen[gran] = Setting(best[1])
        if gran == "unstructured":  # channel groups of these ResNets never include stem or head
            dense_ends = Setting(best[1], prune_stem=False, prune_head=False)
            models = {p: apply_plan(ev.base, plan_candidate(ev.base, ev.ctx, unstructured("magnitude", p, dense_ends))) for p in cfg.probe_sparsities}
            accs = {p: light_accuracy(ev, m, best[1]) for p, m in models.items()}
            mean = sum(accs.values()) / len(accs)
            table.append(
                {"granularity": gran, "recal": best[1].model_dump(), "prune_stem": False, "prune_head": False, "val_accuracy": accs, "mean": mean}
            )
            log(f"  recal {gran:<12} same, stem+head dense: val {[pct(a) for a in accs.values()]} mean {pct(mean, 2)}")
            if mean > best[0]:
                chosen[gran] = dense_ends
    for gran, s in chosen.items():
        for row in table:
            row["chosen"] = row["chosen"] if "chosen" in row else False
            if row["granularity"] == gran and row["recal"] == s.recal.model_dump() and row["prune_stem"] == s.prune_stem:
                row["chosen"] = True
    return chosen, table


def dense_reference(ev: Evaluator, setting: Setting) -> dict[str, Any]:
    """The unpruned network with its stored statistics, and recalibrated with ``setting``."""
    v, t = ev.splits.val, ev.splits.test
    out: dict[str, Any] = {
        "val_accuracy": measure.accuracy(ev.base, v.x, v.y),
        "test_accuracy": measure.accuracy(ev.base, t.x, t.y),
        "macs": ev.dense_macs,
        "params": measure.nonzero_params(ev.base),
        "latency_ms": measure.latency_ms(ev.base, ev.splits.input_shape, 1, ev.cfg.latency_repeats),
        "latency_b1_1thread_ms": robust_latency_ms(ev.base, ev.splits.input_shape, 1, 1, 3, ev.cfg.latency_repeats),
    }
    m = copy.deepcopy(ev.base)
    recalibrate(m, ev.ctx.calib_x, setting.recal, black=ev.splits.black)
    out["recalibrated"] = {"recal": setting.recal.model_dump(), "test_accuracy": measure.accuracy(m, t.x, t.y)}
    return out


def pick(ev: Evaluator, specs: list[tuple[str, CandidateSpec]], point: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Choose among ``specs`` (label, spec) on validation accuracy after recalibration, then
    evaluate only the chosen one with the evaluator.

    Each alternative is pruned by the pipeline (``plan_candidate`` + ``apply_plan``, scores
    cached in the evaluator's context), recalibrated with its own ``RecalSpec`` and scored
    on validation: what ``Evaluator.evaluate`` measures as ``accuracy``, without its test,
    latency and before-recalibration passes. Returns the chosen row and the selection table.
    """
    table = []
    for label, spec in specs:
        try:
            model = apply_plan(ev.base, plan_candidate(ev.base, ev.ctx, spec))
            acc = light_accuracy(ev, model, spec.recal, spec.seed)
        except Exception as e:  # a failing alternative is reported, not fatal
            acc, label = float("nan"), f"{label} (failed: {type(e).__name__}: {e})"
        table.append({"label": label, "knobs": dict(spec.knobs), "val_accuracy": acc})
        log(f"  choose {label:<22} @ {point:<4} val after {pct(acc)}")
    ok = [i for i, t in enumerate(table) if t["val_accuracy"] == t["val_accuracy"]]
    best = max(ok, key=lambda i: table[i]["val_accuracy"]) if ok else 0
    for i, t in enumerate(table):
        t["chosen"] = i == best
    label, spec = specs[best]
    return [row_of(ev, ev.evaluate(spec), label, point)], {"point": point, "granularity": spec.granularity, "alternatives": table}


def run_unstructured(ev: Evaluator, cfg: BenchConfig, setting: Setting, selections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in cfg.sparsities:
        log(f"unstructured {s:.0%}")
        rows.append(row_of(ev, ev.evaluate(unstructured("magnitude", s, setting)), "magnitude global", s))
        rows.append(row_of(ev, ev.evaluate(unstructured("magnitude", s, setting, scope="layerwise")), "magnitude layerwise", s))
        rows.append(row_of(ev, ev.evaluate(unstructured("random", s, setting)), "random", s))
        chosen, sel = pick(
            ev,
            [
                (f"screening wF={w:g}", unstructured("screening", s, setting, knobs={"screening_weight": w}))
                for w in cfg.screening_weights_unstructured
            ],
            s,
        )
        rows += chosen
        selections.append(sel)
    for pressure, steps, regrowth in cfg.hyperflows_runs:
        log(f"hyperflows pressure={pressure:g} steps={steps}+{regrowth}")
        spec = unstructured("hyperflows", None, setting, knobs={"pressure": pressure, "steps": steps, "regrowth_steps": regrowth})
        res = ev.evaluate(spec)
        achieved = res.metrics.get("sparsity", float("nan"))
        point = min(cfg.sparsities, key=lambda p: abs(p - achieved)) if res.state == "ok" else float("nan")
        rows.append(row_of(ev, res, f"hyperflows p={pressure:g}", point))
    return rows


def run_channel(ev: Evaluator, cfg: BenchConfig, setting: Setting, selections: list[dict[str, Any]], with_ocs: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    shape = ev.splits.input_shape
    for r in cfg.reductions:
        log(f"channel {r}x fewer MACs")
        dense_lat = latency_set(ev.base, shape, cfg)
        new = [
            row_of(ev, ev.evaluate(channel("magnitude", r, setting)), "magnitude global (L1)", r),
            row_of(ev, ev.evaluate(channel("magnitude", r, setting, scope="layerwise")), "magnitude layerwise (L1)", r),
            row_of(ev, ev.evaluate(channel("random", r, setting)), "random", r),
        ]
        chosen, sel = pick(
            ev, [(f"screening wF={w:g}", channel("screening", r, setting, knobs={"screening_weight": w})) for w in cfg.screening_weights_channel], r
        )
        new += chosen
        selections.append(sel)
        if with_ocs:
            knobs = dict(cfg.ocs_knobs)
            if not _reachable(ev, setting, r, knobs.get("max_prune_fraction", 0.75)):
                knobs["max_prune_fraction"] = 0.7
            new.append(row_of(ev, ev.evaluate(channel("ocs", r, setting, knobs=knobs)), "ocs", r))
        for row in new:
            if row["state"] == "ok" and row["selected"]:
                model = common.plan_model(ev, row["_plan"])
                row["latency"] = latency_set(model, shape, cfg)
                row["dense_latency"] = dense_lat
        rows += new
    return rows


def select_recon(ev: Evaluator, cfg: BenchConfig, settings: dict[str, Setting]) -> tuple[dict[str, ReconSpec], list[dict[str, Any]]]:
    """Choose the reconstruction setting per granularity on validation: every entry of
    ``cfg.recon_grid`` reconstructs the same probe (global magnitude at
    ``cfg.recon_probe_unstructured``; layerwise L1 channels at ``cfg.recon_probe_channel``),
    through the evaluator; the highest validation accuracy wins (ties: the earlier, cheaper)."""
    probes = {
        "unstructured": unstructured("magnitude", cfg.recon_probe_unstructured, settings["unstructured"]),
        "channel": channel("magnitude", cfg.recon_probe_channel, settings["channel"], scope="layerwise"),
    }
    chosen: dict[str, ReconSpec] = {}
    table: list[dict[str, Any]] = []
    for gran, probe in probes.items():
        best: tuple[float, ReconSpec] | None = None
        for rc in cfg.recon_grid:
            res = ev.evaluate(probe.model_copy(update={"reconstruct": rc}))
            m = res.metrics
            acc = m.get("accuracy", float("nan")) if res.state == "ok" else float("nan")
            table.append(
                {
                    "granularity": gran,
                    "reconstruct": rc.model_dump(),
                    "val_accuracy": acc,
                    "state": res.state,
                    "val_accuracy_before_recon": m.get("accuracy_before_recon"),
                    "recon_s": m.get("recon_s"),
                    "recon_error": m.get("recon_error"),
                    "error": res.error,
                }
            )
            log(
                f"  recon {gran:<12} images={rc.images:<5} ridge={rc.ridge:<6g} layers={rc.layers:<6} val {pct(acc)} "
                f"recon {m.get('recon_s', float('nan')):.1f}s"
            )
            if acc == acc and (best is None or acc > best[0]):
                best = (acc, rc)
        chosen[gran] = best[1] if best else cfg.recon_grid[0]
        for row in table:
            if row["granularity"] == gran:
                row["chosen"] = row["reconstruct"] == chosen[gran].model_dump()
    return chosen, table


def run_reconstructed(ev: Evaluator, cfg: BenchConfig, settings: dict[str, Setting], recon: dict[str, ReconSpec]) -> list[dict[str, Any]]:
    """Every listed method with reconstruction (the chosen setting) at the reconstruction points."""
    from pipeline.methods import list_methods

    rows: list[dict[str, Any]] = []
    known = set(list_methods())
    for s in cfg.recon_sparsities:
        log(f"reconstructed unstructured {s:.0%}")
        for label, method, scope in cfg.recon_unstructured:
            if method in known:
                spec = unstructured(method, s, settings["unstructured"], scope=scope, reconstruct=recon["unstructured"])
                rows.append(row_of(ev, ev.evaluate(spec), f"{label} + lsq", s))
    for r in cfg.recon_reductions:
        log(f"reconstructed channel {r}x fewer MACs")
        for label, method, scope in cfg.recon_channel:
            if method not in known or (method == "ocs" and not cfg.ocs_knobs):
                continue
            knobs = {}
            if method == "ocs":
                knobs = dict(cfg.ocs_knobs)
                if not _reachable(ev, settings["channel"], r, knobs.get("max_prune_fraction", 0.75)):
                    knobs["max_prune_fraction"] = 0.7
            spec = channel(method, r, settings["channel"], scope=scope, knobs=knobs, reconstruct=recon["channel"])
            rows.append(row_of(ev, ev.evaluate(spec), f"{label} + lsq", r))
    return rows


def _reachable(ev: Evaluator, setting: Setting, reduction: float, cap: float) -> bool:
    """Whether removing at most ``cap`` of every group's channels can reach ``1 / reduction`` MACs."""
    spec = channel("magnitude", reduction, setting)
    graph = structure.cached_graph(ev.base, ev.ctx, spec.prune_stem, spec.prune_head)
    lowest = graph.macs({g.name: g.size - min(int(cap * g.size + 1e-9), g.size - 1) for g in graph.groups})
    return lowest <= graph.dense_macs / reduction


def raw_l1_diagnostic(ev: Evaluator, cfg: BenchConfig, setting: Setting, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Global L1 channel ranking *without* the per-group mean normalisation that
    ``structure.select_channels`` applies to one-shot methods (``normalize=False``; raw
    filter norms, as methods.md describes its 2x figure), beside the ``magnitude global``
    rows (normalised). Not a pipeline option: a diagnostic, nothing is selected from it."""
    from pipeline.methods.magnitude import filter_norms

    spec0 = channel("magnitude", cfg.reductions[0], setting)
    graph = structure.cached_graph(ev.base, ev.ctx, spec0.prune_stem, spec0.prune_head)
    modules = dict(ev.base.named_modules())
    scores = {g.name: filter_norms(modules[g.name].weight, 1) for g in graph.groups}
    v, t = ev.splits.val, ev.splits.test
    out = []
    for r in cfg.reductions:
        ref = next(
            (
                x
                for x in rows
                if x["label"].startswith("magnitude global") and x["granularity"] == "channel" and x["point"] == r and x["state"] == "ok"
            ),
            None,
        )
        if ref is not None:
            kept_ref = PrunePlan.from_parquet(ref["_plan"]).channels
            out.append(
                {
                    "reduction": r,
                    "normalize": True,
                    "macs_ratio": ref["macs_ratio"],
                    "kept_per_stage": _kept_per_stage(kept_ref),
                    "val_after": ref["val_accuracy"],
                    "test_before": ref["test_accuracy_before_recal"],
                    "test_after": ref["test_accuracy"],
                }
            )
        kept = structure.select_channels(graph, scores, 1.0 / r, "global", normalize=False)
        model = apply_plan(ev.base, PrunePlan(channels=kept))
        macs, _ = measure.macs(model, ev.ctx.example_input)
        row = {
            "reduction": r,
            "normalize": False,
            "macs_ratio": macs / ev.dense_macs,
            "kept_per_stage": _kept_per_stage(kept),
            "test_before": measure.accuracy(model, t.x, t.y),
        }
        recalibrate(model, ev.ctx.calib_x, setting.recal, black=ev.splits.black)
        row["val_after"] = measure.accuracy(model, v.x, v.y)
        row["test_after"] = measure.accuracy(model, t.x, t.y)
        out.append(row)
        log(
            f"  raw-L1 diagnostic {r}x: val after {pct(row['val_after'])}, test {pct(row['test_before'])}->{pct(row['test_after'])}, "
            f"kept {row['kept_per_stage']} (normalised: {out[-2]['kept_per_stage'] if ref else '?'})"
        )
    return out


def _kept_per_stage(kept: dict[str, torch.Tensor]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, idx in kept.items():
        out[name.split(".")[0]] = out.get(name.split(".")[0], 0) + len(idx)
    return out


# ---------------------------------------------------------------- summary


def best_row(rows: list[dict[str, Any]], gran: str, point: float, methods: tuple[str, ...] | None = None) -> dict[str, Any] | None:
    """The reported row with the highest test accuracy after recalibration at ``point``
    (reporting only: nothing downstream is chosen from it)."""
    cand = [
        r
        for r in rows
        if r["granularity"] == gran and r["state"] == "ok" and r["selected"] and r["point"] == point and (methods is None or r["method"] in methods)
    ]
    return max(cand, key=lambda r: r["test_accuracy"]) if cand else None


def target_status(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        methods = ONE_SHOT if t["granularity"] == "unstructured" else None
        best = best_row(rows, t["granularity"], t["point"], methods)
        best_any = best_row(rows, t["granularity"], t["point"])
        entry = {**t, "best_label": None, "best_test_accuracy": None, "met": None}
        if best is not None:
            entry.update(
                best_label=best["label"],
                best_test_accuracy=best["test_accuracy"],
                met=best["test_accuracy"] > t["beat"],
                best_val_accuracy=best["val_accuracy"],
            )
        if best_any is not None and best_any is not best:
            entry.update(
                best_any_label=best_any["label"], best_any_test_accuracy=best_any["test_accuracy"], best_any_met=best_any["test_accuracy"] > t["beat"]
            )
        # which row would validation have picked (the honest choice of a search)?
        cand = [
            r
            for r in rows
            if r["granularity"] == t["granularity"]
            and r["state"] == "ok"
            and r["selected"]
            and r["point"] == t["point"]
            and (methods is None or r["method"] in methods)
        ]
        if cand:
            v = max(cand, key=lambda r: r["val_accuracy"])
            entry.update(
                val_selected_label=v["label"], val_selected_test_accuracy=v["test_accuracy"], val_selected_met=v["test_accuracy"] > t["beat"]
            )
        out.append(entry)
    return out


def _ba(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    if r["state"] != "ok":
        return "failed"
    return f"{pct(r['test_accuracy_before_recal'])} → **{pct(r['test_accuracy'])}**"


def _pivot(rows: list[dict[str, Any]], gran: str, points: tuple[float, ...], col: str) -> str:
    labels: list[str] = []
    for r in rows:
        if r["granularity"] == gran and r["selected"]:
            key = "screening (wF chosen on val)" if r["method"] == "screening" else r["label"]
            if r["method"] == "hyperflows":
                key = "hyperflows (pressure per run)"
            if key not in labels:
                labels.append(key)
    body = []
    for key in labels:
        cells = []
        for p in points:
            hits = [
                r
                for r in rows
                if r["granularity"] == gran
                and r["selected"]
                and r["point"] == p
                and (
                    r["label"] == key
                    or (key.startswith("screening") and r["method"] == "screening")
                    or (key.startswith("hyperflows") and r["method"] == "hyperflows")
                )
            ]
            parts = []
            for r in hits:
                s = _ba(r)
                if r["method"] == "screening" and r["state"] == "ok":
                    s += f" (wF={r['knobs']['screening_weight']:g})"
                if r["method"] == "hyperflows" and r["state"] == "ok":
                    s += f" (p={r['knobs']['pressure']:g}: {r['sparsity']:.1%})"
                if gran == "channel" and r["state"] == "ok":
                    s += f" [{r['macs_reduction']:.2f}x]"
                parts.append(s)
            cells.append("<br>".join(parts) if parts else "not run")
        body.append([key, *cells])
    return md_table(["method", *[col.format(p) for p in points]], body)


def markdown(result: dict[str, Any]) -> str:
    cfg, rows, info = result["config"], result["rows"], result["machine"]
    out = [
        "# Pruning methods on the shared ResNet-20 (exact CIFAR-10 images)\n",
        f"Generated by `benchmarks/methods.py{' --quick' if cfg['quick'] else ''}` on {info['date']} "
        f"({info['cpu_model']}, {info['logical_cpus']} logical CPUs, torch {info['torch']} with "
        f"{result['threads']} threads, load average at start {info['loadavg_at_start']}); "
        f"whole run {result['runtime_s'] / 60:.1f} min wall, {result.get('cpu_s', float('nan')) / 60:.1f} min of CPU time "
        f"(other jobs shared the cores; load average at end {result.get('loadavg_at_end')}).\n",
        "Data: calibration and validation images are drawn from `train_exact.npz` "
        f"({result['splits']['calib']} calibration, {result['splits']['val']} validation, "
        f"{result['splits']['train']} left for methods that train); the reported accuracy is top-1 on all "
        f"{result['splits']['test']} images of `test_exact.npz` (standard error about 1.5 points at 50 %). "
        "Every choice (recalibration setting, stem/head, screening weight, hyperflows pressure, OCS knobs) "
        "is made on validation accuracy; test accuracy is reported only. No fine-tuning. "
        "Cells read `test before recalibration → after`; `before` uses the dense model's stored "
        "BatchNorm statistics.\n",
        "## Targets\n",
    ]
    trows = []
    for t in result["targets"]:
        unit = f"{t['point']:.0%} sparsity" if t["granularity"] == "unstructured" else f"{t['point']}x fewer MACs"
        who = "one-shot" if t["granularity"] == "unstructured" else "structured"
        met = {True: "**met**", False: "not met", None: "not run"}[t["met"]]
        extra = ""
        if t.get("best_any_label"):
            extra = f"; best of all (incl. trained masks): {t['best_any_label']} {pct(t['best_any_test_accuracy'])}"
        vsel = f"{t.get('val_selected_label', '')} {pct(t.get('val_selected_test_accuracy'))}"
        best = f"{t['best_label']} {pct(t['best_test_accuracy'])}{extra}" if t["best_label"] else "not run"
        trows.append([f"{unit} ({who})", f"> {pct(t['beat'], 0)} %", best, vsel, met])
    out.append(md_table(["target", "beat", "best test (reporting)", "chosen on val → its test", "status"], trows))
    out.append(
        "\n`status` judges the best reported row; `chosen on val` is what a search selecting on validation would "
        "have shipped. A margin under 1.5 points is within the test split's standard error.\n"
    )
    out.append("\n## Unstructured (weight sparsity of conv + linear weights)\n")
    out.append(_pivot(rows, "unstructured", tuple(cfg["sparsities"]), "{:.0%}"))
    out.append("\n## Structured (channels; block-internal only)\n")
    out.append(
        "Option-A shortcuts tie the residual stream, so only each block's inner channels (conv1 output, "
        "conv2 input) are prunable; `[..x]` is the achieved MACs reduction.\n\n"
    )
    out.append(_pivot(rows, "channel", tuple(cfg["reductions"]), "{}x fewer MACs"))
    out.append("\n## Reconstruction (least-squares refit of the kept weights, then recalibration)\n")
    out.append(
        "Rows `+ lsq` refit every changed layer on calibration images, sequentially (pipeline/reconstruct.py), "
        "with the setting chosen on validation below, then recalibrate with the granularity's recalibration setting "
        "(`keep_better`). Cells: validation accuracy right after pruning → after the refit (stored statistics) → "
        "after recalibration; test after; mean relative layer-output error on the calibration images before → after "
        "the refit; seconds per stage of this candidate.\n\n"
    )
    rec = [r for r in rows if r["state"] == "ok" and (r.get("reconstruct") or {}).get("mode", "none") != "none"]
    out.append(
        md_table(
            [
                "candidate",
                "granularity",
                "point",
                "sparsity",
                "MACs ratio",
                "val pruned → refit → recal",
                "test after",
                "layer error",
                "prune s",
                "recon s",
                "recal s",
                "eval s",
            ],
            [
                [
                    r["label"],
                    r["granularity"],
                    r["point"],
                    f"{r['sparsity']:.3f}",
                    f"{r['macs_ratio']:.3f}",
                    f"{pct(r['val_accuracy_before_recon'])} → {pct(r['val_accuracy_before_recal'])} → {pct(r['val_accuracy'])}",
                    f"**{pct(r['test_accuracy'])}**",
                    f"{r['recon_error_before']:.3f} → {r['recon_error']:.3f}",
                    f"{r['prune_s']:.1f}",
                    f"{r['recon_s']:.1f}",
                    f"{r['recal_s']:.1f}",
                    f"{r['eval_s']:.1f}",
                ]
                for r in rec
            ],
        )
    )
    if result.get("recon_selection"):
        out.append(
            "\nReconstruction setting chosen on validation (probes: global magnitude at "
            f"{cfg.get('recon_probe_unstructured', 0.9):.0%}, layerwise L1 channels at {cfg.get('recon_probe_channel', 2.0)}x):\n\n"
        )
        out.append(
            md_table(
                ["granularity", "images", "ridge", "layers", "val after pruning", "val after refit + recal", "recon s", ""],
                [
                    [
                        t["granularity"],
                        t["reconstruct"]["images"],
                        f"{t['reconstruct']['ridge']:g}",
                        t["reconstruct"]["layers"],
                        pct(t.get("val_accuracy_before_recon")),
                        pct(t["val_accuracy"]),
                        f"{t['recon_s']:.1f}" if t.get("recon_s") is not None else "",
                        "**chosen**" if t.get("chosen") else "",
                    ]
                    for t in result["recon_selection"]
                ],
            )
        )
    kept = sorted({r["from_run"] for r in rows if r.get("from_run")})
    if kept:
        out.append(
            f"\nRows of the sections not re-run ({', '.join(s for s in ('unstructured', 'channel', 'reconstruction') if s not in result.get('sections_run', []))}) "
            f"come from the earlier run(s) {', '.join(kept)} (`--rows-from`).\n"
        )
    out.append("\n## Latency of structured candidates beside their MACs\n")
    th = result["threads"]
    out.append(
        f"`latency_ms` is the evaluator's metric (median of {cfg['latency_repeats']} batch-1 forwards, torch {th} threads). "
        "The other columns are measured here, each the lowest of "
        f"{cfg['latency_rounds']} rounds' medians (a round slowed by other jobs on this shared machine is discarded): "
        f"batch 1 with 1 thread, batch 1 with {th} threads, batch 64 with {th} threads; the dense network is measured "
        "the same way at each point, and `speed-up` is dense / pruned. With 2 threads on 2 shared cores a batch-1 "
        "forward waits for a busy core at every layer, so single-thread batch-1 numbers are the stable ones.\n\n"
    )
    lrows = []
    for r in rows:
        if r["granularity"] == "channel" and r["state"] == "ok" and r["selected"] and r.get("latency"):
            lat, den = r["latency"], r["dense_latency"]
            k64 = next((k for k in lat if k.startswith("b64_")), f"b64_{th}threads_ms")  # rows kept from a run with other threads
            k1, k2 = "b1_1thread_ms", k64.replace("b64_", "b1_")
            lrows.append(
                [
                    r["label"],
                    f"{r['point']}x",
                    f"{r['macs'] / 1e6:.1f}",
                    f"{r['macs_reduction']:.2f}x",
                    f"{r['latency_ms']:.2f}",
                    f"{lat[k1]:.2f} / {den[k1]:.2f} = {den[k1] / lat[k1]:.2f}x",
                    f"{lat[k2]:.2f} / {den[k2]:.2f} = {den[k2] / lat[k2]:.2f}x",
                    f"{lat[k64]:.1f} / {den[k64]:.1f} = {den[k64] / lat[k64]:.2f}x",
                    pct(r["test_accuracy"]),
                    r.get("kept_per_stage", ""),
                ]
            )
    out.append(
        md_table(
            [
                "method",
                "target",
                "MMACs",
                "MACs reduction",
                "latency_ms (metric)",
                "b1, 1 thread: ms / dense = speed-up",
                f"b1, {th} threads",
                f"b64, {th} threads",
                "test after",
                "inner channels kept (of 48/96/192)",
            ],
            lrows,
        )
    )
    out.append(
        "\nUnstructured candidates keep dense tensors (zeros are multiplied), so their latency equals the dense "
        "model's; their `macs` count non-zero weights only (what a sparse kernel would execute).\n"
    )
    out.append("\n## Methods that train: budget beside accuracy\n")
    brows = []
    for r in rows:
        if r.get("training") and r["state"] == "ok":
            b = r["training"]
            brows.append(
                [
                    r["label"],
                    r["granularity"],
                    f"{r['sparsity']:.3f}" if r["granularity"] == "unstructured" else f"{r['macs_reduction']:.2f}x",
                    r["knobs"],
                    b["optimizer_steps"],
                    b["batch"],
                    b["images_seen"],
                    f"{b['epochs_equivalent']:.1f}",
                    f"{b['wall_s']:.0f}",
                    f"{b['s_per_step']:.2f}",
                    _ba(r),
                ]
            )
    out.append(
        md_table(
            [
                "method",
                "granularity",
                "achieved",
                "knobs",
                "steps",
                "batch",
                "images seen",
                f"epochs of the {result['splits']['train']} training images",
                "wall s",
                "s/step",
                "test before → after",
            ],
            brows,
        )
    )
    out.append("\n## Recalibration setting chosen on validation\n")
    out.append(
        "Probes: global magnitude at the probe points; every setting recalibrates the same pruned network "
        "(`keep_better` on; cumulative averages; batch 64). Mean validation accuracy decides.\n\n"
    )
    rrows = []
    for t in result["recal_selection"]:
        rc = t["recal"]
        accs = ", ".join(f"{k}: {pct(v)}" for k, v in t["val_accuracy"].items())
        rrows.append(
            [
                t["granularity"],
                rc["images"],
                rc["augment"],
                "dense" if not t["prune_stem"] else "pruned",
                accs,
                pct(t["mean"], 2),
                "**chosen**" if t.get("chosen") else "",
            ]
        )
    out.append(md_table(["granularity", "images", "augment", "stem/head", "val accuracy per probe", "mean", ""], rrows))
    out.append("\n## Screening weight chosen on validation\n")
    srows = []
    for sel in result["screening_selection"]:
        srows.append(
            [
                sel["granularity"],
                sel["point"],
                ", ".join(f"wF={a['knobs'].get('screening_weight', 0):g}: {pct(a['val_accuracy'])}" for a in sel["alternatives"]),
                next((f"{a['knobs'].get('screening_weight', 0):g}" for a in sel["alternatives"] if a["chosen"]), ""),
            ]
        )
    out.append(md_table(["granularity", "point", "val accuracy after recalibration", "chosen wF"], srows))
    if result.get("raw_l1_diagnostic"):
        out.append("\n## Diagnostic: global channel ranking with and without per-group normalisation\n")
        out.append(
            "`structure.select_channels` divides each group's L1 scores by their mean before ranking globally "
            "(what `magnitude global` uses); methods.md's figure ranks raw filter norms. Same recalibration setting.\n\n"
        )
        out.append(
            md_table(
                ["reduction", "per-group normalised", "MACs ratio", "kept channels per stage (of 48/96/192)", "val after", "test before → after"],
                [
                    [
                        f"{d['reduction']}x",
                        "yes (pipeline)" if d["normalize"] else "no (raw L1)",
                        f"{d['macs_ratio']:.3f}",
                        d["kept_per_stage"],
                        pct(d["val_after"]),
                        f"{pct(d['test_before'])} → {pct(d['test_after'])}",
                    ]
                    for d in result["raw_l1_diagnostic"]
                ],
            )
        )
    d = result["dense"]
    out.append("\n## Dense reference\n")
    rc = d["recalibrated"]["recal"]
    out.append(
        f"Unpruned: val {pct(d['val_accuracy'])} %, test {pct(d['test_accuracy'])} % with the stored statistics "
        "(validation images are training images the model was trained on); recalibrated with the chosen "
        f"unstructured setting ({rc['images']} images, augment={rc['augment']}): test "
        f"{pct(d['recalibrated']['test_accuracy'])} %. {d['macs'] / 1e6:.2f} M MACs, "
        f"{d['params'] / 1e6:.3f} M parameters; batch-1 latency {d['latency_ms']:.2f} ms (metric, {result['threads']} threads), "
        f"{d['latency_b1_1thread_ms']:.2f} ms (1 thread, lowest of 3 medians).\n"
    )
    out.append("\n## All rows\n")
    arows = []
    for r in rows:
        if r["state"] != "ok":
            arows.append([r["label"], r["granularity"], r["point"], "failed: " + r.get("error", "")[:80]] + [""] * 10)
            continue
        arows.append(
            [
                r["label"] + ("" if r["selected"] else " (not chosen)"),
                r["granularity"],
                r["point"],
                f"{r['sparsity']:.3f}",
                f"{r['sparsity_all_weights']:.3f}",
                f"{r['macs_ratio']:.3f}",
                pct(r["val_accuracy_before_recal"]),
                pct(r["val_accuracy"]),
                pct(r["test_accuracy_before_recal"]),
                pct(r["test_accuracy"]),
                "yes" if r["recal_applied"] else "kept stored",
                f"{r['latency_ms']:.2f}",
                f"{r['prune_s']:.1f}",
                f"{r['recal_s']:.1f}",
            ]
        )
    out.append(
        md_table(
            [
                "candidate",
                "granularity",
                "point",
                "sparsity (prunable)",
                "sparsity (all conv/linear)",
                "MACs ratio",
                "val before",
                "val after",
                "test before",
                "test after",
                "recalibrated",
                "latency ms (b1)",
                "prune s",
                "recal s",
            ],
            arows,
        )
    )
    out.append("\n## Findings\n")
    out.append(result.get("findings_md", ""))
    return "".join(x if x.endswith("\n") else x + "\n" for x in out)


def findings(result: dict[str, Any]) -> str:
    """The findings section: winners and choices from this run, then notes on the pipeline."""
    rows, cfg = result["rows"], result["config"]
    lines = []
    for gran, points, fmt in (("unstructured", cfg["sparsities"], "{:.0%}"), ("channel", cfg["reductions"], "{}x")):
        wins = []
        for p in points:
            b = best_row(rows, gran, p)
            if b:
                wins.append(f"{fmt.format(p)}: {b['label']} ({pct(b['test_accuracy'])} %)")
        lines.append(f"- **Best after recalibration, {gran}** (test): " + "; ".join(wins) + ".")
    for gran, s in result["chosen_settings"].items():
        grid = [t for t in result["recal_selection"] if t["granularity"] == gran]
        chosen = [t for t in grid if t.get("chosen")]
        plain = [t for t in grid if t["recal"]["images"] == min(x["recal"]["images"] for x in grid) and not t["recal"]["augment"] and t["prune_stem"]]
        if chosen and plain:
            lines.append(
                f"- **Recalibration, {gran}**: chosen {s['recal']['images']} images, augment={s['recal']['augment']}, "
                f"keep_better, stem/head {'pruned' if s['prune_stem'] else 'dense'}: mean validation accuracy over the probes "
                f"{pct(chosen[0]['mean'], 2)} % against {pct(plain[0]['mean'], 2)} % for {plain[0]['recal']['images']} plain images."
            )
    rec = [r for r in rows if r["state"] == "ok" and (r.get("reconstruct") or {}).get("mode", "none") != "none"]
    if rec:
        applied = sum(bool(r["recal_applied"]) for r in rec)
        for g, c in result.get("chosen_reconstruction", {}).items():
            lines.append(f"- **Reconstruction, {g}**: chosen {c['images']} images, ridge {c['ridge']:g}, layers {c['layers']} on validation.")
        lines.append(
            f"- **Recalibration after reconstruction**: `keep_better` kept the recalibrated statistics for {applied} of {len(rec)} reconstructed "
            "candidates (the stored ones scored higher for the others): a refit that reproduces the dense layer outputs restores the activations the stored "
            "BatchNorm values describe. Reconstruction seconds (`recon_s`, 1 torch thread on the shared, loaded cores): "
            f"{min(r['recon_s'] for r in rec):.0f}-{max(r['recon_s'] for r in rec):.0f} s per candidate."
        )
    lines.append("")
    lines.append(result.get("notes_md", ""))
    return "\n".join(lines) + "\n"


def strip_private(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_shared_arg(ap)
    ap.add_argument("--quick", action="store_true", help="smoke run: one point per granularity, tiny budgets (a few minutes)")
    ap.add_argument(
        "--out-dir", type=Path, default=None, help="where methods.json/.md go (default: benchmarks/results; with --quick a temporary folder)"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--no-hyperflows", action="store_true", help="skip hyperflows (its training dominates the run time)")
    ap.add_argument("--no-ocs", action="store_true", help="skip OCS")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="JSONL",
        help="store each evaluated candidate here and reuse stored ones (resume a killed run; the runtime then covers only the rest)",
    )
    ap.add_argument(
        "--render", type=Path, default=None, metavar="JSON", help="only re-render methods.md (findings included) from an existing methods.json"
    )
    ap.add_argument(
        "--hyperflows",
        action="append",
        default=None,
        metavar="PRESSURE:STEPS:REGROWTH",
        help="hyperflows runs instead of the default (repeatable), e.g. --hyperflows 10:560:60 --hyperflows 40:200:40",
    )
    ap.add_argument(
        "--sections",
        default="unstructured,channel,reconstruction",
        help="comma-separated sections to run: unstructured, channel, reconstruction (default: all)",
    )
    ap.add_argument(
        "--rows-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="a previous methods.json: its recalibration settings, dense reference and the rows of the "
        "sections not run are kept (each kept row says so in `from_run`)",
    )
    return ap.parse_args(argv)


def _previous(path: Path | None) -> dict[str, Any] | None:
    import json

    return json.loads(path.read_text()) if path else None


def _kept_rows(prev: dict[str, Any] | None, section: str) -> list[dict[str, Any]]:
    """Rows of ``section`` from a previous run, marked with that run's date and commit."""
    if prev is None:
        return []
    recon = section == "reconstruction"
    out = []
    for r in prev["rows"]:
        is_recon = (r.get("reconstruct") or {}).get("mode", "none") != "none"
        if is_recon == recon and (recon or r["granularity"] == section):
            out.append({**r, "from_run": r.get("from_run") or f"{prev['machine'].get('date', '?')} @ {prev['machine'].get('commit', '?')}"})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render:
        import json

        result = json.loads(args.render.read_text())
        result["notes_md"] = NOTES
        result["findings_md"] = findings(result)
        common.write_json(args.render, result)
        common.write_text(args.render.with_suffix(".md"), markdown(result))
        return result
    cfg = BenchConfig.quick_config() if args.quick else BenchConfig()
    cfg = replace(cfg, threads=args.threads)
    if args.hyperflows:
        runs = []
        for item in args.hyperflows:
            p, st, rg = item.split(":")
            runs.append((float(p), int(st), int(rg)))
        cfg = replace(cfg, hyperflows_runs=tuple(runs))
    if args.no_hyperflows:
        cfg = replace(cfg, hyperflows_runs=())
    out_dir = args.out_dir or (Path(tempfile.gettempdir()) / "prunesearch-bench-quick" if args.quick else common.RESULTS_DIR)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    info = common.machine_info()
    phases: dict[str, float] = {}

    with Timer() as t:
        assets = common.load_resnet20_cifar(args.shared, cfg.calib_size, cfg.val_size, cfg.seed)
        ev = common.make_evaluator(assets, cfg.threads, MeasureConfig(latency_batch=1, latency_repeats=cfg.latency_repeats, collapse_plot=False))
        if args.cache:
            ev = ResultCache(ev, args.cache)  # type: ignore[assignment]
    phases["load"] = t.s
    log(
        f"loaded: train {len(assets.splits.train)}, calib {len(assets.splits.calib)}, val {len(assets.splits.val)}, "
        f"test {len(assets.splits.test)}; {cfg.threads} threads; load average {common.loadavg()}"
    )

    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    unknown = sections - {"unstructured", "channel", "reconstruction"}
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from unstructured, channel, reconstruction")
    prev = _previous(args.rows_from)
    with Timer() as t:
        if prev is not None:
            settings = {g: Setting(RecalSpec(**c["recal"]), c["prune_stem"], c["prune_head"]) for g, c in prev["chosen_settings"].items()}
            recal_table = prev["recal_selection"]
            log(f"recalibration settings from {args.rows_from}")
        else:
            log("choosing the recalibration setting on validation")
            settings, recal_table = select_recal(ev, cfg)
    phases["recal_selection"] = t.s
    with Timer() as t:
        dense = prev["dense"] if prev is not None else dense_reference(ev, settings["unstructured"])
    phases["dense_reference"] = t.s
    log(f"dense: val {pct(dense['val_accuracy'])}, test {pct(dense['test_accuracy'])}")

    selections: list[dict[str, Any]] = [] if prev is None else [x for x in prev["screening_selection"] if x["granularity"] not in sections]
    rows: list[dict[str, Any]] = []
    with Timer() as t:
        rows += run_unstructured(ev, cfg, settings["unstructured"], selections) if "unstructured" in sections else _kept_rows(prev, "unstructured")
    phases["unstructured"] = t.s
    if args.no_ocs:
        cfg = replace(cfg, ocs_knobs={})
    with Timer() as t:
        rows += (
            run_channel(ev, cfg, settings["channel"], selections, with_ocs=not args.no_ocs) if "channel" in sections else _kept_rows(prev, "channel")
        )
    phases["channel"] = t.s
    with Timer() as t:
        diag = raw_l1_diagnostic(ev, cfg, settings["channel"], rows) if "channel" in sections else (prev or {}).get("raw_l1_diagnostic", [])
    phases["diagnostics"] = t.s
    recon: dict[str, ReconSpec] = {}
    recon_table: list[dict[str, Any]] = []
    with Timer() as t:
        if "reconstruction" in sections:
            log("choosing the reconstruction setting on validation")
            recon, recon_table = select_recon(ev, cfg, settings)
            rows += run_reconstructed(ev, cfg, settings, recon)
        else:
            rows += _kept_rows(prev, "reconstruction")
            recon_table = (prev or {}).get("recon_selection", [])
    phases["reconstruction"] = t.s

    result: dict[str, Any] = {
        "benchmark": "methods",
        "machine": info,
        "threads": torch.get_num_threads(),
        "loadavg_at_end": common.loadavg(),
        "shared": str(Path(args.shared).resolve()),
        "model": assets.model_cfg.model_dump(),
        "data": assets.data_cfg.model_dump(),
        "splits": {
            "train": len(assets.splits.train),
            "calib": len(assets.splits.calib),
            "val": len(assets.splits.val),
            "test": len(assets.splits.test),
        },
        "config": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("recal_grid", "recon_grid")},
            "recal_grid": [r.model_dump() for r in cfg.recal_grid],
            "recon_grid": [r.model_dump() for r in cfg.recon_grid],
        },
        "chosen_settings": {g: {"recal": s.recal.model_dump(), "prune_stem": s.prune_stem, "prune_head": s.prune_head} for g, s in settings.items()},
        "recal_selection": recal_table,
        "screening_selection": selections,
        "sections_run": sorted(sections),
        "rows_from": str(args.rows_from) if args.rows_from else None,
        "recon_selection": recon_table,
        "chosen_reconstruction": {g: r.model_dump() for g, r in recon.items()},
        "dense": dense,
        "rows": strip_private(rows),
        "raw_l1_diagnostic": diag,
        "phases_s": phases,
        "runtime_s": time.perf_counter() - t_start,
        "cached_candidates_reused": getattr(ev, "hits", 0),
        # CPU seconds of this process (all threads): wall / (cpu / threads) shows how much
        # other jobs on the machine slowed the run down
        "cpu_s": time.process_time() - cpu_start,
    }
    result["targets"] = target_status(result["rows"])
    result["notes_md"] = NOTES
    result["findings_md"] = findings(result)
    common.write_json(out_dir / "methods.json", result)
    common.write_text(out_dir / "methods.md", markdown(result))
    log(f"wrote {out_dir / 'methods.json'} and methods.md in {result['runtime_s'] / 60:.1f} min")
    for t in result["targets"]:
        log(f"target {t['granularity']} {t['point']}: beat {pct(t['beat'])} -> {t['best_label']} {pct(t['best_test_accuracy'])} met={t['met']}")
    return result


NOTES = """\
### Notes on the pipeline (suggested changes, with evidence)

Numbers marked *(prep)* were measured on validation while preparing this benchmark (same
splits, 2 threads); the others come from this run's tables above.

1. **Recalibration augmentation now follows the recipe the stored statistics came from.**
   The checkpoint was trained on per-image 4-pixel zero-padded random crops and flips, so its
   BatchNorm statistics include black borders. `RecalSpec.augment` used to roll each batch by
   one shared shift of at most 2 pixels with wrap-around; it now crops every image from a copy
   padded by `RecalSpec.pad` (default 4) black pixels (`Splits.black`, the normalised value of
   pixel 0) and flips it. *(prep, global magnitude, 512 images, test split)*: 80 %: plain
   72.0, new `augment` 80.1; 90 %: 43.8 / 49.1 (2048 images: 50.3); channels at 2x: 46.6 / 45.5
   (augmentation does not help channel pruning; the choice is made on validation).
2. **Global channel ranking normalises each group by its mean score** (`select_channels(...,
   normalize=True)`, used by every one-shot method). For rank-based scores (screening) this
   makes every group's scores identically distributed, so "global" screening is close to a
   uniform per-layer allocation; for L1 norms it gives the allocation in the raw-L1 diagnostic
   table. Neither reproduces methods.md's "global L1 at 2x: 63 %" (this run: see
   `magnitude global (L1)` and the raw-L1 row), so that figure's recipe (cap on pruned
   fraction, recalibration images, L1 vs L2) should be written down next to it.
   Suggest: make the normalisation a visible choice (scope `global_raw` or a knob), since it
   decides the per-layer allocation.
3. **Hyperflows' pressure depends on the model's size.** The loss adds `gamma * mean(m)`,
   so each presence parameter feels `gamma / N` (N = 270k weights on ResNet-20, 45k on the
   digits CNN), and Adam normalises every element. With the default `flow_lr` 3e-3 (the
   paper's 1e-3 prunes nothing within 200 steps) gamma = 10 prunes 54 % by step 200 and 84 %
   by step 375 on ResNet-20 *(prep, training split)*, while the knob's default range stops at
   1 (set `space.knobs.hyperflows.pressure` for large models; the power-law steering then
   places it). The plan carries the weights trained with the mask (`PrunePlan.weights`).
4. **OCS' stability rule never fires within a short cycle.** With the default threshold 0.999
   and 8 epochs x 15 steps, the running stability went 0.942, 0.956, 0.977, 0.986, 0.994
   (epochs 4-8), so the structure is cut after the last epoch, when the cosine learning rate
   is ~0 and the pruned network never trains: *(prep)* 38.2 % validation at 2x (37.4 % with
   `reg` 1e-3, 40.4 % with threshold 0.98 firing at epoch 7). Threshold 0.9 fires at epoch 4
   and leaves 60 steps to train the pruned network: 69.3 %; with `max_prune_fraction` 0.6:
   71.3 % (used here). The MACs-cost factor `1 - softmax(cost in M MACs)` is nearly constant
   on ResNet-20 (one inner channel costs 0.07-0.29 M MACs, so every softmax weight is
   ~1/9 and the factor ~0.89 for all groups): the cost term has no effect at this scale.
   Suggest: a budget-aware default (e.g. freeze at the latest by a fixed fraction of the
   cycle), and a cost temperature that makes the softmax non-uniform.
5. **Validation images are the checkpoint's own training images** (dense: 99.7 % validation
   vs 91.6 % test). After pruning, validation and test agree within a few points, so
   ranking is sound, but at low sparsity `keep_better` compares two memorisation levels;
   `accuracy` of dense-like candidates overstates test accuracy by up to 8 points.
6. **Evaluator cost.** `recal_s` includes two validation passes and two variance probes,
   not only the recalibration; on 2 shared cores one ResNet-20 candidate costs 15-40 s,
   mostly validation and test passes. Suggest timing recalibration alone and allowing the
   before-recalibration pass to be skipped when `keep_better` is off.
"""

if __name__ == "__main__":
    main()
