"""A local Ray that the driver started cannot outlive the driver, however it dies.

Ray ties its GCS and raylet to the driver, but their agents and workers poll for their
parent and were seen alive seconds after a SIGKILL of the driver. ``reap_with(pid)``
starts a small watcher process that holds the read end of a pipe whose write end only
the driver holds: when the driver dies (even by SIGKILL) the pipe closes, and the
watcher kills every Ray process it saw under the driver.

Run as ``python -m search.cluster.reaper PID`` by ``reap_with``; not an entry point for users.
"""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
from typing import cast

import psutil

POLL_S = 1.0


def reap_with(driver_pid: int) -> subprocess.Popen:
    """Start the watcher of ``driver_pid`` (call it from the driver, after Ray started)."""
    # its own session: a Ctrl-C to the driver's process group must not end it first
    return subprocess.Popen(
        [sys.executable, "-m", "search.cluster.reaper", str(driver_pid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _ray_descendants(pid: int) -> dict[int, float]:
    """pid -> create time of the Ray processes under ``pid`` now."""
    out = {}
    try:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                if p.pid != os.getpid() and "ray" in " ".join(p.cmdline()).lower():
                    out[p.pid] = p.create_time()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    except psutil.NoSuchProcess:
        pass
    return out


def _watch(driver_pid: int) -> None:
    seen: dict[int, float] = {}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        # typeshed types stdin.buffer as BinaryIO; it is a BufferedReader, which has read1
        if ready and not cast(io.BufferedReader, sys.stdin.buffer).read1(1):  # EOF: the driver is gone
            break
        seen.update(_ray_descendants(driver_pid))
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created:  # not a new process that reused the pid
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
