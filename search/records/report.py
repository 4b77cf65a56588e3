"""What a finished (or interrupted) search leaves on its parent run: the Pareto front
(Parquet and PNG), the population's distributions, and the power-law fits."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import optuna

from pipeline.pruning.methods import get_method, list_methods
from search.config import SearchConfig
from search.records.plots import controller_plot, plot_fits, population_plot, recalibration_plot, rung_plot
from search.records.query import at_fidelity, candidate_rows, pareto_front, to_parquet
from search.records.runs import Recorder
from search.study import powerlaw
from search.study.fidelity import fidelity_summary, rung0_full_pairs, spearman

log = logging.getLogger(__name__)


def finish_report(cfg: SearchConfig, recorder: Recorder, parent_id: str, study: optuna.Study) -> None:
    """Log front, plots, curve fits and summary metrics to the parent run.

    ``best_accuracy``, ``pareto_size`` and ``pareto.parquet`` count feasible candidates
    only (metric ``feasible``); curve fits use every measured candidate. All of them
    count full-fidelity candidates only (not those the trial pruner stopped); a
    multi-fidelity search adds ``spearman_rung0_full``, ``candidates_full``,
    ``candidates_pruned`` and ``rung0_vs_full.png``.
    """
    of_parent = f"tags.`mlflow.parentRunId` = '{parent_id}'"
    rows = at_fidelity([r for r in candidate_rows(recorder.uri, cfg.experiment, filters=of_parent) if "accuracy" in r])
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
    target = None if cfg.space.target_sparsity is None else 1.0 - cfg.space.target_sparsity
    for name, (values, density) in steered_points(rows).items():
        if name in fits:
            recorder.log_parent_artifact(parent_id, f"{name}_fit.png", plot_fits(values, density, fits[name], target_density=target))
    if cfg.fidelity.enabled:
        summary.update(fidelity_summary(study, cfg))
        low, full = rung0_full_pairs(study)
        recorder.log_parent_artifact(parent_id, "rung0_vs_full.png", rung_plot(low, full, spearman(low, full)))
    traces = controller_traces(recorder, rows)
    if traces:  # beside the power-law fit: how the controlled candidates got to their targets
        recorder.log_parent_artifact(parent_id, "pressure_controller.png", controller_plot(traces))
    recorder.log_parent_metrics(parent_id, summary)


#: candidates whose gamma/density trajectory the controller plot draws (the latest ones)
MAX_TRACES = 12


def controller_traces(recorder: Recorder, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate whose pressure a controller steered (``PruningMethod.target_for`` says
    ``sparsity`` for an outcome method): its label and the metric histories ``METHOD_trajectory_*``
    (step, value) of density, expected density and gamma; the last ``MAX_TRACES`` trials."""
    known = set(list_methods())
    out = []
    for r in sorted(rows, key=lambda r: r.get("trial", -1))[-MAX_TRACES * 4 :]:
        method = r.get("method")
        if method not in known or get_method(method).target != "outcome" or get_method(method).target_for(r.get("knobs", {})) != "sparsity":
            continue
        series = {}
        for part in ("density", "expected", "gamma"):
            hist = recorder.client.get_metric_history(r["run_id"], f"{method}_trajectory_{part}")
            series[part] = sorted((m.step, m.value) for m in hist)
        if series["gamma"]:
            out.append({"label": f"trial {r.get('trial')}: target {r.get('target_sparsity', float('nan')):.3g}", **series})
    return out[-MAX_TRACES:]


def steered_points(rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Curve name -> (steered knob values, final densities) over the candidates of each
    method that declares a ``steered_knob`` (e.g. hyperflows' ``pressure``). A curve is
    named by its knob, or ``METHOD.KNOB`` where two methods steer a knob of one name, so
    two methods' points are never fitted as one.

    Pooled over training budgets: a description of the whole population. Steering
    (``search.study.steering``) fits one curve per budget, since density depends on both.
    """
    known = set(list_methods())
    per_method: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for r in rows:
        knob = get_method(r["method"]).steered_knob if r.get("method") in known else None
        if knob and get_method(r["method"]).target_for(r.get("knobs", {})) == "sparsity":
            continue  # a controller moved the pressure during training: not a point of the curve
        if knob and knob in r.get("knobs", {}) and "sparsity" in r:
            values, density = per_method.setdefault((r["method"], knob), ([], []))
            values.append(r["knobs"][knob])
            density.append(1.0 - r["sparsity"])
    knobs = [knob for _, knob in per_method]
    return {(knob if knobs.count(knob) == 1 else f"{method}.{knob}"): pts for (method, knob), pts in per_method.items()}


def fit_curves(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Density against each steered knob (``PressureFit``, keyed as ``steered_points``
    names its curves, from 3 candidates) and accuracy against density (``AccuracyFit``,
    key ``accuracy``)."""
    fits: dict[str, Any] = {}
    for name, (values, density) in steered_points(rows).items():
        if len(values) >= 3:
            try:
                fits[name] = powerlaw.fit_pressure(values, density)
            except ValueError as e:
                log.warning("no %s fit: %s", name, e)
    unstructured = [r for r in rows if r.get("granularity") == "unstructured"]
    if len(unstructured) >= 3:
        try:
            fits["accuracy"] = powerlaw.fit_accuracy([1 - r["sparsity"] for r in unstructured], [r["accuracy"] for r in unstructured])
        except (ValueError, RuntimeError) as e:
            log.warning("no accuracy fit: %s", e)
    return fits
