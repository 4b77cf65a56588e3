"""Hyperflows' controller trajectory: plan diagnostics -> MLflow metric histories -> the parent's plot."""

from __future__ import annotations

import math

from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateResult, CandidateSpec
from search.records.plots import controller_figure, controller_plot
from search.records.query import candidate_rows
from search.records.report import controller_traces
from search.records.runs import Recorder

TRAJ = {
    "pruning_density": 0.11,
    "target_pruning_density": 0.1,
    "trajectory_step": [10.0, 20.0, 30.0],
    "trajectory_density": [0.9, 0.4, 0.11],
    "trajectory_expected": [0.7, 0.3, 0.1],
    "trajectory_gamma": [0.09, 0.41, 0.0],
}


def test_histories_line_up_with_the_steps():
    plan = PrunePlan(diagnostics={**TRAJ, "other": [1.0]})
    h = plan.histories("hyperflows_")
    assert set(h) == {"hyperflows_trajectory_density", "hyperflows_trajectory_expected", "hyperflows_trajectory_gamma"}
    assert h["hyperflows_trajectory_gamma"] == [(10, 0.09), (20, 0.41), (30, 0.0)]
    assert PrunePlan(diagnostics={"stability_history": [math.nan, 1.0]}).histories("ocs_") == {}
    assert PrunePlan.diagnostics_of(plan.to_parquet())["trajectory_step"] == TRAJ["trajectory_step"]


def test_controlled_candidates_get_a_metric_history_and_a_trajectory_plot(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = Recorder(uri, "ctl", artifact_location=(tmp_path / "art").as_uri())
    parent = rec.start_parent(None, "ctl", {})
    controlled = CandidateSpec(method="hyperflows", target_sparsity=0.9, knobs={"pressure_schedule": 1})
    constant = CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure": 0.1})
    plan = PrunePlan(diagnostics=TRAJ).to_parquet()
    for i, spec in enumerate((controlled, constant)):
        rec.record(parent, i, CandidateResult(spec=spec, state="ok", metrics={"accuracy": 0.9, "sparsity": 0.89}, plan=plan))
    rows = candidate_rows(uri, "ctl")
    run = next(r for r in rows if r["trial"] == 0)
    gamma = rec.client.get_metric_history(run["run_id"], "hyperflows_trajectory_gamma")
    assert sorted((m.step, m.value) for m in gamma) == [(10, 0.09), (20, 0.41), (30, 0.0)]
    traces = controller_traces(rec, rows)
    assert [t["label"] for t in traces] == ["trial 0: target 0.9"]  # the constant-pressure candidate is no controller's
    assert traces[0]["expected"] == [(10, 0.7), (20, 0.3), (30, 0.1)]
    fig = controller_figure(traces)
    density_ax, gamma_ax = fig.axes
    assert len(density_ax.lines) == 2 and list(gamma_ax.lines[0].get_ydata()) == [0.09, 0.41, 0.0]
    assert controller_plot(traces)[:8] == b"\x89PNG\r\n\x1a\n"
