"""PNG figures of a search's records and of its power-law fits (one candidate's
signal-collapse plot is ``pipeline.repair.collapse``).

Figures are drawn on an Agg canvas without pyplot, so no global backend is switched and
drawing is safe in any process. Each ``*_figure`` returns the matplotlib ``Figure``
(tests read its artists); ``*_plot`` returns the PNG bytes logged to the parent run.

Markers say the granularity (circle: unstructured, square: channel, diamond: N:M), colours the
method; a hollow marker is a candidate that breaks the constraint (``feasible`` 0).
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable, ParamSpec

import numpy as np
from numpy.typing import ArrayLike

from search.study import powerlaw

MARKERS = {"unstructured": "o", "channel": "s", "nm": "D"}


def _figure(width: float, height: float, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols)


def _percent(ax, axis: str) -> None:
    from matplotlib.ticker import PercentFormatter

    # decimals chosen from the visible range: 98.5 % and 99.0 % must not both read "99 %"
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(PercentFormatter(1.0, decimals=None))


def _scatter(ax, rows: list[dict[str, Any]], x: str, y: str) -> None:
    """Every candidate on ``ax``: colour by method, marker by granularity, hollow when
    infeasible (the legend is drawn once per figure by ``_legend``)."""
    colours = _colours(rows)
    for r in rows:
        marker = MARKERS.get(r.get("granularity", ""), "^")
        c = colours[r["method"]]
        style = {"color": c} if r.get("feasible", 1.0) >= 0.5 else {"facecolors": "none", "edgecolors": c}
        ax.scatter([r[x]], [r[y]], s=18, marker=marker, **style)


def _colours(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(sorted({r["method"] for r in rows}))}


def _legend(fig, rows: list[dict[str, Any]], axes) -> None:
    """One legend right of the axes: methods (colours), granularities (markers),
    hollow = infeasible when any is, then the lines the axes carry (front, dense, constraint)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=c, label=m) for m, c in _colours(rows).items()]
    grans = {r.get("granularity", "") for r in rows}
    handles += [Line2D([], [], ls="", marker=mk, color="black", label=g) for g, mk in MARKERS.items() if g in grans]
    if any(r.get("feasible", 1.0) < 0.5 for r in rows):
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", color="black", label="hollow: breaks the constraint"))
    seen = {h.get_label() for h in handles}
    for ax in axes:
        for h in ax.get_lines():
            if not h.get_label().startswith("_") and h.get_label() not in seen:
                handles.append(h)
                seen.add(h.get_label())
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


P = ParamSpec("P")


def _png_of(figure: Callable[P, Any], **savefig: Any) -> Callable[P, bytes]:
    """The ``*_plot`` of a ``*_figure``: same arguments, the PNG bytes (``savefig`` options)."""

    def plot(*args: P.args, **kwargs: P.kwargs) -> bytes:
        fig = figure(*args, **kwargs)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", **savefig)
        return buf.getvalue()

    plot.__doc__ = f"PNG of :func:`{figure.__name__}`."
    return plot


def _finish(fig, rows: list[dict[str, Any]], axes) -> Any:
    """Percent axes and a light grid, then the one legend: the end of a candidate figure."""
    for ax in axes:
        _percent(ax, "x")
        _percent(ax, "y")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend(fig, rows, axes)
    return fig


def _dense(ax, rows: list[dict[str, Any]], x_dense: float) -> None:
    """The dense model: a star at its accuracy (when recorded) and its x position."""
    dense_acc = next((r["dense_accuracy"] for r in rows if "dense_accuracy" in r), None)
    if dense_acc is not None:
        ax.axhline(dense_acc, color="grey", ls=":", lw=0.8)
        ax.plot([x_dense], [dense_acc], "*", color="black", ms=11, ls="", label=f"dense model ({dense_acc:.1%})")


def population_figure(rows: list[dict[str, Any]], front: list[dict[str, Any]], constraints: dict[str, float | None] | None = None):
    """Accuracy against the fraction of dense MACs kept (Pareto front, dense model and
    ``max_macs_ratio`` drawn) and against weight sparsity (``min_sparsity`` drawn).

    Args:
        rows: candidate rows (``search.records.query.candidate_rows``) with ``accuracy``,
            ``macs_ratio``, ``sparsity``, ``method``, ``granularity`` and, when recorded,
            ``feasible`` and ``dense_accuracy``.
        front: the Pareto front (rows), drawn as a step line.
        constraints: ``max_macs_ratio`` / ``min_sparsity`` (fractions) in constrained mode.
    """
    constraints = {k: v for k, v in (constraints or {}).items() if v is not None}
    fig, (ax1, ax2) = _figure(10, 4.5, cols=2)
    _scatter(ax1, rows, "macs_ratio", "accuracy")
    _scatter(ax2, rows, "sparsity", "accuracy")
    if front:
        ax1.step([r["macs_ratio"] for r in front], [r["accuracy"] for r in front], "k-", where="post", lw=1, label="Pareto front")
    _dense(ax1, rows, 1.0)
    _dense(ax2, rows, 0.0)
    if "max_macs_ratio" in constraints:
        v = constraints["max_macs_ratio"]
        ax1.axvline(v, color="red", ls="--", lw=1.2, label=f"constraint: max_macs_ratio {v:g}")
        ax1.axvspan(v, 1.05, color="red", alpha=0.06)
    if "min_sparsity" in constraints:
        v = constraints["min_sparsity"]
        ax2.axvline(v, color="red", ls="--", lw=1.2, label=f"constraint: min_sparsity {v:g}")
        ax2.axvspan(-0.02, v, color="red", alpha=0.06)
    base = next((r["base_macs"] for r in rows if "base_macs" in r), None)
    dense_txt = f" (dense: {base / 1e6:.3g} M per image)" if base else ""
    ax1.set(xlabel=f"effective MACs, fraction of dense{dense_txt}", ylabel="validation accuracy", xlim=(0, 1.05), title="Accuracy against compute")
    ax2.set(
        xlabel="weight sparsity (fraction of prunable weights removed)",
        ylabel="validation accuracy",
        xlim=(-0.02, 1.0),
        title="Accuracy against sparsity",
    )
    return _finish(fig, rows, (ax1, ax2))


def recalibration_figure(rows: list[dict[str, Any]]):
    """Validation accuracy of every candidate right after pruning (dense BatchNorm
    statistics) against after recalibration; points above the diagonal gained."""
    fig, ax = _figure(5.5, 5)
    rows = [r for r in rows if "accuracy_before_recal" in r]
    _scatter(ax, rows, "accuracy_before_recal", "accuracy")
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="no change")
    gained = sum(r["accuracy"] > r["accuracy_before_recal"] for r in rows)
    vals = [r[k] for r in rows for k in ("accuracy", "accuracy_before_recal")] or [0.0, 1.0]
    pad = max(0.01, 0.05 * (max(vals) - min(vals)))  # zoom on the candidates, same range on both axes
    lim = (max(0.0, min(vals) - pad), min(1.0, max(vals) + pad))
    ax.set(
        xlabel="accuracy after pruning (dense BatchNorm statistics)",
        ylabel="accuracy after recalibration",
        xlim=lim,
        ylim=lim,
        title=f"BatchNorm recalibration: {gained} of {len(rows)} candidates gained",
    )
    ax.set_aspect("equal")
    return _finish(fig, rows, (ax,))


def fit_figure(
    gamma: ArrayLike,
    density: ArrayLike,
    pfit: powerlaw.PressureFit,
    dens_acc: ArrayLike | None = None,
    accs: ArrayLike | None = None,
    afit: powerlaw.AccuracyFit | None = None,
    target_density: float | None = None,
):
    """Density vs pressure (log-log), plus accuracy vs density when given; a matplotlib Figure.

    The fitted curve is drawn only where it decreases with pressure (the branch
    ``predict_pressure`` solves on), so it is monotone over the plotted range. With
    ``target_density`` the target and the predicted pressure (with its 90 % interval)
    are marked.
    """
    g, d = np.asarray(gamma, dtype=float), np.asarray(density, dtype=float)
    two = dens_acc is not None and accs is not None
    fig, axes = _figure(10 if two else 5.5, 4.2, cols=2 if two else 1)
    ax = axes[0] if two else axes
    used = (d > 0) & (d < 1)
    ax.loglog(g[used], d[used], "o", label=f"fitted (n={used.sum()})")
    if np.any(~used & (d > 0)):
        ax.loglog(g[~used & (d > 0)], d[~used & (d > 0)], "o", mfc="none", label="excluded (D >= 1)")
    est, why = None, ""
    if target_density is not None:
        try:
            est = powerlaw.predict_pressure(pfit, target_density)
        except (ValueError, ArithmeticError) as e:  # unreachable target, or a flat fit
            why = str(e)[:60]
    lo_g, hi_g = g.min() / 1.5, g.max() * 1.5
    if est is not None:
        lo_g, hi_g = min(lo_g, est.gamma / 1.5), max(hi_g, est.gamma * 1.5)
    lo_b, hi_b = powerlaw.decreasing_branch(pfit)
    if not math.isnan(lo_b):  # clip to the decreasing branch, where the model is meaningful
        lo_g, hi_g = max(lo_g, math.exp(min(lo_b, 700))), min(hi_g, math.exp(min(hi_b, 700)))
    if lo_g < hi_g:
        gg = np.geomspace(lo_g, hi_g, 200)
        ax.loglog(gg, pfit.density(gg), "-", label=f"c={pfit.c:.3g} a0={pfit.a0:.3g} a1={pfit.a1:.2g} R2={pfit.r2:.3f}")
    if target_density is not None:
        ax.axhline(target_density, color="red", ls="--", lw=1, label=f"target density {target_density:.3g}")
    if est is not None:
        ax.axvline(est.gamma, color="red", ls=":", lw=1.2, label=f"predicted pressure {est.gamma:.3g}{' (extrapolated)' if est.extrapolated else ''}")
        if 0 < est.low < est.high < math.inf:
            ax.axvspan(est.low, est.high, color="red", alpha=0.08, label=f"{est.level:.0%} interval")
    title = "Density vs pressure" + (f"\n(target not reachable: {why})" if why else "")
    ax.set(xlabel="pressure gamma", ylabel="density D (fraction of weights kept)", title=title)
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.3, not 3x10^-1
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=7)
    if two:
        ax2 = axes[1]
        da, aa = np.asarray(dens_acc, dtype=float), np.asarray(accs, dtype=float)
        ax2.semilogx(da, aa, "o", label="runs")
        if afit is not None:
            dd = np.geomspace(da.min() / 1.5, 1.0, 200)
            ax2.semilogx(dd, afit.accuracy(dd), "-", label=f"err={afit.e0:.3g}+{afit.k:.3g}D^-{afit.b:.3g} R2={afit.r2:.3f}")
        ax2.set(xlabel="density D (fraction kept)", ylabel="accuracy", title="Accuracy vs density")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def rung_figure(rung0: list[float], full: list[float], rho: float):
    """How the cheapest rung ranks: each candidate that reached full fidelity at its
    rung-0 validation accuracy (x) and full validation accuracy (y); ``rho``: Spearman."""
    fig, ax = _figure(5.5, 5)
    ax.scatter(rung0, full, s=18, color="C0", label="candidate")
    vals = list(rung0) + list(full) or [0.0, 1.0]
    lim = (max(0.0, min(vals) - 0.02), min(1.0, max(vals) + 0.02))
    ax.plot(lim, lim, color="grey", lw=1, ls="--", label="same accuracy")
    txt = "n/a" if math.isnan(rho) else f"{rho:.3f}"
    ax.set(xlabel="rung-0 accuracy (cheap settings)", ylabel="full-fidelity accuracy", xlim=lim, ylim=lim)
    ax.set_title(f"Rung 0 against full fidelity: Spearman {txt} ({len(full)} candidates)")
    _percent(ax, "x")
    _percent(ax, "y")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def controller_figure(traces: list[dict[str, Any]]):
    """Density (measured, and the expected trajectory dashed) and gamma against the training
    step, one colour per candidate (``report.controller_traces``); a matplotlib Figure."""
    fig, (ax, ax2) = _figure(10, 4.2, cols=2)
    for i, t in enumerate(traces):
        colour = f"C{i % 10}"
        for part, style in (("density", "-"), ("expected", "--")):
            if t[part]:
                steps, vals = zip(*t[part])
                ax.plot(steps, vals, style, color=colour, lw=1.2, label=t["label"] if part == "density" else None)
        if t["gamma"]:
            steps, vals = zip(*t["gamma"])
            ax2.plot(steps, vals, "-", color=colour, lw=1.2, label=t["label"])
    ax.set(xlabel="training step", ylabel="density (fraction of weights present)", title="Density vs its trajectory (dashed)")
    ax2.set(xlabel="training step", ylabel="pressure gamma", title="Pressure the controller set")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# the legends of the candidate figures sit outside the axes
population_plot = _png_of(population_figure, dpi=90, bbox_inches="tight")
recalibration_plot = _png_of(recalibration_figure, dpi=90, bbox_inches="tight")
plot_fits = _png_of(fit_figure)
rung_plot = _png_of(rung_figure, dpi=90)
controller_plot = _png_of(controller_figure)
