"""prunesearch's search side: many candidates, Optuna, MLflow, power laws, the CLI."""

import os as _os

# An offline tool that records to the user's own stores: no usage telemetry from its
# libraries (MLflow's also slows every tracking call). Users may override these.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
_os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no MLflow bars inside ours, nor in notebooks

# The Python API (search/api.py), imported on first use so `import search.cli.parser` stays light.
# Names must differ from this package's modules (`search.config` is one), which shadow them.
_API = {
    "load_config": "search.api",
    "run": "search.api",
    "results": "search.api",
    "Results": "search.api",
    "load_exported": "search.export.formats",
    "prune": "pipeline.api",
    "macs": "pipeline.measure",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The lazy API names too, so tab completion and ``dir(search)`` show them."""
    return sorted(set(globals()) | set(_API))
