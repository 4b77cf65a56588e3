"""``best`` on a store with known contents, through the library and the command line."""

from __future__ import annotations

import json

import pytest

from pipeline.spec import CandidateResult, CandidateSpec
from search.cli.parser import main
from search.records.query import QueryError, best, pareto_front
from search.records.runs import Recorder

# (accuracy, macs, sparsity, method); rows 0, 2, 3 form the front
KNOWN = [
    (0.95, 1000.0, 0.5, "magnitude"),
    (0.90, 1200.0, 0.4, "random"),
    (0.80, 500.0, 0.8, "magnitude"),
    (0.60, 200.0, 0.95, "random"),
    (0.50, 600.0, 0.7, "random"),
]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = Recorder(uri, "known", artifact_location=(tmp_path / "art").as_uri())
    parent = rec.start_parent(None, "known", {})
    ids = []
    for i, (acc, macs, sp, method) in enumerate(KNOWN):
        spec = CandidateSpec(method=method, target_sparsity=sp, allocation={"layer1": 0.5} if i == 2 else {})
        metrics = {
            "accuracy": acc,
            "accuracy_before_recal": acc / 2,
            "macs": macs,
            "macs_dense": 2000.0,
            "sparsity": sp,
            "params": 10.0,
            "latency_ms": 1.0,
        }
        ids.append(rec.record(parent, i, CandidateResult(spec=spec, state="ok", metrics=metrics)))
    rec.record(parent, 99, CandidateResult(spec=CandidateSpec(), state="failed", error="boom"))
    return uri, ids, tmp_path


def test_best_returns_the_pareto_front(store):
    uri, ids, _ = store
    rows = best(uri, "known")
    assert [r["run_id"] for r in rows] == [ids[0], ids[2], ids[3]]
    assert rows[0]["accuracy"] == 0.95 and rows[0]["macs"] == 1000.0


def test_best_filters(store):
    uri, ids, _ = store
    assert [r["run_id"] for r in best(uri, "known", max_macs=800)] == [ids[2], ids[3]]
    assert [r["run_id"] for r in best(uri, "known", min_accuracy=0.7)] == [ids[0], ids[2]]
    assert [r["run_id"] for r in best(uri, "known", method="random")] == [ids[1], ids[3]]
    assert [r["run_id"] for r in best(uri, "known", min_sparsity=0.75)] == [ids[2], ids[3]]
    assert [r["run_id"] for r in best(uri, "known", top=1)] == [ids[0]]
    with pytest.raises(QueryError, match="unknown filter max_mac; the filters are max_macs, "):
        best(uri, "known", max_mac=800)


def test_cli_best_json_matches_the_store(store, capsys):
    uri, ids, tmp = store
    assert main(["best", "--tracking-uri", uri, "--experiment", "known", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["accuracy"], r["macs"]) for r in rows] == [(ids[i], KNOWN[i][0], KNOWN[i][1]) for i in (0, 2, 3)]
    assert [(r["scope"], r["allocation"]) for r in rows] == [("global", {}), ("global", {"layer1": 0.5}), ("global", {})]
    out = tmp / "best.parquet"
    assert main(["best", "--tracking-uri", uri, "--experiment", "known", "--format", "parquet", "-o", str(out)]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column("run_id").to_pylist() == [ids[0], ids[2], ids[3]]
    assert [json.loads(a) for a in table.column("allocation").to_pylist()] == [{}, {"layer1": 0.5}, {}]


def test_cli_best_unknown_experiment_is_a_clear_error(store, capsys):
    uri, _, _ = store
    assert main(["best", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err


def test_pareto_front_drops_dominated_rows():
    rows = [{"accuracy": a, "macs": m, "trial": i} for i, (a, m) in enumerate([(0.9, 10), (0.9, 12), (0.8, 5), (0.95, 20), (0.7, 6)])]
    assert [r["trial"] for r in pareto_front(rows)] == [2, 0, 3]


def test_cli_curves_fits_and_predicts_pressure(tmp_path, capsys):
    import math

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = Recorder(uri, "curves", artifact_location=(tmp_path / "art").as_uri())
    parent = rec.start_parent(None, "curves", {})
    for i, g in enumerate([0.01, 0.03, 0.1, 0.3, 1.0, 3.0]):
        density = 0.1 * g ** -(0.9 + 0.05 * math.log(g))
        spec = CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure": g})
        metrics = {"accuracy": 0.9, "macs": 100.0, "sparsity": 1 - min(density, 1.0), "params": 1.0}
        rec.record(parent, i, CandidateResult(spec=spec, state="ok", metrics=metrics))
    assert main(["curves", "--tracking-uri", uri, "--experiment", "curves", "--target-sparsity", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "a0=0.9" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("pressure for sparsity 0.900"))
    gamma = float(line.split(":")[1].split()[0])
    assert gamma == pytest.approx(1.0, rel=0.02)  # the curve above reaches density 0.1 at gamma = 1
