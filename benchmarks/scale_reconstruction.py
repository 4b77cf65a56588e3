"""Scale: what prunesearch costs on models and data the size users prune.

Parts (``--part``), each writing only its own list of ``benchmarks/results/scale.json``
and keeping the others, so runs of different parts merge:

- ``reconstruction``: ``pipeline.repair.reconstruct.reconstruct`` on a torchvision
  model (random weights, BatchNorm statistics estimated on the images, synthetic
  normal images, magnitude plan) in a fresh process per row, so ``peak_rss_mb`` is that
  process's own peak resident memory. Rows: ``model``, ``image_size``, ``images``,
  ``granularity``, ``solver``, ``seconds``, ``solve_seconds``, ``peak_rss_mb``,
  ``mean_layer_error`` (relative squared layer output error after the fit, averaged
  over the refit layers), ``max_memory_gb``, ``threads``. ``--tree DIR --solver NAME``
  measures another checkout's code (``--tree /work/main --solver before``: the solver
  before this change); a row replaces the row of the same model, size, images,
  granularity, target and solver.

Run (1 torch thread by default)::

    nice -n 10 .venv/bin/python benchmarks/scale.py --part reconstruction \\
        --model resnet18 --granularity unstructured --target 0.8 --size 224 --images 256
    nice -n 10 .venv/bin/python benchmarks/scale.py --part reconstruction \\
        --model resnet50 --granularity channel --target 0.5 --size 224 --images 64 256 1024 --max-memory-gb 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def _one(job: dict[str, Any]) -> dict[str, Any]:
    """One reconstruction in this process (its code from ``sys.path``): the row's figures."""
    import resource
    import time

    import torch

    from pipeline.build import apply_plan, plan_candidate
    from pipeline.models import ModelConfig, build_model
    from pipeline.pruning.methods import PruneContext
    from pipeline.repair.reconstruct import reconstruct
    from pipeline.spec import CandidateSpec, ReconSpec

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=f"torchvision:{job['model']}", num_classes=1000))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(job["images"], 3, job["size"], job["size"], generator=g)
    model.train()
    with torch.no_grad():  # random-init BN statistics describe nothing: estimate them once
        for i in range(0, min(len(x), 64), 16):
            model(x[i : i + 16])
    model.eval()
    y = torch.zeros(len(x), dtype=torch.int64)
    ctx = PruneContext(calib_x=x[:16], calib_y=y[:16], train_x=x[:16], train_y=y[:16], example_input=x[:1], num_classes=1000)
    unstructured = job["granularity"] == "unstructured"
    spec = CandidateSpec(
        granularity=job["granularity"],
        target_sparsity=job["target"] if unstructured else None,
        target_macs_ratio=None if unstructured else job["target"],
    )
    plan = plan_candidate(model, ctx, spec)
    pruned = apply_plan(model, plan)
    settings: dict[str, Any] = {"mode": "lsq", "images": len(x), "batch_size": job["batch"]}
    if "max_memory_gb" in ReconSpec.model_fields:
        settings["max_memory_gb"] = job["max_memory_gb"]
    t0 = time.perf_counter()
    _, report = reconstruct(model, pruned, x, ReconSpec(**settings), plan)
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 1),
        "solve_seconds": round(report.solve_s, 1) if hasattr(report, "solve_s") else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "mean_layer_error": report.mean(report.error_after),
        "mean_layer_error_before": report.mean(report.error_before),
        "layers": len(report.layers),
        "skipped": len(report.skipped),
    }


if __name__ == "__main__" and "--one" in sys.argv:  # a child: import the code of --tree only
    job = json.loads(sys.argv[sys.argv.index("--one") + 1])
    sys.path.insert(0, job["tree"])
    print("ROW " + json.dumps(_one(job)))
    sys.exit(0)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import log, machine_info  # noqa: E402
from reporting import read_json, write_json, write_text  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
KEY = ("model", "image_size", "images", "granularity", "target", "solver")


def reconstruction_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for images in args.images:
        job = {
            "tree": str(Path(args.tree).resolve()),
            "model": args.model,
            "size": args.size,
            "images": images,
            "granularity": args.granularity,
            "target": args.target,
            "threads": args.threads,
            "batch": args.batch,
            "max_memory_gb": args.max_memory_gb,
        }
        log(f"reconstruction {args.model} {args.size}px {images} images {args.granularity} {args.target} solver={args.solver}")
        env = {**os.environ, "PYTHONPATH": job["tree"], "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"the measurement failed:\n{out.stderr[-3000:]}")
        got = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("ROW "))[4:])
        row = {
            "model": args.model,
            "image_size": args.size,
            "images": images,
            "granularity": args.granularity,
            "target": args.target,
            "solver": args.solver,
            **got,
            "max_memory_gb": args.max_memory_gb if args.solver != "before" else None,
            "threads": args.threads,
        }
        log(f"  {row['seconds']} s (solve {row['solve_seconds']} s), peak RSS {row['peak_rss_mb']} MB, layer error {row['mean_layer_error']:.4g}")
        rows.append(row)
    return rows


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with the rows of ``new`` replacing those of the same ``KEY``."""
    keys = {tuple(r.get(k) for k in KEY) for r in new}
    return [r for r in old if tuple(r.get(k) for k in KEY) not in keys] + new


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["reconstruction"], required=True, help="which list of scale.json to (re)measure")
    p.add_argument("--model", default="resnet18", help="torchvision model name (random weights)")
    p.add_argument("--granularity", choices=["unstructured", "channel"], default="unstructured")
    p.add_argument("--target", type=float, default=0.8, help="sparsity (unstructured) or MACs kept (channel)")
    p.add_argument("--size", type=int, default=224, help="image side, pixels")
    p.add_argument("--images", type=int, nargs="+", default=[256], help="calibration image counts, one row each")
    p.add_argument("--batch", type=int, default=64, help="reconstruction.batch_size")
    p.add_argument("--max-memory-gb", type=float, default=None, help="reconstruction.max_memory_gb (None: no limit)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tree", default=str(REPO), help="the checkout whose code is measured")
    p.add_argument("--solver", default="new", help="the rows' solver label (before: the code before this change)")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = p.parse_args()
    data = read_json(args.out, "--out") if args.out.exists() else {}
    data["machine"] = machine_info()
    data["reconstruction"] = merge(data.get("reconstruction", []), reconstruction_rows(args))
    write_json(args.out, data)
    from scale import render  # one Markdown for all three parts

    write_text(args.out.with_suffix(".md"), render(data))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
