"""Queries over the records: candidate rows, Pareto fronts, the best subnetworks."""

from __future__ import annotations

import json
import math
from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.errors import InputError
from search.study.encoding import row_settings

COLUMNS = ["accuracy", "accuracy_before_recal", "sparsity", "macs", "macs_dense", "macs_ratio", "params", "latency_ms"]
FLAGS: dict[str, dict[float | None, str]] = {"feasible": {1.0: "yes", 0.0: "no"}}  # table columns shown as words


class QueryError(InputError, LookupError):
    """The store has no such experiment or no candidate matching the query."""


def candidate_rows(tracking_uri: str, experiment: str | None, finished_only: bool = True, filters: str = "") -> list[dict[str, Any]]:
    """One dict per candidate run of ``experiment``: run id, trial, method, params and metrics.

    ``experiment`` None: the only search in the store (see ``default_experiment``).
    ``filters`` is extra MLflow filter syntax ANDed on (``metrics.macs < 1e6``).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = experiment or default_experiment(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise QueryError(f"no experiment {experiment!r} in {tracking_uri}; searches there: {search_experiments(tracking_uri)}")
    clauses = ["tags.`prunesearch.role` = 'candidate'"]
    if finished_only:
        clauses.append("attributes.status = 'FINISHED'")
    if filters:
        clauses.append(filters)
    runs = client.search_runs([exp.experiment_id], filter_string=" and ".join(clauses), max_results=50000)
    return [_row(r) for r in runs]


def search_experiments(tracking_uri: str) -> list[str]:
    """Names of the experiments in the store that hold a prunesearch search, sorted."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exps = {e.experiment_id: e.name for e in client.search_experiments()}
    if not exps:
        return []
    runs = client.search_runs(list(exps), filter_string="tags.`prunesearch.role` = 'search'", max_results=50000)
    return sorted({exps[r.info.experiment_id] for r in runs})


def default_experiment(tracking_uri: str) -> str:
    """The store's only search; a ``QueryError`` listing them when there are none or several."""
    names = search_experiments(tracking_uri)
    if len(names) == 1:
        return names[0]
    if not names:
        raise QueryError(f"no prunesearch search in {tracking_uri}; run a search first, or point to another store")
    raise QueryError(f"{tracking_uri} holds {len(names)} searches, choose one with --experiment: {', '.join(names)}")


def has_run(tracking_uri: str, run_id: str) -> bool:
    """Whether the store holds a run with this id."""
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return True


def _row(run: Any) -> dict[str, Any]:
    p, t = run.data.params, run.data.tags
    settings = row_settings(p)
    knobs, allocation = settings.pop("knobs"), settings.pop("allocation")
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "trial": int(t.get("trial_number", -1)),
        "state": t.get("state", ""),
        **settings,
        "node": t.get("node", ""),
        "error": t.get("error", ""),
        "knobs": knobs,  # after node and error, as tables always showed them
        "allocation": allocation,
        "baseline": t.get("baseline") == "1",
    }
    row.update(run.data.metrics)
    return row


def pareto_front(rows: list[dict[str, Any]], maximize: str = "accuracy", minimize: str = "macs") -> list[dict[str, Any]]:
    """Rows not dominated in (max ``maximize``, min ``minimize``), sorted by ``minimize`` ascending.

    A row dominates another if it is at least as good in both and better in one;
    exact duplicates keep the first (lowest trial number).
    """
    ordered = sorted(rows, key=lambda r: (r[minimize], -r[maximize], r.get("trial", 0)))
    front, best = [], -math.inf
    for r in ordered:
        if r[maximize] > best:
            front.append(r)
            best = r[maximize]
    return front


# ``best``'s filters by comparison: filter name -> the metric or param it bounds
_AT_MOST = {"max_macs": "macs", "max_macs_ratio": "macs_ratio", "max_latency_ms": "latency_ms", "max_sparsity": "sparsity"}
_AT_LEAST = {"min_accuracy": "accuracy", "min_sparsity": "sparsity"}
_EQUALS = {"method": "method", "granularity": "granularity"}
#: ``best``'s filters: name -> (record field, comparison); None leaves a filter open
FILTERS: dict[str, tuple[str, str]] = {
    **{k: (f"metrics.{m}", "<=") for k, m in _AT_MOST.items()},
    **{k: (f"metrics.{m}", ">=") for k, m in _AT_LEAST.items()},
    **{k: (f"params.{p}", "=") for k, p in _EQUALS.items()},
}


def best(
    tracking_uri: str,
    experiment: str | None = None,
    top: int | None = 10,
    *,
    feasible: bool | None = True,
    front: bool = True,
    sort: str = "accuracy",
    **filters: float | str | None,
) -> list[dict[str, Any]]:
    """The best candidates satisfying the filters, at most ``top`` (None: all) of them.

    Args:
        filters: keyword filters named in ``FILTERS``, None for open:
            ``max_macs``, ``max_macs_ratio``: effective MACs per image at most (absolute / fraction of dense);
            ``min_accuracy``: validation accuracy at least (fraction);
            ``min_sparsity``, ``max_sparsity``: weight sparsity bounds (fraction of prunable weights);
            ``max_latency_ms``: measured latency at most (ms per ``latency_batch`` images);
            ``method``, ``granularity``: the candidate's spec equals this.
        feasible: True keeps candidates meeting the search's constraints (metric
            ``feasible`` = 1; records without the metric count as feasible), False
            the others, None both.
        front: keep only the Pareto front (max accuracy, min effective MACs) of what
            passes the filters; False keeps every candidate.
        sort: ``METRIC[:asc|:desc]`` (see ``parse_sort``); ties go to fewer MACs.

    Raises:
        QueryError: an unknown filter name, no such experiment, or a sort metric no candidate has.
    """
    unknown = sorted(set(filters) - set(FILTERS))
    if unknown:
        raise QueryError(f"unknown filter {', '.join(unknown)}; the filters are {', '.join(FILTERS)}")
    clauses = []
    for name, value in filters.items():
        if value is None:
            continue
        field, op = FILTERS[name]
        text = f"'{str(value).replace(chr(39), '')}'" if field.startswith("params.") else repr(_bound(name, value))
        clauses.append(f"{field} {op} {text}")
    rows = [r for r in candidate_rows(tracking_uri, experiment, filters=" and ".join(clauses)) if "accuracy" in r and "macs" in r]
    if feasible is not None:
        rows = [r for r in rows if (r.get("feasible", 1.0) == 1.0) == feasible]
    metric, descending = parse_sort(sort)
    if rows and not any(metric in r for r in rows):
        names = sorted({k for r in rows for k, v in r.items() if isinstance(v, float)})
        raise QueryError(f"--sort: no candidate has metric {metric!r}; metrics: {', '.join(names)}")
    chosen = pareto_front(rows) if front else rows
    sign = -1.0 if descending else 1.0
    ordered = sorted(chosen, key=lambda r: (metric not in r, sign * r.get(metric, 0.0), r["macs"], r["trial"]))
    return ordered if top is None else ordered[:top]


def _bound(name: str, value: Any) -> float:
    """A numeric filter's value: a finite number (None, not NaN, leaves a filter open)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name}={value!r}: a number is expected") from None
    if not math.isfinite(number):
        raise QueryError(f"{name}={value!r}: a finite number is expected (None leaves the filter open)")
    return number


#: metrics where more is better: sorted descending unless told otherwise
HIGHER_IS_BETTER = ("accuracy", "accuracy_before_recal", "test_accuracy", "sparsity", "feasible")


def parse_sort(text: str) -> tuple[str, bool]:
    """``METRIC[:asc|:desc]`` -> (metric, descending). Without a direction, accuracies,
    sparsity and ``feasible`` sort descending, everything else (MACs, latency, ...) ascending."""
    metric, _, direction = text.partition(":")
    if direction not in ("", "asc", "desc") or not metric:
        raise QueryError(f"--sort {text!r}: expected METRIC, METRIC:asc or METRIC:desc (e.g. latency_ms:asc)")
    return metric, direction == "desc" or (not direction and metric in HIGHER_IS_BETTER)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of ``rows`` (run id, method, and the main metrics)."""
    head = ["run_id", "trial", "method", "gran"] + COLUMNS + list(FLAGS)
    lines = [head]
    for r in rows:
        cells = [r["run_id"], str(r["trial"]), r["method"], r["granularity"][:4]]
        for c in COLUMNS:
            v = r.get(c)
            cells.append("" if v is None else (f"{v:.4f}" if abs(v) < 100 else f"{v:.4g}"))
        cells += [words.get(r.get(c), "") for c, words in FLAGS.items()]
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines)


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=2, sort_keys=True)


def to_parquet(rows: list[dict[str, Any]], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    nested = ("knobs", "allocation")  # JSON text: their keys differ between methods
    flat = [{k: json.dumps(v) if k in nested else v for k, v in r.items()} for r in rows]
    pq.write_table(pa.Table.from_pylist(flat), path)
