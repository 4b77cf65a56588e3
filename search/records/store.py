"""The run folder's MLflow store file (``RUN_DIR/mlflow.db``): checked read-only, created atomically.

Read verbs (``best``, ``curves``, ``export``, ``ui``) call ``check_store`` before MLflow
opens the file: MLflow creates its tables in an empty file and migrates a partial one,
so a read of a broken store would write to it. The check opens SQLite read-only
(``mode=ro``) and refuses, naming the file: an empty file, bytes that are not SQLite or
are damaged, a store missing MLflow's tables (a half-created one), and a schema of
another MLflow version.

The driver calls ``create_store``: a new store is built under a temporary name beside
the final one and renamed into place, so a full disk or a kill mid-migration leaves no
half-created ``mlflow.db``; one left by an older version (no runs in it) is moved aside
and created again. Neither follows a symbolic link.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
import uuid
from pathlib import Path

from pipeline.errors import InputError
from search.runner.lock import refuse_symlink

log = logging.getLogger(__name__)

_CORE_TABLES = ("alembic_version", "experiments", "runs", "params", "metrics", "tags")


class StoreError(InputError):
    """The MLflow store file cannot be read as a store of this MLflow."""


def check_store(db: Path) -> None:
    """Refuse ``db`` unless it is a complete MLflow SQLite store of this MLflow's schema;
    never writes to it. Raises ``StoreError`` naming the file and the fix."""
    problem = store_problem(db)
    if problem:
        raise StoreError(f"the MLflow store {db} {problem}")


def store_problem(db: Path) -> str:
    """What is wrong with the store file ``db`` (empty: nothing)."""
    if not db.exists():
        return "does not exist; run a search first or pass --run-dir / --tracking-uri"
    if db.stat().st_size == 0:
        return "is empty (0 bytes): no search was recorded in it; delete it, or point to another store"
    try:
        with _read_only(db) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            check = con.execute("PRAGMA quick_check(1)").fetchone()[0]
            version = con.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
    except sqlite3.DatabaseError as e:
        return f"is not a readable SQLite database ({e}); restore it from a backup, or point to another store"
    if check != "ok":
        return f"is damaged (SQLite integrity check: {check[:200]}); restore it from a backup"
    missing = [t for t in _CORE_TABLES if t not in tables]
    if missing or any(t.startswith("_alembic_tmp_") for t in tables) or version is None:
        what = f"tables {', '.join(missing)} are missing" if missing else "a schema migration was interrupted"
        return f"is not a complete MLflow store ({what}: a half-created store?); delete it if it holds no search, or restore it from a backup"
    return _schema_problem(str(version[0]))


def _schema_problem(version: str) -> str:
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(""))
    head = script.get_current_head()
    if version == head:
        return ""
    import mlflow

    if version in {r.revision for r in script.walk_revisions()}:
        return f"has the schema of an older MLflow ({version}; MLflow {mlflow.__version__} reads {head}); upgrade it with `mlflow db upgrade sqlite:///...`"
    return f"has a schema this MLflow {mlflow.__version__} does not know ({version}; it reads {head}): written by a newer MLflow? Use that version"


class _read_only:
    """A read-only SQLite connection (``mode=ro``: never creates or changes the file)."""

    def __init__(self, db: Path) -> None:
        self.con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc) -> None:
        self.con.close()


def create_store(db: Path) -> None:
    """Make ``db`` a complete MLflow store: nothing to do when it is one; created under a
    temporary name and renamed into place when it does not exist; a half-created one
    holding no run is moved aside (``mlflow.db.broken-TIME``) and created again.

    Raises:
        InputError: ``db`` is a symbolic link, or the disk is full (said so).
        StoreError: an existing store that is broken and holds runs, or of another schema.
    """
    refuse_symlink(db, "the MLflow store")
    if db.exists():
        problem = store_problem(db)
        if not problem:
            return
        if not _half_created(db):
            raise StoreError(f"the MLflow store {db} {problem}")
        aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
        log.warning("the MLflow store %s %s; it holds no run: moved aside to %s and created again", db, problem, aside.name)
        db.replace(aside)
    tmp = db.with_name(f".{db.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _migrate(tmp)
        os.replace(tmp, db)  # atomic: a reader sees no store or a complete one
    except Exception as e:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
        if is_disk_full(e):
            raise InputError(f"disk full: cannot create the MLflow store {db} (no space left on device); free space in {db.parent}") from None
        raise


def _migrate(path: Path) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path}"
    try:
        SqlAlchemyStore(uri, str(path.parent / "artifacts"))
    finally:  # close the file before it is renamed (or removed); MLflow caches one engine per URI
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()


def _half_created(db: Path) -> bool:
    """Whether ``db`` holds no run (an empty or half-migrated file is safe to recreate)."""
    if db.stat().st_size == 0:
        return True
    try:
        with _read_only(db) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return "runs" not in tables or con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    except sqlite3.DatabaseError:
        return False  # unreadable: it may hold runs; leave it to the user


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) says the disk is full (ENOSPC, SQLite's ``disk is full``)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "disk is full" in str(e) or "No space left" in str(e):
            return True
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return False
