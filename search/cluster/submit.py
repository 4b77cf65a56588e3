"""Submit a search to a Ray cluster through the Ray Jobs API (``prunesearch submit``).

The job runs ``python -m search.cli run CONFIG --quiet`` with the project as its
working directory (uploaded by the Jobs API, without ``.venv``, ``.git``, run folders
and benchmark results). Its driver runs on the head node, next to the MLflow server
and the Optuna storage, and is their only writer; the evaluator actors go wherever the
config's ``actors`` requests fit.

A config inside the working directory is used in place (path relative to it). A
config outside it is staged: the working directory is copied (with the same
excludes) to a temporary folder with the config added as ``.prunesearch/<name>``, that
copy is uploaded, and the temporary folder is removed once the job is submitted. The
job therefore always reads exactly the config that was validated here.

Exit codes: 0 submitted (or, with ``follow``, the job SUCCEEDED), 1 the job FAILED,
130 the job was STOPPED or following was interrupted (the job keeps running), 2 bad
input (config, working dir, unreachable address) before anything was submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, TextIO

from pipeline.errors import InputError

if TYPE_CHECKING:
    from ray.job_submission import JobStatus, JobSubmissionClient

    from search.config import SearchConfig

log = logging.getLogger(__name__)

# Never uploaded: environments, VCS data, local stores and results (gitignore syntax).
EXCLUDES = [
    ".venv",
    "venv",
    ".git",
    "runs",
    "mlruns",
    "mlartifacts",
    "benchmarks/results",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    "*.egg-info",
    "build",
    ".whl",
    ".gl",
]
STAGED_DIR = ".prunesearch"
# The job's environment: logs as they come, and no MLflow "View run <url>" line per candidate.
JOB_ENV = {"PYTHONUNBUFFERED": "1", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 130}


class SubmitError(InputError):
    """The submission cannot be made (bad working dir or config, cluster unreachable)."""


@dataclass(frozen=True)
class Submission:
    """What is sent to the Jobs API: entrypoint, runtime environment, and a staged copy to remove."""

    entrypoint: str
    runtime_env: dict
    staged: Path | None = None


def check_config(cfg: "SearchConfig") -> list[str]:
    """Refuse what cannot work on a cluster; return warnings about what is probably wrong."""
    if not cfg.ray_address:
        raise SubmitError("ray_address is not set: a submitted search must join the job's cluster, set `ray_address: auto` in the config")
    warnings = []
    if not Path(cfg.run_dir).expanduser().is_absolute():
        warnings.append(
            f"run_dir {cfg.run_dir!r} is relative: in a job it lies inside the job's temporary working directory on the "
            "head, so the cached base model (and the Optuna journal, without optuna_storage) do not outlive the job; "
            "give an absolute path on the head node"
        )
    if not cfg.tracking_uri or not cfg.tracking_uri.startswith(("http://", "https://")):
        warnings.append(
            f"tracking_uri is {cfg.tracking_uri or 'unset (a SQLite file in run_dir)'}: records stay in a file on the "
            "head node; point it at the MLflow server (http://HEAD:5000) to reach them from elsewhere"
        )
    return warnings


def prepare(config: str | Path, working_dir: str | Path = ".", excludes: list[str] | None = None) -> Submission:
    """The entrypoint and runtime environment of a job running ``config`` from ``working_dir``."""
    wd = Path(working_dir).expanduser().resolve()
    cfg_path = Path(config).expanduser().resolve()
    if not wd.is_dir():
        raise SubmitError(f"working directory {wd} does not exist")
    if not (wd / "search" / "cli" / "__main__.py").is_file():
        raise SubmitError(f"working directory {wd} is not the prunesearch project (no search/cli/__main__.py): pass --working-dir")
    all_excludes = EXCLUDES + list(excludes or [])
    staged = None
    if cfg_path.is_relative_to(wd) and not _excluded(cfg_path.relative_to(wd), all_excludes):
        rel = cfg_path.relative_to(wd).as_posix()
        upload = wd
    else:  # stage a copy of the working dir with the config inside it
        staged = Path(tempfile.mkdtemp(prefix="prunesearch-submit-"))
        upload = staged / wd.name
        rel = f"{STAGED_DIR}/{cfg_path.name}"
        try:
            shutil.copytree(wd, upload, ignore=_ignore(wd, all_excludes), symlinks=True)
            (upload / STAGED_DIR).mkdir(exist_ok=True)
            shutil.copy2(cfg_path, upload / rel)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
    entrypoint = f"python -m search.cli run {shlex.quote(rel)} --quiet"
    runtime_env = {"working_dir": str(upload), "excludes": all_excludes, "env_vars": JOB_ENV}
    return Submission(entrypoint, runtime_env, staged)


def _excluded(rel: Path, patterns: list[str]) -> bool:
    """``rel`` (relative to the working dir) matches a pattern: by any path component, or as a path prefix."""
    parts = rel.parts
    for pat in patterns:
        if "/" in pat.strip("/"):
            pp = Path(pat.strip("/")).parts
            if len(parts) >= len(pp) and all(fnmatch.fnmatch(a, b) for a, b in zip(parts, pp)):
                return True
        elif any(fnmatch.fnmatch(part, pat.strip("/")) for part in parts):
            return True
    return False


def _ignore(root: Path, patterns: list[str]):
    def ignore(directory: str, names: list[str]) -> list[str]:
        rel = Path(directory).relative_to(root)
        return [n for n in names if _excluded(rel / n, patterns)]

    return ignore


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override an explicit address; an explicit --address wins here."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect(address: str | None) -> "JobSubmissionClient":
    """A Jobs API client for ``address`` (``http://HEAD:8265``; a bare ``HEAD:8265`` gets ``http://``)."""
    from ray.job_submission import JobSubmissionClient

    try:
        if address is None:  # Ray's own resolution: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, a local cluster
            return JobSubmissionClient()
        if "://" not in address:
            address = f"http://{address}"
        with _explicit_address():
            return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SubmitError(
            f"cannot reach the Ray Jobs API at {address or '(auto)'}: {str(e).splitlines()[0][:300]} "
            "(the head's dashboard address, http://HEAD:8265; with token authentication set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN)"
        ) from None


def submit(
    config: str | Path,
    address: str | None = None,
    working_dir: str | Path = ".",
    follow: bool = False,
    excludes: list[str] | None = None,
    submission_id: str | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Validate ``config``, submit its search as a Ray job, print the job id; with ``follow``, stream
    the logs until the job ends. Returns the exit code (see the module docstring)."""
    from search.config import load_config

    # ConfigError (exit 2) before anything is uploaded; input paths are paths on the cluster, not here
    cfg = load_config(config, check_paths=False)
    for w in check_config(cfg):
        print(f"warning: {w}", file=err)
    client = connect(address)
    sub = prepare(config, working_dir, excludes)
    try:
        job_id = client.submit_job(
            entrypoint=sub.entrypoint,
            runtime_env=sub.runtime_env,
            submission_id=submission_id,
            metadata={"prunesearch.experiment": cfg.name, "prunesearch.config": Path(config).name},
        )
    finally:
        if sub.staged is not None:  # uploaded by submit_job: the copy is no longer needed
            shutil.rmtree(sub.staged, ignore_errors=True)
    print(job_id, file=out, flush=True)
    where = f" --address {client.get_address()}"
    if not follow:
        print(f"submitted; follow it with: ray job logs -f {job_id}{where}   (status: ray job status {job_id}{where})", file=err)
        return 0
    try:
        status = follow_job(client, job_id, out)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (ray job stop {job_id}{where} stops it)", file=err)
        return 130
    print(f"job {job_id} {status.value}", file=err)
    return exit_code(status)


def exit_code(status: "JobStatus") -> int:
    """0 SUCCEEDED, 1 FAILED, 130 STOPPED (and 1 for anything else that is terminal)."""
    return EXIT_CODES.get(getattr(status, "value", str(status)), 1)


def follow_job(client: "JobSubmissionClient", job_id: str, out: TextIO, poll_s: float = 1.0) -> "JobStatus":
    """Stream the job's logs to ``out`` until it ends; returns its final status.

    Uses the Jobs API's log websocket; if it drops, falls back to polling the full log
    and printing what is new.
    """
    sent = [0]  # characters written by the stream, also when it breaks off
    try:
        asyncio.run(_tail(client, job_id, out, sent))
    except Exception as e:  # connection dropped: poll instead
        log.warning("log stream interrupted (%s); polling", str(e)[:200])
    printed = sent[0]
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            out.write(logs[printed:])
            out.flush()
            printed = len(logs)
        if status.is_terminal():
            return status
        time.sleep(poll_s)


async def _tail(client: "JobSubmissionClient", job_id: str, out: TextIO, sent: list[int]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()
        sent[0] += len(chunk)
