"""One driver per search: an exclusive lock on the run folder, and a heartbeat on the
study for stores that outlive the folder (a tracking server and an RDB storage).

The lock is ``fcntl.flock`` on ``RUN_DIR/.prunesearch.lock``, held for the whole search
and released by the kernel when the holder dies, however it dies: a lock left by a dead
process is simply taken. The file records who holds it (pid, host, search name) for the
message a second driver gets. It is taken before the MLflow store is created, so two
drivers started at the same instant on a fresh folder cannot both migrate it.

The heartbeat covers a study shared beyond one folder (``optuna_storage`` set): the
driver writes ``driver_heartbeat`` into the study's user attributes every
``HEARTBEAT_S`` seconds; a driver that finds a fresh heartbeat of another owner refuses.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import InputError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
LOCK_FILE = ".prunesearch.lock"
HEARTBEAT_ATTR = "driver_heartbeat"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 3 * HEARTBEAT_S


class SearchRunningError(InputError):
    """Another driver runs a search in this run folder or on this study."""


class RunFolderLock:
    """Context manager: hold the run folder's lock, or raise ``SearchRunningError``."""

    def __init__(self, run_path: Path, name: str) -> None:
        self.path = run_path / LOCK_FILE
        self.run_path = run_path
        self.name = name
        self._fd: int | None = None

    def __enter__(self) -> "RunFolderLock":
        refuse_symlink(self.path, "the run folder's lock file")
        try:  # O_NOFOLLOW: a link planted after the check is refused too, never written through
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            refuse_symlink(self.path, "the run folder's lock file")
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise SearchRunningError(
                f"search {holder.get('name', '?')} is running in {self.run_path} (pid {holder.get('pid', '?')}"
                f"{' on ' + holder['host'] if holder.get('host') not in (None, socket.gethostname()) else ''}); "
                "wait for it to finish, stop it, or use another run_dir"
            ) from None
        previous = _read_holder(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            log.info("run folder lock of pid %s (no longer running) taken over", previous["pid"])
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "name": self.name}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # nobody holds it: a later reader finds no stale owner
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def refuse_symlink(path: Path, what: str) -> None:
    """An ``InputError`` when ``path`` is a symbolic link: prunesearch never writes its own
    files (lock, store) through one, which would overwrite whatever it points to."""
    if path.is_symlink():
        raise InputError(
            f"{what} {path} is a symbolic link (to {os.readlink(path)}); prunesearch does not write through links. "
            "Remove the link (rm it), or use another run_dir"
        )


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


class StudyHeartbeat:
    """Context manager: claim ``study`` for this driver and keep the claim fresh.

    Refuses (``SearchRunningError``) when another owner's heartbeat is younger than
    ``STALE_AFTER_S``. Two drivers claiming at the same instant: both write, wait, and
    read back; only the last writer finds its own token and goes on.
    """

    def __init__(self, study: "optuna.Study", settle_s: float = 2.0) -> None:
        self.study = study
        self.settle_s = settle_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "StudyHeartbeat":
        self._refuse_if_owned()
        self._beat()
        time.sleep(self.settle_s)
        self._refuse_if_owned()
        self._thread = threading.Thread(target=self._run, name="prunesearch-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _refuse_if_owned(self) -> None:
        beat = _current(self.study)
        if beat and beat.get("token") != self.token and time.time() - beat.get("time", 0) < STALE_AFTER_S:
            raise SearchRunningError(
                f"search {self.study.study_name} is running on this study (pid {beat.get('pid', '?')} on "
                f"{beat.get('host', '?')}, last heartbeat {time.time() - beat['time']:.0f} s ago); "
                f"wait for it to finish, or stop it (its claim expires {STALE_AFTER_S:.0f} s after it stops)"
            )

    def _beat(self, alive: bool = True) -> None:
        value = {"token": self.token, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time() if alive else 0.0}
        self.study.set_user_attr(HEARTBEAT_ATTR, value)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception as e:  # the store blinked: the next beat retries; the loop reports real failures
                log.debug("heartbeat failed: %s", e)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if _current(self.study).get("token") == self.token:
                self._beat(alive=False)  # released: the next driver need not wait for it to go stale
        except Exception as e:
            log.debug("heartbeat release failed: %s", e)


def _current(study: "optuna.Study") -> dict:
    return dict(study.user_attrs.get(HEARTBEAT_ATTR) or {})  # read from the storage each time
