"""What a finished (or interrupted) search leaves on its parent run: the Pareto front
(Parquet and PNG), the population's distributions, and the power-law fits."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import optuna

from search import powerlaw
from search.config import SearchConfig
from search.plots import plot_fits, population_plot, recalibration_plot
from search.query import candidate_rows, pareto_front, to_parquet
from search.records import Recorder

log = logging.getLogger(__name__)


def finish_report(cfg: SearchConfig, recorder: Recorder, parent_id: str, study: optuna.Study) -> None:
    """Log front, plots, curve fits and summary metrics to the parent run.

    ``best_accuracy``, ``pareto_size`` and ``pareto.parquet`` count feasible candidates
    only (metric ``feasible``); curve fits use every measured candidate.
    """
    of_parent = f"tags.`mlflow.parentRunId` = '{parent_id}'"
    rows = [r for r in candidate_rows(recorder.uri, cfg.experiment, filters=of_parent) if "accuracy" in r]
    failed = len(candidate_rows(recorder.uri, cfg.experiment, finished_only=False, filters=f"tags.state = 'failed' and {of_parent}"))
    # the summaries answer for candidates that meet the constraints (all of them in pareto mode)
    feasible = [r for r in rows if r.get("feasible", 1.0) == 1.0]
    summary = {"candidates": float(len(rows)), "candidates_failed": float(failed), "candidates_feasible": float(len(feasible))}
    front = pareto_front(feasible)
    if feasible:
        summary.update(best_accuracy=max(r["accuracy"] for r in feasible), pareto_size=float(len(front)))
        with tempfile.TemporaryDirectory() as d:
            to_parquet(front, str(Path(d) / "pareto.parquet"))
            recorder.log_parent_artifact(parent_id, "pareto.parquet", (Path(d) / "pareto.parquet").read_bytes())
    if rows:
        o = cfg.objective
        constraints = {"max_macs_ratio": o.max_macs_ratio, "min_sparsity": o.min_sparsity} if o.mode == "constrained" else {}
        recorder.log_parent_artifact(parent_id, "population.png", population_plot(rows, front, constraints))
        recorder.log_parent_artifact(parent_id, "recalibration.png", recalibration_plot(rows))
    fits = fit_curves(rows)
    for name, fit in fits.items():
        summary.update({f"{name}.{k}": v for k, v in fit.to_dict().items()})
    if "pressure" in fits:
        pts = pressure_points(rows)
        target = None if cfg.space.target_sparsity is None else 1.0 - cfg.space.target_sparsity
        recorder.log_parent_artifact(parent_id, "pressure_fit.png", plot_fits(pts[0], pts[1], fits["pressure"], target_density=target))
    recorder.log_parent_metrics(parent_id, summary)


def pressure_points(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(pressure, final density) of every candidate with a ``pressure`` knob."""
    pts = [(r["knobs"]["pressure"], 1.0 - r["sparsity"]) for r in rows if "pressure" in r.get("knobs", {})]
    return [p for p, _ in pts], [d for _, d in pts]


def fit_curves(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Density-vs-pressure (when enough pressure candidates) and accuracy-vs-density fits."""
    fits: dict[str, Any] = {}
    gamma, density = pressure_points(rows)
    if len(gamma) >= 3:
        try:
            fits["pressure"] = powerlaw.fit_pressure(gamma, density)
        except ValueError as e:
            log.warning("no pressure fit: %s", e)
    unstructured = [r for r in rows if r.get("granularity") == "unstructured"]
    if len(unstructured) >= 3:
        try:
            fits["accuracy"] = powerlaw.fit_accuracy([1 - r["sparsity"] for r in unstructured], [r["accuracy"] for r in unstructured])
        except (ValueError, RuntimeError) as e:
            log.warning("no accuracy fit: %s", e)
    return fits
