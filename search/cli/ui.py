"""``prunesearch ui``: the MLflow UI on a run folder's store, bound to 127.0.0.1.

The wrapper owns the server: ``mlflow ui`` runs in its own process group (its uvicorn
workers and job consumers with it), and when the wrapper is stopped (SIGTERM, SIGINT,
Ctrl-C) or the server fails, that whole group is ended, so nothing keeps serving
after ``prunesearch ui`` is gone.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.errors import InputError

READY_TIMEOUT_S = 300.0  # a cold MLflow import on a loaded 2-core machine takes tens of seconds
STOP_TIMEOUT_S = 10.0  # SIGTERM, then SIGKILL for what is still alive


def workers(cpus: int | None = None) -> int:
    """Server worker processes: one on small machines (up to 4 CPUs), else MLflow's 4."""
    cpus = cpus or os.cpu_count() or 1
    return 1 if cpus <= 4 else 4


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for ``tracking_uri``, with this interpreter's MLflow
    (so no activated virtual environment is needed)."""
    return [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri,
        "--host", host, "--port", str(port), "--workers", str(workers()),
    ]  # fmt: skip


def serve(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the MLflow UI until the wrapper is stopped; returns 0 when stopped by a signal,
    else the server's exit code. "MLflow UI on ..." is printed once the server answers.

    Raises:
        InputError: the port is taken.
    """
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            raise InputError(f"port {port} on {host} is in use; pass --port with a free one") from None
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGINT)}  # both: KeyboardInterrupt
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen(ui_command(tracking_uri, host, port), start_new_session=True)  # own group: ended as one
        if not _wait_ready(proc, f"http://{host}:{port}/health"):
            print(f"error: mlflow ui ended (exit {proc.returncode}) before it answered on {host}:{port}", file=sys.stderr)
            return proc.returncode or 1
        print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        return proc.wait()
    except KeyboardInterrupt:  # SIGTERM, SIGINT or Ctrl-C: stopped on purpose
        return 0
    finally:
        for sig in previous:  # a second signal must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        if proc is not None:
            stop_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_ready(proc: subprocess.Popen, url: str) -> bool:
    """Poll ``url`` until it answers (True) or the server ends (False)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.3)
    return False


def stop_group(proc: subprocess.Popen) -> None:
    """End ``proc``'s process group and every descendant of it (by id): SIGTERM, then
    SIGKILL after ``STOP_TIMEOUT_S`` for what is still alive."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in tree:  # a descendant that left the group (setsid) is ended by id
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=STOP_TIMEOUT_S if sig == signal.SIGTERM else 5.0)
        if proc.poll() is None:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        if not alive and proc.poll() is not None:
            return


def cli_prog() -> str:
    """This command, spelled as this process was started (``.venv/bin/prunesearch`` or
    ``python -m search.cli``), for the commands printed for the user to copy."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return shlex.quote(sys.argv[0]) if argv0 == "prunesearch" else f"{shlex.quote(sys.executable)} -m search.cli"


def ui_hint(run_path: Path) -> str:
    """The command a user types to browse ``run_path``."""
    return f"{cli_prog()} ui --run-dir {shlex.quote(str(run_path))}"
