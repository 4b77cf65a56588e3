"""The multi-fidelity comparison of the search benchmark (``search_bench.py --fidelity-only``,
or part of a full run): at each of two constraints, a full-fidelity constrained TPE search
(its baselines, then ``trials`` sampled candidates, on 2 actors) and a multi-fidelity
search (``fidelity.enabled``: rungs promoted by successive halving) given the full
search's wall-clock time. Both search the same space, reconstruction settings included;
both are the product's ResNet-20 config and code paths; the best candidate of each is
chosen on validation among full-fidelity candidates (the product's ``best``), test
accuracy reported only.

Writes, under ``fidelity`` in search.json: ``wall_s``; ``full`` and ``multi`` with
``candidates`` (recorded, any rung), ``candidates_per_min`` (over the search loop's wall
time), ``best_test`` {``u90``, ``s25``} (fractions); ``best_baseline_test`` (the best
baseline of the full search, chosen on validation); ``spearman_rung0_full`` per target.
"""

from __future__ import annotations

import time
from typing import Any

from mlflow.tracking import MlflowClient

from search.study.baselines import baseline_params

import common

DENSE_ENDS = {"prune_stem": False, "prune_head": False}
RECON_SPACE = {"images": [128, 256, 512], "ridge": [1e-4, 1e-1], "layers": ["all", "pruned"]}
#: the two targets: u90 = 90 % weight sparsity (unstructured), s25 = 2.5x fewer MACs (channel)
TARGETS: dict[str, dict[str, Any]] = {
    "u90": {
        "space": {"granularity": ["unstructured"], "sparsity": [0.9, 0.93]},
        "objective": {"mode": "constrained", "min_sparsity": 0.9},
    },
    "s25": {
        "space": {"granularity": ["channel"], "macs_ratio": [0.33, 0.4]},
        "objective": {"mode": "constrained", "max_macs_ratio": 0.4},
    },
}
MEASURE = {"test_accuracy": True, "collapse_plot": False, "latency_repeats": 5}


def space(key: str, methods: list[str]) -> dict[str, Any]:
    knobs = {"magnitude": {"norm": [1, 2]}, "screening": {"screening_weight": [0.0, 1.0]}}
    return {
        "methods": methods,
        "scope": ["global", "layerwise"],
        "reconstruct": ["none", "lsq"],
        "recon": RECON_SPACE,
        "knobs": {m: k for m, k in knobs.items() if m in methods},
        "allocation": {"layer1": [0.3, 1.5], "layer2": [0.3, 1.5], "layer3": [0.3, 1.5]},
        **DENSE_ENDS,
        **TARGETS[key]["space"],
    }


def fidelity(search, config, trials: int, methods: list[str], keys: list[str] | None = None, save=None) -> dict[str, Any]:
    """Run the comparison at ``keys`` (default: every target); ``search(overrides)`` runs one
    product search and ``config(overrides)`` validates its config (``search_bench._search``,
    ``search_bench._config``); ``save(partial)`` is called after each target."""
    t0 = time.monotonic()
    keys = keys or list(TARGETS)
    out: dict[str, Any] = {"tpe_trials": trials, "methods": methods, "actors": 2, "targets_run": keys, "full": {}, "multi": {}, "per_target": {}}
    for key in keys:
        target = TARGETS[key]
        base = {
            "space": space(key, methods),
            "objective": target["objective"],
            "sampler": {"name": "tpe", "seed": 0, "startup_trials": max(4, trials // 3)},
            "actors": {"count": 2},
            "measure": MEASURE,
        }
        n_base = len(baseline_params(config(base)))
        common.log(f"fidelity {key}: full-fidelity search, {n_base} baselines + {trials} TPE trials")
        full = search({**base, "budget": {"trials": n_base + trials}})
        common.log(f"fidelity {key}: multi-fidelity search for {full.outcome.loop_s:.0f} s")
        multi = search({**base, "budget": {"trials": 100000, "wall_time_s": full.outcome.loop_s}, "fidelity": {"enabled": True}})
        out["per_target"][key] = {"full": _summary(full), "multi": _summary(multi), "baseline": _best(full, baseline=True)}
        common.log(f"  {key}: {out['per_target'][key]}")
        if save is not None:
            save({**out, "wall_s": time.monotonic() - t0, "partial": True})
    for kind in ("full", "multi"):
        runs = [out["per_target"][k][kind] for k in keys]
        n, s = sum(r["candidates"] for r in runs), sum(r["loop_s"] for r in runs)
        out[kind] = {
            "candidates": n,
            "loop_s": s,
            "candidates_per_min": 60 * n / s,
            "best_test": {k: out["per_target"][k][kind]["best_test"] for k in TARGETS},
        }
    out["best_baseline_test"] = {k: (out["per_target"][k]["baseline"] or {}).get("test_accuracy") for k in TARGETS}
    out["spearman_rung0_full"] = {k: out["per_target"][k]["multi"]["spearman_rung0_full"] for k in TARGETS}
    out["throughput_ratio"] = out["multi"]["candidates_per_min"] / out["full"]["candidates_per_min"]
    out["wall_s"] = time.monotonic() - t0
    out["targets"] = targets(out)
    return out


def _summary(srch) -> dict[str, Any]:
    o = srch.outcome
    metrics = MlflowClient(o.tracking_uri).get_run(o.parent_run_id).data.metrics
    best = _best(srch)
    return {
        "candidates": o.evaluated,
        "loop_s": o.loop_s,
        "candidates_per_min": 60 * o.evaluated / o.loop_s if o.loop_s else None,
        "full_fidelity": int(metrics.get("candidates_full", metrics.get("candidates", 0))),
        "pruned": int(metrics.get("candidates_pruned", 0)),
        "best_test": best and best["test_accuracy"],
        "best": best,
        "spearman_rung0_full": metrics.get("spearman_rung0_full"),
    }


def _best(srch, baseline: bool | None = None) -> dict[str, Any] | None:
    """The most accurate feasible full-fidelity candidate on validation (only baselines: ``baseline``)."""
    rows = [r for r in common.ranked_candidates(srch, feasible=True) if baseline is None or r["baseline"] == baseline]
    keys = ("run_id", "trial", "method", "scope", "reconstruct", "accuracy", "test_accuracy", "sparsity", "macs_ratio", "baseline")
    return {k: rows[0].get(k) for k in keys} if rows else None


def targets(f: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, met or not."""
    out = [{"target": "candidates per minute >= 4x the full-fidelity search's", "value": f["throughput_ratio"], "met": f["throughput_ratio"] >= 4}]
    for k in f["targets_run"]:
        got, base, full = f["multi"]["best_test"][k], f["best_baseline_test"][k], f["full"]["best_test"][k]
        ok = None if got is None or base is None else got >= base + 0.015 and (full is None or got > full)
        out.append(
            {
                "target": f"{k}: multi best >= best baseline + 1.5 points and > full search's best",
                "value": got,
                "baseline": base,
                "full": full,
                "met": ok,
            }
        )
    return out
