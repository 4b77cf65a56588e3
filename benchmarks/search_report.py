"""The search benchmark's report: targets met and ``search.md``, from ``search.json`` alone.

Run ``python benchmarks/search_report.py`` (``--json``, ``--out``: other files); it reads
only what ``search_bench.py`` measured, so it needs no torch.
"""

from __future__ import annotations

from typing import Any

from reporting import md_table, pct, render_cli


def main() -> None:
    render_cli("search", markdown, __doc__.splitlines()[0])


def target_status(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, met or not, from the figures of this run."""
    t = r["throughput"]
    out = [
        {"target": "per-candidate overhead over the floor < 25 %", "value": t["overhead_over_floor"], "met": t["overhead_over_floor"] < 0.25},
        {"target": "2 actors >= 1.8x the throughput of 1", "value": t["speedup_2_over_1"], "met": t["speedup_2_over_1"] >= 1.8},
    ]
    mb = r.get("methods_benchmark_best", {})
    for key, label in (("at_2x_fewer_macs", "2x fewer MACs"), ("at_90pct_sparsity", "90 % sparsity")):
        found = (r["targeted"][key if key == "at_2x_fewer_macs" else "at_90pct_sparsity_any"]["best"] or {}).get("test_accuracy")
        single = (mb.get(key) or {}).get("test_accuracy")
        out.append(
            {
                "target": f"searched best at {label} beats the best single method",
                "value": found,
                "single": single,
                "single_label": (mb.get(key) or {}).get("label"),
                "met": None if found is None or single is None else found > single,
            }
        )
    return out


def markdown(r: dict[str, Any]) -> str:
    """``search.md`` from a run's figures (the targets judged from them)."""
    t = r["throughput"]
    m = r["machine"]
    q, tg = r["quality"], r["targeted"]
    lines = [
        f"# Search benchmark ({m['date']}, {m['cpu_model']}, {m['logical_cpus']} CPUs, torch threads {t['threads_per_worker']} per worker)",
        "",
        f"ResNet-20 on exact CIFAR-10: {r['calib_images']} calibration and {r['val_images']} validation images (training set).",
        "",
        "## Throughput (magnitude candidates, candidates per minute)",
        "",
        md_table(
            ["sequential loop", "floor (forward passes only)", "prunesearch 1 actor", "prunesearch 2 actors", "overhead over floor", "2 vs 1 actor"],
            [
                [
                    f"{t['sequential_per_min']:.1f}",
                    f"{t['floor_per_min']:.1f}",
                    f"{t['actors_1_per_min']:.1f}",
                    f"{t['actors_2_per_min']:.1f}",
                    f"{100 * t['overhead_over_floor']:.0f} %",
                    f"{t['speedup_2_over_1']:.2f}x",
                ]
            ],
        ),
        "",
        f"## Search quality after {q['candidates']} candidates{_actors(q)}",
        "",
    ]
    rows = []
    for s in ("tpe", "nsga2", "random"):
        q = r["quality"][s]
        b2, b9 = q["best_at_2x_fewer_macs"], q["best_at_90pct_sparsity"]
        rows.append([s, f"{q['hypervolume']:.4f}", pct(b2 and b2["test_accuracy"]), pct(b9 and b9["test_accuracy"]), f"{q['wall_s']:.0f}"])
    lines.append(
        md_table(
            ["sampler", "hypervolume (val acc x (1 - MACs ratio))", "test acc, best at <= 0.5 MACs", "test acc, best at >= 90 % sparsity", "wall s"],
            rows,
        )
    )
    mb = r.get("methods_benchmark_best", {})
    lines += [
        "",
        f"## Targeted searches (constrained TPE, {tg['candidates']} candidates each, {tg['candidates_trained']} for hyperflows{_actors(tg, ';')})",
        "",
        "Selected on validation, reported on the test split; the best single method is the methods benchmark's best "
        "test accuracy at that point (an upper bound on what choosing one method gives).",
        "",
    ]
    trs = []
    for key, label in (
        ("at_2x_fewer_macs", "<= 0.5 MACs (channels)"),
        ("at_90pct_sparsity", ">= 90 % weights (one-shot methods)"),
        ("at_90pct_sparsity_hyperflows", ">= 90 % weights (hyperflows, steered)"),
    ):
        b, single = tg[key]["best"], mb.get(key.removesuffix("_hyperflows"))
        trs.append(
            [
                label,
                b and f"{b['method']} {b['granularity']}",
                pct(b and b["accuracy"]),
                pct(b and b["test_accuracy"]),
                b and f"{b['macs_ratio']:.3f} / {b['sparsity']:.3f}",
                b and b.get("allocation"),
                single and f"{single['label']}: {pct(single['test_accuracy'])}",
                f"{tg[key]['feasible']}/{tg[key]['evaluated']}",
                f"{tg[key]['wall_s']:.0f}",
            ]
        )
    lines.append(
        md_table(
            [
                "constraint",
                "selected",
                "val acc",
                "test acc",
                "MACs ratio / weight sparsity",
                "allocation",
                "best single method (test)",
                "feasible/evaluated",
                "wall s",
            ],
            trs,
        )
    )
    lines += [
        "",
        "## Targets",
        "",
        md_table(
            ["target", "measured", "met"],
            [
                [
                    x["target"],
                    (f"{x['value']:.3f}" if isinstance(x["value"], float) else x["value"])
                    + (f" vs {pct(x['single'])} ({x['single_label']})" if x.get("single") is not None else ""),
                    x["met"],
                ]
                for x in target_status(r)
            ],
        ),
    ]
    lines += ["", f"Load average at the end: {r.get('loadavg_at_end')}."]
    for rr in r.get("rerun", []):
        lines.append(f"Re-run with `--only` on {rr['machine']['date']} at commit {rr['machine'].get('git_commit', '?')}: {', '.join(rr['keys'])}.")
    return "\n".join(lines) + "\n"


def _actors(section: dict[str, Any], sep: str = "") -> str:
    """' (N actors)' or '; N actors' where the run recorded its actor count, else ''."""
    n = section.get("actors")
    return "" if n is None else (f"{sep} {n} actors" if sep else f" ({n} actors)")


if __name__ == "__main__":
    main()
