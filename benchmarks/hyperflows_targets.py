#!/usr/bin/env python
"""Hyperflows on digits: how far each pressure schedule lands from a requested sparsity.

At one budget (``--steps`` + ``--regrowth`` steps, flow_lr 0.01, a controller period per 10
steps) and targets 80 / 90 / 95 %:
- ``constant`` pressure steered by the power law, as a search steers it: ``--fit-pressures``
  candidates, ``search.study.powerlaw.fit_pressure`` on their densities, then one candidate
  at the pressure ``predict_pressure`` gives for each target;
- ``controller`` (pressure_schedule 1): one candidate per target and seed.

Reports achieved weight sparsity (prunable conv + linear weights), its distance from the target
and validation accuracy of the pruned network with its trained weights (no recalibration).
Writes benchmarks/results/hyperflows_targets.json and .md.

    .venv/bin/python benchmarks/hyperflows_targets.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import measure  # noqa: E402
from pipeline.build import apply_plan  # noqa: E402
from pipeline.data.splits import DataConfig, load_data  # noqa: E402
from pipeline.models import ModelConfig, build_model  # noqa: E402
from pipeline.pruning.methods import PruneContext, get_method  # noqa: E402
from pipeline.spec import CandidateSpec  # noqa: E402
from pipeline.train import train_classifier  # noqa: E402
from search.study import powerlaw  # noqa: E402

import common  # noqa: E402
from common import log  # noqa: E402
from reporting import md_table, pct  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = common.bench_parser(__doc__ or "", "one target, two fit points, 60 steps")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--regrowth", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3, help="controller candidates per target (seeds 0..N-1)")
    ap.add_argument("--fit-pressures", default="0.003,0.01,0.03,0.1,0.3,1,3", help="constant pressures the power law is fitted on")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    targets = (0.9,) if args.quick else (0.8, 0.9, 0.95)
    steps, regrowth = (50, 10) if args.quick else (args.steps, args.regrowth)
    pressures = [0.03, 1.0] if args.quick else [float(p) for p in args.fit_pressures.split(",")]
    data = load_data(DataConfig())
    torch.manual_seed(0)
    base = train_classifier(build_model(ModelConfig()), data.train.x, data.train.y, steps=300)
    ctx = PruneContext.from_splits(data)
    method = get_method("hyperflows")
    budget = {"steps": float(steps), "regrowth_steps": float(regrowth), "flow_lr": 0.01}

    def run(spec: CandidateSpec) -> dict[str, Any]:
        t0 = time.perf_counter()
        plan = method.plan(base, ctx, spec)
        kept = sum(int(m.sum()) for m in plan.masks.values())
        sparsity = 1 - kept / sum(m.numel() for m in plan.masks.values())
        acc = measure.accuracy(apply_plan(base, plan), data.val.x, data.val.y)
        return {"knobs": dict(spec.knobs), "seed": spec.seed, "sparsity": sparsity, "val_accuracy": acc, "s": time.perf_counter() - t0}

    rows: list[dict[str, Any]] = []
    fit_pts = []
    for p in pressures:
        r = run(CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure": p, **budget}))
        log(f"constant p={p:g}: sparsity {r['sparsity']:.4f}")
        fit_pts.append((p, 1 - r["sparsity"]))
        rows.append({**r, "schedule": "constant (fit point)", "target": None})
    fit = powerlaw.fit_pressure([g for g, _ in fit_pts], [d for _, d in fit_pts])
    for t in targets:
        est = powerlaw.predict_pressure(fit, 1 - t)
        r = run(CandidateSpec(method="hyperflows", target_sparsity=None, knobs={"pressure": est.gamma, **budget}))
        log(f"constant (power law) target {t}: p={est.gamma:.4g} -> {r['sparsity']:.4f}")
        rows.append({**r, "schedule": "constant (power law)", "target": t, "predicted_pressure": est.gamma})
        for seed in range(1 if args.quick else args.seeds):
            knobs = {"pressure_schedule": 1.0, "controller_every": 10.0, **budget}
            r = run(CandidateSpec(method="hyperflows", target_sparsity=t, knobs=knobs, seed=seed))
            log(f"controller target {t} seed {seed}: {r['sparsity']:.4f}")
            rows.append({**r, "schedule": "controller", "target": t})
    result = {"benchmark": "hyperflows_targets", "machine": common.machine_info(), "budget": budget, "fit": fit.to_dict(), "rows": rows}
    out = Path("/tmp") if args.quick else common.RESULTS_DIR
    common.write_json(out / "hyperflows_targets.json", result)
    common.write_text(out / "hyperflows_targets.md", markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The table: per schedule and target, achieved sparsity (mean over seeds), worst distance, accuracy."""
    body = []
    for sched in ("constant (power law)", "controller"):
        for t in sorted({r["target"] for r in result["rows"] if r["target"] is not None}):
            rs = [r for r in result["rows"] if r["schedule"] == sched and r["target"] == t]
            if rs:
                s = np.array([r["sparsity"] for r in rs])
                body.append(
                    [
                        sched,
                        f"{t:.0%}",
                        str(len(rs)),
                        " / ".join(f"{v:.4f}" for v in s),
                        f"{np.abs(s - t).max():.4f}",
                        pct(float(np.mean([r["val_accuracy"] for r in rs]))),
                    ]
                )
    b = result["budget"]
    head = f"# Hyperflows on digits: distance from the target sparsity\n\nBudget {b['steps']:.0f} + {b['regrowth_steps']:.0f} steps, flow_lr {b['flow_lr']}; DigitsCNN width 32; machine: {result['machine'].get('cpu_model', '?')}, {result['machine'].get('logical_cpus')} logical CPUs, 1 torch thread, load average at start {result['machine'].get('loadavg_at_start')}; one seed (0); sparsity of the prunable conv + linear weights; validation accuracy with the trained weights, no recalibration.\n\n"
    return head + md_table(["schedule", "target", "runs", "achieved sparsity", "max off", "val accuracy (mean)"], body)


if __name__ == "__main__":
    main()
