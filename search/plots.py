"""PNG figures of a search's records (one candidate's signal-collapse plot is ``pipeline.collapse``).

Figures are drawn on an Agg canvas without pyplot, so no global backend is switched and
drawing is safe in any process.
"""

from __future__ import annotations

import io
from typing import Any



def _figure(width: float, height: float, cols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols)


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def population_plot(rows: list[dict[str, Any]], front: list[dict[str, Any]]) -> bytes:
    """Accuracy vs effective MACs (Pareto front drawn) and vs MACs per non-zero parameter."""
    fig, (ax1, ax2) = _figure(10, 4, cols=2)
    for method in sorted({r["method"] for r in rows}):
        sel = [r for r in rows if r["method"] == method]
        ax1.scatter([r["macs"] for r in sel], [r["accuracy"] for r in sel], s=12, label=method)
        ax2.scatter([r["macs"] / max(r["params"], 1) for r in sel], [r["accuracy"] for r in sel], s=12, label=method)
    ax1.plot([r["macs"] for r in front], [r["accuracy"] for r in front], "k-", lw=1, label="Pareto front")
    ax1.set(xlabel="effective MACs per image", ylabel="validation accuracy", xscale="log")
    ax2.set(xlabel="MACs / non-zero params", ylabel="validation accuracy")
    ax1.legend(fontsize=7)
    return _png(fig)
