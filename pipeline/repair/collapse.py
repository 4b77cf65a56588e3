"""The signal-collapse diagnostic (REFLOW): per-BatchNorm output variance, pruned / dense.

After one-shot pruning each layer's output variance shrinks, and the shrinkage
compounds with depth; recalibration restores it. The ratio per BatchNorm layer,
before and after recalibration, explains a candidate's accuracy at a glance.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from pipeline.modes import eval_mode
from pipeline.repair.recalibrate import batchnorms
from pipeline.spec import CandidateSpec


@torch.no_grad()
def bn_output_variance(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Variance of each BatchNorm's output over a fixed batch, eval mode: the signal-collapse probe."""
    out: dict[str, float] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, name=name: out.__setitem__(name, float(o.float().var()))) for name, m in batchnorms(model).items()
    ]
    try:
        with eval_mode(model):
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return out


def variance_table(dense: dict[str, float], before: dict[str, float], after: dict[str, float]) -> bytes:
    """Parquet of the signal-collapse diagnostic: per BatchNorm, pruned/dense output variance."""
    layers = [n for n in dense if n in before]
    table = pa.table(
        {
            "layer": layers,
            "var_ratio_before": [before[n] / max(dense[n], 1e-12) for n in layers],
            "var_ratio_after": [after[n] / max(dense[n], 1e-12) for n in layers],
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def plot_title(spec: CandidateSpec, trial: int | None = None) -> str:
    """The candidate a plot belongs to: ``trial 5: magnitude/channel, global, MACs ratio 0.5``."""
    if spec.target_sparsity is not None:
        target = f"sparsity {spec.target_sparsity:.3g}"
    elif spec.target_macs_ratio is not None:
        target = f"MACs ratio {spec.target_macs_ratio:.3g}"
    else:  # the size is an outcome of a knob (hyperflows' pressure)
        target = ", ".join(f"{k} {v:.3g}" for k, v in sorted(spec.knobs.items())) or "no target"
    who = f"trial {trial}: " if trial is not None else ""
    return f"{who}{spec.method}/{spec.granularity}, {spec.scope}, {target}"


def variance_plot(diagnostics: bytes, title: str = "") -> bytes:
    """The signal-collapse curve: per BatchNorm (in depth order, named on the axis), output
    variance of the pruned network over the dense one, before and after recalibration (log scale);
    ``title`` names the candidate (``plot_title``)."""
    fig = variance_figure(diagnostics, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)  # margins are set from the names: no second layout pass
    return buf.getvalue()


def variance_figure(diagnostics: bytes, title: str = ""):
    """The matplotlib Figure behind :func:`variance_plot`."""
    t = pq.read_table(io.BytesIO(diagnostics)).to_pydict()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(t["layer"])
    names_in = max((len(s) for s in t["layer"]), default=1) * 7 * 0.55 / 72  # rotated 7 pt names, inches
    width, plot_h, bottom, top = max(6.0, 0.22 * n + 1.5), 2.6, names_in + 0.45, 0.4 if title else 0.15
    fig = Figure(figsize=(width, plot_h + bottom + top))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    fig.subplots_adjust(left=1.0 / width, right=1 - 0.15 / width, bottom=bottom / (plot_h + bottom + top), top=1 - top / (plot_h + bottom + top))
    x = range(n)
    ax.plot(x, t["var_ratio_before"], "o-", ms=3, label="pruned, dense statistics")
    ax.plot(x, t["var_ratio_after"], "o-", ms=3, label="pruned, recalibrated")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(x), t["layer"], rotation=90, fontsize=7)
    ax.set(yscale="log", xlabel="BatchNorm layer (depth order)", ylabel="output variance / dense", xlim=(-0.5, n - 0.5))
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.2, not 2x10^-1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="both", labelsize=7)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    return fig
