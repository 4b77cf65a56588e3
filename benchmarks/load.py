"""Load benchmark: a long digits search, with the driver's and actors' memory sampled.

Writes benchmarks/results/load.json and, from it alone, load.md: candidates per minute,
and resident memory (RSS, MiB) of the driver and of each actor after every 50
candidates, so a leak shows as a rising column. The search is the product's embedded
default config (digits) with a quickly trained base model and a random sampler.

    .venv/bin/python benchmarks/load.py [--trials 500] [--actors 2] [--quick]
    .venv/bin/python benchmarks/load.py --render-only     # load.md again from load.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# The repository first on sys.path, so the product packages import from a script run.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reporting import RESULTS_DIR, md_table, read_json, write_json, write_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 30 candidates, into a temporary folder")
    ap.add_argument("--render-only", action="store_true", help="only write load.md from an existing load.json (no torch, no search)")
    ap.add_argument("--out", type=Path, default=None, help="folder for load.json / load.md (default: benchmarks/results; --quick: a temporary one)")
    args = ap.parse_args()
    out_dir = args.out or (Path(tempfile.gettempdir()) / "prunesearch-load-quick" if args.quick else RESULTS_DIR)
    if args.render_only:
        write_text(out_dir / "load.md", markdown(read_json(out_dir / "load.json", "--render-only: --out")))
        return
    with tempfile.TemporaryDirectory(prefix="prunesearch-load-") as run_dir:
        result = measure(30 if args.quick else args.trials, args.actors, run_dir)
    write_json(out_dir / "load.json", result)
    write_text(out_dir / "load.md", markdown(result))
    print(markdown(result))


def measure(trials: int, actors: int, run_dir: str) -> dict[str, Any]:
    """Run the search in ``run_dir``, sampling memory every 2 s; the figures of ``load.json``."""
    from search.config import parse_config  # the product (torch, Ray) only when measuring
    from search.runner.driver import run_search

    cfg = parse_config(
        {
            "name": "load",
            "run_dir": run_dir,
            "budget": {"trials": trials},
            "actors": {"count": actors},
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
            procs = [
                p
                for p in psutil.process_iter(["cmdline"])
                if "ray::Evaluator" in " ".join(p.info["cmdline"] or []) or any("Evaluator" in c for c in (p.info["cmdline"] or [])[:1])
            ]
            samples.append(
                {
                    "t": time.monotonic(),
                    "candidates": _recorded(cfg),
                    "driver_mib": me.memory_info().rss / 2**20,
                    "actor_mib": sorted(p.memory_info().rss / 2**20 for p in procs),
                }
            )

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    t.start()
    out = run_search(cfg, quiet=True)
    stop.set()
    t.join()
    wall = time.monotonic() - t0
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "trials": trials,
        "actors": actors,
        "evaluated": out.evaluated,
        "failed": out.failed,
        "wall_s": wall,
        "candidates_per_min": 60 * out.evaluated / wall,
        "memory": _every(samples, 50),
    }


def markdown(r: dict[str, Any]) -> str:
    """``load.md`` from the figures of ``load.json``."""
    rows = [[m["candidates"], f"{m['driver_mib']:.0f}", ", ".join(f"{a:.0f}" for a in m["actor_mib"])] for m in r["memory"]]
    lines = [
        f"# Load: {r['trials']} digits candidates, {r['actors']} actors ({r['date']}, {r['machine']})",
        "",
        f"{r['evaluated']} evaluated, {r['failed']} failed, {r['wall_s']:.0f} s, {r['candidates_per_min']:.0f} candidates/min.",
        "",
        md_table(["candidates recorded", "driver RSS MiB", "actor RSS MiB"], rows, align="lll"),
    ]
    return "\n".join(lines)


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
