"""Where a search keeps its files: the run folder's MLflow store, and paths that stay inside the run folder."""

from __future__ import annotations

from pathlib import Path

from search.config.file import ConfigError

STORE_FILE = "mlflow.db"  # the run folder's default MLflow store


def local_store(run_dir: str | Path) -> Path:
    """The SQLite MLflow store of the run folder ``run_dir`` (the default tracking store)."""
    return Path(run_dir).expanduser().resolve() / STORE_FILE


def local_store_uri(run_dir: str | Path) -> str:
    """The tracking URI of ``local_store(run_dir)``."""
    return f"sqlite:///{local_store(run_dir)}"


def inside_folder(root: Path, path: str | Path, what: str) -> Path:
    """``path`` resolved: a relative one inside ``root`` (the run folder; refused when it
    escapes it), an absolute one as given (taken as deliberate). ``what`` names it in the
    message (a field, a flag)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    full = (root / p).resolve()
    if not full.is_relative_to(root):
        raise ConfigError(
            f"{what} {str(path)!r} escapes the run folder {root}: a relative path stays inside the run folder; "
            "give an absolute path to write elsewhere on purpose"
        )
    return full
