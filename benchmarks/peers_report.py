"""The peers benchmark's report: the verdict and ``peers.md``, from ``peers.json`` alone.

    .venv/bin/python benchmarks/peers_report.py [--json benchmarks/results/peers.json] [--out peers.md]

No torch needed: everything here reads the figures ``peers.py`` measured.
"""

from __future__ import annotations

import math
from typing import Any

from reporting import md_table, pct, render_cli
from reporting import standard_error as se


def main() -> None:
    render_cli("peers", markdown, __doc__.splitlines()[0])


def verdict(result) -> list[dict[str, Any]]:
    """Per point: prunesearch's test accuracy against the best peer, twice: peers as they are
    run (torch L1 without recalibration, Torch-Pruning as documented, EagleEye-style), and
    every peer row including the hybrids that borrow prunesearch's recalibration."""
    n_test = result["settings"]["test_images"]
    out = []
    for point in result["unstructured"]:
        tl, ps = point["tools"], point["tools"]["prunesearch"]
        as_run = {"torch_l1": tl["torch_l1"]["test_accuracy"]}
        hybrids = {"torch_l1_recal": tl["torch_l1_recal"]["test_accuracy"]}
        ok = ps.get("sparsity", 0) >= point["target_sparsity"] - 1e-9
        v = _compare(f"{point['target_sparsity']:.0%} weight sparsity", ps, as_run, hybrids, n_test, budget_ok=ok)
        v["reason"] = _reason_unstructured(point, v)
        out.append(v)
    for point in result["structured"]:
        tl, ps = point["tools"], point["tools"]["prunesearch"]
        as_run, hybrids = {}, {}
        for key in ("tp_layer", "tp_global"):
            if "test_accuracy" in tl.get(key, {}):
                as_run[key] = tl[key]["test_accuracy"]
                hybrids[key + "_recal"] = tl[key]["test_recal"]
        as_run["eagleeye"] = tl["eagleeye"]["test_accuracy"]
        peer_macs = [tl[k]["macs_ratio"] for k in ("tp_layer", "tp_global", "eagleeye") if "macs_ratio" in tl.get(k, {})]
        ok = ps.get("macs_ratio", 9) <= point["target_macs_ratio"] + 1e-9
        v = _compare(f"{1 / point['target_macs_ratio']:.1f}x fewer MACs", ps, as_run, hybrids, n_test, budget_ok=ok)
        v["prunesearch_macs_le_every_peer"] = bool(peer_macs) and ps.get("macs_ratio", 9) <= min(peer_macs) + 1e-9
        v["latency_within_1_3x"] = ps.get("latency_within_1_3x_of_macs")
        v["reason"] = _reason_structured(point, v, result["latency"])
        out.append(v)
    return out


def _compare(point: str, ps: dict, as_run: dict[str, float], hybrids: dict[str, float], n: int, budget_ok: bool) -> dict[str, Any]:
    acc = ps.get("test_accuracy")
    # two binomial errors; the test images are shared (paired), so this overstates the noise somewhat
    noise = math.sqrt(2) * (se(acc, n) or 0.0) if acc is not None else 0.0
    v: dict[str, Any] = {"point": point, "prunesearch_test": acc, "budget_ok": budget_ok}
    for name, peers in (("as_run", as_run), ("all", {**as_run, **hybrids})):
        best = max(peers, key=peers.get)
        margin = None if acc is None else acc - peers[best]
        v[name] = {
            "best_peer": best,
            "best_peer_test": peers[best],
            "margin": margin,
            "ahead": bool(margin is not None and margin > 0 and budget_ok),
            "margin_over_2se": None if margin is None or not noise else margin / (2 * noise),
        }
    return v


def _reason_unstructured(point: dict, v: dict) -> str:
    if v["all"]["ahead"]:
        return ""
    tl, ps = point["tools"], point["tools"]["prunesearch"]
    hyb = tl["torch_l1_recal"]
    lo_hi = ps.get("space", {}).get("sparsity")
    searched = f" (searched in [{lo_hi[0]}, {lo_hi[1]}])" if lo_hi else ""
    return (
        f"not ahead of torch L1 + prunesearch's recalibration ({100 * v['all']['margin']:+.1f} points, "
        f"{v['all']['margin_over_2se']:+.1f} x 2 SE{': within noise' if abs(v['all']['margin_over_2se'] or 0) < 1 else ''}). "
        f"That row is torch's global L1 masks with prunesearch's own recalibration; prunesearch's space holds the same "
        f"global-magnitude ranking (method magnitude, scope global) and can only beat it with a better one-shot ranking. Its winner "
        f"({ps.get('recipe')}) at sparsity {ps.get('sparsity', 0):.4f}{searched} scored "
        f"{100 * ps.get('val_accuracy', 0):.1f} % on validation vs {100 * hyb['val_accuracy']:.1f} % for the torch masks. "
        f"Against torch as users run it: {100 * v['as_run']['margin']:+.1f} points."
    )


def _reason_structured(point: dict, v: dict, lat: dict) -> str:
    tl, ps = point["tools"], point["tools"]["prunesearch"]
    parts = []
    if not v["all"]["ahead"]:
        ps_ch, ee_ch = ps.get("channels", {}), tl["eagleeye"].get("channels", {})
        stages = {g.split(".")[0] for g in ps_ch}
        best = v["all"]["best_peer"]
        b = tl[best.removesuffix("_recal")]
        parts.append(
            f"behind {best} by {-100 * v['all']['margin']:.1f} points ({v['all']['margin_over_2se']:+.1f} x 2 SE). "
            f"Validation: prunesearch {100 * ps.get('val_accuracy', 0):.1f} % vs {100 * b.get('val_accuracy', 0):.1f} %. "
            f"prunesearch's space allocates per stage ({len(stages)} multipliers, equal widths inside a stage: "
            f"{_widths(ps_ch)}); the EagleEye-style sampler sets {len(ee_ch)} layer widths freely "
            f"({_widths(ee_ch)})."
        )
    ok = v.get("latency_within_1_3x") or {}
    prof = ps.get("profile_ms")
    dprof = lat.get("dense_profile_ms")
    for b in ("b1", "b256"):
        if ok.get(b) is False and prof and dprof:
            d, q = dprof[b], prof[b]
            parts.append(
                f"latency at batch {b[1:]}: ratio {ps['latency_ratio'][b]:.2f} > 1.3 x MACs ratio {ps['macs_ratio']:.3f}: "
                f"convolutions {d['conv_ms']:.1f} -> {q['conv_ms']:.1f} ms (x{q['conv_ms'] / d['conv_ms']:.2f}), everything else "
                f"(BatchNorm, ReLU, residual adds, padding on the unpruned residual stream, dispatch) "
                f"{d['other_ms']:.1f} -> {q['other_ms']:.1f} ms (x{q['other_ms'] / d['other_ms']:.2f}) (profiler times)."
            )
    return " ".join(parts)


def _widths(ch: dict[str, int]) -> str:
    return "/".join(str(ch[g]) for g in sorted(ch))


def _p(x, d=1) -> str:
    return pct(x, d) if x is not None else ""


def _f(x, fmt="{:.3f}") -> str:
    return "" if x is None else fmt.format(x)


def _search_wall_row(point: str, ps: dict[str, Any]) -> list[str]:
    """The wall-time row of one prunesearch search."""
    what = f"{ps['evaluated']} candidates, loop {ps['loop_s']:.0f} s, incl. Ray start"
    return [point, "prunesearch search", f"{ps['wall_s']:.0f}", what, str(ps["loadavg"])]


def _recal_words(rc: dict[str, Any]) -> str:
    average = "cumulative average" if rc["mode"] == "cumulative" else f"EMA (momentum {rc['momentum']})"
    words = [f"reset, {average} over {rc['images']} calibration images"]
    if rc.get("augment"):
        words.append(f"flips and black-padded {rc['pad']}-px crops")
    if rc.get("keep_better"):
        words.append("keep the stored statistics when they score higher on validation")
    return ", ".join(words)


def markdown(r: dict[str, Any]) -> str:
    """``peers.md`` from a run's figures (the verdict computed from them)."""
    m, st, d = r["machine"], r["settings"], r["dense"]
    verdicts = verdict(r)
    n_test = st["test_images"]
    sampler = f"{st['sampler'].upper()}, " if st.get("sampler") else ""
    lines = [
        f"# prunesearch vs peer tools ({m['date'][:10]}, {m['cpu_model']}, {m['logical_cpus']} CPUs shared, "
        f"torch {m['torch']}, {st['threads']} torch thread per worker)",
        "",
        f"Reproduce: `.venv/bin/{r['command']}` "
        f"(Torch-Pruning {st['torch_pruning']}; `pip install -e '.[bench]'`). Git commit `{m['git_commit'][:10]}`. "
        f"Load average at start {m['loadavg_at_start']}, at end {r['loadavg_at_end']}; total {r['total_wall_s'] / 60:.1f} min.",
        "",
        f"Shared ResNet-20 (dense: test {_p(d['test_accuracy'])} %, val {_p(d['val_accuracy'])} %, {d['macs'] / 1e6:.2f} M MACs). "
        f"Same images for every tool: {st['calib_images']} calibration and {st['val_images']} validation images from "
        f"`train_exact.npz` (selection), {n_test} test images (`test_exact.npz`, report only; standard error about "
        f'{100 * se(0.7, n_test):.1f} points at 70 %). Recalibration (every "+ recal" and prunesearch): {_recal_words(st["recalibration"])}. '
        f"prunesearch: {st['candidates_per_search']} candidates per point ({sampler}{st['workers']} Ray actors of {st['threads']} "
        f"thread{'s' if st['threads'] > 1 else ''}, Ray started by the search). Accuracies are top-1 %.",
        "",
        "## 1. Unstructured, no fine-tuning (test accuracy)",
        "",
    ]
    rows = []
    for p in r["unstructured"]:
        tl, ps = p["tools"], p["tools"]["prunesearch"]
        rows.append(
            [
                f"{p['target_sparsity']:.0%}",
                _p(tl["torch_l1"]["test_accuracy"]),
                _p(tl["torch_l1_recal"]["test_accuracy"]),
                _p(ps.get("test_accuracy")),
                _f(ps.get("sparsity"), "{:.4f}"),
                ps.get("recipe", ps.get("error", "")),
                _p(ps.get("val_accuracy")),
                f"{ps['evaluated']} cand., {ps['wall_s']:.0f} s",
            ]
        )
    lines.append(
        md_table(
            [
                "sparsity",
                "torch L1 (as users run it)",
                "torch L1 + recal",
                "prunesearch",
                "prunesearch sparsity",
                "prunesearch winner",
                "its val",
                "prunesearch budget",
            ],
            rows,
        )
    )
    lines += ["", "## 2. Structured, no fine-tuning (test accuracy; latency 1 thread)", ""]
    if r["structured"] and "tp_documented_default" in r["structured"][0]:
        lines += [
            f"Torch-Pruning as its README runs it (only the classifier ignored) on this option-A ResNet: "
            f"`{r['structured'][0]['tp_documented_default']}`. Below it is restricted to the block-internal channels "
            "(each BasicBlock's conv1 output), where its pruned networks were checked against prunesearch's `shrink` "
            "of the same channels (max logit difference in the JSON).",
            "",
        ]
    lat = r["latency"]
    lines.append(
        f"Dense latency: {lat['dense_ms']['b1']:.2f} ms at batch 1, {lat['dense_ms']['b256']:.0f} ms at batch 256 "
        f"(median of {lat['rounds']} interleaved rounds; load per round {lat['loadavg_per_round']})."
    )
    lines.append("")
    rows = []
    names = {
        "tp_layer": "Torch-Pruning per-layer",
        "tp_global": "Torch-Pruning global",
        "eagleeye": "EagleEye-style random + adaptive BN",
        "prunesearch": "prunesearch",
    }
    for p in r["structured"]:
        for key in ("tp_layer", "tp_global", "eagleeye", "prunesearch"):
            x = p["tools"].get(key, {})
            if "error" in x and "test_accuracy" not in x:
                rows.append([f"{1 / p['target_macs_ratio']:.1f}x", names[key], "", "", "", "", "", "", "", x["error"][:80]])
                continue
            lr = x.get("latency_ratio", {})
            ok = x.get("latency_within_1_3x_of_macs", {})
            rows.append(
                [
                    f"{1 / p['target_macs_ratio']:.1f}x",
                    names[key],
                    _f(x.get("macs_ratio")),
                    _p(x.get("test_accuracy")),
                    _p(x.get("test_recal")) if key.startswith("tp") else "",
                    f"{x['latency_ms']['b1']:.2f} ({lr['b1']:.2f}{'' if ok.get('b1') else ' !'})" if "latency_ms" in x else "",
                    f"{x['latency_ms']['b256']:.0f} ({lr['b256']:.2f}{'' if ok.get('b256') else ' !'})" if "latency_ms" in x else "",
                    _f(x.get("wall_s"), "{:.1f}"),
                    {"tp_layer": "1 (+ratio bisection)", "tp_global": "1 (+ratio bisection)"}.get(
                        key, str(x.get("candidates", x.get("evaluated", "")))
                    ),
                    x.get("recipe", "") if key == "prunesearch" else "",
                ]
            )
    lines.append(
        md_table(
            [
                "speed-up target",
                "tool",
                "MACs ratio",
                "test acc",
                "+ recal",
                "ms batch 1 (ratio)",
                "ms batch 256 (ratio)",
                "wall s",
                "candidates",
                "prunesearch winner",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Ratio = pruned / dense latency; `!` marks a ratio above 1.3 x the MACs ratio (the MACs promise missed). "
        "Torch-Pruning is shown as documented (no recalibration) and with prunesearch's recalibration (+ recal). "
        "EagleEye-style candidates are all adaptive-BN recalibrated.",
        "",
    ]

    lines += ["## 3. Fine-tuning the winners (same budget), and the EagleEye claim", ""]
    if not r["finetune"]:
        lines += ["Not run (`--no-finetune`).", ""]
    else:
        lines += [
            f"{st['finetune']['steps']} SGD steps, batch {st['finetune']['batch']}, lr {st['finetune']['lr']} ({st['finetune']['schedule']}) "
            f"on the {st['train_images']} training images, masks kept for unstructured networks; test accuracy before -> after. "
            f"Wall {r['finetune']['wall_s'] / 60:.1f} min on 2 workers (load {r['finetune']['loadavg']}).",
            "",
        ]
    rows = []
    for part in ("unstructured", "structured"):
        for p in r[part]:
            pt = f"{p['target_sparsity']:.0%} sparsity" if part == "unstructured" else f"{1 / p['target_macs_ratio']:.1f}x fewer MACs"
            for key, x in p["tools"].items():
                if "finetuned" not in x:
                    continue
                before = x.get("test_accuracy")
                rows.append([pt, x.get("label", key), _p(before), _p(x["finetuned"]["test_accuracy"]), _p(x["finetuned"]["val_accuracy"])])
    lines.append(md_table(["point", "tool", "test before", "test after fine-tuning", "val after"], rows))
    sp = r["finetune"].get("spearman")
    if sp:
        lines += [
            "",
            f"Spearman rank correlation over {sp['candidates']} EagleEye-style random candidates at 2x fewer MACs, "
            f"each fine-tuned {sp['steps']} steps: adaptive-BN val accuracy vs fine-tuned val accuracy "
            f"rho = {sp['recal_vs_finetuned_val']['rho']:.2f} (p = {sp['recal_vs_finetuned_val']['p_value']:.2g}); "
            f"vs fine-tuned test accuracy rho = {sp['recal_vs_finetuned_test']['rho']:.2f}; vanilla (stored BN statistics) val "
            f"accuracy vs fine-tuned val accuracy rho = {sp['vanilla_vs_finetuned_val']['rho']:.2f} "
            f"(p = {sp['vanilla_vs_finetuned_val']['p_value']:.2g}). Best by adaptive BN is best after fine-tuning: "
            f"{sp['top1_by_recal_is_top1_finetuned']}.",
        ]
    lines += ["", "## 4. Wall time of each tool for its result", ""]
    rows = []
    for p in r["unstructured"]:
        tl = p["tools"]
        pt = f"{p['target_sparsity']:.0%} sparsity"
        rows.append([pt, "torch global_unstructured", f"{tl['torch_l1']['wall_s']:.2f}", "1 candidate", str(tl["torch_l1"]["loadavg"])])
        rows.append(
            [
                pt,
                "torch + prunesearch recal",
                f"{tl['torch_l1_recal']['wall_s']:.2f}",
                f"recal {tl['torch_l1_recal']['recal_s']:.1f} s",
                str(tl["torch_l1_recal"]["loadavg"]),
            ]
        )
        rows.append(_search_wall_row(pt, tl["prunesearch"]))
    for p in r["structured"]:
        tl = p["tools"]
        pt = f"{1 / p['target_macs_ratio']:.1f}x fewer MACs"
        for key in ("tp_layer", "tp_global"):
            x = tl.get(key, {})
            if "wall_s" in x:
                rows.append(
                    [
                        pt,
                        names[key],
                        f"{x['wall_s']:.2f}",
                        f"one prune {x['step_s']:.2f} s; {x['bisect_evals']} prunes to bisect the ratio",
                        str(x["loadavg"]),
                    ]
                )
        x = tl["eagleeye"]
        rows.append([pt, names["eagleeye"], f"{x['wall_s']:.0f}", f"{x['candidates']} candidates, {st['workers']} workers", str(x["loadavg"])])
        rows.append(_search_wall_row(pt, tl["prunesearch"]))
    lines.append(md_table(["point", "tool", "wall s", "what", "load average (1, 5, 15 min)"], rows))
    lines += ["", "## Verdict (target: prunesearch ahead of every peer at every point, at equal or smaller budget)", ""]
    lines += [
        "Budget: every tool at a point has the same target, prunesearch at equal or higher weight sparsity "
        "(unstructured) and at most the target MACs ratio (structured; see the MACs ratio column for each tool). "
        '"As run": peers as their users run them (torch L1 without recalibration, Torch-Pruning as documented, '
        'EagleEye-style with its adaptive BN). "All": also the hybrid rows that borrow prunesearch\'s recalibration.',
        "",
    ]
    rows = []
    for v in verdicts:
        lat = v.get("latency_within_1_3x")
        row = [v["point"], _p(v["prunesearch_test"])]
        for name in ("as_run", "all"):
            c = v[name]
            row += [
                f"{c['best_peer']} {_p(c['best_peer_test'])}",
                f"{_f(None if c['margin'] is None else 100 * c['margin'], '{:+.1f}')} ({_f(c['margin_over_2se'], '{:+.1f}')})",
                "yes" if c["ahead"] else "NO",
            ]
        row.append("" if lat is None else ("b1 " + ("ok" if lat.get("b1") else "NO") + ", b256 " + ("ok" if lat.get("b256") else "NO")))
        rows.append(row)
    lines.append(
        md_table(
            [
                "point",
                "prunesearch test",
                "best peer as run",
                "margin (/ 2 SE)",
                "ahead",
                "best peer, all rows",
                "margin (/ 2 SE)",
                "ahead",
                "latency within 1.3x of MACs",
            ],
            rows,
        )
    )
    lines += ["", f"Margins in points of test accuracy; (/ 2 SE) below 1 in size: within the noise of {n_test} test images.", ""]
    reasons = [f"- **{v['point']}**: {v['reason']}" for v in verdicts if v.get("reason")]
    if reasons:
        lines += ["Where the target is missed, and why:", ""] + reasons
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
