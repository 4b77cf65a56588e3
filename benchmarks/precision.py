#!/usr/bin/env python
"""bf16 (or fp16) against fp32 on the shared ResNet-20 and exact CIFAR-10: how much accuracy autocast costs.

The dense model and a few candidates go through ``pipeline.evaluator.Evaluator`` (the
search's code path) once per ``measure.precision``, on this machine's device (CPU
autocast here: bf16 works on CPU); validation and test top-1 of each, and the
differences against fp32, in ``results/precision.json``.

    nice -n 10 .venv/bin/python benchmarks/precision.py [--shared ../shared] [--precisions fp32 bf16]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import measure  # noqa: E402
from pipeline.measure import MeasureConfig  # noqa: E402
from pipeline.spec import CandidateSpec  # noqa: E402

import common  # noqa: E402

CANDIDATES = {
    "dense": None,
    "magnitude unstructured 0.8": CandidateSpec(method="magnitude", target_sparsity=0.8),
    "magnitude channel 0.5 MACs": CandidateSpec(method="magnitude", granularity="channel", target_macs_ratio=0.5, prune_stem=False, prune_head=False),
}


def main() -> None:
    ap = common.bench_parser(__doc__, "the same: it is small")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = common.resnet20_config(a.shared)
    assets = common.load_resnet20_cifar(a.shared, cfg.data.calib_size, cfg.data.val_size)
    rows = []
    for precision in a.precisions:
        ev = common.make_evaluator(assets, 1, MeasureConfig(precision=precision, latency_repeats=3, collapse_plot=False))
        for name, spec in CANDIDATES.items():
            if spec is None:
                val = ev.dense_accuracy
                test = measure.accuracy(ev.base, ev.splits.test, ev.splits.test.y, precision=precision)
            else:
                r = ev.evaluate(spec)
                assert r.state == "ok", r.error
                val, test = r.metrics["accuracy"], r.metrics["test_accuracy"]
            rows.append({"precision": precision, "candidate": name, "val_accuracy": val, "test_accuracy": test})
            common.log(f"{precision:5s} {name:28s} val {100 * val:.2f} test {100 * test:.2f}")
    ref = {r["candidate"]: r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        if r["candidate"] in ref:
            r["val_diff_vs_fp32"] = r["val_accuracy"] - ref[r["candidate"]]["val_accuracy"]
            r["test_diff_vs_fp32"] = r["test_accuracy"] - ref[r["candidate"]]["test_accuracy"]
    out = {
        "machine": common.machine_info(),
        "device": "cpu",
        "val_images": len(assets.splits.val),
        "test_images": len(assets.splits.test),
        "rows": rows,
    }
    common.write_json(common.RESULTS_DIR / "precision.json", out)
    print(f"wrote {common.RESULTS_DIR / 'precision.json'}")


if __name__ == "__main__":
    main()
