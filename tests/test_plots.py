"""The figures a user opens: what they show is read back from the matplotlib objects."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pipeline.repair.collapse import variance_figure, variance_plot, variance_table
from search.records.plots import fit_figure, plot_fits, population_figure, recalibration_figure
from search.records.query import pareto_front
from search.study.powerlaw import fit_pressure


def _rows(n: int = 24) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for t in range(n):
        gran = "channel" if t % 3 == 0 else "unstructured"
        ratio = rng.uniform(0.2, 0.9)
        acc = 0.95 - 0.5 * (1 - ratio) ** 2
        rows.append(
            dict(
                trial=t,
                method=("ocs" if gran == "channel" else "magnitude"),
                granularity=gran,
                macs_ratio=ratio,
                macs=ratio * 1e6,
                base_macs=1e6,
                sparsity=1 - ratio,
                accuracy=acc,
                accuracy_before_recal=acc - 0.2,
                dense_accuracy=0.97,
                feasible=float(ratio <= 0.5),
            )
        )
    return rows


def _labels(fig) -> list[str]:
    return [h.get_label() for leg in fig.legends for h in leg.legend_handles] + [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_population_draws_the_constraint_the_dense_model_and_tells_granularities_apart():
    rows = _rows()
    fig = population_figure(rows, pareto_front([r for r in rows if r["feasible"]]), {"max_macs_ratio": 0.5, "min_sparsity": None})
    ax1, ax2 = fig.axes
    assert "fraction of dense" in ax1.get_xlabel() and ax1.get_ylabel() == "validation accuracy"
    assert "sparsity" in ax2.get_xlabel()
    constraint = [ln for ln in ax1.get_lines() if ln.get_label().startswith("constraint: max_macs_ratio")]
    assert len(constraint) == 1 and constraint[0].get_xdata()[0] == pytest.approx(0.5)
    assert not [ln for ln in ax2.get_lines() if ln.get_label().startswith("constraint")]  # min_sparsity unset
    dense = [ln for ln in ax1.get_lines() if ln.get_label().startswith("dense model")]
    assert dense and dense[0].get_xdata()[0] == 1.0 and dense[0].get_ydata()[0] == pytest.approx(0.97)
    markers = {c.get_paths()[0].vertices.shape[0] for c in ax1.collections}
    assert len(markers) == 2  # a circle and a square: unstructured and channel look different
    hollow = [c for c in ax1.collections if len(c.get_facecolors()) == 0 or c.get_facecolors()[0][3] == 0]
    assert len(hollow) == sum(r["feasible"] == 0 for r in rows)
    texts = _labels(fig)
    assert "channel" in texts and "unstructured" in texts and "hollow: breaks the constraint" in texts
    # readable ticks: plain percentages, not 6x10^5 on a log axis
    fig.canvas.draw()
    assert ax1.get_xscale() == "linear" and all(t.get_text().endswith("%") for t in ax1.get_xticklabels() if t.get_text())


def test_population_in_pareto_mode_draws_no_constraint():
    rows = [{k: v for k, v in r.items() if k != "feasible"} for r in _rows()]
    fig = population_figure(rows, pareto_front(rows), {})
    assert not [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_label().startswith("constraint")]
    assert "hollow: breaks the constraint" not in _labels(fig)


def test_recalibration_plot_has_the_diagonal_and_one_point_per_candidate():
    rows = _rows(10)
    fig = recalibration_figure(rows)
    ax = fig.axes[0]
    diag = [ln for ln in ax.get_lines() if ln.get_label() == "no change"]
    assert diag and list(diag[0].get_xdata()) == list(diag[0].get_ydata())
    assert "after pruning" in ax.get_xlabel() and "after recalibration" in ax.get_ylabel()
    assert sum(len(c.get_offsets()) for c in ax.collections) == 10
    assert "10 of 10 candidates gained" in ax.get_title()


def test_bn_variance_names_every_batchnorm_and_clips_none():
    names = ["bn1"] + [f"layer{s}.{b}.bn{k}" for s in (1, 2, 3) for b in range(3) for k in (1, 2)]
    table = variance_table({n: 1.0 for n in names}, {n: 0.5 for n in names}, {n: 0.9 for n in names})
    fig = variance_figure(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    fig.canvas.draw()
    box = fig.bbox
    for t in ax.get_xticklabels() + [ax.xaxis.label, ax.yaxis.label]:
        e = t.get_window_extent()
        assert e.x0 >= box.x0 - 1 and e.y0 >= box.y0 - 1 and e.x1 <= box.x1 + 1 and e.y1 <= box.y1 + 1, t.get_text()
    assert variance_plot(table).startswith(b"\x89PNG")


def test_pressure_fit_marks_target_and_prediction_and_stays_monotone():
    g = np.geomspace(0.01, 3, 10)
    rng = np.random.default_rng(0)
    # a curvature that turns the fitted quadratic upward outside the data
    d = np.exp(np.log(0.2) - 0.6 * np.log(g) - 0.12 * np.log(g) ** 2 + rng.normal(0, 0.05, g.size))
    fit = fit_pressure(g, np.minimum(d, 1.0))
    fig = fit_figure(g, np.minimum(d, 1.0), fit, target_density=0.1)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert lines["target density 0.1"].get_ydata()[0] == pytest.approx(0.1)
    pred = next(ln for k, ln in lines.items() if k.startswith("predicted pressure"))
    assert fit.density([pred.get_xdata()[0]])[0] == pytest.approx(0.1, rel=1e-6)
    curve = next(ln for k, ln in lines.items() if k.startswith("c="))
    assert np.all(np.diff(curve.get_ydata()) <= 1e-12)  # monotone over the plotted range
    assert plot_fits(g, np.minimum(d, 1.0), fit, target_density=0.1).startswith(b"\x89PNG")


def test_pressure_fit_says_when_the_target_is_unreachable():
    g = np.geomspace(0.01, 3, 10)
    d = np.exp(np.log(0.2) - 0.6 * np.log(g) - 0.12 * np.log(g) ** 2)  # the curve peaks near D = 0.45
    ax = fit_figure(g, d, fit_pressure(g, d), target_density=0.9).axes[0]
    assert "target not reachable" in ax.get_title()
