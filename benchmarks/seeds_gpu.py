#!/usr/bin/env python
"""Hyperflows (pressure controller) and OCSPruner (one cycle) at the papers' settings on the shared
CIFAR-10 ResNet-20 when a GPU is at hand; the ``short`` preset on a CPU (and it says so).

GPU (``preset: paper``): hyperflows with the controller to ``--sparsity``, ``--pruning-epochs``
P and ``--regrowth-epochs`` R of the training split (the paper: 100 and 160; SGD 0.9, wd 5e-4,
lr 0.1 cosine, reset for regrowth; Adam 1e-3 for presence); OCS ``mode: one_cycle`` for
``--ocs-epochs`` epochs at ``--macs-reduction`` fewer MACs, stability threshold 0.999.
CPU (``preset: short``): hyperflows 360 + 50 steps (flow_lr 0.01, a controller period per 10
steps), OCS ``finetune`` 8 x 15 steps at the same threshold.

Prints per method: test accuracy after recalibration, weight sparsity or MACs kept, the stable
epoch, and the wall time; writes benchmarks/results/seeds_gpu.json. Run via
benchmarks/seeds_gpu.sh (which time-boxes it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline.measure import MeasureConfig  # noqa: E402
from pipeline.pruning.methods import get_method  # noqa: E402
from pipeline.spec import CandidateSpec, RecalSpec  # noqa: E402

import common  # noqa: E402
from common import log, pct  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = common.bench_parser(__doc__ or "", "tiny budgets on either device")
    ap.add_argument("--sparsity", type=float, default=0.9, help="hyperflows' target weight sparsity (default %(default)s)")
    ap.add_argument("--pruning-epochs", type=int, default=100, help="GPU: hyperflows' pruning phase P, epochs (default %(default)s)")
    ap.add_argument("--regrowth-epochs", type=int, default=160, help="GPU: hyperflows' regrowth phase R, epochs (default %(default)s)")
    ap.add_argument("--ocs-epochs", type=int, default=160, help="GPU: OCS' one cycle, epochs (default %(default)s)")
    ap.add_argument("--macs-reduction", type=float, default=2.0, help="OCS' MACs reduction factor (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    gpu = torch.cuda.is_available()
    torch.set_num_threads(args.threads)
    if gpu:
        preset = "paper"
        p, r = (2, 1) if args.quick else (args.pruning_epochs, args.regrowth_epochs)
        hf_knobs = {"pressure_schedule": 1.0, "preset": 1.0, "pruning_epochs": float(p), "regrowth_epochs": float(r)}
        ocs_knobs = {"mode": 1.0, "epochs": float(6 if args.quick else args.ocs_epochs), "stability": 0.999}
    else:
        preset = "short"
        steps, regrowth = (30, 5) if args.quick else (360, 50)
        every = 2.0 if args.quick else 10.0  # a trajectory of a few periods cannot reach a low density
        hf_knobs = {"pressure_schedule": 1.0, "steps": float(steps), "regrowth_steps": float(regrowth), "flow_lr": 0.01, "controller_every": every}
        ocs_knobs = {
            "epochs": 4.0 if args.quick else 8.0,
            "steps_per_epoch": 5.0 if args.quick else 15.0,
            "stability": 0.999,
            "max_prune_fraction": 0.6,
        }
    print(f"seeds_gpu: {'GPU ' + torch.cuda.get_device_name(0) if gpu else 'no GPU: CPU'}, hyperflows preset {preset!r}", flush=True)
    assets = common.load_resnet20_cifar(args.shared, 2048, 1000, 0)
    ev = common.make_evaluator(assets, args.threads, MeasureConfig(latency_repeats=3, collapse_plot=False), device="cuda" if gpu else "cpu")
    recal = RecalSpec(images=1024, keep_better=True)
    specs = {
        "hyperflows": CandidateSpec(method="hyperflows", target_sparsity=args.sparsity, knobs=hf_knobs, recal=recal),
        "ocs": CandidateSpec(
            method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=1 / args.macs_reduction, knobs=ocs_knobs, recal=recal
        ),
    }
    out = {"device": "cuda" if gpu else "cpu", "preset": preset, "train_images": len(assets.splits.train), "runs": {}}
    for name, spec in specs.items():
        steps = get_method(name).training_steps(spec, len(assets.splits.train))
        log(f"{name}: {steps} optimiser steps")
        t0 = time.perf_counter()
        res = ev.evaluate(spec)
        wall = time.perf_counter() - t0
        if res.state != "ok":
            print(f"{name}: FAILED {res.error}", flush=True)
            out["runs"][name] = {"state": res.state, "error": res.error}
            continue
        m = res.metrics
        stable = m.get("ocs_stable_epoch")
        size = f"weight sparsity {m['sparsity']:.4f} (target {args.sparsity})" if name == "hyperflows" else f"MACs kept {m['macs_ratio']:.3f}"
        extra = (
            f", stable epoch {stable:.0f} ({'stabilised' if m.get('ocs_stabilized') else 'never stable: fixed at the last'})" if name == "ocs" else ""
        )
        print(f"{name}: test accuracy {pct(m.get('test_accuracy'))} %, {size}{extra}, {steps} steps, {wall:.0f} s", flush=True)
        out["runs"][name] = {"knobs": dict(spec.knobs), "steps": steps, "wall_s": wall, **{k: v for k, v in m.items() if isinstance(v, float)}}
    if not args.quick:
        common.write_json(common.RESULTS_DIR / "seeds_gpu.json", out)


if __name__ == "__main__":
    main()
