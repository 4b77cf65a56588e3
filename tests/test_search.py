"""A real search: local Ray actors, an Optuna journal, an MLflow SQLite store in a temp folder."""

from __future__ import annotations

import optuna
import pytest

from search.runner.driver import run_search
from search.study.study import RUN_ID_ATTR

from conftest import candidate_runs, search_config

METRICS = {"accuracy", "accuracy_before_recal", "sparsity", "macs", "macs_dense", "params", "latency_ms", "prune_s", "recal_s", "eval_s"}


def _cfg(tmp_path, trials, **over):
    return search_config(tmp_path, "itest", trials, **over)


@pytest.mark.slow
def test_search_records_every_candidate_once_and_resumes(tmp_path, ray_local):
    cfg = _cfg(tmp_path, 8)
    out = run_search(cfg, quiet=True)
    assert (out.evaluated, out.failed, out.recorded_total) == (8, 0, 8)

    client, runs = candidate_runs(cfg)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == list(range(8))
    for r in runs:
        assert r.info.status == "FINISHED"
        assert METRICS <= set(r.data.metrics), METRICS - set(r.data.metrics)
        assert r.data.tags["mlflow.parentRunId"] == out.parent_run_id
        assert r.data.params["method"] == "magnitude" and "recal.images" in r.data.params
        assert abs(r.data.metrics["sparsity"] - r.data.metrics["target_sparsity"]) < 1e-3
        assert {"plan.parquet", "spec.json", "bn_variance.parquet"} <= {f.path for f in client.list_artifacts(r.info.run_id)}
    # both actors did work: each candidate records the process that evaluated it
    assert len({r.data.tags["info.pid"] for r in runs}) == 2

    study = optuna.load_study(
        study_name="itest", storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(cfg.run_path / "optuna.journal")))
    )
    run_ids = {r.info.run_id for r in runs}
    assert {t.user_attrs[RUN_ID_ATTR] for t in study.trials} == run_ids

    # the same command with a larger budget resumes: 4 new trials, none repeated
    out2 = run_search(_cfg(tmp_path, 12), quiet=True)
    assert out2.parent_run_id == out.parent_run_id and out2.evaluated == 4 and out2.recorded_total == 12
    _, runs2 = candidate_runs(cfg)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs2) == list(range(12))
    assert run_ids < {r.info.run_id for r in runs2}
    parent = client.get_run(out.parent_run_id)
    assert parent.data.metrics["candidates"] == 12 and parent.info.status == "FINISHED"
    assert "pareto.parquet" in {f.path for f in client.list_artifacts(out.parent_run_id)}

    # a third run with the budget already spent evaluates nothing
    assert run_search(_cfg(tmp_path, 12), quiet=True).evaluated == 0
