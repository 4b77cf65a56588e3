"""Search benchmark on the shared ResNet-20 and exact CIFAR-10 images.

Writes benchmarks/results/search.json and search.md:

1. Throughput, candidates per minute, on the same magnitude candidates:
   - a plain sequential loop (copy the model, score and prune, recalibrate, score);
   - prunesearch with 1 and with 2 evaluator actors (steady state: actors loaded);
   - the floor: one actor's unavoidable forward passes alone (recalibration, and
     validation accuracy before and after recalibration), without pruning or bookkeeping.
2. Search quality after the same number of candidates for TPE, NSGA-II and random
   (the EagleEye-style baseline): hypervolume of the validation accuracy vs MACs-ratio
   front (reference point: accuracy 0, MACs ratio 1), and the best test accuracy of the
   candidate selected on validation at 2x fewer MACs and at 90 % weight sparsity.

    .venv/bin/python benchmarks/search.py [--quick] [--candidates 40] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (  # noqa: E402
    RESULTS_DIR, add_shared_arg, load_resnet20_cifar, log, machine_info, md_table, pct, write_json, write_text,
)
from pipeline import measure  # noqa: E402
from pipeline.layers import prunable_weights  # noqa: E402
from pipeline.plan import apply_masks  # noqa: E402
from pipeline.recalibrate import recalibrate  # noqa: E402
from pipeline.select import global_masks  # noqa: E402
from pipeline.spec import RecalSpec  # noqa: E402

CALIB, VAL = 512, 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_arg(ap)
    ap.add_argument("--quick", action="store_true", help="a smoke run: few candidates, small splits")
    ap.add_argument("--candidates", type=int, default=40, help="candidates per sampler in the quality comparison")
    args = ap.parse_args()
    n_tp = 4 if args.quick else 12
    n_q = 6 if args.quick else args.candidates
    assets = load_resnet20_cifar(args.shared, CALIB, 200 if args.quick else VAL)
    sparsities = [0.5 + 0.45 * i / max(n_tp - 1, 1) for i in range(n_tp)]

    result: dict[str, Any] = {"machine": machine_info(), "calib_images": CALIB, "val_images": len(assets.splits.val)}
    result["throughput"] = throughput(args, assets, sparsities)
    result["quality"] = quality(args, n_q)
    methods_json = RESULTS_DIR / "methods.json"
    if methods_json.exists():
        result["methods_benchmark_best"] = best_single_method(methods_json)
    write_json(RESULTS_DIR / "search.json", result)
    write_text(RESULTS_DIR / "search.md", markdown(result))
    print(markdown(result))


# -- throughput ---------------------------------------------------------------------


def throughput(args, assets, sparsities: list[float]) -> dict[str, Any]:
    torch.set_num_threads(1)  # one core per worker, as each actor has
    out: dict[str, Any] = {"candidates": len(sparsities), "threads_per_worker": 1}
    log("throughput: sequential loop")
    out["sequential_per_min"] = 60 * len(sparsities) / sequential_loop(assets, sparsities)
    log("throughput: floor")
    out["floor_s_per_candidate"] = floor_cost(assets)
    out["floor_per_min"] = 60 / out["floor_s_per_candidate"]
    for actors in (1, 2):
        log(f"throughput: prunesearch, {actors} actor(s)")
        outcome = _search(args, {"space": {"methods": ["magnitude"], "sparsity": [0.5, 0.95]},
                                 "sampler": {"name": "random"}, "budget": {"trials": len(sparsities)},
                                 "actors": {"count": actors}, "measure": _lean_measure()})
        out[f"actors_{actors}_per_min"] = 60 * outcome.evaluated / outcome.loop_s
    out["overhead_over_floor"] = out["floor_per_min"] / out["actors_1_per_min"] - 1
    out["speedup_2_over_1"] = out["actors_2_per_min"] / out["actors_1_per_min"]
    return out


def _lean_measure() -> dict[str, Any]:
    # what a throughput-minded search measures: no test split, no per-candidate PNG,
    # a short latency measurement
    return {"test_accuracy": False, "collapse_plot": False, "latency_repeats": 5}


def sequential_loop(assets, sparsities: list[float]) -> float:
    """Seconds for the naive loop users write: copy, score, prune, recalibrate, score."""
    s, t0 = assets.splits, time.perf_counter()
    for sp in sparsities:
        model = copy.deepcopy(assets.base)
        weights = prunable_weights(model)
        apply_masks(model, global_masks({n: w.detach().abs() for n, w in weights.items()}, sp))
        measure.accuracy(model, s.val.x, s.val.y)
        recalibrate(model, s.calib.x, RecalSpec(images=CALIB, batch_size=128))
        measure.accuracy(model, s.val.x, s.val.y)
    return time.perf_counter() - t0


def floor_cost(assets, repeats: int = 3) -> float:
    """Seconds per candidate of the forward passes alone (recalibration, val accuracy x2)."""
    s, model = assets.splits, copy.deepcopy(assets.base)
    t0 = time.perf_counter()
    for _ in range(repeats):
        measure.accuracy(model, s.val.x, s.val.y)
        recalibrate(model, s.calib.x, RecalSpec(images=CALIB, batch_size=128))
        measure.accuracy(model, s.val.x, s.val.y)
    return (time.perf_counter() - t0) / repeats


# -- search quality -----------------------------------------------------------------


QUALITY_SPACE = {
    "methods": ["magnitude", "screening"],
    "granularity": ["unstructured", "channel"],
    "scope": ["global", "layerwise"],
    "sparsity": [0.5, 0.95],
    "macs_ratio": [0.35, 0.75],
    "prune_stem": False,
    "prune_head": False,
    "knobs": {"screening": {"screening_weight": [0.0, 1.0]}},
    "allocation": {"layer1": [0.5, 1.5], "layer2": [0.5, 1.5], "layer3": [0.5, 1.5]},
}


def quality(args, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"candidates": n, "space": QUALITY_SPACE}
    for sampler in ("tpe", "nsga2", "random"):
        log(f"quality: {sampler}, {n} candidates")
        outcome = _search(args, {"space": QUALITY_SPACE, "sampler": {"name": sampler, "seed": 0, "startup_trials": max(4, n // 4)},
                                 "budget": {"trials": n}, "actors": {"count": 2},
                                 "recalibration": {"images": CALIB, "batch_size": 128, "augment": True},
                                 "measure": {"test_accuracy": True, "collapse_plot": False, "latency_repeats": 5}})
        from search.query import candidate_rows

        rows = [r for r in candidate_rows(outcome.tracking_uri, outcome.experiment) if "accuracy" in r]
        out[sampler] = {
            "hypervolume": hypervolume([(r["accuracy"], r["macs_ratio"]) for r in rows]),
            "best_at_2x_fewer_macs": _best(rows, lambda r: r["macs_ratio"] <= 0.5),
            "best_at_90pct_sparsity": _best(rows, lambda r: r["sparsity"] >= 0.9),
            "wall_s": outcome.loop_s,
            "failed": outcome.failed,
        }
    return out


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float] = (0.0, 1.0)) -> float:
    """Area dominated by (maximise accuracy, minimise MACs ratio) points, bounded by ``ref``."""
    pts = sorted((m, a) for a, m in points if a > ref[0] and m < ref[1])
    area, best = 0.0, ref[0]
    for i, (m, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref[1]
        area += (nxt - m) * (best - ref[0])
    return area


def _best(rows: list[dict], keep) -> dict[str, Any] | None:
    sel = [r for r in rows if keep(r)]
    if not sel:
        return None
    r = max(sel, key=lambda r: r["accuracy"])  # selected on validation; test reported
    return {k: r.get(k) for k in ("run_id", "method", "granularity", "accuracy", "test_accuracy", "sparsity", "macs_ratio", "latency_ms")}


def _search(args, overrides: dict[str, Any]):
    from search.config import parse_config
    from search.driver import run_search

    shared = Path(args.shared).expanduser().resolve()
    cfg = parse_config({
        "name": "bench", "run_dir": tempfile.mkdtemp(prefix="prunesearch-bench-"),
        "model": {"name": "cifar_resnet20", "checkpoint": str(shared / "models/cifar10_resnet20.th")},
        "data": {"name": "npz", "path": str(shared / "data/cifar10/train_exact.npz"),
                 "test_path": str(shared / "data/cifar10/test_exact.npz"),
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "calib_size": CALIB, "val_size": 200 if args.quick else VAL},
        "recalibration": {"images": CALIB, "batch_size": 128},
        **overrides,
    })
    return run_search(cfg, quiet=True)


def best_single_method(path: Path) -> dict[str, Any]:
    """Best test accuracy of any single method of the methods benchmark at 2x MACs and 90 %."""
    import json

    rows = json.loads(path.read_text()).get("rows", [])

    def top(pred):
        sel = [r for r in rows if pred(r) and r.get("test_accuracy") is not None]
        return max(sel, key=lambda r: r["test_accuracy"], default=None)

    return {
        "at_2x_fewer_macs": top(lambda r: r.get("granularity") == "channel" and abs(r.get("target_macs_ratio", 0) - 0.5) < 1e-6),
        "at_90pct_sparsity": top(lambda r: r.get("granularity") == "unstructured" and abs(r.get("target_sparsity", 0) - 0.9) < 0.02),
    }


def markdown(r: dict[str, Any]) -> str:
    t = r["throughput"]
    m = r["machine"]
    lines = [
        f"# Search benchmark ({m['date']}, {m['cpu_model']}, {m['logical_cpus']} CPUs, torch threads 1 per worker)", "",
        f"ResNet-20 on exact CIFAR-10: {r['calib_images']} calibration and {r['val_images']} validation images (training set).", "",
        "## Throughput (magnitude candidates, candidates per minute)", "",
        md_table(["sequential loop", "floor (forward passes only)", "prunesearch 1 actor", "prunesearch 2 actors", "overhead over floor", "2 vs 1 actor"],
                 [[f"{t['sequential_per_min']:.1f}", f"{t['floor_per_min']:.1f}", f"{t['actors_1_per_min']:.1f}", f"{t['actors_2_per_min']:.1f}",
                   f"{100 * t['overhead_over_floor']:.0f} %", f"{t['speedup_2_over_1']:.2f}x"]]), "",
        f"## Search quality after {r['quality']['candidates']} candidates (2 actors)", "",
    ]
    rows = []
    for s in ("tpe", "nsga2", "random"):
        q = r["quality"][s]
        b2, b9 = q["best_at_2x_fewer_macs"], q["best_at_90pct_sparsity"]
        rows.append([s, f"{q['hypervolume']:.4f}", pct(b2 and b2["test_accuracy"]), pct(b9 and b9["test_accuracy"]), f"{q['wall_s']:.0f}"])
    lines.append(md_table(["sampler", "hypervolume (val acc x (1 - MACs ratio))", "test acc, best at <= 0.5 MACs", "test acc, best at >= 90 % sparsity", "wall s"], rows))
    if "methods_benchmark_best" in r:
        mb = r["methods_benchmark_best"]
        lines += ["", "Best single method of the methods benchmark (test accuracy): "
                  f"2x fewer MACs {pct(mb['at_2x_fewer_macs'] and mb['at_2x_fewer_macs']['test_accuracy'])}, "
                  f"90 % sparsity {pct(mb['at_90pct_sparsity'] and mb['at_90pct_sparsity']['test_accuracy'])}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
