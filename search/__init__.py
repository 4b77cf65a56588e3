"""prunesearch's search side: many candidates, Optuna, MLflow, power laws, the CLI."""

import os as _os

# An offline tool that records to the user's own stores: no usage telemetry from its
# libraries (MLflow's also slows every tracking call). Users may override these.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
_os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
