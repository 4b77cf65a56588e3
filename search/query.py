"""Queries over the records: candidate rows, Pareto fronts, the best subnetworks."""

from __future__ import annotations

import json
import math
from typing import Any

from mlflow.tracking import MlflowClient

COLUMNS = ["accuracy", "accuracy_before_recal", "sparsity", "macs", "macs_dense", "macs_ratio", "params", "latency_ms"]


class QueryError(LookupError):
    """The store has no such experiment or no candidate matching the query."""


def candidate_rows(tracking_uri: str, experiment: str, finished_only: bool = True, filters: str = "") -> list[dict[str, Any]]:
    """One dict per candidate run of ``experiment``: run id, trial, method, params and metrics.

    ``filters`` is extra MLflow filter syntax ANDed on (``metrics.macs < 1e6``).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise QueryError(f"no experiment {experiment!r} in {tracking_uri}; experiments there: {names}")
    clauses = ["tags.`prunesearch.role` = 'candidate'"]
    if finished_only:
        clauses.append("attributes.status = 'FINISHED'")
    if filters:
        clauses.append(filters)
    runs = client.search_runs([exp.experiment_id], filter_string=" and ".join(clauses), max_results=50000)
    return [_row(r) for r in runs]


def _row(run: Any) -> dict[str, Any]:
    p, t = run.data.params, run.data.tags
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "trial": int(t.get("trial_number", -1)),
        "state": t.get("state", ""),
        "method": p.get("method", ""),
        "granularity": p.get("granularity", ""),
        "scope": p.get("scope", ""),
        "node": t.get("node", ""),
        "error": t.get("error", ""),
        "knobs": {k.removeprefix("knob."): float(v) for k, v in p.items() if k.startswith("knob.")},
        "allocation": {k.removeprefix("alloc."): float(v) for k, v in p.items() if k.startswith("alloc.")},
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


def best(
    tracking_uri: str,
    experiment: str,
    top: int = 10,
    max_macs: float | None = None,
    min_accuracy: float | None = None,
    method: str | None = None,
    min_sparsity: float | None = None,
    max_sparsity: float | None = None,
) -> list[dict[str, Any]]:
    """The Pareto-best candidates (accuracy vs effective MACs) satisfying the filters,
    best accuracy first, at most ``top`` of them."""
    clauses = []
    if max_macs is not None:
        clauses.append(f"metrics.macs <= {float(max_macs)!r}")
    if min_accuracy is not None:
        clauses.append(f"metrics.accuracy >= {float(min_accuracy)!r}")
    if min_sparsity is not None:
        clauses.append(f"metrics.sparsity >= {float(min_sparsity)!r}")
    if max_sparsity is not None:
        clauses.append(f"metrics.sparsity <= {float(max_sparsity)!r}")
    if method is not None:
        clauses.append(f"params.method = '{method.replace(chr(39), '')}'")
    rows = [r for r in candidate_rows(tracking_uri, experiment, filters=" and ".join(clauses)) if "accuracy" in r and "macs" in r]
    front = pareto_front(rows)
    return sorted(front, key=lambda r: (-r["accuracy"], r["macs"]))[:top]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of ``rows`` (run id, method, and the main metrics)."""
    head = ["run_id", "trial", "method", "gran"] + COLUMNS
    lines = [head]
    for r in rows:
        cells = [r["run_id"], str(r["trial"]), r["method"], r["granularity"][:4]]
        for c in COLUMNS:
            v = r.get(c)
            cells.append("" if v is None else (f"{v:.4f}" if abs(v) < 100 else f"{v:.4g}"))
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
