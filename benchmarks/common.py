"""Helpers shared by the benchmark scripts.

- ``shared_dir`` / ``load_resnet20_cifar``: the shared pretrained ResNet-20 and the exact
  CIFAR-10 images (``../shared``, overridable), split by ``pipeline.data.splits.load_data`` so
  calibration and validation images come from ``train_exact.npz`` and the test split is
  ``test_exact.npz`` (report only).
- ``resnet20_config`` / ``run_resnet20_search``: ``configs/resnet20_cifar10.yaml`` with a
  benchmark's overrides, and a real search on it with its candidates' rows.
- ``make_evaluator``: the pipeline's ``Evaluator`` in-process (no Ray), so a benchmark
  measures exactly what a search measures.
- ``plan_accuracy``: accuracy of a result's plan applied to the base model *before*
  recalibration, on any split (the search records it on validation only).
- ``dense_reference``: the unpruned network's accuracies and MACs, as the evaluator holds them.
- ``ranked_candidates``: a search's candidates passing filters, best first (``search.records.query.best``).
- ``machine_info``, ``Timer``; ``write_json``, ``md_table`` (from ``reporting``): reporting.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Protocol

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: `python benchmarks/methods.py`
    sys.path.insert(0, str(REPO))

from pipeline import measure  # noqa: E402
from pipeline.build import apply_plan  # noqa: E402
from pipeline.data.splits import DataConfig, Split, Splits, load_data  # noqa: E402
from pipeline.evaluator import Evaluator  # noqa: E402
from pipeline.measure import MeasureConfig  # noqa: E402
from pipeline.models import ModelConfig, build_model  # noqa: E402
from pipeline.pruning.plan import PrunePlan  # noqa: E402
from pipeline.pruning.structure import cached_graph  # noqa: E402
from search.config import SearchConfig, merge_sections, parse_config  # noqa: E402
from search.config.file import read_config_file  # noqa: E402
from search.records.query import best, candidate_rows  # noqa: E402
from search.runner.driver import SearchOutcome, run_search  # noqa: E402

from reporting import RESULTS_DIR, md_table, pct, write_json, write_text  # noqa: E402,F401  (re-exported for the scripts)

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared"
TRAIN_NPZ = "data/cifar10/train_exact.npz"
TEST_NPZ = "data/cifar10/test_exact.npz"
CHECKPOINT = "models/cifar10_resnet20.th"
RESNET20_CONFIG = REPO / "configs" / "resnet20_cifar10.yaml"


def add_shared_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shared",
        type=Path,
        default=DEFAULT_SHARED,
        help=f"folder holding data/cifar10/*.npz and models/cifar10_resnet20.th (default: {DEFAULT_SHARED})",
    )


def bench_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """A benchmark's command line: described by its docstring's first line, with
    ``--shared`` and ``--quick`` (``quick``: what the smoke run cuts)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_shared_arg(ap)
    ap.add_argument("--quick", action="store_true", help=f"a smoke run of a few minutes into a temporary folder: {quick}")
    return ap


@dataclass
class Assets:
    """The base model, its config and the data splits of one benchmark run."""

    model_cfg: ModelConfig
    data_cfg: DataConfig
    base: nn.Module
    splits: Splits


def resnet20_config(shared: Path, overrides: dict[str, Any] | None = None, replace: Collection[str] = ()) -> SearchConfig:
    """``configs/resnet20_cifar10.yaml``, the product's ResNet-20 config, with its shared
    files under ``shared`` and ``overrides`` (nested dicts, merged as ``prunesearch run``
    merges them) applied. ``replace`` names top-level sections that ``overrides`` gives
    whole: the YAML's section is dropped, not merged into (a benchmark's own ``space``,
    whose every range it states).

    Raises:
        SystemExit: a shared file is missing (naming it and ``--shared``).
    """
    shared = Path(shared).expanduser().resolve()
    for rel in (TRAIN_NPZ, TEST_NPZ, CHECKPOINT):
        if not (shared / rel).is_file():
            raise SystemExit(f"missing {shared / rel}; point --shared at the shared assets folder")
    paths = {
        "model": {"checkpoint": str(shared / CHECKPOINT)},
        "data": {"path": str(shared / TRAIN_NPZ), "test_path": str(shared / TEST_NPZ)},
    }
    raw = {k: v for k, v in read_config_file(RESNET20_CONFIG).items() if k not in replace}
    return parse_config(raw, merge_sections(paths, overrides or {}))


@dataclass
class SearchRun:
    """One finished search: its outcome, the rows of its scored candidates
    (``search.records.query.candidate_rows`` with an ``accuracy``), its wall seconds (Ray start
    included) and the load average before and after."""

    outcome: SearchOutcome
    rows: list[dict[str, Any]]
    wall_s: float
    loadavg_before: list[float]
    loadavg_after: list[float]


def run_resnet20_search(shared: Path, overrides: dict[str, Any], replace: Collection[str] = ()) -> SearchRun:
    """A real search (``search.runner.driver.run_search``) on ``resnet20_config(shared, overrides, replace)``."""
    cfg = resnet20_config(shared, overrides, replace)
    load0 = loadavg()
    with Timer() as t:
        outcome = run_search(cfg, quiet=True)
    rows = [r for r in candidate_rows(outcome.tracking_uri, outcome.experiment) if "accuracy" in r]
    return SearchRun(outcome, rows, t.s, load0, loadavg())


def load_resnet20_cifar(shared: Path, calib_size: int, val_size: int, seed: int = 0) -> Assets:
    """The shared ResNet-20 and exact CIFAR-10 splits of ``configs/resnet20_cifar10.yaml``.

    ``calib_size`` calibration and ``val_size`` validation images are drawn from
    ``train_exact.npz`` (the rest is the training split for methods that train);
    the test split is all of ``test_exact.npz``. The split depends on ``calib_size``:
    keep it fixed across everything that is compared on validation.
    """
    cfg = resnet20_config(shared, {"data": {"calib_size": calib_size, "val_size": val_size, "seed": seed}})
    return Assets(cfg.model, cfg.data, build_model(cfg.model), load_data(cfg.data))


def make_evaluator(assets: Assets, threads: int, measure_cfg: MeasureConfig | None = None, device: str = "cpu") -> Evaluator:
    """The pipeline's evaluator on ``device`` (the CPU unless asked) with ``threads`` torch threads, in this process."""
    return Evaluator(
        assets.model_cfg,
        {k: v.clone() for k, v in assets.base.state_dict().items()},
        assets.splits,
        measure_cfg or MeasureConfig(),
        threads=threads,
        device=device,
    )


class StemHead(Protocol):
    """What decides a model's channel graph: a ``CandidateSpec`` (or anything with the same two flags)."""

    @property
    def prune_stem(self) -> bool: ...
    @property
    def prune_head(self) -> bool: ...


def plan_model(evaluator: Evaluator, plan: bytes | PrunePlan, spec: StemHead) -> nn.Module:
    """The pruned network of a recorded plan, before recalibration (trained weights, if
    the plan carries them, included): what ``Evaluator`` builds before it recalibrates,
    channels cut along the base model's cached graph under ``spec``'s stem/head choice
    (``structure.cached_graph``: the model is traced once, not per plan)."""
    if isinstance(plan, (bytes, bytearray)):
        plan = PrunePlan.from_parquet(bytes(plan))
    graph = cached_graph(evaluator.base, evaluator.ctx, spec.prune_stem, spec.prune_head) if plan.channels else None
    return apply_plan(evaluator.base, plan, graph)


def plan_accuracy(evaluator: Evaluator, plan: bytes | PrunePlan, spec: StemHead, split: Split, batch: int = 512) -> float:
    """Top-1 of the plan's network with the stored (dense) BatchNorm statistics on ``split``."""
    return measure.accuracy(plan_model(evaluator, plan, spec), split, split.y, batch)


def dense_reference(evaluator: Evaluator) -> dict[str, Any]:
    """The unpruned network: validation top-1 (``Evaluator.dense_accuracy``, the metric
    ``dense_accuracy`` of every candidate), test top-1 with its stored statistics, MACs per image."""
    t = evaluator.splits.test
    return {
        "val_accuracy": evaluator.dense_accuracy,
        "test_accuracy": measure.accuracy(evaluator.base, t, t.y, evaluator.cfg.eval_batch),
        "macs": evaluator.dense_macs,
    }


def ranked_candidates(srch: SearchRun, feasible: bool | None = None, **filters: float) -> list[dict[str, Any]]:
    """The candidates of ``srch`` passing ``filters`` (``search.records.query.FILTERS`` names, e.g.
    ``min_sparsity``, ``max_macs_ratio``), most accurate on validation first: the
    product's ``best`` query over every candidate, not only the front; ``feasible`` as
    there (None: both). Test accuracy plays no part."""
    o = srch.outcome
    return best(o.tracking_uri, o.experiment, top=None, feasible=feasible, front=False, **filters)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:  # read-only query
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """Where and when the benchmark ran: CPU, cores, torch version and threads, load."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "git_commit": git_commit(),
    }


def loadavg() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


class Timer:
    """Wall-clock seconds of a ``with`` block: ``with Timer() as t: ...; t.s``."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        self.s = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
