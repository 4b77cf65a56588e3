#!/usr/bin/env python
"""Render ``methods.md`` from a ``methods.json`` that ``benchmarks/methods.py`` wrote.

Everything in the report is either a figure of the JSON or generic text: the notes from
preparing the benchmark live in ``benchmarks/README.md``. Needs neither torch nor the
product, so a report can be rebuilt anywhere:

    python benchmarks/methods_report.py [--json benchmarks/results/methods.json] [--out methods.md] [--previous OLD.json]

``methods.py`` calls ``markdown`` at the end of a run; ``target_status`` and ``summary_of``
are computed there and stored in the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seeds  # noqa: E402
from reporting import RESULTS_DIR, md_table, pct, read_json, standard_error, write_json, write_text  # noqa: E402

Row = dict[str, Any]


def is_reconstructed(r: Row) -> bool:
    return (r.get("reconstruct") or {}).get("mode", "none") != "none"


def row_key(r: Row) -> tuple[str, str, float, str]:
    """What identifies a row across runs: method, granularity, point, label."""
    return (r["method"], r["granularity"], r["point"], r["label"])


def best_row(rows: list[Row], gran: str, point: float, one_shot: bool = False, by: str = "test_accuracy") -> Row | None:
    """The reported row with the highest ``by`` at ``point`` (reporting only: nothing
    downstream is chosen from it); ``one_shot``: only methods that do not train."""
    cand = [
        r
        for r in rows
        if r["granularity"] == gran and r["state"] == "ok" and r["selected"] and r["point"] == point and not (one_shot and r.get("trains"))
    ]
    return max(cand, key=lambda r: r[by]) if cand else None


def target_status(rows: list[Row], targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the best reported row (one-shot methods for unstructured targets),
    the best of all rows, and the row validation accuracy would have picked."""
    out = []
    for t in targets:
        one_shot = t["granularity"] == "unstructured"
        best = best_row(rows, t["granularity"], t["point"], one_shot)
        best_any = best_row(rows, t["granularity"], t["point"])
        entry = {**t, "best_label": None, "best_test_accuracy": None, "met": None}
        if best is not None:
            entry.update(
                best_label=best["label"],
                best_test_accuracy=best["test_accuracy"],
                met=best["test_accuracy"] > t["beat"],
                best_val_accuracy=best["val_accuracy"],
            )
        if best_any is not None and best_any is not best:
            entry.update(
                best_any_label=best_any["label"], best_any_test_accuracy=best_any["test_accuracy"], best_any_met=best_any["test_accuracy"] > t["beat"]
            )
        v = best_row(rows, t["granularity"], t["point"], one_shot, by="val_accuracy")  # the honest choice of a search
        if v is not None:
            entry.update(
                val_selected_label=v["label"], val_selected_test_accuracy=v["test_accuracy"], val_selected_met=v["test_accuracy"] > t["beat"]
            )
        out.append(entry)
    return out


def summary_of(earlier: dict[str, Any], source: str) -> dict[str, Any]:
    """What a later run compares with: an earlier run's date, commit, settings and row figures."""
    keep = (
        "method",
        "granularity",
        "point",
        "label",
        "state",
        "knobs",
        "val_accuracy",
        "test_accuracy",
        "test_accuracy_before_recal",
        "threads",
        "from_run",
    )
    machine = earlier.get("machine", {})
    return {
        "source": source,
        "date": machine.get("date"),
        "git_commit": machine.get("git_commit"),
        "threads": earlier.get("threads"),
        "sections_run": earlier.get("sections_run"),
        "chosen_settings": earlier.get("chosen_settings"),
        "chosen_reconstruction": earlier.get("chosen_reconstruction"),
        "rows": [{k: r.get(k) for k in keep} for r in earlier.get("rows", [])],
    }


def _section(title: str, *text: str) -> list[str]:
    """A report section: its heading, then its blocks (prose, tables)."""
    return [f"## {title}\n", *text]


def _ba(r: Row | None) -> str:
    if r is None:
        return ""
    if r["state"] != "ok":
        return "failed"
    return f"{pct(r['test_accuracy_before_recal'])} → **{pct(r['test_accuracy'])}**"


def _pivot(rows: list[Row], gran: str, points: list[float], col: str) -> str:
    mine = [r for r in rows if r["granularity"] == gran and r["selected"]]
    labels = list(dict.fromkeys(r.get("pivot", r["label"]) for r in mine))
    body = []
    for key in labels:
        cells = []
        for p in points:
            parts = []
            for r in (r for r in mine if r.get("pivot", r["label"]) == key and r["point"] == p):
                s = _ba(r)
                if r["state"] == "ok":
                    s += f" ({r['note']})" if r.get("note") else ""
                    s += f" [{r['macs_reduction']:.2f}x]" if gran == "channel" else ""
                parts.append(s)
            cells.append("<br>".join(parts) if parts else "not run")
        body.append([key, *cells])
    return md_table(["method", *[col.format(p) for p in points]], body)


def _load(values: list[float] | None) -> str:
    """A load average triple (1, 5, 15 minutes) as text."""
    return " / ".join(f"{v:.1f}" for v in values or []) or "?"


def _stages(result: dict[str, Any]) -> str:
    per = result.get("channels_per_stage") or {}
    return "/".join(str(v) for v in per.values()) if per else "?"


def _header(result: dict[str, Any]) -> list[str]:
    cfg, info, sp = result["config"], result["machine"], result["splits"]
    return [
        "# Pruning methods on the shared ResNet-20 (exact CIFAR-10 images)\n",
        f"Generated by `benchmarks/methods.py{' --quick' if cfg['quick'] else ''}` (rendered by `benchmarks/methods_report.py`) on "
        f"{info['date']} at commit `{str(info.get('git_commit', ''))[:10]}` ({info['cpu_model']}, {info['logical_cpus']} logical CPUs, "
        f"torch {info['torch']} with {result['threads']} threads, load average at start {_load(info['loadavg_at_start'])}); "
        f"whole run {result['runtime_s'] / 60:.1f} min wall, {result.get('cpu_s', float('nan')) / 60:.1f} min of CPU time "
        f"(load average at end {_load(result.get('loadavg_at_end'))}). Sections run: {', '.join(result.get('sections_run', []))}.\n",
        "Data: calibration and validation images are drawn from `train_exact.npz` "
        f"({sp['calib']} calibration, {sp['val']} validation, {sp['train']} left for methods that train); the reported accuracy is "
        f"top-1 on all {sp['test']} images of `test_exact.npz` (standard error {100 * standard_error(0.5, sp['test']):.1f} points "
        "at 50 %). Every choice (recalibration setting, stem/head, screening weight, reconstruction setting) is made on validation "
        "accuracy; test accuracy is reported only. No fine-tuning. Cells read `test before recalibration → after`; `before` uses the "
        "dense model's stored BatchNorm statistics.\n",
    ]


def _targets(result: dict[str, Any]) -> list[str]:
    trows = []
    for t in result["targets"]:
        unit = {"unstructured": f"{t['point']:.0%} sparsity" if t["granularity"] == "unstructured" else "", "nm": f"{t['point']} (N:M)"}.get(
            t["granularity"], f"{t['point']}x fewer MACs"
        )
        who = {"unstructured": "one-shot", "nm": "semi-structured"}.get(t["granularity"], "structured")
        met = {True: "**met**", False: "not met", None: "not run"}[t["met"]]
        extra = f"; best of all (incl. trained masks): {t['best_any_label']} {pct(t['best_any_test_accuracy'])}" if t.get("best_any_label") else ""
        vsel = f"{t.get('val_selected_label', '')} {pct(t.get('val_selected_test_accuracy'))}"
        best = f"{t['best_label']} {pct(t['best_test_accuracy'])}{extra}" if t["best_label"] else "not run"
        digits = 0 if abs(t["beat"] * 100 - round(t["beat"] * 100)) < 1e-9 else 1
        trows.append([f"{unit} ({who})", f"> {pct(t['beat'], digits)} %", t.get("reference", ""), best, vsel, met])
    return [
        "## Targets\n",
        md_table(["target", "beat", "reference", "best test (reporting)", "chosen on val → its test", "status"], trows),
        "\n`status` judges the best reported row; `chosen on val` is what a search selecting on validation would have shipped. "
        f"A margin under {100 * standard_error(0.8, result['splits']['test']):.1f} points (one standard error at 80 %) is noise.\n",
    ]


def _reconstruction(result: dict[str, Any]) -> list[str]:
    cfg, rows = result["config"], result["rows"]
    out = _section(
        "Reconstruction (least-squares refit of the kept weights, then recalibration)",
        "Rows `+ lsq` refit the network's layers on calibration images, sequentially (pipeline/repair/reconstruct.py), with the setting "
        "chosen on validation below, then recalibrate with the granularity's recalibration setting (`keep_better`). Cells: validation "
        "accuracy right after pruning → after the refit (stored statistics) → after recalibration; test after; mean relative "
        "layer-output error on the calibration images before → after the refit; seconds per stage of this candidate.\n\n",
    )
    rec = [r for r in rows if r["state"] == "ok" and is_reconstructed(r)]
    head = ["candidate", "granularity", "point", "sparsity", "MACs ratio", "val pruned → refit → recal", "test after", "layer error"]
    out.append(
        md_table(
            [*head, "prune s", "recon s", "recal s", "eval s"],
            [
                [
                    r["label"],
                    r["granularity"],
                    r["point"],
                    f"{r['sparsity']:.3f}",
                    f"{r['macs_ratio']:.3f}",
                    f"{pct(r['val_accuracy_before_recon'])} → {pct(r['val_accuracy_before_recal'])} → {pct(r['val_accuracy'])}",
                    f"**{pct(r['test_accuracy'])}**",
                    f"{r['recon_error_before']:.3f} → {r['recon_error']:.3f}",
                    *(f"{r[k]:.1f}" for k in ("prune_s", "recon_s", "recal_s", "eval_s")),
                ]
                for r in rec
            ],
        )
    )
    if result.get("recon_selection"):
        out.append(
            "\nReconstruction setting chosen on validation (probes: global magnitude at "
            f"{cfg['recon_probe_unstructured']:.0%}, layerwise L1 channels at {cfg['recon_probe_channel']}x):\n\n"
        )
        out.append(
            md_table(
                ["granularity", "images", "ridge", "layers", "val after pruning", "val after refit + recal", "recon s", ""],
                [
                    [
                        t["granularity"],
                        t["reconstruct"]["images"],
                        f"{t['reconstruct']['ridge']:g}",
                        t["reconstruct"]["layers"],
                        pct(t.get("val_accuracy_before_recon")),
                        pct(t["val_accuracy"]),
                        f"{t['recon_s']:.1f}" if t.get("recon_s") is not None else "",
                        "**chosen**" if t.get("chosen") else "",
                    ]
                    for t in result["recon_selection"]
                ],
            )
        )
    kept = sorted({r["from_run"] for r in rows if r.get("from_run")})
    if kept:
        missing = ", ".join(s for s in ("unstructured", "channel", "reconstruction") if s not in result.get("sections_run", []))
        out.append(f"\nRows of the sections not re-run ({missing}) come from the earlier run(s) {', '.join(kept)} (`--rows-from`).\n")
    return out


def _latency(result: dict[str, Any]) -> list[str]:
    th, cfg = result["threads"], result["config"]
    lrows = []
    out = _section(
        "Latency of structured candidates beside their MACs",
        f"`latency_ms` is the evaluator's metric (median of {cfg['latency_repeats']} batch-1 forwards, torch {th} threads). The other "
        f"columns are measured here, each the lowest of {cfg['latency_rounds']} rounds' medians (a round slowed by other jobs on a shared "
        f"machine is discarded): batch 1 with 1 thread, batch 1 with {th} threads, batch 64 with {th} threads; the dense network is "
        "measured the same way at each point, and `speed-up` is dense / pruned.\n\n",
    )
    for r in result["rows"]:
        if r["granularity"] == "channel" and r["state"] == "ok" and r["selected"] and r.get("latency"):
            lat, den = r["latency"], r["dense_latency"]
            k64 = next((k for k in lat if k.startswith("b64_")), f"b64_{th}threads_ms")
            k1, k2 = "b1_1thread_ms", k64.replace("b64_", "b1_")
            lrows.append(
                [
                    r["label"],
                    f"{r['point']}x",
                    f"{r['macs'] / 1e6:.1f}",
                    f"{r['macs_reduction']:.2f}x",
                    f"{r['latency_ms']:.2f}",
                    f"{lat[k1]:.2f} / {den[k1]:.2f} = {den[k1] / lat[k1]:.2f}x",
                    f"{lat[k2]:.2f} / {den[k2]:.2f} = {den[k2] / lat[k2]:.2f}x",
                    f"{lat[k64]:.1f} / {den[k64]:.1f} = {den[k64] / lat[k64]:.2f}x",
                    pct(r["test_accuracy"]),
                    r.get("kept_per_stage", ""),
                ]
            )
    head = ["method", "target", "MMACs", "MACs reduction", "latency_ms (metric)", "b1, 1 thread: ms / dense = speed-up"]
    head += [f"b1, {th} threads", f"b64, {th} threads", "test after", f"channels kept per stage (of {_stages(result)})"]
    out.append(md_table(head, lrows))
    out.append(
        "\nUnstructured candidates keep dense tensors (zeros are multiplied), so their latency equals the dense "
        "model's; their `macs` count non-zero weights only (what a sparse kernel would execute).\n"
    )
    return out


def _training(result: dict[str, Any]) -> list[str]:
    brows = []
    for r in result["rows"]:
        if r.get("training") and r["state"] == "ok":
            b = r["training"]
            achieved = f"{r['sparsity']:.3f}" if r["granularity"] == "unstructured" else f"{r['macs_reduction']:.2f}x"
            brows.append(
                [r["label"], r["granularity"], achieved, b["knobs_with_defaults"], b["optimizer_steps"], b["batch"], b["images_seen"]]
                + [f"{b['epochs_equivalent']:.1f}", f"{b['wall_s']:.0f}", f"{b['s_per_step']:.2f}", _ba(r)]
            )
    head = ["method", "granularity", "achieved", "knobs (defaults filled in)", "steps", "batch", "images seen"]
    head += [f"epochs of the {result['splits']['train']} training images", "wall s", "s/step", "test before → after"]
    return ["\n## Methods that train: budget beside accuracy\n", md_table(head, brows)]


def _selections(result: dict[str, Any]) -> list[str]:
    out = _section(
        "Recalibration setting chosen on validation",
        "Probes: global magnitude at the probe points; every setting recalibrates the same pruned network "
        "(`Evaluator.validation_accuracy`: `keep_better` as set, cumulative averages). Mean validation accuracy decides.\n\n",
    )
    rrows = [
        [t["granularity"], t["recal"]["images"], t["recal"]["augment"], "pruned" if t["prune_stem"] else "dense"]
        + [", ".join(f"{k}: {pct(v)}" for k, v in t["val_accuracy"].items()), pct(t["mean"], 2), "**chosen**" if t.get("chosen") else ""]
        for t in result["recal_selection"]
    ]
    out.append(md_table(["granularity", "images", "augment", "stem/head", "val accuracy per probe", "mean", ""], rrows))
    out.append("\n## Screening weight chosen on validation\n")
    srows = []
    for sel in result["screening_selection"]:
        alts = sel["alternatives"]
        srows.append(
            [
                sel["granularity"],
                sel["point"],
                ", ".join(f"wF={a['knobs'].get('screening_weight', 0):g}: {pct(a['val_accuracy'])}" for a in alts),
                next((f"{a['knobs'].get('screening_weight', 0):g}" for a in alts if a["chosen"]), ""),
            ]
        )
    out.append(md_table(["granularity", "point", "val accuracy after recalibration", "chosen wF"], srows))
    return out


def _diagnostic(result: dict[str, Any]) -> list[str]:
    if not result.get("raw_l1_diagnostic"):
        return []
    rows = [
        [
            f"{d['reduction']}x",
            "yes (pipeline)" if d["normalize"] else "no (raw L1)",
            f"{d['macs_ratio']:.3f}",
            d["kept_per_stage"],
            pct(d["val_after"]),
            f"{pct(d['test_before'])} → {pct(d['test_after'])}",
        ]
        for d in result["raw_l1_diagnostic"]
    ]
    return [
        "\n## Diagnostic: global channel ranking with and without per-group normalisation\n",
        "`structure.select_channels` divides each group's L1 scores by their mean before ranking globally "
        "(what `magnitude global` uses); the other rows rank raw filter norms. Same recalibration setting.\n\n",
        md_table(
            [
                "reduction",
                "per-group normalised",
                "MACs ratio",
                f"kept channels per stage (of {_stages(result)})",
                "val after",
                "test before → after",
            ],
            rows,
        ),
    ]


def _dense(result: dict[str, Any]) -> list[str]:
    d = result["dense"]
    rc = d["recalibrated"]["recal"]
    return [
        "\n## Dense reference\n",
        f"Unpruned: val {pct(d['val_accuracy'])} %, test {pct(d['test_accuracy'])} % with the stored statistics "
        "(validation images are training images the model was trained on); recalibrated with the chosen "
        f"unstructured setting ({rc['images']} images, augment={rc['augment']}): test "
        f"{pct(d['recalibrated']['test_accuracy'])} %. {d['macs'] / 1e6:.2f} M MACs, "
        f"{d['params'] / 1e6:.3f} M parameters; batch-1 latency {d['latency_ms']:.2f} ms (metric, {result['threads']} threads), "
        f"{d['latency_b1_1thread_ms']:.2f} ms (1 thread, lowest of 3 medians).\n",
    ]


def _all_rows(result: dict[str, Any]) -> list[str]:
    arows = []
    for r in result["rows"]:
        if r["state"] != "ok":
            arows.append([r["label"], r["granularity"], r["point"], "failed: " + r.get("error", "")[:80]] + [""] * 10)
            continue
        arows.append(
            [r["label"] + ("" if r["selected"] else " (not chosen)"), r["granularity"], r["point"]]
            + [f"{r[k]:.3f}" for k in ("sparsity", "sparsity_all_weights", "macs_ratio")]
            + [pct(r[k]) for k in ("val_accuracy_before_recal", "val_accuracy", "test_accuracy_before_recal", "test_accuracy")]
            + ["yes" if r["recal_applied"] else "kept stored", f"{r['latency_ms']:.2f}", f"{r['prune_s']:.1f}", f"{r['recal_s']:.1f}"]
        )
    head = ["candidate", "granularity", "point", "sparsity (prunable)", "sparsity (all conv/linear)", "MACs ratio"]
    head += ["val before", "val after", "test before", "test after", "recalibrated", "latency ms (b1)", "prune s", "recal s"]
    return ["\n## All rows\n", md_table(head, arows)]


def changes(result: dict[str, Any]) -> list[str]:
    """The "changes since the previous run" section: every row's test and validation accuracy
    beside the earlier run's (``result["previous"]``, from ``methods.py --previous``)."""
    prev = result.get("previous")
    if not prev:
        return []
    old = {row_key(r): r for r in prev["rows"]}
    new = {row_key(r): r for r in result["rows"]}
    body, deltas = [], []
    for key in list(dict.fromkeys([*new, *old])):
        a, b = old.get(key), new.get(key)
        ta, tb = (a or {}).get("test_accuracy"), (b or {}).get("test_accuracy")
        va, vb = (a or {}).get("val_accuracy"), (b or {}).get("val_accuracy")
        d = 100 * (tb - ta) if ta is not None and tb is not None else None
        if d is not None:
            deltas.append(abs(d))
        src = (a or {}).get("from_run") or prev.get("date") or ""
        threads = f"{(a or {}).get('threads', '')} → {(b or {}).get('threads', '')}"
        body.append(
            [
                key[3],
                key[1],
                key[2],
                pct(ta),
                pct(tb),
                "" if d is None else f"{d:+.1f}",
                pct(va),
                pct(vb),
                "new" if not a else ("not run now" if not b else ""),
                src[:10] if a else "",
                threads,
            ]
        )
    settings = []
    for name in ("chosen_settings", "chosen_reconstruction"):
        if prev.get(name) != result.get(name):
            settings.append(f"`{name}` changed: before {json.dumps(prev.get(name))}, now {json.dumps(result.get(name))}")
    same = sum(x == 0 for x in deltas)
    return [
        "\n## Changes since the previous run\n",
        f"Previous: `{prev['source']}` ({prev.get('date')}, commit `{str(prev.get('git_commit') or '')[:10]}`, {prev.get('threads')} threads, "
        f"sections run {prev.get('sections_run')}; `from`: the run each old row was measured in; `torch threads`: of the evaluator that measured the row, then → now). "
        f"{len(deltas)} rows in both: {same} with the same test accuracy, largest change {max(deltas, default=0):.1f} points. "
        + ("Chosen settings: the same." if not settings else " ".join(settings))
        + "\n\n",
        md_table(
            ["candidate", "granularity", "point", "test before", "test now", "Δ points", "val before", "val now", "row", "from", "torch threads"],
            body,
        ),
    ]


def findings(result: dict[str, Any]) -> list[str]:
    """Winners and choices of this run, in words (figures from the JSON only)."""
    rows, cfg = result["rows"], result["config"]
    lines = ["\n## Findings\n"]
    for gran, points, fmt in (("unstructured", cfg["sparsities"], "{:.0%}"), ("channel", cfg["reductions"], "{}x")):
        wins = [f"{fmt.format(p)}: {b['label']} ({pct(b['test_accuracy'])} %)" for p in points if (b := best_row(rows, gran, p))]
        lines.append(f"- **Best after recalibration, {gran}** (test): " + "; ".join(wins) + ".")
    for gran, s in result["chosen_settings"].items():
        grid = [t for t in result["recal_selection"] if t["granularity"] == gran]
        chosen = [t for t in grid if t.get("chosen")]
        plain = [t for t in grid if t["recal"]["images"] == min(x["recal"]["images"] for x in grid) and not t["recal"]["augment"] and t["prune_stem"]]
        if chosen and plain:
            lines.append(
                f"- **Recalibration, {gran}**: chosen {s['recal']['images']} images, augment={s['recal']['augment']}, "
                f"keep_better={s['recal']['keep_better']}, stem/head {'pruned' if s['prune_stem'] else 'dense'}: mean validation accuracy "
                f"over the probes {pct(chosen[0]['mean'], 2)} % against {pct(plain[0]['mean'], 2)} % for {plain[0]['recal']['images']} plain images."
            )
    for g, c in result.get("chosen_reconstruction", {}).items():
        lines.append(f"- **Reconstruction, {g}**: chosen {c['images']} images, ridge {c['ridge']:g}, layers {c['layers']} on validation.")
    rec = [r for r in rows if r["state"] == "ok" and is_reconstructed(r)]
    if rec:
        applied = sum(bool(r["recal_applied"]) for r in rec)
        lines.append(
            f"- **Recalibration after reconstruction**: `keep_better` kept the recalibrated statistics for {applied} of {len(rec)} "
            f"reconstructed candidates (the stored ones scored higher on validation for the others). Reconstruction seconds "
            f"(`recon_s`, {result['threads']} torch threads, load average at start {_load(result['machine']['loadavg_at_start'])}): "
            f"{min(r['recon_s'] for r in rec):.0f}-{max(r['recon_s'] for r in rec):.0f} s per candidate."
        )
    lines.append("\nNotes on the pipeline from preparing this benchmark (recipes, rejected settings): `benchmarks/README.md`.")
    return ["\n".join(lines) + "\n"]


def markdown(result: dict[str, Any]) -> str:
    """The whole report of one ``methods.json``."""
    cfg, rows = result["config"], result["rows"]
    out = _header(result) + _targets(result)
    out += ["\n## Unstructured (weight sparsity of conv + linear weights)\n", _pivot(rows, "unstructured", cfg["sparsities"], "{:.0%}")]
    out += [
        "\n## Structured (channels)\n",
        f"Only the channel groups the dependency analysis finds are prunable (per stage: {_stages(result)} channels); "
        "`[..x]` is the achieved MACs reduction.\n\n",
        _pivot(rows, "channel", cfg["reductions"], "{}x fewer MACs"),
    ]
    out += seeds.report(rows)
    out += _reconstruction(result) + _latency(result) + _training(result) + _selections(result) + _diagnostic(result)
    out += _dense(result) + _all_rows(result) + changes(result) + findings(result)
    return "\n".join(x.strip("\n") + "\n" for x in out)  # a blank line between blocks


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=RESULTS_DIR / "methods.json", help="the run's figures (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="the Markdown file (default: methods.md beside the JSON)")
    add_previous_arg(ap, "store its figures in --json (rewritten)")
    args = ap.parse_args(argv)
    result = read_json(args.json, "--json")
    if result.get("benchmark") != "methods":
        raise SystemExit(f"--json {args.json}: not a methods.json (benchmark is {result.get('benchmark')!r}); give one benchmarks/methods.py wrote")
    if args.previous is not None:
        result["previous"] = summary_of(read_json(args.previous, "--previous"), str(args.previous))
        write_json(args.json, result)
    out = args.out or args.json.with_name("methods.md")
    write_text(out, markdown(result))
    print(f"wrote {out}", file=sys.stderr)


def add_previous_arg(ap: argparse.ArgumentParser, where: str) -> None:
    """``--previous JSON``: an earlier methods.json whose figures the report compares with."""
    ap.add_argument("--previous", type=Path, default=None, metavar="JSON", help=f"an earlier methods.json: {where} and list the changes")


if __name__ == "__main__":
    main()
