#!/usr/bin/env python
"""Every pruning method on the shared ResNet-20 and the exact CIFAR-10 images: the run.

For each method, top-1 on the **test** split before and after BatchNorm recalibration at
50 / 70 / 80 / 90 % weight sparsity (unstructured) and at 1.5x / 2x / 2.5x fewer MACs
(structured, channel granularity), and with reconstruction at the harder points. Everything
that is *chosen* (the recalibration and reconstruction settings, stem/head pruning, the
screening weight) is chosen on **validation** images, which come from ``train_exact.npz``
like the calibration images; the test split (``test_exact.npz``) is only reported.

Every number comes from the product: candidates go through ``pipeline.evaluator.Evaluator``
in this process (no Ray), so they are what a search records. The recalibration setting and
the screening weight are chosen on ``Evaluator.validation_accuracy`` (the same pruning,
recalibration and keep-better rule without the other measurements); the reconstruction
setting on the validation accuracy of a full ``Evaluator.evaluate`` per grid entry (its
table also shows the reconstruction timings and errors). The accuracy before recalibration
on the test split is the result's plan applied to the base model (``common.plan_accuracy``).

Section ``seeds`` (benchmarks/seeds.py): Hyperflows' pressure controller at target sparsities,
beside the one-shot rows, and OCS' MACs-cost term at 2x. Only those rows, the rest kept from a run:

    .venv/bin/python benchmarks/methods.py --sections seeds --rows-from benchmarks/results/methods.json

Run (``--quick``: a couple of minutes):

    .venv/bin/python benchmarks/methods.py [--shared ../shared] [--quick] [--threads 1] [--previous OLD.json]

Writes ``benchmarks/results/methods.json`` (one row per method and point, the selection
tables, diagnostics, machine information; with ``--previous`` the figures of that earlier
run too) and renders ``methods.md`` from it with ``benchmarks/methods_report.py``, which
also re-renders from the JSON alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import measure  # noqa: E402
from pipeline.evaluator import Evaluator  # noqa: E402
from pipeline.measure import MeasureConfig  # noqa: E402
from pipeline.pruning import structure  # noqa: E402
from pipeline.pruning.layers import stage_of  # noqa: E402
from pipeline.pruning.methods import get_method, list_methods  # noqa: E402
from pipeline.pruning.plan import PrunePlan  # noqa: E402
from pipeline.repair.recalibrate import recalibrate  # noqa: E402
from pipeline.spec import CandidateResult, CandidateSpec, RecalSpec, ReconSpec  # noqa: E402

import common  # noqa: E402
import methods_report  # noqa: E402
import seeds  # noqa: E402
from common import Timer, log, pct  # noqa: E402
from reporting import read_json  # noqa: E402

# The targets (issue 11): test top-1, no fine-tuning. "reference" is the baseline the targets
# were set against: the 2026-11-21 run (results/methods.json of commit d3b6a7b; the 2x OCS
# figure is that day's search), kept as text because methods.json's `previous` is a later run.
TARGETS = [
    {"granularity": "unstructured", "point": 0.8, "beat": 0.84, "reference": "global magnitude + REFLOW, 80 %: 79.4 %"},
    {"granularity": "unstructured", "point": 0.9, "beat": 0.65, "reference": "global magnitude + REFLOW, 90 %: 49.6 %"},
    {"granularity": "channel", "point": 2.0, "beat": 0.78, "reference": "OCS (trains 120 steps), 2x fewer MACs: 74.5 % (search)"},
    {"granularity": "channel", "point": 2.5, "beat": 0.68, "reference": "OCS (trains 120 steps), 2.5x fewer MACs: 60.5 %"},
    # issue 22 (second-order pruning), against the 2026-12-01 run's best rows
    {"granularity": "unstructured", "point": 0.8, "beat": 0.90, "reference": "issue 22: magnitude global + lsq, 80 %: 88.8 %"},
    {"granularity": "unstructured", "point": 0.9, "beat": 0.82, "reference": "issue 22: magnitude global + lsq, 90 %: 75.6 %"},
    {"granularity": "nm", "point": "2:4", "beat": 0.905, "reference": "issue 22: 2:4 (no row before)"},
    {"granularity": "channel", "point": 2.0, "beat": 0.85, "reference": "issue 22: magnitude layerwise (L1) + lsq, 2x: 81.4 %"},
    {"granularity": "channel", "point": 2.5, "beat": 0.80, "reference": "issue 22: magnitude layerwise (L1) + lsq, 2.5x: 76.4 %"},
]
SECTIONS = ("unstructured", "channel", "reconstruction", "nm", "seeds")  # seeds: benchmarks/seeds.py


@dataclass
class BenchConfig:
    """What one run measures. ``quick()`` is the smoke-test variant."""

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    reductions: tuple[float, ...] = (1.5, 2.0, 2.5)  # MACs reduction factors: target_macs_ratio = 1 / r
    calib_size: int = 2048  # calibration pool (recalibration uses its first `images`); fixes the split
    val_size: int = 1000
    seed: int = 0
    threads: int = 1  # the published tables are 1-thread runs (Makefile `bench`)
    ocs_fallback_cap: float = 0.7  # OCS' max_prune_fraction where ocs_knobs' cap cannot reach the MACs target
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
    # achieved sparsity, in the column of the nearest target. Why these lengths:
    # benchmarks/README.md, notes (hyperflows' pressure).
    hyperflows_runs: tuple[tuple[float, int, int], ...] = ((10.0, 190, 40), (10.0, 270, 50), (10.0, 360, 50), (10.0, 560, 60))
    # OCS: 8 "epochs" x 15 steps; stability 0.9 lets the structure freeze at the earliest
    # epoch (4) so the remaining steps train the pruned network; max_prune_fraction 0.6
    # (0.7 where 0.6 cannot reach the MACs target). How they were chosen on validation:
    # benchmarks/README.md, notes (OCS' stability rule).
    ocs_knobs: dict[str, float] = field(default_factory=lambda: {"epochs": 8, "steps_per_epoch": 15, "stability": 0.9, "max_prune_fraction": 0.6})
    # reconstruction (pipeline.repair.reconstruct): its setting is chosen on validation at the probes
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
        ("obs global", "obs", "global"),
    )
    recon_channel: tuple[tuple[str, str, str], ...] = (
        ("magnitude layerwise (L1)", "magnitude", "layerwise"),
        ("magnitude global (L1)", "magnitude", "global"),
        ("activation global", "activation", "global"),
        ("activation layerwise", "activation", "layerwise"),
        ("bn_activation global", "bn_activation", "global"),
        ("ocs", "ocs", "global"),
        ("obs global", "obs", "global"),
        ("obs layerwise", "obs", "layerwise"),
    )
    # N:M patterns of the nm section: every method whose granularities include nm, with the
    # unstructured setting and its chosen reconstruction
    nm_patterns: tuple[tuple[int, int], ...] = ((2, 4), (4, 8))
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
            recon_grid=(ReconSpec(mode="lsq", images=128, layers="pruned"), ReconSpec(mode="lsq", images=128, layers="all")),
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


@dataclass(frozen=True)
class Setting:
    """The recalibration and stem/head choice applied to every candidate of one granularity."""

    granularity: str
    recal: RecalSpec
    prune_ends: bool = True  # whether the stem and the classifier may be pruned

    @property
    def prune_stem(self) -> bool:
        return self.prune_ends

    @property
    def prune_head(self) -> bool:
        return self.prune_ends

    def spec(self, method: str, point: float | None, **kw: Any) -> CandidateSpec:
        """A candidate of ``method`` at ``point``: a weight sparsity (unstructured; None for a
        method whose sparsity is an outcome) or a MACs reduction factor r (channel: keeps 1 / r)."""
        target = {"target_sparsity": point} if self.granularity == "unstructured" else {"target_macs_ratio": 1.0 / float(point or 1.0)}
        return CandidateSpec(
            method=method, granularity=self.granularity, prune_stem=self.prune_stem, prune_head=self.prune_head, recal=self.recal, **target, **kw
        )

    def to_dict(self) -> dict[str, Any]:
        return {"recal": self.recal.model_dump(), "prune_stem": self.prune_stem, "prune_head": self.prune_head}


def robust_latency_ms(model: torch.nn.Module, shape: tuple[int, ...], batch: int, threads: int, rounds: int, repeats: int) -> float:
    """Lowest of ``rounds`` medians of ``measure.latency_ms`` with ``threads`` torch threads:
    on a shared machine a round that other jobs slowed down is discarded instead of averaged."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return min(measure.latency_ms(model, shape, batch, repeats) for _ in range(rounds))
    finally:
        torch.set_num_threads(saved)


def latency_set(model: torch.nn.Module, shape: tuple[int, ...], cfg: BenchConfig) -> dict[str, float]:
    """Batch-1 latency with 1 thread and with ``cfg.threads``, and batch-64 latency with ``cfg.threads``."""
    return {
        "b1_1thread_ms": robust_latency_ms(model, shape, 1, 1, cfg.latency_rounds, cfg.latency_repeats),
        f"b1_{cfg.threads}threads_ms": robust_latency_ms(model, shape, 1, cfg.threads, cfg.latency_rounds, cfg.latency_repeats),
        f"b64_{cfg.threads}threads_ms": robust_latency_ms(model, shape, 64, cfg.threads, cfg.latency_rounds, cfg.latency_b64_repeats),
    }


class ResultCache:
    """``Evaluator.evaluate`` results stored by spec JSON in a JSON-lines file (``--cache``;
    ``CandidateResult.to_dict`` per line), so that a run killed part-way (shared machines)
    resumes without re-training. Every other attribute is the evaluator's."""

    def __init__(self, ev: Evaluator, path: Path) -> None:
        self._ev, self._path = ev, path
        self._store: dict[str, CandidateResult] = {}
        self.hits = 0
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    res = CandidateResult.from_dict(json.loads(line))
                    self._store[res.spec.to_json()] = res

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ev, name)

    def evaluate(self, spec: CandidateSpec) -> CandidateResult:
        key = spec.to_json()
        if key in self._store:
            self.hits += 1
            return self._store[key]
        res = self._store[key] = self._ev.evaluate(spec)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._path.open("a") as f:
            f.write(json.dumps(res.to_dict()) + "\n")
        return res


# ---------------------------------------------------------------- rows


def row_of(ev: Evaluator, res: CandidateResult, label: str, point: float | str, pivot: str | None = None, note: str = "") -> dict[str, Any]:
    """One JSON row: the spec, every metric, and the test accuracy before recalibration.
    ``pivot``: the row of the report's pivot tables (default: ``label``); ``note``: what the
    cell adds to the accuracy (a knob chosen on validation)."""
    spec, m = res.spec, res.metrics
    method = get_method(spec.method)
    row: dict[str, Any] = {
        "method": spec.method,
        "label": label,
        "pivot": pivot or label,
        "note": note,
        "trains": method.trains,
        "granularity": spec.granularity,
        "scope": spec.scope,
        "point": point,
        "target_sparsity": spec.target_sparsity,
        "target_macs_ratio": spec.target_macs_ratio,
        "knobs": dict(spec.knobs),
        "prune_stem": spec.prune_stem,
        "prune_head": spec.prune_head,
        "recal": spec.recal.model_dump(),
        "selected": True,
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
    plan = PrunePlan.from_parquet(res.plan)
    model = common.plan_model(ev, plan, spec)  # with the trained / refit weights the plan carries
    if spec.granularity == "channel":
        row["kept_per_stage"] = kept_per_stage(plan.channels)
    t = ev.splits.test
    row["test_accuracy_before_recal"] = measure.accuracy(model, t, t.y, ev.cfg.eval_batch)
    # sparsity over *all* conv/linear weights (the metric counts only the prunable ones,
    # which exclude the stem/head when they are not pruned)
    row["sparsity_all_weights"] = measure.pruned_fraction(model, ev.base)
    if method.trains:
        budget = method.training_budget(spec, len(ev.splits.train))
        row["training"] = {
            **budget,
            "knobs_with_defaults": method.knob_values(spec),
            "train_images": len(ev.splits.train),
            "epochs_equivalent": budget["images_seen"] / len(ev.splits.train),
            "wall_s": m["prune_s"],
            "s_per_step": m["prune_s"] / max(budget["optimizer_steps"], 1),
        }
    log(
        f"  {label:<28} @ {point:<4}  val {pct(m['accuracy_before_recal'])}->{pct(m['accuracy'])}  "
        f"test {pct(row['test_accuracy_before_recal'])}->{pct(m.get('test_accuracy'))}  "
        f"sparsity {m['sparsity']:.3f} macs {m['macs_ratio']:.3f}  prune {m['prune_s']:.1f}s"
    )
    return row


def per_stage(counts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """(stage, channels) pairs summed per stage, in first-seen order."""
    out: dict[str, int] = {}
    for stage, n in counts:
        out[stage] = out.get(stage, 0) + n
    return out


def kept_per_stage(kept: dict[str, torch.Tensor]) -> dict[str, int]:
    """Kept output channels per stage (``layers.stage_of``) of a plan's channel groups."""
    return per_stage((stage_of(name), len(idx)) for name, idx in kept.items())


def channels_per_stage(ev: Evaluator, setting: Setting) -> dict[str, int]:
    """Prunable channels per stage of the base model (the channel graph's group sizes)."""
    graph = structure.cached_graph(ev.base, ev.ctx, setting.prune_stem, setting.prune_head)
    return per_stage((g.stage, g.size) for g in graph.groups)


# ---------------------------------------------------------------- phases


def select_recal(ev: Evaluator, cfg: BenchConfig) -> tuple[dict[str, Setting], list[dict[str, Any]]]:
    """Choose the recalibration setting (and stem/head pruning) per granularity on validation.

    Probes are global magnitude candidates at ``cfg.probe_sparsities`` (unstructured) and
    ``cfg.probe_reductions`` (channel). Each grid setting recalibrates the same pruned
    network (``Evaluator.validation_accuracy``); the setting with the highest mean
    validation accuracy over the probes wins (ties: the earlier, cheaper grid entry). Then,
    for unstructured candidates, keeping the stem and classifier dense is tried with the
    winning setting.
    """
    table: list[dict[str, Any]] = []
    chosen: dict[str, Setting] = {}
    points = {"unstructured": cfg.probe_sparsities, "channel": cfg.probe_reductions}
    for gran, probe_points in points.items():
        stored = Setting(gran, RecalSpec(images=0))  # no recalibration: the stored statistics
        before = {p: ev.validation_accuracy(stored.spec("magnitude", p)) for p in probe_points}
        best: tuple[float, Setting] | None = None
        for recal in cfg.recal_grid:
            setting = Setting(gran, recal)
            with Timer() as t:
                accs = {p: ev.validation_accuracy(setting.spec("magnitude", p)) for p in probe_points}
            mean = sum(accs.values()) / len(accs)
            table.append({"granularity": gran, **setting.to_dict(), "val_accuracy": accs, "val_before": before, "mean": mean, "seconds": t.s})
            log(f"  recal {gran:<12} images={recal.images:<5} augment={recal.augment!s:<5} val {[pct(a) for a in accs.values()]} mean {pct(mean, 2)}")
            if best is None or mean > best[0]:
                best = (mean, setting)
        assert best is not None
        chosen[gran] = best[1]
        if gran == "unstructured":  # channel groups of these ResNets never include stem or head
            dense_ends = replace(best[1], prune_ends=False)
            accs = {p: ev.validation_accuracy(dense_ends.spec("magnitude", p)) for p in probe_points}
            mean = sum(accs.values()) / len(accs)
            table.append({"granularity": gran, **dense_ends.to_dict(), "val_accuracy": accs, "mean": mean})
            log(f"  recal {gran:<12} same, stem+head dense: val {[pct(a) for a in accs.values()]} mean {pct(mean, 2)}")
            if mean > best[0]:
                chosen[gran] = dense_ends
    for row in table:
        row["chosen"] = {k: row[k] for k in ("recal", "prune_stem", "prune_head")} == chosen[row["granularity"]].to_dict()
    return chosen, table


def dense_reference(ev: Evaluator, setting: Setting) -> dict[str, Any]:
    """The unpruned network with its stored statistics, and recalibrated with ``setting``."""
    t = ev.splits.test
    out: dict[str, Any] = {
        **common.dense_reference(ev),
        "params": measure.nonzero_params(ev.base),
        "latency_ms": measure.latency_ms(ev.base, ev.splits.input_shape, 1, ev.cfg.latency_repeats),
        "latency_b1_1thread_ms": robust_latency_ms(ev.base, ev.splits.input_shape, 1, 1, 3, ev.cfg.latency_repeats),
    }
    m = copy.deepcopy(ev.base)
    recalibrate(m, ev.ctx.calib_x, setting.recal, black=ev.splits.black)
    out["recalibrated"] = {"recal": setting.recal.model_dump(), "test_accuracy": measure.accuracy(m, t, t.y)}
    return out


def pick(ev: Evaluator, specs: list[tuple[str, CandidateSpec]], point: float, pivot: str, note_knob: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose among ``specs`` (label, spec) on ``Evaluator.validation_accuracy``, then evaluate
    only the chosen one. Returns its row and the selection table.

    The chosen spec is pruned and recalibrated twice (once for the choice, once by
    ``evaluate``): deterministic, so the same network, and simpler than handing the first
    model over; it costs one extra prune + recalibration per choice, a few seconds."""
    table = []
    for label, spec in specs:
        try:
            acc = ev.validation_accuracy(spec)
        except Exception as e:  # a failing alternative is reported, not fatal
            acc, label = float("nan"), f"{label} (failed: {type(e).__name__}: {e})"
        table.append({"label": label, "knobs": dict(spec.knobs), "val_accuracy": acc})
        log(f"  choose {label:<22} @ {point:<4} val after {pct(acc)}")
    ok = [i for i, t in enumerate(table) if t["val_accuracy"] == t["val_accuracy"]]
    best = max(ok, key=lambda i: table[i]["val_accuracy"]) if ok else 0
    for i, t in enumerate(table):
        t["chosen"] = i == best
    label, spec = specs[best]
    row = row_of(ev, ev.evaluate(spec), label, point, pivot=pivot, note=f"{note_knob}={spec.knobs[note_knob]:g}")
    return row, {"point": point, "granularity": spec.granularity, "alternatives": table}


def screening(ev: Evaluator, setting: Setting, point: float, weights: tuple[float, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Screening at ``point`` with the screening weight wF chosen on validation among ``weights``."""
    specs = [(f"screening wF={w:g}", setting.spec("screening", point, knobs={"screening_weight": w})) for w in weights]
    return pick(ev, specs, point, "screening (wF chosen on val)", "screening_weight")


def run_unstructured(ev: Evaluator, cfg: BenchConfig, setting: Setting, selections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for s in cfg.sparsities:
        log(f"unstructured {s:.0%}")
        rows.append(row_of(ev, ev.evaluate(setting.spec("magnitude", s)), "magnitude global", s))
        rows.append(row_of(ev, ev.evaluate(setting.spec("magnitude", s, scope="layerwise")), "magnitude layerwise", s))
        rows.append(row_of(ev, ev.evaluate(setting.spec("random", s)), "random", s))
        row, sel = screening(ev, setting, s, cfg.screening_weights_unstructured)
        rows.append(row)
        selections.append(sel)
    for pressure, steps, regrowth in cfg.hyperflows_runs:
        log(f"hyperflows pressure={pressure:g} steps={steps}+{regrowth}")
        res = ev.evaluate(setting.spec("hyperflows", None, knobs={"pressure": pressure, "steps": steps, "regrowth_steps": regrowth}))
        achieved = res.metrics.get("sparsity", float("nan"))
        point = min(cfg.sparsities, key=lambda p: abs(p - achieved)) if res.state == "ok" else float("nan")
        note = f"p={pressure:g}: {achieved:.1%}"
        rows.append(row_of(ev, res, f"hyperflows p={pressure:g}", point, pivot="hyperflows (pressure per run)", note=note))
    return rows


def ocs_knobs(ev: Evaluator, cfg: BenchConfig, setting: Setting, reduction: float) -> dict[str, float]:
    """``cfg.ocs_knobs``, with ``cfg.ocs_fallback_cap`` as the per-group cap where theirs
    cannot reach ``1 / reduction`` MACs (``structure.lowest_macs_ratio``)."""
    knobs = dict(cfg.ocs_knobs)
    spec = setting.spec("ocs", reduction, knobs=knobs)
    graph = structure.cached_graph(ev.base, ev.ctx, spec.prune_stem, spec.prune_head)
    assert spec.target_macs_ratio is not None
    if structure.lowest_macs_ratio(graph, get_method("ocs").knob(spec, "max_prune_fraction")) > spec.target_macs_ratio:
        knobs["max_prune_fraction"] = cfg.ocs_fallback_cap
    return knobs


def run_channel(ev: Evaluator, cfg: BenchConfig, setting: Setting, selections: list[dict[str, Any]], with_ocs: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    shape = ev.splits.input_shape
    for r in cfg.reductions:
        log(f"channel {r}x fewer MACs")
        dense_lat = latency_set(ev.base, shape, cfg)
        new = [
            row_of(ev, ev.evaluate(setting.spec("magnitude", r)), "magnitude global (L1)", r),
            row_of(ev, ev.evaluate(setting.spec("magnitude", r, scope="layerwise")), "magnitude layerwise (L1)", r),
            row_of(ev, ev.evaluate(setting.spec("random", r)), "random", r),
        ]
        row, sel = screening(ev, setting, r, cfg.screening_weights_channel)
        new.append(row)
        selections.append(sel)
        if with_ocs:
            new.append(row_of(ev, ev.evaluate(setting.spec("ocs", r, knobs=ocs_knobs(ev, cfg, setting, r))), "ocs", r))
        for row in new:
            if row["state"] == "ok":
                row["latency"] = latency_set(common.plan_model(ev, row["_plan"], setting), shape, cfg)
                row["dense_latency"] = dense_lat
        rows += new
    return rows


def select_recon(ev: Evaluator, cfg: BenchConfig, settings: dict[str, Setting]) -> tuple[dict[str, ReconSpec], list[dict[str, Any]]]:
    """Choose the reconstruction setting per granularity on validation: every entry of
    ``cfg.recon_grid`` reconstructs the same probe (global magnitude at
    ``cfg.recon_probe_unstructured``; layerwise L1 channels at ``cfg.recon_probe_channel``),
    through a full ``Evaluator.evaluate`` (not ``validation_accuracy``: its table records the
    reconstruction's timings and errors too); the highest validation accuracy wins (ties:
    the earlier, cheaper). The test accuracy it also measures plays no part."""
    probes = {
        "unstructured": settings["unstructured"].spec("magnitude", cfg.recon_probe_unstructured),
        "channel": settings["channel"].spec("magnitude", cfg.recon_probe_channel, scope="layerwise"),
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


def run_nm(ev: Evaluator, cfg: BenchConfig, setting: Setting, recon: ReconSpec, only: set[str] | None) -> list[dict[str, Any]]:
    """Every method that declares ``nm`` granularity, at each of ``cfg.nm_patterns``, with
    reconstruction (the unstructured setting); the row's point is the pattern (``"2:4"``)."""
    rows: list[dict[str, Any]] = []
    for n, m in cfg.nm_patterns:
        log(f"N:M {n}:{m}")
        for name in list_methods():
            if "nm" not in get_method(name).granularities or (only is not None and name not in only):
                continue
            spec = CandidateSpec(
                method=name,
                granularity="nm",
                nm=(n, m),
                prune_stem=setting.prune_stem,
                prune_head=setting.prune_head,
                recal=setting.recal,
                reconstruct=recon,
            )
            rows.append(row_of(ev, ev.evaluate(spec), f"{name} {n}:{m} + lsq", f"{n}:{m}"))
    return rows


def run_reconstructed(
    ev: Evaluator, cfg: BenchConfig, settings: dict[str, Setting], recon: dict[str, ReconSpec], only: set[str] | None = None
) -> list[dict[str, Any]]:
    """Every listed method (of ``only``, when given) with reconstruction (the chosen setting) at the reconstruction points."""
    rows: list[dict[str, Any]] = []
    known = set(list_methods()) & (only if only is not None else set(list_methods()))
    lists = {"unstructured": (cfg.recon_sparsities, cfg.recon_unstructured), "channel": (cfg.recon_reductions, cfg.recon_channel)}
    for gran, (points, methods) in lists.items():
        setting = settings[gran]
        for p in points:
            log(f"reconstructed {gran} at {p}")
            for label, method, scope in methods:
                if method not in known or (method == "ocs" and not cfg.ocs_knobs):
                    continue
                knobs = ocs_knobs(ev, cfg, setting, p) if method == "ocs" else {}
                spec = setting.spec(method, p, scope=scope, knobs=knobs, reconstruct=recon[gran])
                rows.append(row_of(ev, ev.evaluate(spec), f"{label} + lsq", p))
    return rows


def raw_l1_diagnostic(ev: Evaluator, cfg: BenchConfig, setting: Setting, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Global L1 channel ranking *without* the per-group mean normalisation that
    ``structure.select_channels`` applies to one-shot methods (``normalize=False``; raw
    filter norms, as methods.md describes its 2x figure), beside the ``magnitude global``
    rows (normalised). Not a pipeline option: a diagnostic, nothing is selected from it.
    The plan is scored by the magnitude method and measured by ``Evaluator.rebuild``."""
    graph = structure.cached_graph(ev.base, ev.ctx, setting.prune_stem, setting.prune_head)
    spec0 = setting.spec("magnitude", cfg.reductions[0])
    scores = get_method("magnitude").channel_scores(ev.base, ev.ctx, spec0, graph.groups)
    out = []
    for r in cfg.reductions:
        ref = next((x for x in rows if x["label"] == "magnitude global (L1)" and x["point"] == r and x["state"] == "ok"), None)
        if ref is not None:
            out.append(
                {
                    "reduction": r,
                    "normalize": True,
                    "macs_ratio": ref["macs_ratio"],
                    "kept_per_stage": ref["kept_per_stage"],
                    "val_after": ref["val_accuracy"],
                    "test_before": ref["test_accuracy_before_recal"],
                    "test_after": ref["test_accuracy"],
                }
            )
        plan = PrunePlan(channels=structure.select_channels(graph, scores, 1.0 / r, "global", normalize=False))
        _, res = ev.rebuild(setting.spec("magnitude", r), plan)
        row = {
            "reduction": r,
            "normalize": False,
            "macs_ratio": res.metrics["macs_ratio"],
            "kept_per_stage": kept_per_stage(plan.channels),
            "test_before": common.plan_accuracy(ev, plan, setting, ev.splits.test, ev.cfg.eval_batch),
            "val_after": res.metrics["accuracy"],
            "test_after": res.metrics["test_accuracy"],
        }
        out.append(row)
        log(
            f"  raw-L1 diagnostic {r}x: val after {pct(row['val_after'])}, test {pct(row['test_before'])}->{pct(row['test_after'])}, kept {row['kept_per_stage']}"
        )
    return out


# ---------------------------------------------------------------- the run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = common.bench_parser(__doc__ or "", "one point per granularity, tiny budgets")
    ap.add_argument(
        "--out-dir", type=Path, default=None, help="where methods.json/.md go (default: benchmarks/results; with --quick a temporary folder)"
    )
    ap.add_argument(
        "--threads", type=int, default=BenchConfig.threads, help=f"torch intra-op threads (default {BenchConfig.threads}, as the published tables)"
    )
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
        "--hyperflows",
        action="append",
        default=None,
        metavar="PRESSURE:STEPS:REGROWTH",
        help="hyperflows runs instead of the default (repeatable), e.g. --hyperflows 10:560:60 --hyperflows 40:200:40",
    )
    ap.add_argument("--no-steered", action="store_true", help="seeds section: skip the power-law-steered constant-pressure runs (6 of its runs)")
    ap.add_argument(
        "--macs-costs",
        default="off,standardized,millions",
        help="seeds section: OCS macs_cost choices to run at 2x (default %(default)s; '' for none)",
    )
    ap.add_argument(
        "--controller-runs",
        default=None,
        metavar="TARGET:STEPS:REGROWTH,...",
        help="seeds section: the controller's runs instead of the default (0.8:360:50,0.9:560:60,0.95:560:60; '' for none)",
    )
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated sections to run: {', '.join(SECTIONS)} (default: all)")
    ap.add_argument(
        "--methods",
        default=None,
        metavar="NAMES",
        help="comma-separated methods: the reconstruction and nm sections run only their rows (with --rows-from, the other "
        "methods' rows of those sections are kept, and the reconstruction setting is the earlier run's, as it is for the nm "
        "section run without the reconstruction section)",
    )
    ap.add_argument(
        "--rows-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="a previous methods.json: its recalibration settings, dense reference and the rows of the "
        "sections not run are kept (each kept row says so in `from_run`)",
    )
    methods_report.add_previous_arg(ap, "store its figures in the new JSON")
    return ap.parse_args(argv)


def _read_json(path: Path | None, flag: str) -> dict[str, Any] | None:
    return None if path is None else read_json(path, flag)


def _section_of(row: dict[str, Any]) -> str:
    """The section that measures ``row``."""
    if row.get("section") == "seeds":  # benchmarks/seeds.py marks its rows
        return "seeds"
    if row["granularity"] == "nm":
        return "nm"
    return "reconstruction" if (row.get("reconstruct") or {}).get("mode", "none") != "none" else row["granularity"]


def _kept_rows(prev: dict[str, Any] | None, section: str, rerun: set[str] | None = None) -> list[dict[str, Any]]:
    """Rows of ``section`` from a previous run, marked with that run's date and commit; with
    ``rerun``, only the rows of the other methods (those methods' rows are measured again)."""
    if prev is None:
        return []
    out = []
    for r in prev["rows"]:
        if _section_of(r) == section and (rerun is None or r["method"] not in rerun):
            out.append({**r, "from_run": r.get("from_run") or f"{prev['machine'].get('date', '?')} @ {prev['machine'].get('git_commit', '?')}"})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    if sections - set(SECTIONS):
        raise SystemExit(f"--sections: unknown {sorted(sections - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    only = {x.strip() for x in args.methods.split(",") if x.strip()} if args.methods else None
    if only is not None and only - set(list_methods()):
        raise SystemExit(f"--methods: unknown {sorted(only - set(list_methods()))}; choose from {', '.join(list_methods())}")
    cfg = BenchConfig.quick_config() if args.quick else BenchConfig()
    cfg = replace(cfg, threads=args.threads)
    if args.hyperflows:
        try:
            runs = [(float(p), int(st), int(rg)) for p, st, rg in (item.split(":") for item in args.hyperflows)]
        except ValueError:
            raise SystemExit(f"--hyperflows {args.hyperflows}: each must read PRESSURE:STEPS:REGROWTH, e.g. 10:560:60") from None
        cfg = replace(cfg, hyperflows_runs=tuple(runs))
    if args.no_hyperflows:
        cfg = replace(cfg, hyperflows_runs=())
    if args.no_ocs:
        cfg = replace(cfg, ocs_knobs={})
    prev = _read_json(args.rows_from, "--rows-from")
    earlier = _read_json(args.previous, "--previous")
    out_dir = args.out_dir or (Path(tempfile.gettempdir()) / "prunesearch-bench-quick" if args.quick else common.RESULTS_DIR)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start, cpu_start = time.perf_counter(), time.process_time()
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

    with Timer() as t:
        if prev is not None:
            settings = {g: Setting(g, RecalSpec(**c["recal"]), c["prune_stem"]) for g, c in prev["chosen_settings"].items()}
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
    with Timer() as t:
        rows += (
            run_channel(ev, cfg, settings["channel"], selections, with_ocs=not args.no_ocs) if "channel" in sections else _kept_rows(prev, "channel")
        )
    phases["channel"] = t.s
    with Timer() as t:
        diag = raw_l1_diagnostic(ev, cfg, settings["channel"], rows) if "channel" in sections else (prev or {}).get("raw_l1_diagnostic", [])
    phases["diagnostics"] = t.s
    recon: dict[str, ReconSpec] = {}
    with Timer() as t:
        reuse = only is not None or "reconstruction" not in sections  # the setting is chosen with the reconstruction section
        if ({"reconstruction", "nm"} & sections) and reuse and prev is not None and prev.get("chosen_reconstruction"):
            recon = {g: ReconSpec(**c) for g, c in prev["chosen_reconstruction"].items()}
            recon_table = prev.get("recon_selection", [])
            log(f"reconstruction setting from {args.rows_from}")
        elif {"reconstruction", "nm"} & sections:
            log("choosing the reconstruction setting on validation")
            recon, recon_table = select_recon(ev, cfg, settings)
        else:
            recon_table = (prev or {}).get("recon_selection", [])
        if "reconstruction" in sections:
            rows += run_reconstructed(ev, cfg, settings, recon, only) + (_kept_rows(prev, "reconstruction", only) if only is not None else [])
        else:
            rows += _kept_rows(prev, "reconstruction")
    phases["reconstruction"] = t.s
    with Timer() as t:
        if "nm" in sections:
            rows += run_nm(ev, cfg, settings["unstructured"], recon["unstructured"], only) + (
                _kept_rows(prev, "nm", only) if only is not None else []
            )
        else:
            rows += _kept_rows(prev, "nm")
    phases["nm"] = t.s
    with Timer() as t:
        if "seeds" in sections:
            unstructured, channel = settings["unstructured"], settings["channel"]

            def ocs_spec(how: str) -> CandidateSpec:
                r = seeds_cfg.ocs_reduction
                knobs = {**ocs_knobs(ev, cfg, channel, r), "macs_cost": float(get_method("ocs").knobs["macs_cost"].choices.index(how))}
                return channel.spec("ocs", r, knobs=knobs)

            seeds_cfg = seeds.SeedsConfig.quick() if args.quick else seeds.SeedsConfig(steered=not args.no_steered)
            seeds_cfg = replace(seeds_cfg, macs_costs=tuple(x for x in args.macs_costs.split(",") if x))
            if args.controller_runs is not None:
                runs = [item.split(":") for item in args.controller_runs.split(",") if item]
                seeds_cfg = replace(seeds_cfg, controller_runs=tuple((float(t), int(st), int(rg)) for t, st, rg in runs))
            rows += seeds.run_seeds(ev, seeds_cfg, unstructured.spec, ocs_spec, row_of)
        else:
            rows += _kept_rows(prev, "seeds")
    phases["seeds"] = t.s

    result: dict[str, Any] = {
        "benchmark": "methods",
        "machine": info,
        "threads": torch.get_num_threads(),
        "loadavg_at_end": common.loadavg(),
        "shared": str(Path(args.shared).resolve()),
        "model": assets.model_cfg.model_dump(),
        "data": assets.data_cfg.model_dump(),
        "splits": {name: len(getattr(assets.splits, name)) for name in ("train", "calib", "val", "test")},
        "channels_per_stage": channels_per_stage(ev, settings["channel"]),
        "config": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("recal_grid", "recon_grid")},
            "recal_grid": [r.model_dump() for r in cfg.recal_grid],
            "recon_grid": [r.model_dump() for r in cfg.recon_grid],
        },
        "chosen_settings": {g: s.to_dict() for g, s in settings.items()},
        "recal_selection": recal_table,
        "screening_selection": selections,
        "sections_run": sorted(sections),
        "rows_from": str(args.rows_from) if args.rows_from else None,
        "recon_selection": recon_table,
        "chosen_reconstruction": {g: r.model_dump() for g, r in recon.items()} or (prev or {}).get("chosen_reconstruction", {}),
        "dense": dense,
        "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "raw_l1_diagnostic": diag,
        "phases_s": phases,
        "runtime_s": time.perf_counter() - t_start,
        "cached_candidates_reused": getattr(ev, "hits", 0),
        # CPU seconds of this process (all threads): wall / (cpu / threads) shows how much
        # other jobs on the machine slowed the run down
        "cpu_s": time.process_time() - cpu_start,
    }
    result["targets"] = methods_report.target_status(result["rows"], TARGETS)
    if earlier is not None:
        result["previous"] = methods_report.summary_of(earlier, str(args.previous))
    common.write_json(out_dir / "methods.json", result)
    common.write_text(out_dir / "methods.md", methods_report.markdown(result))
    log(f"wrote {out_dir / 'methods.json'} and methods.md in {result['runtime_s'] / 60:.1f} min")
    for t in result["targets"]:
        log(f"target {t['granularity']} {t['point']}: beat {pct(t['beat'])} -> {t['best_label']} {pct(t['best_test_accuracy'])} met={t['met']}")
    return result


if __name__ == "__main__":
    main()
