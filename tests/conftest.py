"""Shared fixtures: the digits data, a trained digits model, and one real local Ray."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
if "PRUNESEARCH_CACHE" not in os.environ:  # the shared base-model cache: the session's own, not the user's ~/.cache
    os.environ["PRUNESEARCH_CACHE"] = tempfile.mkdtemp(prefix="ps-cache-")
    atexit.register(shutil.rmtree, os.environ["PRUNESEARCH_CACHE"], True)

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def digits():
    from pipeline.data.splits import DataConfig, load_data

    return load_data(DataConfig())


@pytest.fixture(scope="session")
def digits_model(digits):
    """A DigitsCNN trained for 300 steps (about 98 % validation accuracy)."""
    from pipeline.models import ModelConfig, build_model
    from pipeline.train import train_classifier

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(ModelConfig())
    train_classifier(model, digits.train.x, digits.train.y, steps=300)
    return model


@pytest.fixture
def ctx(digits):
    from pipeline.pruning.methods import PruneContext

    return PruneContext.from_splits(digits)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs on 127.0.0.1, shut down after the session."""
    import ray

    from search.cluster.connect import start_local_ray

    start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def search_config(tmp_path, name: str, trials: int, **over):
    """A small digits search in ``tmp_path``: 2 actors, a quickly trained base model."""
    from search.config import parse_config

    base = {
        "name": name,
        "run_dir": str(tmp_path / "run"),
        "budget": {"trials": trials},
        "actors": {"count": 2},
        "base_training": {"steps": 150},
        "measure": {"latency_repeats": 3},
    }
    return parse_config({**base, **over})


def candidate_runs(cfg) -> tuple:
    """(MlflowClient, candidate runs) of ``cfg``'s experiment; no runs before the store exists.

    The driver writes the Optuna journal only after creating the MLflow store, so reading
    earlier would race the store's schema migrations.
    """
    from mlflow.tracking import MlflowClient

    if not (cfg.run_path / "optuna.journal").exists():
        return None, []  # no client either: opening a store migrates it, racing the driver's migration
    client = MlflowClient(cfg.resolved_tracking_uri())
    exp = client.get_experiment_by_name(cfg.name)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], "tags.`prunesearch.role` = 'candidate'", max_results=1000)


@pytest.fixture(scope="session")
def digits_search(tmp_path_factory, ray_local):
    """One small real digits search shared by the API and export tests (3 candidates, 1 actor;
    constrained mode: most accurate with at most 30 % of dense MACs; the Pareto front logged as
    MLflow models): its ``search.api.Results``."""
    import search as ps

    cfg = search_config(
        tmp_path_factory.mktemp("digits_search"),
        "digits-api",
        3,
        actors={"count": 1},
        space={"sparsity": [0.85, 0.95]},
        objective={"mode": "constrained", "max_macs_ratio": 0.3},
        log_models=True,
    )
    return ps.run(cfg)
