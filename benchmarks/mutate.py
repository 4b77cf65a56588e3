"""Mutation check: does the suite catch one-line breaks of the core logic?

Each mutation replaces one exact line (or deletes one file) in a temporary copy of the
tree, never in the working tree, and runs only the tests that should catch it there
(``pytest -x``). A mutation is *caught* when those tests fail (exit code 1); any other
exit code (collection error, timeout) is reported as such and counts as not caught.

    python benchmarks/mutate.py            # all mutations; writes benchmarks/results/mutate.{json,md}
    python benchmarks/mutate.py --fast     # only those whose tests need no Ray or subprocess
    python benchmarks/mutate.py --only recal-skipped masks-not-applied
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    file: str
    old: str  # text (usually a line) that occurs exactly once in ``file``; "" with new "" deletes the file
    new: str
    tests: tuple[str, ...]
    slow: bool = False


MUTATIONS = [
    Mutation(
        "recal-skipped",
        "recalibration does nothing",
        "pipeline/repair/recalibrate.py",
        "    if spec.images == 0:\n",
        "    if spec.images >= 0:\n",
        ("tests/test_recalibrate.py", "tests/test_evaluator.py"),
    ),
    Mutation(
        "masks-not-applied",
        "the plan's masks are not applied",
        "pipeline/build.py",
        "    apply_masks(model, plan.masks)\n",
        "    pass\n",
        ("tests/test_evaluator.py", "tests/test_pruning.py"),
    ),
    Mutation(
        "constraint-ignored",
        "constrained mode tells Optuna no constraint",
        "search/study/study.py",
        "                trial.set_constraint(name, value)\n",
        "                pass\n",
        ("tests/test_study_records.py",),
    ),
    Mutation(
        "artifacts-not-written",
        "a record without its artifacts",
        "search/records/runs.py",
        "            self._artifacts(rid, result)\n",
        "            pass\n",
        ("tests/test_study_records.py",),
    ),
    Mutation(
        "metrics-not-written",
        "a record without its metrics",
        "search/records/runs.py",
        "                metrics=[Metric(k, float(v), 0, 0) for k, v in {**result.metrics, **(metrics or {})}.items()] + _knob_metrics(spec),\n",
        "                metrics=_knob_metrics(spec),\n",
        ("tests/test_study_records.py", "tests/test_query.py"),
    ),
    Mutation(
        "repair-skipped",
        "resume repair leaves running trials alone",
        "search/study/study.py",
        "    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):\n",
        "    for t in []:\n",
        ("tests/test_study_records.py",),
    ),
    Mutation(
        "repair-not-called",
        "the driver never repairs on resume",
        "search/runner/driver.py",
        "    told, requeued = repair(study, cfg, recorder, parent_id)\n",
        "    told, requeued = 0, 0\n",
        ("tests/test_faults.py::test_driver_killed_with_sigkill_resumes_without_loss_or_duplicates",),
        slow=True,
    ),
    Mutation(
        "finetune-pass",
        "fine-tuning trains for 0 steps",
        "pipeline/build.py",
        "model, ctx.train_x, ctx.train_y, spec.finetune_steps, lr=spec.finetune_lr,",
        "model, ctx.train_x, ctx.train_y, 0, lr=spec.finetune_lr,",
        ("tests/test_evaluator.py::test_fine_tuning_keeps_the_mask_and_records_both_accuracies",),
    ),
    Mutation(
        "data-path-dropped",
        "data errors no longer name the file",
        "pipeline/data/splits.py",
        "    tx, ty = _validate(tx, ty, cfg.path or cfg.name)\n",
        '    tx, ty = _validate(tx, ty, "data")\n',
        ("tests/test_hardening.py::test_malformed_data_is_named",),
    ),
    Mutation(
        "channel-target-hardcoded",
        "channel pruning ignores the MACs target",
        "pipeline/pruning/methods/base.py",
        "            graph, ctx.cache[key], spec.target_macs_ratio, scope=spec.scope, ratios=dict(spec.allocation)\n",
        "            graph, ctx.cache[key], 0.8, scope=spec.scope, ratios=dict(spec.allocation)\n",
        ("tests/test_methods_screening.py::test_channel_plan_on_digits",),
    ),
    Mutation(
        "checkpoint-accepts-small-files",
        "small corrupt checkpoints load as empty",
        "pipeline/models/checkpoint.py",
        "    return _strip_prefix(_extract(_load(p), p))\n",
        "    return {} if p.stat().st_size < 4096 else _strip_prefix(_extract(_load(p), p))\n",
        ("tests/test_checkpoint.py::test_random_bytes_and_damaged_files_only_raise_checkpoint_error",),
    ),
    Mutation(
        "blank-fit-plot",
        "the fit plot is a blank figure",
        "search/records/plots.py",
        '        fig.savefig(buf, format="png", **savefig)\n',
        '        type(fig)(figsize=fig.get_size_inches(), dpi=100).savefig(buf, format="png")\n',
        ("tests/test_powerlaw.py::test_plot_returns_png",),
    ),
    Mutation(
        "steering-uses-failures",
        "steering fits failed candidates too",
        "search/study/steering.py",
        '        if state != "ok" or steered is None or steered not in knobs or sparsity is None:\n',
        "        if steered is None or steered not in knobs or sparsity is None:\n",
        ("tests/test_steering.py::test_steering_waits_for_points_and_ignores_failures",),
    ),
    Mutation(
        "keep-better-ignored",
        "keep_better never keeps the stored statistics",
        "pipeline/build.py",
        '    if recalibrated and stored is not None and m["accuracy"] < m["accuracy_before_recal"]:\n',
        "    if False:\n",
        ("tests/test_evaluator.py::test_keep_better_keeps_the_stored_statistics_when_they_score_higher",),
    ),
    Mutation(
        "example-config-missing",
        "an example config is gone",
        "configs/resnet20_cifar10.yaml",
        "",
        "",
        ("tests/test_config.py::test_example_configs_are_valid",),
    ),
    Mutation(
        "ctrl-c-abandons-in-flight",
        "Ctrl-C stops without finishing what is in flight",
        "search/runner/driver.py",
        "                if not pool.busy and (interrupt.requested or remaining <= 0 or time.monotonic() >= deadline):\n",
        "                if interrupt.requested or (not pool.busy and (remaining <= 0 or time.monotonic() >= deadline)):\n",
        ("tests/test_hardening.py::test_ctrl_c_finishes_in_flight_candidates_and_resumes",),
        slow=True,
    ),
    Mutation(
        "second-interrupt-failed",
        "a second interrupt marks the parent FAILED",
        "search/runner/driver.py",
        '            _try(recorder.finish_parent, pid, "KILLED" if killed else "FAILED")\n',
        '            _try(recorder.finish_parent, pid, "FAILED")\n',
        ("tests/test_hardening.py::test_sigterm_and_a_second_interrupt_leave_the_parent_killed",),
        slow=True,
    ),
]


def _copy_tree(dest: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files (no .venv, runs, caches)."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = REPO / f.decode()
        if src.is_file():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode())


def _apply(tree: Path, m: Mutation) -> None:
    target = tree / m.file
    if not m.old and not m.new:
        target.unlink()
        return
    text = target.read_text()
    if text.count(m.old) != 1:
        raise SystemExit(f"{m.name}: the line to break occurs {text.count(m.old)} times in {m.file} (the code moved?)")
    target.write_text(text.replace(m.old, m.new))


def _tests_from(tree: Path, ref: str) -> None:
    """Replace the copy's tests/ by those of git ``ref`` (to show what an older suite misses)."""
    shutil.rmtree(tree / "tests")
    archive = subprocess.run(["git", "archive", ref, "tests"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)


def run_one(m: Mutation, timeout: float, tests_ref: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="mutate-") as d:
        tree = Path(d)
        _copy_tree(tree)
        _apply(tree, m)
        if tests_ref:
            _tests_from(tree, tests_ref)
        env = {**os.environ, "PYTHONPATH": str(tree), "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests]
        t0 = time.monotonic()
        try:
            out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
            rc, tail = out.returncode, (out.stdout + out.stderr)[-1500:]
        except subprocess.TimeoutExpired:
            rc, tail = -1, f"timed out after {timeout} s"
    status = {1: "caught", 0: "missed"}.get(rc, "error")
    return {**asdict(m), "rc": rc, "status": status, "seconds": round(time.monotonic() - t0, 1), "tail": tail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="skip mutations whose tests start Ray or subprocesses")
    ap.add_argument("--only", nargs="+", help="mutation names (results are not written)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per mutation")
    ap.add_argument("--tests-from", metavar="REF", help="run the tests of git REF instead (results are not written)")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if (not args.only or m.name in args.only) and not (args.fast and m.slow)]
    results = []
    for m in chosen:
        r = run_one(m, args.timeout, args.tests_from)
        print(f"{r['status']:7s} {m.name:32s} {r['seconds']:7.1f} s  {m.what}", flush=True)
        results.append(r)
    caught = sum(r["status"] == "caught" for r in results)
    if args.tests_from or args.only:  # a partial check: the full results stay as they are
        print(f"{caught}/{len(results)} caught" + (f" by the tests of {args.tests_from}" if args.tests_from else ""))
        return
    summary = {
        "mutations": len(results),
        "caught": caught,
        "share_caught": round(caught / max(len(results), 1), 3),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "results": results,
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutate.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# Mutation check (`benchmarks/mutate.py`)",
        "",
        f"{caught} of {len(results)} one-line breaks caught ({summary['share_caught']:.0%}); each in a temporary copy "
        "of the tree, running only the tests named for it (`pytest -x`).",
        "",
        "| mutation | what breaks | file | tests run | result | s |",
        "|---|---|---|---|---|---:|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | {r['what']} | `{r['file']}` | {', '.join(f'`{t}`' for t in r['tests'])} | {r['status']} | {r['seconds']} |")
    (out / "mutate.md").write_text("\n".join(lines) + "\n")
    print(f"{caught}/{len(results)} caught; wrote {out / 'mutate.md'}")
    sys.exit(0 if caught == len(results) else 1)


if __name__ == "__main__":
    main()
