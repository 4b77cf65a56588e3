"""The ``prunesearch`` command as a child process, for tests that signal or kill it.

Each process gets its own Ray temp folder (``RAY_TMPDIR``). Its descendants (the Ray
daemons and workers it starts) are tracked by process id while it runs, so that what
survives it is ended by id, never by name, and the temp folder is removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import psutil

ROOT = Path(__file__).resolve().parents[1]


class CliProcess:
    """``python -m search.cli ARGS`` in a new session; use as a context manager."""

    def __init__(self, *args: str) -> None:
        self.ray_tmp = tempfile.mkdtemp(prefix="pst", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.tracked: dict[int, psutil.Process] = {}
        self.err_path = Path(self.ray_tmp) / "stderr.txt"
        err = self.err_path.open("ab")  # the child's own append-only description: reading here never moves its offset
        env = {**os.environ, "RAY_TMPDIR": self.ray_tmp, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "search.cli", *args], cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=err
        )
        err.close()

    def __enter__(self) -> "CliProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def track(self) -> None:
        """Remember the process's current descendants (call while it runs)."""
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.tracked.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` every 0.2 s while tracking descendants; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.track()
            assert self.proc.poll() is None, f"the command ended ({self.proc.returncode}) before {what}: {self.err()[-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.2)
        self.track()

    def signal(self, sig: int) -> None:
        self.track()
        self.proc.send_signal(sig)

    def err(self) -> str:
        """What the command wrote to stderr so far (only until ``close``)."""
        return self.err_path.read_text(errors="replace") if self.err_path.exists() else ""

    def close(self) -> None:
        """SIGKILL the process (if alive) and every tracked descendant still alive, by id."""
        self.track()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for p in self.tracked.values():
            try:
                p.kill()  # psutil refuses a reused pid (it checks the creation time)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(self.tracked.values()), timeout=10)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def sigkill_group(proc: CliProcess) -> None:
    """SIGKILL the command's whole process group at once (a crashed driver), then clean up."""
    proc.track()
    try:
        os.killpg(proc.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.close()
