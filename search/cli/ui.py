"""``prunesearch ui``: the MLflow UI on a run folder's store, bound to 127.0.0.1."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for ``tracking_uri``, with this interpreter's MLflow
    (so no activated virtual environment is needed)."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]


def serve(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the MLflow UI in the foreground until Ctrl-C; returns its exit code."""
    print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)", file=sys.stderr)
    proc = subprocess.Popen(ui_command(tracking_uri, host, port))  # inherits search/__init__'s telemetry opt-out
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        return 0


def ui_hint(run_path: Path) -> str:
    """The command a user types to browse ``run_path``, spelled as this process was
    started (``.venv/bin/prunesearch`` or ``python -m search.cli``)."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    prog = shlex.quote(sys.argv[0]) if argv0 == "prunesearch" else f"{shlex.quote(sys.executable)} -m search.cli"
    return f"{prog} ui --run-dir {shlex.quote(str(run_path))}"
