"""Search benchmark on the shared ResNet-20 and exact CIFAR-10 images.

What is measured, and how, is in ``benchmarks/README.md`` (section search): throughput
against a plain loop and the floor of forward passes, TPE / NSGA-II / random after the
same number of candidates, and targeted constrained searches beside the best single
method of the methods benchmark. Every search is the product's ResNet-20 config
(``configs/resnet20_cifar10.yaml``) with this benchmark's space, objective, sampler and
budget; the candidates are chosen with the product's ``best`` query.

    .venv/bin/python benchmarks/search_bench.py [--quick] [--candidates 40] [--targeted 30] [--shared ../shared]
    .venv/bin/python benchmarks/search_report.py          # search.md again from search.json

Writes search.json and, from it alone, search.md (``search_report.py``) to
benchmarks/results (``--quick``: a temporary folder).
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from pipeline import measure  # noqa: E402
from pipeline.pruning.layers import prunable_weights  # noqa: E402
from pipeline.pruning.plan import apply_masks  # noqa: E402
from pipeline.pruning.thresholds import global_masks  # noqa: E402
from pipeline.repair.recalibrate import recalibrate  # noqa: E402
from pipeline.spec import RecalSpec  # noqa: E402
from search.records.query import pareto_front  # noqa: E402

import common  # noqa: E402
import methods_report  # noqa: E402
import search_fidelity  # noqa: E402
from reporting import read_json  # noqa: E402
from search_report import markdown, target_status  # noqa: E402

QUICK_VAL = 200  # validation images of a --quick run (the config's otherwise)
# the throughput candidates recalibrate as the plain loop does: no augmentation, no keep-better
PLAIN_RECAL = {"augment": False, "keep_better": False}


def main() -> None:
    ap = common.bench_parser(__doc__, "few candidates, small splits, short training")
    ap.add_argument("--candidates", type=int, default=40, help="candidates per sampler in the quality comparison")
    ap.add_argument("--targeted", type=int, default=30, help="candidates per targeted one-shot search")
    ap.add_argument("--targeted-trained", type=int, default=12, help="candidates of the targeted hyperflows search (minutes each)")
    ap.add_argument(
        "--out-dir", type=Path, default=None, help="where to write search.json/.md (default: benchmarks/results, or a temporary folder with --quick)"
    )
    ap.add_argument(
        "--only",
        nargs="+",
        choices=list(TARGETED),
        default=None,
        help="re-run only these targeted searches and merge them into the existing search.json",
    )
    ap.add_argument(
        "--fidelity-only",
        action="store_true",
        help="run only the multi-fidelity comparison (search_fidelity.py) and merge it into the existing search.json",
    )
    ap.add_argument("--fidelity-trials", type=int, default=16, help="TPE trials after the baselines in the full-fidelity search")
    ap.add_argument("--fidelity-targets", nargs="+", choices=["u90", "s25"], default=None, help="targets of the fidelity comparison (default both)")
    ap.add_argument("--fidelity-methods", nargs="+", default=["magnitude", "screening"], help="methods of the fidelity comparison's space")
    args = ap.parse_args()
    n_tp = 4 if args.quick else 24
    n_q = 6 if args.quick else args.candidates
    n_t = 6 if args.quick else args.targeted
    n_tt = 2 if args.quick else args.targeted_trained
    out_dir = args.out_dir or (Path(tempfile.gettempdir()) / "prunesearch-bench-quick" if args.quick else common.RESULTS_DIR)
    with tempfile.TemporaryDirectory(prefix="prunesearch-bench-") as runs:  # every search's run folder
        args.runs_root = Path(runs)
        if args.fidelity_only:
            path = out_dir / "search.json"
            result = read_json(path, "--fidelity-only: --out-dir") if path.exists() else {"machine": common.machine_info()}
            machine = common.machine_info()

            def save(partial: dict[str, Any]) -> None:
                common.write_json(path, {**result, "fidelity": {**partial, "machine": machine}})

            result["fidelity"] = {**_fidelity(args, save), "machine": machine}
            common.write_json(path, result)
            print(json.dumps(result["fidelity"], indent=2))
            return
        if args.only:
            result = read_json(out_dir / "search.json", "--only: --out-dir")
            result["targeted"].update(targeted(args, n_t, n_tt, only=args.only))
            result.setdefault("rerun", []).append({"keys": args.only, "machine": common.machine_info()})
        else:
            data = common.resnet20_config(args.shared, _data(args)).data
            assets = common.load_resnet20_cifar(args.shared, data.calib_size, data.val_size)
            sparsities = [0.5 + 0.45 * i / max(n_tp - 1, 1) for i in range(n_tp)]
            result = {"machine": common.machine_info(), "calib_images": data.calib_size, "val_images": len(assets.splits.val)}
            result["throughput"] = throughput(args, assets, sparsities)
            result["quality"] = quality(args, n_q)
            result["targeted"] = targeted(args, n_t, n_tt)
            result["fidelity"] = _fidelity(args)
    best90 = [result["targeted"][k]["best"] for k in ("at_90pct_sparsity", "at_90pct_sparsity_hyperflows") if result["targeted"][k]["best"]]
    # the user's answer at 90 %: the better of the two searches, chosen on validation
    result["targeted"]["at_90pct_sparsity_any"] = {"best": max(best90, key=lambda b: b["accuracy"], default=None)}
    methods_json = common.RESULTS_DIR / "methods.json"
    if methods_json.exists():
        result["methods_benchmark_best"] = best_single_method(methods_json)
    result["targets"] = target_status(result)
    result["loadavg_at_end"] = common.loadavg()
    common.write_json(out_dir / "search.json", result)
    common.write_text(out_dir / "search.md", markdown(result))
    print(markdown(result))


def _data(args) -> dict[str, Any]:
    return {"data": {"val_size": QUICK_VAL}} if args.quick else {}


def _fidelity(args, save=None) -> dict[str, Any]:
    trials = 2 if args.quick else args.fidelity_trials
    run, cfg = (lambda o: _search(args, o)), (lambda o: _config(args, o))
    return search_fidelity.fidelity(run, cfg, trials, args.fidelity_methods, args.fidelity_targets, save)


def _config(args, overrides: dict[str, Any]):
    """The config ``_search`` runs (validated, nothing run)."""
    run = {"name": "bench", "run_dir": str(args.runs_root / "probe"), **_data(args)}
    return common.resnet20_config(args.shared, {**run, **overrides}, replace=[k for k in ("space", "objective") if k in overrides])


def _search(args, overrides: dict[str, Any]) -> common.SearchRun:
    """A real search: the product's ResNet-20 config with ``overrides``, whose ``space``
    and ``objective`` (the config's when not given) are given whole."""
    run = {"name": "bench", "run_dir": tempfile.mkdtemp(dir=args.runs_root), **_data(args)}
    return common.run_resnet20_search(args.shared, {**run, **overrides}, replace=[k for k in ("space", "objective") if k in overrides])


# -- throughput ---------------------------------------------------------------------


def throughput(args, assets, sparsities: list[float]) -> dict[str, Any]:
    torch.set_num_threads(1)  # one core per worker, as each actor has
    recal = common.resnet20_config(args.shared, {"recalibration": PLAIN_RECAL}).recalibration
    out: dict[str, Any] = {"candidates": len(sparsities), "threads_per_worker": 1, "recalibration": recal.model_dump()}
    common.log("throughput: sequential loop")
    out["sequential_per_min"] = 60 * len(sparsities) / sequential_loop(assets, sparsities, recal)
    common.log("throughput: floor")
    out["floor_s_per_candidate"] = floor_cost(assets, recal)
    out["floor_per_min"] = 60 / out["floor_s_per_candidate"]
    for actors in (1, 2):
        common.log(f"throughput: prunesearch, {actors} actor(s)")
        outcome = _search(
            args,
            {
                "space": {"methods": ["magnitude"], "sparsity": [0.5, 0.95]},
                "objective": {"mode": "pareto"},
                "sampler": {"name": "random"},
                "budget": {"trials": len(sparsities)},
                "actors": {"count": actors},
                "recalibration": PLAIN_RECAL,
                "measure": _lean_measure(),
            },
        ).outcome
        out[f"actors_{actors}_per_min"] = 60 * outcome.evaluated / outcome.loop_s
    out["overhead_over_floor"] = out["floor_per_min"] / out["actors_1_per_min"] - 1
    out["speedup_2_over_1"] = out["actors_2_per_min"] / out["actors_1_per_min"]
    return out


def _lean_measure() -> dict[str, Any]:
    # what a throughput-minded search measures: no test split, no per-candidate PNG,
    # a short latency measurement
    return {"test_accuracy": False, "collapse_plot": False, "latency_repeats": 5}


def sequential_loop(assets, sparsities: list[float], recal: RecalSpec) -> float:
    """Seconds for the naive loop users write: copy, score, prune, recalibrate, score."""
    s, t0 = assets.splits, time.perf_counter()
    for sp in sparsities:
        model = copy.deepcopy(assets.base)
        weights = prunable_weights(model)
        apply_masks(model, global_masks({n: w.detach().abs() for n, w in weights.items()}, sp))
        measure.accuracy(model, s.val, s.val.y)
        recalibrate(model, s.calib.x, recal)
        measure.accuracy(model, s.val, s.val.y)
    return time.perf_counter() - t0


def floor_cost(assets, recal: RecalSpec, repeats: int = 3) -> float:
    """Seconds per candidate of the forward passes alone (recalibration, val accuracy x2)."""
    s, model = assets.splits, copy.deepcopy(assets.base)
    t0 = time.perf_counter()
    for _ in range(repeats):
        measure.accuracy(model, s.val, s.val.y)
        recalibrate(model, s.calib.x, recal)
        measure.accuracy(model, s.val, s.val.y)
    return (time.perf_counter() - t0) / repeats


# -- search quality -----------------------------------------------------------------


DENSE_ENDS = {"prune_stem": False, "prune_head": False}  # the stem and the classifier stay dense
QUALITY_SPACE = {
    "methods": ["magnitude", "screening"],
    "granularity": ["unstructured", "channel"],
    "scope": ["global", "layerwise"],
    "sparsity": [0.5, 0.95],
    "macs_ratio": [0.35, 0.75],
    **DENSE_ENDS,
    "knobs": {"screening": {"screening_weight": [0.0, 1.0]}},
    "allocation": {"layer1": [0.5, 1.5], "layer2": [0.5, 1.5], "layer3": [0.5, 1.5]},
}
MEASURE = {"test_accuracy": True, "collapse_plot": False, "latency_repeats": 5}


def quality(args, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"candidates": n, "space": QUALITY_SPACE, "actors": 2}
    for sampler in ("tpe", "nsga2", "random"):
        common.log(f"quality: {sampler}, {n} candidates")
        srch = _search(
            args,
            {
                "space": QUALITY_SPACE,
                "objective": {"mode": "pareto"},
                "sampler": {"name": sampler, "seed": 0, "startup_trials": max(4, n // 4)},
                "budget": {"trials": n},
                "actors": {"count": 2},
                "recalibration": {"keep_better": False},
                "measure": MEASURE,
            },
        )
        out[sampler] = {
            "hypervolume": hypervolume(srch.rows),
            "best_at_2x_fewer_macs": _best(srch, max_macs_ratio=0.5),
            "best_at_90pct_sparsity": _best(srch, min_sparsity=0.9),
            "wall_s": srch.outcome.loop_s,
            "failed": srch.outcome.failed,
        }
    return out


def hypervolume(rows: list[dict[str, Any]], ref: tuple[float, float] = (0.0, 1.0)) -> float:
    """Area dominated by the rows' Pareto front (``search.records.query.pareto_front``: maximise
    validation accuracy, minimise MACs ratio), bounded by ``ref`` (accuracy, MACs ratio)."""
    inside = [r for r in rows if r["accuracy"] > ref[0] and r["macs_ratio"] < ref[1]]
    front = pareto_front(inside, maximize="accuracy", minimize="macs_ratio")
    right = [r["macs_ratio"] for r in front[1:]] + [ref[1]]
    return sum((nxt - r["macs_ratio"]) * (r["accuracy"] - ref[0]) for r, nxt in zip(front, right))


SUMMARY = ("run_id", "method", "granularity", "scope", "knobs", "allocation", "accuracy", "test_accuracy", "sparsity", "macs_ratio", "latency_ms")


def _best(srch: common.SearchRun, feasible: bool | None = None, **filters: float) -> dict[str, Any] | None:
    """The first of ``common.ranked_candidates`` (the most accurate on validation), cut to
    ``SUMMARY``; test accuracy is reported only."""
    rows = common.ranked_candidates(srch, feasible, **filters)
    return {k: rows[0].get(k) for k in SUMMARY} if rows else None


# The settings the methods benchmark chose on validation for each granularity
# (benchmarks/results/methods.json, chosen_settings): the searches start from them.
ALLOC = {"layer1": [0.3, 1.7], "layer2": [0.3, 1.7], "layer3": [0.3, 1.7]}
TARGETED = {
    "at_2x_fewer_macs": {
        # OCS with the methods benchmark's training budget (8 x 15 steps): the search
        # chooses its stability threshold, prune cap and regulariser, not a longer cycle
        "space": {
            "methods": ["ocs", "screening", "magnitude"],
            "granularity": ["channel"],
            "scope": ["global", "layerwise"],
            "macs_ratio": [0.47, 0.5],
            **DENSE_ENDS,
            "knobs": {
                "magnitude": {"norm": [1, 2]},
                "screening": {"screening_weight": [0.0, 1.0]},
                "ocs": {
                    "epochs": [8, 8],
                    "steps_per_epoch": [15, 15],
                    "stability": [0.88, 0.97],
                    "max_prune_fraction": [0.5, 0.75],
                    "reg": [0.0, 1e-3],
                },
            },
            "allocation": ALLOC,
        },
        "objective": {"mode": "constrained", "max_macs_ratio": 0.5},
        "recalibration": {"augment": False},
    },
    "at_90pct_sparsity": {
        "space": {
            "methods": ["magnitude", "screening"],
            "granularity": ["unstructured"],
            "scope": ["global", "layerwise"],
            "sparsity": [0.9, 0.905],
            **DENSE_ENDS,
            "knobs": {"screening": {"screening_weight": [0.0, 0.3]}},
            "allocation": ALLOC,
        },
        "objective": {"mode": "constrained", "min_sparsity": 0.9},
    },
    # hyperflows' sparsity is an outcome: the power-law fit steers every other trial's
    # pressure to where 90 % lies (steps fixed, so density depends on pressure alone)
    "at_90pct_sparsity_hyperflows": {
        "space": {
            "methods": ["hyperflows"],
            "granularity": ["unstructured"],
            **DENSE_ENDS,
            "knobs": {"hyperflows": {"pressure": [4.0, 40.0], "steps": [600, 600]}},
            "target_sparsity": 0.9,
        },
        "objective": {"mode": "constrained", "min_sparsity": 0.9},
    },
}
QUICK_STEPS = {
    "hyperflows": {"steps": [20, 20], "regrowth_steps": [5, 5]},
    "ocs": {"epochs": [2, 2], "steps_per_epoch": [5, 5]},
}  # --quick: short training


def targeted(args, n: int, n_trained: int, only: list[str] | None = None) -> dict[str, Any]:
    """Constrained TPE searches for the best network at 2x fewer MACs and at 90 % sparsity."""
    out: dict[str, Any] = {"candidates": n, "candidates_trained": n_trained, "actors": 2}
    for key, overrides in TARGETED.items():
        if only and key not in only:
            continue
        if args.quick:
            knobs = overrides["space"]["knobs"]
            space = {**overrides["space"], "knobs": {m: {**k, **QUICK_STEPS.get(m, {})} for m, k in knobs.items()}}
            overrides = {**overrides, "space": space}
        trials = n_trained if "hyperflows" in overrides["space"]["methods"] else n
        common.log(f"targeted: {key}, {trials} candidates")
        srch = _search(
            args,
            {
                **overrides,
                "sampler": {"name": "tpe", "seed": 0, "startup_trials": max(4, trials // 3)},
                "budget": {"trials": trials},
                "actors": {"count": 2},
                "measure": MEASURE,
            },
        )
        chosen = _best(srch, feasible=True)  # the search's own verdict on its constraint
        out[key] = {
            "space": overrides,
            "best": chosen,
            "feasible": sum(r.get("feasible", 1.0) == 1.0 for r in srch.rows),
            "evaluated": len(srch.rows),
            "sparsities": sorted(round(r["sparsity"], 4) for r in srch.rows),
            "wall_s": srch.outcome.loop_s,
            "failed": srch.outcome.failed,
        }
        common.log(f"  best on validation: {chosen}")
    return out


def best_single_method(path: Path) -> dict[str, Any]:
    """Best test accuracy of any single method of the methods benchmark at 2x MACs and 90 %.

    The pick is ``methods_report.best_row`` (highest test accuracy among the reported rows at
    the point), over the rows that also *achieved* the search's constraint (MACs ratio
    <= 0.5, sparsity >= 90 %, 1e-3 slack): hyperflows rows sit in the column nearest their
    achieved sparsity and may fall short of it, and the searched candidate it is compared
    with must meet the constraint, so the single method must too."""
    rows = [r for r in json.loads(path.read_text()).get("rows", []) if r.get("state") == "ok" and r.get("test_accuracy") is not None]
    met = {
        "at_2x_fewer_macs": ("channel", 2.0, [r for r in rows if r["macs_ratio"] <= 0.5 + 1e-9]),
        "at_90pct_sparsity": ("unstructured", 0.9, [r for r in rows if r["sparsity"] >= 0.9 - 1e-3]),
    }
    out: dict[str, Any] = {}
    for key, (granularity, point, ok) in met.items():
        r = methods_report.best_row(ok, granularity, point)
        out[key] = r and {k: r.get(k) for k in ("label", "method", "test_accuracy", "val_accuracy", "sparsity", "macs_ratio")}
    return out


if __name__ == "__main__":
    main()
