"""MLflow records: one parent run per search, one child run per candidate.

Contract: the driver is the only writer. A child run is complete (FINISHED or FAILED,
with every metric and artifact) before its trial is told to Optuna, so a crash between
the two is repaired on resume from the record alone. Records are never rewritten.

Child runs carry:
- params: the spec flattened (``method``, ``granularity``, ``target_sparsity``, knobs
  as ``knob.NAME``, ``reconstruct``, ``recal.images``, ...: ``search.study.encoding``)
  and the full ``spec`` JSON;
- metrics: accuracy, accuracy_before_recal, sparsity, macs, macs_dense, params,
  latency_ms, prune_s, recon_s, recal_s, eval_s, ... (numbers users sort on);
- metrics added by the driver: ``feasible`` (1 or 0: meets the objective's constraints);
- tags: ``mlflow.parentRunId``, ``trial_number``, ``state``, ``error``, ``node``, and
  ``baseline`` = "1" / ``steered`` for trials not chosen by the sampler;
- artifacts: ``plan.parquet`` (masks / kept channels / trained weights), ``spec.json``,
  ``bn_variance.parquet`` and ``bn_variance.png`` (the signal-collapse diagnostic).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipeline.errors import InputError
from pipeline.spec import CandidateResult, CandidateSpec
from search.study.encoding import spec_params, target_metrics

PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment without this tag in GenAI mode (traces, "Evaluations");
# this one makes it open as a model-training experiment (runs, metrics, charts).
KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {KIND_TAG: "custom_model_development"}
PARAM_VALUE_MAX = 6000  # MLflow's limit on a param value (characters)
_BATCH_PARAMS = 100  # MLflow's limit on params per log_batch


class RecordError(InputError):
    """The tracking store cannot be reached or written."""


class Recorder:
    """Writes search and candidate records to one MLflow experiment.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///...`` or ``http://host:port``).
        experiment: experiment name; created on first use.
        artifact_location: where a *new* experiment stores artifacts (a local folder
            for SQLite stores); a tracking server uses its own artifact store.
    """

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> None:
        self.uri = tracking_uri
        if tracking_uri.startswith(("http://", "https://")):
            check_server(tracking_uri)
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                exp.experiment_id if exp else self.client.create_experiment(experiment, artifact_location=artifact_location, tags=EXPERIMENT_TAGS)
            )
            if exp is not None and exp.tags.get(KIND_TAG) is None:  # made by an older version
                self.client.set_experiment_tag(self.experiment_id, KIND_TAG, EXPERIMENT_TAGS[KIND_TAG])
        except Exception as e:
            raise RecordError(
                f"cannot reach the MLflow tracking store at {tracking_uri} ({type(e).__name__}: {str(e)[:300]}); "
                "check tracking_uri and that the server is running"
            ) from e
        if exp is not None and artifact_location and exp.artifact_location != artifact_location:
            raise RecordError(_moved(tracking_uri, exp.artifact_location, artifact_location))

    def start_parent(self, run_id: str | None, name: str, params: dict[str, str], opened: list[str] | None = None) -> str:
        """Open (or reopen, when resuming) the parent run of a search; returns its id. A new
        run's id is appended to ``opened`` before its params are written, so a signal that
        lands while they are can still close the run."""
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
            except Exception as e:
                raise RecordError(
                    f"the study of search {name!r} records its candidates under parent run {run_id}, which the MLflow store "
                    f"{self.uri} does not have ({type(e).__name__}); was the store deleted or replaced? Restore it, or start "
                    "a new search (another name or run_dir)"
                ) from None
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags={"prunesearch.role": "search"})
        if opened is not None:
            opened.append(run.info.run_id)
        items = [Param(k, _fit(v)) for k, v in params.items()]
        for i in range(0, len(items), _BATCH_PARAMS):
            self.client.log_batch(run.info.run_id, params=items[i : i + _BATCH_PARAMS])
        return run.info.run_id

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def record(
        self,
        parent_id: str,
        trial_number: int,
        result: CandidateResult,
        tags: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> str:
        """Write one candidate as a finished child run, plus extra ``tags`` and ``metrics``
        (what the driver derives, e.g. ``feasible``); returns its run id."""
        spec = result.spec
        tags = {
            PARENT_TAG: parent_id,
            "trial_number": str(trial_number),
            "state": result.state,
            "node": result.info.get("node_id") or result.info.get("host", ""),
            "prunesearch.role": "candidate",
            **(tags or {}),
        }
        if result.error:
            tags["error"] = result.error[:5000]
        rid = None
        try:
            rid = self.client.create_run(self.experiment_id, run_name=child_name(trial_number, spec), tags=tags).info.run_id
            self.client.log_batch(
                rid,
                metrics=[Metric(k, float(v), 0, 0) for k, v in {**result.metrics, **(metrics or {})}.items()] + _knob_metrics(spec),
                params=[Param(k, v) for k, v in spec_params(spec).items()],
                tags=[RunTag(f"info.{k}", v[:5000]) for k, v in result.info.items()],
            )
            self._artifacts(rid, result)
            self.client.set_terminated(rid, status="FINISHED" if result.state == "ok" else "FAILED")
        except Exception as e:
            self._discard(rid)  # an incomplete record is no record: resume evaluates the candidate again
            raise RecordError(f"could not record trial {trial_number} in {self.uri} ({type(e).__name__}: {str(e)[:300]})") from e
        return rid

    def _discard(self, run_id: str | None) -> None:
        if run_id is None:
            return
        try:
            self.client.delete_run(run_id)
        except Exception:  # the store is failing; resume deletes runs left RUNNING anyway
            pass

    def _artifacts(self, run_id: str, result: CandidateResult) -> None:
        with tempfile.TemporaryDirectory() as d:
            files = {"spec.json": result.spec.to_json().encode()}
            if result.plan:
                files["plan.parquet"] = result.plan
            if result.diagnostics:
                files["bn_variance.parquet"] = result.diagnostics
            if result.diagnostics_png:
                files["bn_variance.png"] = result.diagnostics_png
            for name, data in files.items():
                (Path(d) / name).write_bytes(data)
            self.client.log_artifacts(run_id, d)

    def log_parent_artifact(self, run_id: str, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / name).write_bytes(data)
            self.client.log_artifact(run_id, str(Path(d) / name))

    def log_parent_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()])

    def children(self, parent_id: str) -> list[Any]:
        """Every child run of ``parent_id`` (any status)."""
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=50000)

    def delete_incomplete(self, parent_id: str) -> int:
        """Delete child runs left RUNNING by a killed driver (never complete records)."""
        stale = [r for r in self.children(parent_id) if r.info.status == "RUNNING"]
        for r in stale:
            self.client.delete_run(r.info.run_id)
        return len(stale)


def _moved(uri: str, old: str, new: str) -> str:
    """The message for a local store whose artifacts live in another folder (it was copied
    or moved: MLflow keeps absolute artifact paths)."""
    db = uri.removeprefix("sqlite:///")
    fix = (
        f"UPDATE experiments SET artifact_location = replace(artifact_location, '{old}', '{new}'); "
        f"UPDATE runs SET artifact_uri = replace(artifact_uri, '{old}', '{new}');"
    )
    return (
        f"the MLflow store {db} keeps its artifacts in {old}, outside this run folder (was the folder copied or moved?); "
        f"resuming here would write into the other folder. Run in the original folder, or relocate this copy "
        f'(after checking {new} holds the artifacts):\n  sqlite3 {db} "{fix}"'
    )


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not MLflow's minutes of retries) when a tracking server is down."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as e:
        raise RecordError(f"the MLflow tracking server at {uri} does not answer ({type(e).__name__}); start it or fix tracking_uri") from None


def child_name(trial_number: int, spec: CandidateSpec) -> str:
    """A candidate's run name in the MLflow UI: ``trial-7 ocs/channel``."""
    return f"trial-{trial_number} {spec.method}/{spec.granularity}"


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config (``SearchConfig.model_dump(mode="json")``) as flat params:
    ``space.sparsity`` -> ``[0.5, 0.97]``; lists and unset values as JSON."""
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v)
    return out


def _fit(value: str) -> str:
    """A param value within MLflow's limit; a longer one is cut and says so (the exact
    config is the parent's ``config.json`` artifact)."""
    if len(value) <= PARAM_VALUE_MAX:
        return value
    mark = "... [truncated, see config.json]"
    return value[: PARAM_VALUE_MAX - len(mark)] + mark


def _knob_metrics(spec: CandidateSpec) -> list[Metric]:
    return [Metric(k, v, 0, 0) for k, v in target_metrics(spec).items()]
