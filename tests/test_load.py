"""Load: 500 candidates on digits with 2 actors, every one recorded once, nothing leaked.

Memory is measured by ``benchmarks/load.py`` (figures, not a timed test)."""

from __future__ import annotations

import pytest
import ray
from mlflow.tracking import MlflowClient

from search.config import parse_config
from search.runner.driver import actor_prefix, run_search


@pytest.mark.slow
def test_500_candidates_are_recorded_once_and_no_actor_leaks(tmp_path, ray_local):
    budget = 500
    cfg = parse_config(
        {
            "name": "load",
            "run_dir": str(tmp_path / "run"),
            "budget": {"trials": budget},
            "actors": {"count": 2},
            "base_training": {"steps": 100},
            "sampler": {"name": "random"},
            "measure": {"latency_repeats": 2, "test_accuracy": False, "collapse_plot": False},
        }
    )
    out = run_search(cfg, quiet=True)
    assert (out.evaluated, out.recorded_total) == (budget, budget)
    client = MlflowClient(cfg.resolved_tracking_uri())
    exp = client.get_experiment_by_name("load")
    runs = client.search_runs([exp.experiment_id], "tags.`prunesearch.role` = 'candidate'", max_results=1000)
    numbers = sorted(int(r.data.tags["trial_number"]) for r in runs)
    assert numbers == list(range(budget))
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in runs)
    prefix = actor_prefix(cfg.name, out.parent_run_id)
    alive = [a for a in ray.util.list_named_actors(all_namespaces=True) if str(a.get("name", a)).startswith(prefix)]
    assert alive == [], f"actors left running: {alive}"
