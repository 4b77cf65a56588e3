"""Load benchmark: a long digits search, with the driver's and actors' memory sampled.

Writes benchmarks/results/load.json and load.md: candidates per minute, and resident
memory (RSS, MiB) of the driver and of each actor after every 50 candidates, so a leak
shows as a rising column.

    .venv/bin/python benchmarks/load.py [--trials 500] [--actors 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

# The repository first on sys.path, so the product packages import from a script run.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--actors", type=int, default=2)
    args = ap.parse_args()

    from search.config import parse_config
    from search.driver import run_search

    run_dir = tempfile.mkdtemp(prefix="prunesearch-load-")
    cfg = parse_config(
        {
            "name": "load",
            "run_dir": run_dir,
            "budget": {"trials": args.trials},
            "actors": {"count": args.actors},
            "sampler": {"name": "random"},
            "measure": {"latency_repeats": 2, "test_accuracy": False, "collapse_plot": False},
            "base_training": {"steps": 150},  # the base model's quality does not matter here
        }
    )
    samples: list[dict] = []
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.wait(2.0):
            actors = [
                p
                for p in psutil.process_iter(["cmdline"])
                if "ray::Evaluator" in " ".join(p.info["cmdline"] or []) or any("Evaluator" in c for c in (p.info["cmdline"] or [])[:1])
            ]
            samples.append(
                {
                    "t": time.monotonic(),
                    "candidates": _recorded(cfg),
                    "driver_mib": me.memory_info().rss / 2**20,
                    "actor_mib": sorted(p.memory_info().rss / 2**20 for p in actors),
                }
            )

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    t.start()
    out = run_search(cfg, quiet=True)
    stop.set()
    t.join()
    wall = time.monotonic() - t0
    rows = _every(samples, 50)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "trials": args.trials,
        "actors": args.actors,
        "evaluated": out.evaluated,
        "failed": out.failed,
        "wall_s": wall,
        "candidates_per_min": 60 * out.evaluated / wall,
        "memory": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Load: {args.trials} digits candidates, {args.actors} actors ({result['date']}, {result['machine']})",
        "",
        f"{out.evaluated} evaluated, {out.failed} failed, {wall:.0f} s, {result['candidates_per_min']:.0f} candidates/min.",
        "",
        "| candidates recorded | driver RSS MiB | actor RSS MiB |",
        "|---|---|---|",
    ]
    lines += [f"| {r['candidates']} | {r['driver_mib']:.0f} | {', '.join(f'{m:.0f}' for m in r['actor_mib'])} |" for r in rows]
    (RESULTS / "load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _recorded(cfg) -> int:
    """Candidates told so far, read from the Optuna journal (the driver alone writes it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = cfg.run_path / "optuna.journal"
    if not journal.exists():
        return 0
    study = optuna.load_study(study_name=cfg.name, storage=JournalStorage(JournalFileBackend(str(journal))))
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def _every(samples: list[dict], step: int) -> list[dict]:
    """The first sample at or past each multiple of ``step`` recorded candidates, and the last."""
    out, nxt = [], step
    for s in samples:
        if s["candidates"] >= nxt:
            out.append(s)
            nxt = (s["candidates"] // step + 1) * step
    if samples and (not out or out[-1] is not samples[-1]):
        out.append(samples[-1])
    return out


if __name__ == "__main__":
    main()
