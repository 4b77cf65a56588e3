"""``prunesearch best``: each filter flag, feasibility, sorting, the default experiment and
the errors, through the command line on a real MLflow store written by the product's recorder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.spec import CandidateResult, CandidateSpec
from search.cli.parser import main
from search.config import parse_config
from search.records.report import finish_report
from search.records.runs import Recorder
from search.study.study import derived_metrics

ROOT = Path(__file__).resolve().parents[1]
# (accuracy, macs, macs_ratio, latency_ms, granularity); the constraint max_macs_ratio 0.6 makes row 0
# infeasible; feasible front: rows 1, 2, 4 (3 is dominated by 2)
KNOWN = [
    (0.97, 1500.0, 0.75, 2.0, "unstructured"),
    (0.95, 1000.0, 0.50, 1.5, "unstructured"),
    (0.90, 800.0, 0.40, 0.8, "channel"),
    (0.85, 900.0, 0.45, 0.5, "channel"),
    (0.60, 200.0, 0.10, 0.3, "channel"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("best")
    cfg = parse_config({"name": "known", "run_dir": str(tmp / "run"), "objective": {"mode": "constrained", "max_macs_ratio": 0.6}})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rec = Recorder(uri, cfg.name, artifact_location=(tmp / "art").as_uri())
    parent = rec.start_parent(None, cfg.name, {})
    ids = []
    for i, (acc, macs, ratio, lat, gran) in enumerate(KNOWN):
        spec = CandidateSpec(
            granularity=gran, target_sparsity=0.5 if gran == "unstructured" else None, target_macs_ratio=ratio if gran == "channel" else None
        )
        metrics = {"accuracy": acc, "macs": macs, "macs_ratio": ratio, "latency_ms": lat, "sparsity": 1 - ratio, "params": 10.0}
        result = CandidateResult(spec=spec, state="ok", metrics=metrics)
        ids.append(rec.record(parent, i, result, metrics=derived_metrics(cfg, "ok", metrics)))
    return uri, ids, cfg, rec, parent, tmp


def _best(capsys, uri, *flags):
    code = main(["best", "--tracking-uri", uri, "--format", "json", *flags])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def _trials(capsys, uri, *flags) -> list[int]:
    code, rows, err = _best(capsys, uri, *flags)
    assert code == 0, err
    return [r["trial"] for r in rows]


def test_best_never_returns_an_infeasible_candidate(store, capsys):
    uri, ids, *_ = store
    code, rows, _ = _best(capsys, uri)  # no --experiment: the store's only search
    assert code == 0 and [r["run_id"] for r in rows] == [ids[1], ids[2], ids[4]]
    assert all(r["feasible"] == 1.0 for r in rows)
    assert _trials(capsys, uri, "--all") == [1, 2, 3, 4]
    assert _trials(capsys, uri, "--feasibility", "infeasible") == [0]
    assert _trials(capsys, uri, "--feasibility", "any") == [0, 1, 2, 4]


def test_each_filter_flag(store, capsys):
    uri, *_ = store
    assert _trials(capsys, uri, "--max-macs-ratio", "0.45") == [2, 4]
    assert _trials(capsys, uri, "--max-latency-ms", "0.6") == [3, 4]
    assert _trials(capsys, uri, "--granularity", "channel") == [2, 4]
    assert _trials(capsys, uri, "--granularity", "channel", "--all") == [2, 3, 4]
    assert _trials(capsys, uri, "--all", "--top", "2") == [1, 2]


def test_sort_by_metric_with_direction(store, capsys):
    uri, *_ = store
    assert _trials(capsys, uri, "--all", "--sort", "latency_ms") == [4, 3, 2, 1]  # costs: ascending by default
    assert _trials(capsys, uri, "--all", "--sort", "latency_ms:desc") == [1, 2, 3, 4]
    assert _trials(capsys, uri, "--all", "--sort", "accuracy:asc") == [4, 3, 2, 1]
    code, _, err = _best(capsys, uri, "--sort", "speed")
    assert code == 2 and "no candidate has metric 'speed'" in err and "latency_ms" in err
    code, _, err = _best(capsys, uri, "--sort", "macs:up")
    assert code == 2 and "METRIC:asc" in err


def test_no_match_is_a_message_and_exit_1(store, capsys):
    uri, *_ = store
    code, _, err = _best(capsys, uri, "--max-latency-ms", "0.1")
    assert code == 1 and "no Pareto-front candidate matches" in err


def test_table_shows_feasibility(store, capsys):
    uri, ids, *_ = store
    assert main(["best", "--tracking-uri", uri, "--feasibility", "any", "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "feasible"
    assert lines[1].startswith(ids[0]) and lines[1].split()[-1] == "no" and lines[2].split()[-1] == "yes"


def test_summary_metric_is_the_feasible_best(store):
    _, _, cfg, rec, parent, _ = store
    finish_report(cfg, rec, parent, None)
    metrics = rec.client.get_run(parent).data.metrics
    assert metrics["best_accuracy"] == 0.95  # not the infeasible 0.97
    assert (metrics["candidates"], metrics["candidates_feasible"], metrics["pareto_size"]) == (5, 4, 3)


def test_a_closed_pipe_ends_quietly(store):
    uri, *_ = store
    read, write = os.pipe()
    os.close(read)  # the reader (``| head``) is gone before anything is written
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "best", "--tracking-uri", uri, "--all"],
        stdout=write,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    os.close(write)
    err = proc.stderr.decode()
    assert proc.returncode == 141 and "Traceback" not in err and "BrokenPipeError" not in err, err


def test_experiment_defaults_to_the_only_search_else_lists_them(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name in ("alpha", "beta"):
        Recorder(uri, name, artifact_location=(tmp_path / name).as_uri()).start_parent(None, name, {})
    code, _, err = _best(capsys, uri)
    assert code == 2 and "2 searches, choose one with --experiment: alpha, beta" in err
    code, _, err = _best(capsys, uri, "--experiment", "gamma")
    assert code == 2 and "no experiment 'gamma'" in err and "['alpha', 'beta']" in err and "--run-dir" in err


def test_export_of_an_unknown_run_hints_at_the_store(store, capsys):
    uri, _, _, _, _, tmp = store
    assert main(["export", "0123456789abcdef", "-o", str(tmp / "x.pt"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "no candidate run '0123456789abcdef'" in err and "--run-dir" in err and uri in err
