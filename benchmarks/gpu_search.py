#!/usr/bin/env python
"""The GPU check's search: the shared ResNet-20 on exact CIFAR-10, one search per precision.

A real search (``search.runner.driver.run_search`` on ``configs/resnet20_cifar10.yaml``)
with ``--actors`` actors at ``--num-gpus`` GPUs each (0.25: four share one GPU), for
each of ``--precisions``. Prints, per precision: candidates per minute of the search
loop, the median latency (``measure.latency_batch``, CUDA events, the GPU locked while
timed), the best accuracy, the mean seconds per stage, and the device every candidate
recorded; writes ``results/gpu_search.json``. Checks that every candidate ran on the
device asked for (CUDA when ``--num-gpus`` > 0, else the CPU) and exits non-zero if not.

    .venv/bin/python benchmarks/gpu_search.py [--trials 16] [--actors 4] [--num-gpus 0.25] [--precisions fp32 bf16]
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow.tracking import MlflowClient  # noqa: E402

import common  # noqa: E402

STAGES = ("prune_s", "recon_s", "recal_s", "eval_s")


def main() -> None:
    ap = common.bench_parser(__doc__, "two candidates, one actor")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--actors", type=int, default=4)
    ap.add_argument("--num-gpus", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per actor")
    ap.add_argument("--out-dir", default="", help="write gpu_search.json and the run folders here (default: results/, /tmp)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    a = ap.parse_args()
    trials, actors = (2, 1) if a.quick else (a.trials, a.actors)
    want = "cuda" if a.num_gpus > 0 else "cpu"
    out = {"machine": common.machine_info(), "trials": trials, "actors": actors, "num_gpus": a.num_gpus, "runs": []}
    bad = []
    for precision in a.precisions:
        over = {
            "name": f"gpu-check-{precision}",
            "run_dir": str(Path(a.out_dir or "/tmp") / f"gpu-check-{precision}"),
            "budget": {"trials": trials},
            "actors": {"count": actors, "num_gpus": a.num_gpus, "num_cpus": 1, "threads": a.threads},
            "measure": {"precision": precision},
        }
        srch = common.run_resnet20_search(a.shared, over)
        o = srch.outcome
        client = MlflowClient(o.tracking_uri)
        devices = sorted({client.get_run(r["run_id"]).data.tags.get("info.device", "?") for r in srch.rows})
        if not all(d.startswith(want) for d in devices) or not srch.rows:
            bad.append(f"{precision}: candidates ran on {devices}, expected {want}")
        rows = [r for r in srch.rows if r.get("state") == "ok"]
        fig = {
            "precision": precision,
            "candidates": o.evaluated,
            "failed": o.failed,
            "candidates_per_min": round(60 * o.evaluated / o.loop_s, 2) if o.loop_s else None,
            "latency_ms_median": round(statistics.median(r["latency_ms"] for r in rows), 3) if rows else None,
            "best_accuracy": max((r["accuracy"] for r in rows), default=None),
            "devices": devices,
            "wall_s": round(srch.wall_s, 1),
            "startup_s": round(srch.wall_s - o.loop_s, 1),
            **{f"mean_{s}": round(statistics.mean(r.get(s, 0.0) for r in rows), 3) if rows else None for s in STAGES},
        }
        print(" ".join(f"{k}={v}" for k, v in fig.items()), flush=True)
        out["runs"].append(fig)
    common.write_json(common.RESULTS_DIR / "gpu_search.json" if not a.out_dir else Path(a.out_dir) / "gpu_search.json", out)
    if bad:
        raise SystemExit("; ".join(bad))


if __name__ == "__main__":
    main()
