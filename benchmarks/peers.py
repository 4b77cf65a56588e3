"""prunesearch against peer tools on the shared ResNet-20 and exact CIFAR-10 images.

Every tool sees the same images: 512 calibration and 1000 validation images drawn from
``train_exact.npz`` (the remaining 3573 are the training split used for fine-tuning),
and all 1017 images of ``test_exact.npz`` for the report. Selection (prunesearch's best
candidate, the EagleEye-style search's best candidate) uses validation only.

1. Unstructured, no fine-tuning, at 70 / 80 / 90 % weight sparsity (all conv and linear
   weights):
   - ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` as users run
     it (no BatchNorm recalibration);
   - the same masks plus prunesearch's recalibration (through ``Evaluator.rebuild``);
   - prunesearch: a real search (``search.driver.run_search``, 2 Ray actors) per target,
     sparsity in [target, target + 0.01], methods magnitude / screening, global or
     layerwise; the best candidate on validation.
2. Structured, no fine-tuning, at 1.5x / 2x / 2.5x fewer MACs (MACs ratio 0.667 / 0.5 /
   0.4 of the dense model):
   - Torch-Pruning 1.6 ``tp.pruner.BasePruner`` with ``tp.importance.MagnitudeImportance``
     (its documented defaults: p=2, group mean), ``global_pruning`` False (per layer) and
     True. Its dependency graph cannot follow the option-A padding shortcut (run with only
     the classifier ignored, as its README does, the pruned network fails at the
     classifier; recorded), so every conv and linear layer except each BasicBlock's
     ``conv1`` is in ``ignored_layers``. ``pruning_ratio`` is per channel: it is found by
     bisection on ``tp.utils.count_ops_and_params`` for each MACs target. The pruned
     network is verified: its kept channels are recovered and prunesearch's own
     ``shrink`` of the same channels must give the same logits. Reported as documented
     (no recalibration) and, as an extra column, with prunesearch's recalibration.
   - EagleEye-style random search (Li et al., ECCV 2020): N random per-layer pruning-ratio
     vectors (uniform direction, scaled by bisection to meet the MACs target, at most 75 %
     of a layer removed, L1-norm filter selection), each scored by adaptive BatchNorm on
     the calibration images and accuracy on validation; best on validation. Same N as
     prunesearch's search, evaluated on 2 worker processes of 1 thread (prunesearch: 2
     actors of 1 thread).
   - prunesearch: a real search per target, MACs ratio in [target - 0.01, target], channel
     granularity, methods magnitude (L1 / L2) / screening, a per-stage allocation (stage
     multipliers in [0.25, 2]; with an allocation prunesearch selects per layer whatever the
     scope, so the scope is fixed to layerwise); the best candidate with MACs ratio <= target
     on validation.
   - Latency (``pipeline.measure.latency_ms``, 1 torch thread, batch 1 and 256, median of
     rounds) of the dense network and of every structured winner beside its MACs.
3. Fine-tuning: every winner gets the same budget (``--finetune-steps`` SGD steps, batch
   64, lr 0.01, cosine, ``pipeline.train.train_classifier``, masks kept for unstructured).
   The EagleEye claim: Spearman correlation, over the EagleEye-style candidates at 2x
   fewer MACs, between adaptive-BN validation accuracy and validation accuracy after
   ``--spearman-steps`` steps of fine-tuning (and, for contrast, with the vanilla
   accuracy before recalibration).
4. Wall time of each tool for its result, with the load average at the time.

    .venv/bin/python benchmarks/peers.py [--quick] [--candidates 24] [--shared ../shared]

Writes benchmarks/results/peers.json and peers.md (``--quick``: a temporary folder). Needs ``torch-pruning`` (the
``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# benchmarks/search.py would shadow the product's ``search`` package for a script run
# from this folder: import the product's modules first, then make ``common`` importable
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
import search.config  # noqa: E401,E402,F401

sys.path.insert(0, str(_HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pipeline import measure  # noqa: E402
from pipeline.build import apply_plan  # noqa: E402
from pipeline.measure import MeasureConfig  # noqa: E402
from pipeline.methods.magnitude import filter_norms  # noqa: E402
from pipeline.plan import PrunePlan  # noqa: E402
from pipeline.spec import CandidateSpec, RecalSpec  # noqa: E402

from common import (  # noqa: E402
    RESULTS_DIR,
    Timer,
    add_shared_arg,
    load_resnet20_cifar,
    loadavg,
    log,
    machine_info,
    make_evaluator,
    md_table,
    pct,
    write_json,
    write_text,
)

CALIB, VAL = 512, 1000
# prunesearch's recalibration for every tool that gets one (the project's ResNet-20 config):
# reset statistics, cumulative average over the 512 calibration images, per-image flips
# and crops from a copy padded by 4 black pixels (the recipe the checkpoint's statistics
# came from), keep the stored statistics when they score higher on validation.
RECAL = RecalSpec(images=CALIB, batch_size=128, mode="cumulative", augment=True, keep_better=True)
SPARSITIES = (0.7, 0.8, 0.9)
MACS_TARGETS = (2 / 3, 0.5, 0.4)  # 1.5x, 2x, 2.5x fewer MACs
MAX_LAYER_FRACTION = 0.75  # no layer loses more (EagleEye sampler; prunesearch's select_channels default)
FT_LR, FT_BATCH = 0.01, 64  # the evaluator's fine-tuning learning rate
ALLOC = [0.25, 2.0]  # per-stage multiplier on the pruned fraction (prunesearch's structured space)
BLOCK_CONV1 = tuple(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_arg(ap)
    ap.add_argument("--quick", action="store_true", help="a smoke run (~3 min): one point per part, few candidates, short fine-tuning")
    ap.add_argument("--candidates", type=int, default=24, help="candidates per prunesearch search and per EagleEye-style search (per point)")
    ap.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning steps for every winner")
    ap.add_argument("--spearman-steps", type=int, default=100, help="fine-tuning steps per candidate of the Spearman measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker and for latency")
    ap.add_argument("--render", action="store_true", help="only re-render peers.md (and the verdict) from an existing peers.json")
    ap.add_argument("--sparsities", type=float, nargs="*", default=None, help=f"unstructured points (default {SPARSITIES}; none: skip)")
    ap.add_argument("--macs-ratios", type=float, nargs="*", default=None, help=f"structured MACs ratios (default {MACS_TARGETS}; none: skip)")
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning part (and the Spearman measurement)")
    ap.add_argument("--no-reconstruct", action="store_true", help="prunesearch's space without reconstruction (space.reconstruct [none])")
    ap.add_argument("--recon-images", type=int, default=512, help="reconstruction.images of prunesearch's searches")
    ap.add_argument("--recon-ridge", type=float, default=1e-3, help="reconstruction.ridge of prunesearch's searches")
    ap.add_argument("--recon-layers", default="all", choices=["pruned", "all"], help="reconstruction.layers")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for peers.json / peers.md (default: benchmarks/results; with --quick a temporary folder, "
        "so a smoke run never overwrites the measured results)",
    )
    args = ap.parse_args()
    if args.quick:
        args.candidates, args.finetune_steps, args.spearman_steps = min(args.candidates, 4), 20, 10
    out_dir = args.out or (Path(tempfile.gettempdir()) / "prunesearch-peers-quick" if args.quick else RESULTS_DIR)
    if args.render:
        import json

        result = json.loads((out_dir / "peers.json").read_text())
        result["verdict"] = verdict(result)
        write_json(out_dir / "peers.json", result)
        write_text(out_dir / "peers.md", markdown(result))
        print(markdown(result))
        return
    sparsities = (0.8,) if args.quick else tuple(SPARSITIES if args.sparsities is None else args.sparsities)
    targets = (0.5,) if args.quick else tuple(MACS_TARGETS if args.macs_ratios is None else args.macs_ratios)
    val_size = 300 if args.quick else VAL
    shared = Path(args.shared).expanduser().resolve()
    t_start = time.perf_counter()

    torch.set_num_threads(args.threads)
    assets = load_resnet20_cifar(shared, CALIB, val_size)
    ev = make_evaluator(assets, args.threads, _measure_cfg())
    s = assets.splits
    dense = {
        "val_accuracy": measure.accuracy(assets.base, s.val.x, s.val.y),
        "test_accuracy": measure.accuracy(assets.base, s.test.x, s.test.y),
        "macs": ev.dense_macs,
        "weights": sum(m.weight.numel() for m in assets.base.modules() if isinstance(m, (nn.Conv2d, nn.Linear))),
    }
    result: dict[str, Any] = {
        "machine": machine_info(),
        "command": "python benchmarks/peers.py" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "settings": {
            "calib_images": CALIB,
            "val_images": len(s.val),
            "train_images": len(s.train),
            "test_images": len(s.test),
            "recalibration": RECAL.model_dump(),
            "candidates_per_search": args.candidates,
            "finetune": {"steps": args.finetune_steps, "batch": FT_BATCH, "lr": FT_LR, "schedule": "cosine, SGD momentum 0.9, wd 5e-4"},
            "spearman_steps": args.spearman_steps,
            "threads": args.threads,
            "workers": 2,
            "torch_pruning": _tp_version(),
        },
        "dense": dense,
    }
    log(f"dense: val {dense['val_accuracy']:.4f} test {dense['test_accuracy']:.4f}, {dense['macs'] / 1e6:.2f} M MACs; load {loadavg()}")
    runs_root = Path(tempfile.mkdtemp(prefix="prunesearch-peers-"))
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(2, mp_context=ctx, initializer=_worker_init, initargs=(str(shared), CALIB, val_size, args.threads))
    try:
        result["unstructured"] = part_unstructured(args, shared, runs_root, ev, assets, sparsities, val_size)
        result["structured"] = part_structured(args, shared, runs_root, ev, assets, targets, val_size, pool)
        result["finetune"] = {} if args.no_finetune else part_finetune(args, result, pool)
    finally:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(runs_root, ignore_errors=True)
    result["latency"] = part_latency(args, ev, result)
    result["verdict"] = verdict(result)
    result["total_wall_s"] = time.perf_counter() - t_start
    result["loadavg_at_end"] = loadavg()
    for part in ("unstructured", "structured"):  # plans are bulky: keep them out of the JSON
        for point in result[part]:
            point.pop("_ee_candidates", None)  # left when fine-tuning (which consumes them) is skipped
            for r in point["tools"].values():
                r.pop("_plan", None)
    result["structured_spearman_candidates"] = result["finetune"].pop("_candidates", [])
    write_json(out_dir / "peers.json", result)
    write_text(out_dir / "peers.md", markdown(result))
    print(markdown(result))
    log(f"wrote {out_dir / 'peers.json'} and {out_dir / 'peers.md'}")


def _measure_cfg() -> MeasureConfig:
    # test accuracy for the report only; latency is measured separately (part_latency)
    return MeasureConfig(test_accuracy=True, collapse_plot=False, latency_repeats=1, latency_batch=1)


def _tp_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-pruning")
    except Exception:
        return ""


def se(p: float | None, n: int) -> float | None:
    """Binomial standard error of an accuracy ``p`` on ``n`` images."""
    return None if p is None else math.sqrt(max(p * (1 - p), 0.0) / n)


# -- workers (EagleEye-style candidates, fine-tuning) -----------------------------------

_W: dict[str, Any] = {}


def _worker_init(shared: str, calib: int, val: int, threads: int) -> None:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    assets = load_resnet20_cifar(Path(shared), calib, val)
    _W["assets"] = assets
    _W["ev"] = make_evaluator(assets, threads, _measure_cfg())


def _eval_plan(spec_json: str, plan_bytes: bytes) -> dict[str, float]:
    """Adaptive BN (prunesearch's recalibration) and accuracy of one channel plan."""
    t0 = time.perf_counter()
    _, r = _W["ev"].rebuild(CandidateSpec.from_json(spec_json), PrunePlan.from_parquet(plan_bytes))
    return {**r.metrics, "wall_s": time.perf_counter() - t0}


def _finetune(plan_bytes: bytes, steps: int, seed: int = 0) -> dict[str, float]:
    """Fine-tune the plan's network (masks kept) and score it on validation and test.

    BatchNorm layers run in train mode (batch statistics) during fine-tuning and their
    running statistics are re-estimated with momentum 0.1, so whether the network was
    recalibrated first makes no difference after a few dozen steps."""
    from pipeline.train import train_classifier

    a, ev = _W["assets"], _W["ev"]
    plan = PrunePlan.from_parquet(plan_bytes)
    model = apply_plan(ev.base, plan)
    t0 = time.perf_counter()
    train_classifier(model, a.splits.train.x, a.splits.train.y, steps, lr=FT_LR, batch_size=FT_BATCH, seed=seed, masks=plan.masks or None)
    wall = time.perf_counter() - t0
    sp = a.splits
    return {
        "val_accuracy": measure.accuracy(model, sp.val.x, sp.val.y),
        "test_accuracy": measure.accuracy(model, sp.test.x, sp.test.y),
        "wall_s": wall,
        "steps": steps,
    }


# -- prunesearch searches -------------------------------------------------------------


def _search(args, shared: Path, runs_root: Path, name: str, val_size: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """One real prunesearch search (Ray started by the search, 2 actors); its rows and timing."""
    from search.config import parse_config
    from search.driver import run_search
    from search.query import candidate_rows

    cfg = parse_config(
        {
            "name": name,
            "run_dir": str(runs_root / name),
            "model": {"name": "cifar_resnet20", "checkpoint": str(shared / "models/cifar10_resnet20.th")},
            "data": {
                "name": "npz",
                "path": str(shared / "data/cifar10/train_exact.npz"),
                "test_path": str(shared / "data/cifar10/test_exact.npz"),
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
                "calib_size": CALIB,
                "val_size": val_size,
            },
            "recalibration": RECAL.model_dump(),
            "reconstruction": {"images": args.recon_images, "ridge": args.recon_ridge, "layers": args.recon_layers},
            "sampler": {"name": "tpe", "seed": 0, "startup_trials": max(2, args.candidates // 3)},
            "budget": {"trials": args.candidates},
            "actors": {"count": 2, "num_cpus": 1, "threads": args.threads},
            "measure": _measure_cfg().model_dump(),
            **{**overrides, "space": {**overrides["space"], "reconstruct": ["none"] if args.no_reconstruct else ["none", "lsq"]}},
        }
    )
    load0 = loadavg()
    with Timer() as t:
        outcome = run_search(cfg, quiet=True)
    rows = [r for r in candidate_rows(outcome.tracking_uri, outcome.experiment) if "accuracy" in r]
    return {
        "rows": rows,
        "tracking_uri": outcome.tracking_uri,
        "wall_s": t.s,
        "loop_s": outcome.loop_s,
        "evaluated": outcome.evaluated,
        "failed": outcome.failed,
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


def _methods(*names: str) -> list[str]:
    """The named methods that the registry has (the activation-aware ones are newer)."""
    from pipeline.methods import list_methods

    return [n for n in names if n in list_methods()]


def _rebuild_winner(ev, tracking_uri: str, run_id: str) -> tuple[nn.Module, dict[str, float], CandidateSpec, PrunePlan]:
    """The recorded candidate rebuilt from its record (spec + plan.parquet), recalibrated."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    spec = CandidateSpec.from_json(client.get_run(run_id).data.params["spec"])
    with tempfile.TemporaryDirectory() as d:
        plan = PrunePlan.from_parquet(Path(client.download_artifacts(run_id, "plan.parquet", d)).read_bytes())
    model, r = ev.rebuild(spec, plan)
    return model, dict(r.metrics), spec, plan


def _spec_summary(spec: CandidateSpec) -> str:
    parts = [spec.method, spec.scope]
    parts += [f"{k}={v:.2f}" for k, v in spec.knobs.items()]
    if spec.allocation:
        parts.append("alloc " + "/".join(f"{v:.2f}" for _, v in sorted(spec.allocation.items())))
    if spec.reconstruct.mode != "none":
        parts.append(f"+ {spec.reconstruct.mode} reconstruction")
    return " ".join(parts)


def _prunesearch_point(args, shared, runs_root, ev, name, val_size, overrides, keep) -> dict[str, Any]:
    srch = _search(args, shared, runs_root, name, val_size, overrides)
    rows = [r for r in srch["rows"] if keep(r)]
    out = {
        "candidates": args.candidates,
        "evaluated": srch["evaluated"],
        "failed": srch["failed"],
        "eligible": len(rows),
        "wall_s": srch["wall_s"],
        "loop_s": srch["loop_s"],
        "loadavg": [srch["loadavg_before"], srch["loadavg_after"]],
    }
    if not rows:
        return {**out, "error": "no eligible candidate"}
    best = max(rows, key=lambda r: (r["accuracy"], -r["trial"]))  # validation only
    model, m, spec, plan = _rebuild_winner(ev, srch["tracking_uri"], best["run_id"])
    if abs(m["accuracy"] - best["accuracy"]) > 1e-9:
        log(f"  warning: rebuilt accuracy {m['accuracy']:.4f} differs from the recorded {best['accuracy']:.4f}")
    out.update(
        {
            "recipe": _spec_summary(spec),
            "spec": spec.model_dump(),
            "run_trial": best["trial"],
            "val_before_recal": m["accuracy_before_recal"],
            "val_accuracy": m["accuracy"],
            "test_accuracy": m["test_accuracy"],
            "test_before_recal": measure.accuracy(apply_plan(ev.base, plan), ev.splits.test.x, ev.splits.test.y),
            "recorded_val_accuracy": best["accuracy"],
            "recorded_test_accuracy": best.get("test_accuracy"),
            "sparsity": m["sparsity"],
            "macs_ratio": m["macs_ratio"],
            "macs": m["macs"],
            "recal_applied": m["recal_applied"],
            "all_candidates": [
                {k: r.get(k) for k in ("trial", "method", "accuracy", "test_accuracy", "sparsity", "macs_ratio")} for r in srch["rows"]
            ],
            "_plan": plan.to_parquet(),
        }
    )
    return out


# -- 1. unstructured ------------------------------------------------------------------


def torch_global_l1(base: nn.Module, sparsity: float) -> tuple[nn.Module, dict[str, torch.Tensor], float]:
    """``torch.nn.utils.prune.global_unstructured`` with L1 over every conv and linear weight,
    made permanent with ``prune.remove``; the masks and the seconds it took."""
    from torch.nn.utils import prune

    model = copy.deepcopy(base)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    t0 = time.perf_counter()
    prune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=sparsity)
    masks = {f"{n}.weight": m.weight_mask.detach().bool().clone() for n, m in layers}
    for _, m in layers:
        prune.remove(m, "weight")
    return model, masks, time.perf_counter() - t0


def part_unstructured(args, shared, runs_root, ev, assets, sparsities, val_size) -> list[dict[str, Any]]:
    s, points = assets.splits, []
    n_weights = sum(m.weight.numel() for m in assets.base.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    for t in sparsities:
        log(f"unstructured {t:.0%}: torch global_unstructured L1; load {loadavg()}")
        tools: dict[str, dict[str, Any]] = {}
        model, masks, prune_s = torch_global_l1(assets.base, t)
        zeros = sum(int((~m).sum()) for m in masks.values())
        tools["torch_l1"] = {
            "label": "torch global_unstructured L1 (no recalibration)",
            "sparsity": zeros / n_weights,
            "val_accuracy": measure.accuracy(model, s.val.x, s.val.y),
            "test_accuracy": measure.accuracy(model, s.test.x, s.test.y),
            "wall_s": prune_s,
            "loadavg": loadavg(),
            "_plan": PrunePlan(masks=masks).to_parquet(),
        }
        spec = CandidateSpec(method="magnitude", granularity="unstructured", target_sparsity=t, recal=RECAL)
        _, r = ev.rebuild(spec, PrunePlan(masks=masks))
        m = r.metrics
        tools["torch_l1_recal"] = {
            "label": "torch global_unstructured L1 + prunesearch recalibration",
            "sparsity": m["sparsity"],
            "val_accuracy": m["accuracy"],
            "test_accuracy": m["test_accuracy"],
            "val_before_recal": m["accuracy_before_recal"],
            "recal_applied": m["recal_applied"],
            "wall_s": prune_s + m["recal_s"],
            "recal_s": m["recal_s"],
            "loadavg": loadavg(),
        }
        log(f"  torch L1 test {tools['torch_l1']['test_accuracy']:.4f}, + recal {m['test_accuracy']:.4f}")
        log(f"unstructured {t:.0%}: prunesearch search ({args.candidates} candidates); load {loadavg()}")
        space = {
            "methods": _methods("magnitude", "screening", "activation"),
            "granularity": ["unstructured"],
            "scope": ["global", "layerwise"],
            "sparsity": [t, min(t + 0.01, 0.99)],
            "knobs": {"screening": {"screening_weight": [0.0, 1.0]}},
        }
        ps = _prunesearch_point(
            args,
            shared,
            runs_root,
            ev,
            f"peers-unstructured-{round(t * 100)}",
            val_size,
            {"space": space, "objective": {"mode": "constrained", "min_sparsity": t}},
            keep=lambda r, t=t: r["sparsity"] >= t - 1e-9,
        )
        ps["label"] = "prunesearch best searched candidate"
        tools["prunesearch"] = ps
        log(f"  prunesearch test {ps.get('test_accuracy', float('nan')):.4f} ({ps.get('recipe')}), {ps['wall_s']:.0f} s")
        points.append({"target_sparsity": t, "tools": tools})
    return points


# -- 2. structured --------------------------------------------------------------------


def _tp_prune(base: nn.Module, example: torch.Tensor, ratio: float, global_pruning: bool) -> nn.Module:
    """Torch-Pruning as its README shows it, restricted to the block-internal channels."""
    import torch_pruning as tp

    model = copy.deepcopy(base).eval()
    keep = set(BLOCK_CONV1)
    ignored = [m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in keep]
    pruner = tp.pruner.BasePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio, global_pruning=global_pruning, ignored_layers=ignored
    )
    pruner.step()
    return model


def tp_documented_default(base: nn.Module, example: torch.Tensor) -> str:
    """What Torch-Pruning does with only the classifier ignored (its README's recipe)."""
    import torch_pruning as tp

    model = copy.deepcopy(base).eval()
    try:
        pruner = tp.pruner.BasePruner(
            model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3, ignored_layers=[model.linear]
        )
        pruner.step()
        with torch.no_grad():
            out = model(example)
        return f"ran, output shape {tuple(out.shape)}"
    except Exception as e:
        return f"{type(e).__name__}: {str(e)[:200]}"


def _tp_ops_ratio(model: nn.Module, example: torch.Tensor, dense_ops: float) -> float:
    import torch_pruning as tp

    return float(tp.utils.count_ops_and_params(model, example)[0]) / dense_ops


def tp_for_target(base, example, target: float, global_pruning: bool) -> dict[str, Any]:
    """Smallest ``pruning_ratio`` whose pruned model has at most ``target`` of the dense
    MACs by ``tp.utils.count_ops_and_params`` (bisection); the model and its timing."""
    import torch_pruning as tp

    dense_ops = float(tp.utils.count_ops_and_params(base, example)[0])
    evals = 0
    t0 = time.perf_counter()
    lo, hi = 0.0, 0.95
    if _tp_ops_ratio(_tp_prune(base, example, hi, global_pruning), example, dense_ops) > target:
        raise RuntimeError(f"Torch-Pruning cannot reach MACs ratio {target} with pruning_ratio {hi}")
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        evals += 1
        if _tp_ops_ratio(_tp_prune(base, example, mid, global_pruning), example, dense_ops) <= target:
            hi = mid
        else:
            lo = mid
    bisect_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = _tp_prune(base, example, hi, global_pruning)
    step_s = time.perf_counter() - t1
    return {
        "model": model,
        "pruning_ratio": hi,
        "tp_macs_ratio": _tp_ops_ratio(model, example, dense_ops),
        "bisect_s": bisect_s,
        "step_s": step_s,
        "bisect_evals": evals + 2,
    }


def recover_channels(base: nn.Module, pruned: nn.Module) -> dict[str, torch.Tensor]:
    """The output channels Torch-Pruning kept in each block ``conv1``, found by matching
    its remaining filters to the dense ones (exact copies)."""
    b, p = dict(base.named_modules()), dict(pruned.named_modules())
    kept = {}
    for name in BLOCK_CONV1:
        w0 = b[name].weight.detach().reshape(b[name].out_channels, -1)
        w1 = p[name].weight.detach().reshape(p[name].out_channels, -1)
        if w1.shape[1] != w0.shape[1]:
            raise RuntimeError(f"Torch-Pruning changed the input channels of {name}")
        d = torch.cdist(w1, w0, compute_mode="donot_use_mm_for_euclid_dist")
        idx = d.argmin(1)
        if float(d.min(1).values.max()) > 1e-6 or idx.unique().numel() != idx.numel():
            raise RuntimeError(f"cannot match the filters Torch-Pruning kept in {name}")
        kept[name] = torch.sort(idx).values
    return kept


def check_equivalent(base: nn.Module, tp_model: nn.Module, plan: PrunePlan, x: torch.Tensor) -> float:
    """Max |logit difference| between Torch-Pruning's network and prunesearch's ``shrink`` of the same channels."""
    ours = apply_plan(base, plan)
    sd_tp, sd_ours = tp_model.state_dict(), ours.state_dict()
    if set(sd_tp) != set(sd_ours) or any(sd_tp[k].shape != sd_ours[k].shape for k in sd_tp):
        raise RuntimeError("Torch-Pruning's network has other tensors or shapes than the same channels removed by prunesearch")
    with torch.no_grad():
        return float((tp_model.eval()(x) - ours.eval()(x)).abs().max())


def eagleeye_plans(graph, scores: dict[str, torch.Tensor], target: float, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` random per-layer channel plans meeting ``target`` (MACs ratio), EagleEye-style.

    Each plan draws a random direction u (one uniform number per layer), removes
    round(f * u_l * size_l) channels of layer l (at most 75 %), with the smallest f that
    meets the MACs target (bisection), and keeps the filters of largest L1 norm. Draws
    that cannot meet the target under the 75 % cap are redrawn (EagleEye rejects them).
    """
    rng = np.random.default_rng(seed)
    sizes = {g.name: g.size for g in graph.groups}
    caps = {g: min(int(MAX_LAYER_FRACTION * s + 1e-9), s - 1) for g, s in sizes.items()}
    budget = target * graph.dense_macs
    plans = []
    while len(plans) < n:
        u = {g: float(rng.uniform(0.0, 1.0)) for g in sizes}

        def removed(f: float, u: dict[str, float] = u) -> dict[str, int]:
            return {g: min(int(round(f * u[g] * s)), caps[g]) for g, s in sizes.items()}

        def macs(f: float) -> int:
            return graph.macs({g: sizes[g] - r for g, r in removed(f).items()})

        hi = 1.0 / max(min(u.values()), 1e-6)
        if macs(hi) > budget:
            continue
        lo = 0.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if macs(mid) <= budget else (mid, hi)
        rem = removed(hi)
        plans.append({g: torch.sort(torch.argsort(scores[g], descending=True)[: sizes[g] - rem[g]]).values for g in sizes})
    return plans


def part_structured(args, shared, runs_root, ev, assets, targets, val_size, pool) -> list[dict[str, Any]]:
    from pipeline.structure import channel_graph

    s = assets.splits
    example = s.val.x[:1]
    graph = channel_graph(assets.base, example, prune_stem=False, prune_head=False)
    if sorted(g.name for g in graph.groups) != sorted(BLOCK_CONV1):
        raise RuntimeError(f"unexpected channel groups {[g.name for g in graph.groups]}")
    modules = dict(assets.base.named_modules())
    l1 = {g: filter_norms(modules[g].weight, 1) for g in BLOCK_CONV1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default_note = tp_documented_default(assets.base, example)
    log(f"Torch-Pruning with only the classifier ignored: {default_note}")
    points = []
    for t in targets:
        tools: dict[str, dict[str, Any]] = {}
        spec = CandidateSpec(
            method="magnitude",
            granularity="channel",
            scope="layerwise",
            target_sparsity=None,
            target_macs_ratio=t,
            prune_stem=False,
            prune_head=False,
            recal=RECAL,
        )
        for key, glob in (("tp_layer", False), ("tp_global", True)):
            log(f"structured {t:.3f}: Torch-Pruning {'global' if glob else 'per-layer'}; load {loadavg()}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    r = tp_for_target(assets.base, example, t, glob)
                except Exception as e:
                    tools[key] = {"error": f"{type(e).__name__}: {e}"}
                    continue
            model = r.pop("model")
            plan = PrunePlan(channels=recover_channels(assets.base, model))
            diff = check_equivalent(assets.base, model, plan, s.val.x[:256])
            _, rr = ev.rebuild(spec, plan)
            m = rr.metrics
            tools[key] = {
                "label": f"Torch-Pruning MagnitudeImportance, {'global' if glob else 'per-layer'}",
                **r,
                "macs_ratio": m["macs_ratio"],
                "macs": m["macs"],
                "max_logit_diff_vs_shrink": diff,
                "channels": {g: int(v.numel()) for g, v in plan.channels.items()},
                "val_accuracy": measure.accuracy(model, s.val.x, s.val.y),
                "test_accuracy": measure.accuracy(model, s.test.x, s.test.y),
                "val_recal": m["accuracy"],
                "test_recal": m["test_accuracy"],
                "recal_applied": m["recal_applied"],
                "recal_s": m["recal_s"],
                "wall_s": r["bisect_s"] + r["step_s"],
                "loadavg": loadavg(),
                "_plan": plan.to_parquet(),
            }
            log(
                f"  MACs ratio {m['macs_ratio']:.3f} (tp {r['tp_macs_ratio']:.3f}), test {tools[key]['test_accuracy']:.4f}, "
                f"+recal {m['test_accuracy']:.4f}; logits vs shrink {diff:.1e}"
            )

        log(f"structured {t:.3f}: EagleEye-style random search ({args.candidates} candidates, 2 workers); load {loadavg()}")
        load0 = loadavg()
        with Timer() as tm:
            plans = [PrunePlan(channels=c) for c in eagleeye_plans(graph, l1, t, args.candidates, seed=round(t * 1000))]
            futs = [pool.submit(_eval_plan, spec.to_json(), p.to_parquet()) for p in plans]
            cands = [f.result() for f in futs]
        best = max(range(len(cands)), key=lambda i: (cands[i]["accuracy"], -i))
        c = cands[best]
        tools["eagleeye"] = {
            "label": "EagleEye-style random search + adaptive BN",
            "candidates": len(cands),
            "macs_ratio": c["macs_ratio"],
            "macs": c["macs"],
            "val_before_recal": c["accuracy_before_recal"],
            "val_accuracy": c["accuracy"],
            "test_accuracy": c["test_accuracy"],
            "wall_s": tm.s,
            "loadavg": [load0, loadavg()],
            "channels": {g: int(v.numel()) for g, v in plans[best].channels.items()},
            "_plan": plans[best].to_parquet(),
        }
        log(f"  best val {c['accuracy']:.4f} test {c['test_accuracy']:.4f} MACs ratio {c['macs_ratio']:.3f}, {tm.s:.0f} s")

        log(f"structured {t:.3f}: prunesearch search ({args.candidates} candidates); load {loadavg()}")
        # scope: layerwise only, the better channel scope on this model (methods benchmark,
        # magnitude at 2x: 54.3 % layerwise, 46.6 % global)
        space = {
            "methods": _methods("magnitude", "screening", "activation", "bn_activation"),
            "granularity": ["channel"],
            "scope": ["layerwise"],
            "macs_ratio": [max(t - 0.01, 0.01), t],
            "prune_stem": False,
            "prune_head": False,
            "knobs": {"magnitude": {"norm": [1, 2]}, "screening": {"screening_weight": [0.0, 1.0]}},
            "allocation": {"layer1": ALLOC, "layer2": ALLOC, "layer3": ALLOC},
        }
        ps = _prunesearch_point(
            args,
            shared,
            runs_root,
            ev,
            f"peers-structured-{round(t * 1000)}",
            val_size,
            {"space": space, "objective": {"mode": "constrained", "max_macs_ratio": t}},
            keep=lambda r, t=t: r["macs_ratio"] <= t + 1e-9,
        )
        ps["label"] = "prunesearch best searched candidate"
        if "_plan" in ps:
            ps["channels"] = {g: int(v.numel()) for g, v in PrunePlan.from_parquet(ps["_plan"]).channels.items()}
        tools["prunesearch"] = ps
        log(
            f"  prunesearch test {ps.get('test_accuracy', float('nan')):.4f} ({ps.get('recipe')}), MACs ratio "
            f"{ps.get('macs_ratio', float('nan')):.3f}, {ps['wall_s']:.0f} s"
        )
        point = {"target_macs_ratio": t, "speedup_target": 1 / t, "tools": tools}
        if abs(t - 0.5) < 1e-9:
            point["_ee_candidates"] = [
                {
                    "val_before_recal": c["accuracy_before_recal"],
                    "val_recal": c["accuracy"],
                    "test_recal": c["test_accuracy"],
                    "macs_ratio": c["macs_ratio"],
                    "_plan": p.to_parquet(),
                }
                for c, p in zip(cands, plans)
            ]
        points.append(point)
    if points:
        points[0]["tp_documented_default"] = default_note
    return points


# -- 3. fine-tuning -------------------------------------------------------------------


def part_finetune(args, result, pool) -> dict[str, Any]:
    from scipy.stats import spearmanr

    jobs = []  # (part, point index, tool key)
    for part in ("unstructured", "structured"):
        for i, point in enumerate(result[part]):
            for key, r in point["tools"].items():
                if "_plan" in r and key != "torch_l1_recal":  # torch_l1 + recal: same masks, same fine-tuned network
                    jobs.append((part, i, key, r["_plan"]))
    ee = []
    for point in result["structured"]:
        ee = point.pop("_ee_candidates", None) or ee
    log(
        f"fine-tuning {len(jobs)} winners x {args.finetune_steps} steps and {len(ee)} candidates x {args.spearman_steps} steps "
        f"(2 workers); load {loadavg()}"
    )
    load0 = loadavg()
    with Timer() as tm:
        futs = [pool.submit(_finetune, plan, args.finetune_steps) for *_, plan in jobs]
        sfuts = [pool.submit(_finetune, c["_plan"], args.spearman_steps) for c in ee]
        for n, ((part, i, key, _), f) in enumerate(zip(jobs, futs), 1):
            result[part][i]["tools"][key]["finetuned"] = f.result()
            log(f"  winner {n}/{len(jobs)} {part} {i} {key}: test {f.result()['test_accuracy']:.4f} ({f.result()['wall_s']:.0f} s)")
        for n, (c, f) in enumerate(zip(ee, sfuts), 1):
            c["finetuned"] = f.result()
            c.pop("_plan")
            if n % 6 == 0 or n == len(ee):
                log(f"  Spearman candidates {n}/{len(ee)} fine-tuned; load {loadavg()}")
    out: dict[str, Any] = {"wall_s": tm.s, "loadavg": [load0, loadavg()], "winners": len(jobs)}
    if len(ee) >= 3:
        rec = [c["val_recal"] for c in ee]
        van = [c["val_before_recal"] for c in ee]
        ft_val = [c["finetuned"]["val_accuracy"] for c in ee]
        ft_test = [c["finetuned"]["test_accuracy"] for c in ee]
        out["spearman"] = {
            "candidates": len(ee),
            "steps": args.spearman_steps,
            "target_macs_ratio": 0.5,
            "recal_vs_finetuned_val": _rho(spearmanr(rec, ft_val)),
            "recal_vs_finetuned_test": _rho(spearmanr(rec, ft_test)),
            "vanilla_vs_finetuned_val": _rho(spearmanr(van, ft_val)),
            "top1_by_recal_is_top1_finetuned": int(np.argmax(rec)) == int(np.argmax(ft_val)),
        }
    out["_candidates"] = ee
    return out


def _rho(r) -> dict[str, float]:
    return {"rho": float(r.statistic), "p_value": float(r.pvalue)}


# -- latency --------------------------------------------------------------------------


def part_latency(args, ev, result) -> dict[str, Any]:
    """Median ms per forward at batch 1 and 256, ``args.threads`` torch threads, for the dense
    network and every structured winner; rounds interleave the models to share the noise."""
    torch.set_num_threads(args.threads)
    models: dict[str, nn.Module] = {"dense": copy.deepcopy(ev.base)}
    for i, point in enumerate(result["structured"]):
        for key, r in point["tools"].items():
            if "_plan" in r:
                models[f"{i}:{key}"] = apply_plan(ev.base, PrunePlan.from_parquet(r["_plan"]))
    rounds = 1 if args.quick else 3
    shape = tuple(ev.splits.input_shape)
    samples: dict[str, dict[str, list[float]]] = {k: {"b1": [], "b256": []} for k in models}
    loads = []
    log(f"latency: {len(models)} networks, {rounds} rounds, {args.threads} thread(s); load {loadavg()}")
    for _ in range(rounds):
        loads.append(loadavg())
        for k, m in models.items():
            samples[k]["b1"].append(measure.latency_ms(m, shape, 1, 30))
            samples[k]["b256"].append(measure.latency_ms(m, shape, 256, 3))
    loads.append(loadavg())
    med = {k: {b: float(np.median(v)) for b, v in d.items()} for k, d in samples.items()}
    dense = med["dense"]
    log(f"latency: profiling where the time goes (convolutions vs the rest); load {loadavg()}")
    prof = {k: conv_profile(m, shape) for k, m in models.items() if k == "dense" or k.endswith(":prunesearch")}
    for k, d in med.items():
        if k == "dense":
            continue
        i, key = k.split(":", 1)
        r = result["structured"][int(i)]["tools"][key]
        r["latency_ms"] = d
        r["latency_ratio"] = {b: d[b] / dense[b] for b in d}
        r["latency_within_1_3x_of_macs"] = {b: d[b] / dense[b] <= 1.3 * r["macs_ratio"] for b in d}
        if k in prof:
            r["profile_ms"] = prof[k]
    return {
        "dense_ms": dense,
        "threads": args.threads,
        "rounds": rounds,
        "repeats": {"b1": 30, "b256": 3},
        "loadavg_per_round": loads,
        "samples": samples,
        "dense_profile_ms": prof["dense"],
    }


@torch.no_grad()
def conv_profile(model: nn.Module, shape: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Milliseconds per forward spent in convolution kernels and in everything else
    (BatchNorm, ReLU, residual adds, padding, pooling, dispatch), by ``torch.profiler``
    self times, at batch 1 and 256. Profiling inflates the totals; the split is what counts."""
    from torch.profiler import ProfilerActivity, profile

    model.eval()
    out = {}
    for b, reps in (("b1", 20), ("b256", 2)):
        x = torch.randn(int(b[1:]), *shape)
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(reps):
                model(x)
        events = [e for e in p.key_averages() if e.key.startswith("aten::")]
        conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key) / 1e3 / reps
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / reps
        out[b] = {"conv_ms": conv, "other_ms": total - conv}
    return out


# -- verdict and report ---------------------------------------------------------------


def verdict(result) -> list[dict[str, Any]]:
    """Per point: prunesearch's test accuracy against the best peer, twice: peers as they are
    run (torch L1 without recalibration, Torch-Pruning as documented, EagleEye-style), and
    every peer row including the hybrids that borrow prunesearch's recalibration."""
    n_test = result["settings"]["test_images"]
    out = []
    for point in result["unstructured"]:
        tl = point["tools"]
        ps = tl["prunesearch"]
        as_run = {"torch_l1": tl["torch_l1"]["test_accuracy"]}
        hybrids = {"torch_l1_recal": tl["torch_l1_recal"]["test_accuracy"]}
        v = _compare(
            f"{point['target_sparsity']:.0%} weight sparsity",
            ps,
            as_run,
            hybrids,
            n_test,
            budget_ok=ps.get("sparsity", 0) >= point["target_sparsity"] - 1e-9,
        )
        v["reason"] = _reason_unstructured(point, v)
        out.append(v)
    for point in result["structured"]:
        tl = point["tools"]
        ps = tl["prunesearch"]
        as_run, hybrids = {}, {}
        for key in ("tp_layer", "tp_global"):
            if "test_accuracy" in tl.get(key, {}):
                as_run[key] = tl[key]["test_accuracy"]
                hybrids[key + "_recal"] = tl[key]["test_recal"]
        as_run["eagleeye"] = tl["eagleeye"]["test_accuracy"]
        peer_macs = [tl[k]["macs_ratio"] for k in ("tp_layer", "tp_global", "eagleeye") if "macs_ratio" in tl.get(k, {})]
        v = _compare(
            f"{1 / point['target_macs_ratio']:.1f}x fewer MACs",
            ps,
            as_run,
            hybrids,
            n_test,
            budget_ok=ps.get("macs_ratio", 9) <= point["target_macs_ratio"] + 1e-9,
        )
        v["prunesearch_macs_le_every_peer"] = bool(peer_macs) and ps.get("macs_ratio", 9) <= min(peer_macs) + 1e-9
        v["latency_within_1_3x"] = ps.get("latency_within_1_3x_of_macs")
        v["reason"] = _reason_structured(point, v, result["latency"])
        out.append(v)
    return out


def _compare(point: str, ps: dict, as_run: dict[str, float], hybrids: dict[str, float], n: int, budget_ok: bool) -> dict[str, Any]:
    acc = ps.get("test_accuracy")
    # two binomial errors; the test images are shared (paired), so this overstates the noise somewhat
    noise = math.sqrt(2) * (se(acc, n) or 0.0) if acc is not None else 0.0
    v: dict[str, Any] = {"point": point, "prunesearch_test": acc, "budget_ok": budget_ok}
    for name, peers in (("as_run", as_run), ("all", {**as_run, **hybrids})):
        best = max(peers, key=peers.get)
        margin = None if acc is None else acc - peers[best]
        v[name] = {
            "best_peer": best,
            "best_peer_test": peers[best],
            "margin": margin,
            "ahead": bool(margin is not None and margin > 0 and budget_ok),
            "margin_over_2se": None if margin is None or not noise else margin / (2 * noise),
        }
    return v


def _reason_unstructured(point: dict, v: dict) -> str:
    if v["all"]["ahead"]:
        return ""
    tl, ps = point["tools"], point["tools"]["prunesearch"]
    hyb = tl["torch_l1_recal"]
    return (
        f"not ahead of torch L1 + prunesearch's recalibration ({100 * v['all']['margin']:+.1f} points, "
        f"{v['all']['margin_over_2se']:+.1f} x 2 SE{': within noise' if abs(v['all']['margin_over_2se'] or 0) < 1 else ''}). "
        f"That row is torch's global L1 masks with prunesearch's own recalibration; prunesearch's space holds the same "
        f"global-magnitude ranking (method magnitude, scope global) and can only beat it with a better one-shot ranking. Its winner "
        f"({ps.get('recipe')}) at sparsity {ps.get('sparsity', 0):.4f} (searched in [target, target + 0.01]) scored "
        f"{100 * ps.get('val_accuracy', 0):.1f} % on validation vs {100 * hyb['val_accuracy']:.1f} % for the torch masks. "
        f"Against torch as users run it: {100 * v['as_run']['margin']:+.1f} points."
    )


def _reason_structured(point: dict, v: dict, lat: dict) -> str:
    tl, ps = point["tools"], point["tools"]["prunesearch"]
    parts = []
    if not v["all"]["ahead"]:
        best = v["all"]["best_peer"]
        b = tl[best.removesuffix("_recal")]
        parts.append(
            f"behind {best} by {-100 * v['all']['margin']:.1f} points ({v['all']['margin_over_2se']:+.1f} x 2 SE). "
            f"Validation: prunesearch {100 * ps.get('val_accuracy', 0):.1f} % vs {100 * b.get('val_accuracy', 0):.1f} %. "
            f"prunesearch's space allocates per stage (3 multipliers, equal widths inside a stage: "
            f"{_widths(ps.get('channels', {}))}); the EagleEye-style sampler sets 9 layer widths freely "
            f"({_widths(tl['eagleeye'].get('channels', {}))})."
        )
    ok = v.get("latency_within_1_3x") or {}
    prof = ps.get("profile_ms")
    dprof = lat.get("dense_profile_ms")
    for b in ("b1", "b256"):
        if ok.get(b) is False and prof and dprof:
            d, q = dprof[b], prof[b]
            parts.append(
                f"latency at batch {b[1:]}: ratio {ps['latency_ratio'][b]:.2f} > 1.3 x MACs ratio {ps['macs_ratio']:.3f}: "
                f"convolutions {d['conv_ms']:.1f} -> {q['conv_ms']:.1f} ms (x{q['conv_ms'] / d['conv_ms']:.2f}), everything else "
                f"(BatchNorm, ReLU, residual adds, padding on the unpruned residual stream, dispatch) "
                f"{d['other_ms']:.1f} -> {q['other_ms']:.1f} ms (x{q['other_ms'] / d['other_ms']:.2f}) (profiler times)."
            )
    return " ".join(parts)


def _widths(ch: dict[str, int]) -> str:
    return "/".join(str(ch[g]) for g in BLOCK_CONV1 if g in ch)


def _p(x, d=1) -> str:
    return pct(x, d) if x is not None else ""


def _f(x, fmt="{:.3f}") -> str:
    return "" if x is None else fmt.format(x)


def markdown(r: dict[str, Any]) -> str:
    m, st, d = r["machine"], r["settings"], r["dense"]
    n_test = st["test_images"]
    lines = [
        f"# prunesearch vs peer tools ({m['date'][:10]}, {m['cpu_model']}, {m['logical_cpus']} CPUs shared, "
        f"torch {m['torch']}, {st['threads']} torch thread per worker)",
        "",
        f"Reproduce: `.venv/bin/python benchmarks/peers.py{' --quick' if r['quick'] else ''}` "
        f"(Torch-Pruning {st['torch_pruning']}; `pip install -e '.[bench]'`). Git commit `{m['git_commit'][:10]}`. "
        f"Load average at start {m['loadavg_at_start']}, at end {r['loadavg_at_end']}; total {r['total_wall_s'] / 60:.1f} min.",
        "",
        f"Shared ResNet-20 (dense: test {_p(d['test_accuracy'])} %, val {_p(d['val_accuracy'])} %, {d['macs'] / 1e6:.2f} M MACs). "
        f"Same images for every tool: {st['calib_images']} calibration and {st['val_images']} validation images from "
        f"`train_exact.npz` (selection), {n_test} test images (`test_exact.npz`, report only; standard error about "
        f'{100 * se(0.7, n_test):.1f} points at 70 %). Recalibration (every "+ recal" and prunesearch): reset, '
        f"cumulative average over {st['recalibration']['images']} calibration images, flips and black-padded 4-px crops, keep the "
        f"stored statistics when they score higher on validation. prunesearch: {st['candidates_per_search']} candidates "
        "per point (TPE, 2 Ray actors of 1 thread, Ray started by the search). Accuracies are top-1 %.",
        "",
        "## 1. Unstructured, no fine-tuning (test accuracy)",
        "",
    ]
    rows = []
    for p in r["unstructured"]:
        tl = p["tools"]
        ps = tl["prunesearch"]
        rows.append(
            [
                f"{p['target_sparsity']:.0%}",
                _p(tl["torch_l1"]["test_accuracy"]),
                _p(tl["torch_l1_recal"]["test_accuracy"]),
                _p(ps.get("test_accuracy")),
                _f(ps.get("sparsity"), "{:.4f}"),
                ps.get("recipe", ps.get("error", "")),
                _p(ps.get("val_accuracy")),
                f"{ps['evaluated']} cand., {ps['wall_s']:.0f} s",
            ]
        )
    lines.append(
        md_table(
            [
                "sparsity",
                "torch L1 (as users run it)",
                "torch L1 + recal",
                "prunesearch",
                "prunesearch sparsity",
                "prunesearch winner",
                "its val",
                "prunesearch budget",
            ],
            rows,
        )
    )
    lines += ["", "## 2. Structured, no fine-tuning (test accuracy; latency 1 thread)", ""]
    if r["structured"] and "tp_documented_default" in r["structured"][0]:
        lines += [
            f"Torch-Pruning as its README runs it (only the classifier ignored) on this option-A ResNet: "
            f"`{r['structured'][0]['tp_documented_default']}`. Below it is restricted to the block-internal channels "
            "(each BasicBlock's conv1 output), where its pruned networks were checked against prunesearch's `shrink` "
            "of the same channels (max logit difference in the JSON).",
            "",
        ]
    lat = r["latency"]
    lines.append(
        f"Dense latency: {lat['dense_ms']['b1']:.2f} ms at batch 1, {lat['dense_ms']['b256']:.0f} ms at batch 256 "
        f"(median of {lat['rounds']} interleaved rounds; load per round {lat['loadavg_per_round']})."
    )
    lines.append("")
    rows = []
    names = {
        "tp_layer": "Torch-Pruning per-layer",
        "tp_global": "Torch-Pruning global",
        "eagleeye": "EagleEye-style random + adaptive BN",
        "prunesearch": "prunesearch",
    }
    for p in r["structured"]:
        for key in ("tp_layer", "tp_global", "eagleeye", "prunesearch"):
            x = p["tools"].get(key, {})
            if "error" in x and "test_accuracy" not in x:
                rows.append([f"{1 / p['target_macs_ratio']:.1f}x", names[key], "", "", "", "", "", "", "", x["error"][:80]])
                continue
            lr = x.get("latency_ratio", {})
            ok = x.get("latency_within_1_3x_of_macs", {})
            rows.append(
                [
                    f"{1 / p['target_macs_ratio']:.1f}x",
                    names[key],
                    _f(x.get("macs_ratio")),
                    _p(x.get("test_accuracy")),
                    _p(x.get("test_recal")) if key.startswith("tp") else "",
                    f"{x['latency_ms']['b1']:.2f} ({lr['b1']:.2f}{'' if ok.get('b1') else ' !'})" if "latency_ms" in x else "",
                    f"{x['latency_ms']['b256']:.0f} ({lr['b256']:.2f}{'' if ok.get('b256') else ' !'})" if "latency_ms" in x else "",
                    _f(x.get("wall_s"), "{:.1f}"),
                    {"tp_layer": "1 (+ratio bisection)", "tp_global": "1 (+ratio bisection)"}.get(
                        key, str(x.get("candidates", x.get("evaluated", "")))
                    ),
                    x.get("recipe", "") if key == "prunesearch" else "",
                ]
            )
    lines.append(
        md_table(
            [
                "speed-up target",
                "tool",
                "MACs ratio",
                "test acc",
                "+ recal",
                "ms batch 1 (ratio)",
                "ms batch 256 (ratio)",
                "wall s",
                "candidates",
                "prunesearch winner",
            ],
            rows,
        )
    )
    lines += [
        "",
        "Ratio = pruned / dense latency; `!` marks a ratio above 1.3 x the MACs ratio (the MACs promise missed). "
        "Torch-Pruning is shown as documented (no recalibration) and with prunesearch's recalibration (+ recal). "
        "EagleEye-style candidates are all adaptive-BN recalibrated.",
        "",
    ]

    lines += ["## 3. Fine-tuning the winners (same budget), and the EagleEye claim", ""]
    if not r["finetune"]:
        lines += ["Not run (`--no-finetune`).", ""]
    else:
        lines += [
            f"{st['finetune']['steps']} SGD steps, batch {st['finetune']['batch']}, lr {st['finetune']['lr']} ({st['finetune']['schedule']}) "
            f"on the {st['train_images']} training images, masks kept for unstructured networks; test accuracy before -> after. "
            f"Wall {r['finetune']['wall_s'] / 60:.1f} min on 2 workers (load {r['finetune']['loadavg']}).",
            "",
        ]
    rows = []
    for part in ("unstructured", "structured"):
        for p in r[part]:
            pt = f"{p['target_sparsity']:.0%} sparsity" if part == "unstructured" else f"{1 / p['target_macs_ratio']:.1f}x fewer MACs"
            for key, x in p["tools"].items():
                if "finetuned" not in x:
                    continue
                before = x.get("test_accuracy")
                rows.append([pt, x.get("label", key), _p(before), _p(x["finetuned"]["test_accuracy"]), _p(x["finetuned"]["val_accuracy"])])
    lines.append(md_table(["point", "tool", "test before", "test after fine-tuning", "val after"], rows))
    sp = r["finetune"].get("spearman")
    if sp:
        lines += [
            "",
            f"Spearman rank correlation over {sp['candidates']} EagleEye-style random candidates at 2x fewer MACs, "
            f"each fine-tuned {sp['steps']} steps: adaptive-BN val accuracy vs fine-tuned val accuracy "
            f"rho = {sp['recal_vs_finetuned_val']['rho']:.2f} (p = {sp['recal_vs_finetuned_val']['p_value']:.2g}); "
            f"vs fine-tuned test accuracy rho = {sp['recal_vs_finetuned_test']['rho']:.2f}; vanilla (stored BN statistics) val "
            f"accuracy vs fine-tuned val accuracy rho = {sp['vanilla_vs_finetuned_val']['rho']:.2f} "
            f"(p = {sp['vanilla_vs_finetuned_val']['p_value']:.2g}). Best by adaptive BN is best after fine-tuning: "
            f"{sp['top1_by_recal_is_top1_finetuned']}.",
        ]
    lines += ["", "## 4. Wall time of each tool for its result", ""]
    rows = []
    for p in r["unstructured"]:
        tl = p["tools"]
        pt = f"{p['target_sparsity']:.0%} sparsity"
        rows.append([pt, "torch global_unstructured", f"{tl['torch_l1']['wall_s']:.2f}", "1 candidate", str(tl["torch_l1"]["loadavg"])])
        rows.append(
            [
                pt,
                "torch + prunesearch recal",
                f"{tl['torch_l1_recal']['wall_s']:.2f}",
                f"recal {tl['torch_l1_recal']['recal_s']:.1f} s",
                str(tl["torch_l1_recal"]["loadavg"]),
            ]
        )
        ps = tl["prunesearch"]
        rows.append(
            [
                pt,
                "prunesearch search",
                f"{ps['wall_s']:.0f}",
                f"{ps['evaluated']} candidates, loop {ps['loop_s']:.0f} s, incl. Ray start",
                str(ps["loadavg"]),
            ]
        )
    for p in r["structured"]:
        tl = p["tools"]
        pt = f"{1 / p['target_macs_ratio']:.1f}x fewer MACs"
        for key in ("tp_layer", "tp_global"):
            x = tl.get(key, {})
            if "wall_s" in x:
                rows.append(
                    [
                        pt,
                        names[key],
                        f"{x['wall_s']:.2f}",
                        f"one prune {x['step_s']:.2f} s; {x['bisect_evals']} prunes to bisect the ratio",
                        str(x["loadavg"]),
                    ]
                )
        x = tl["eagleeye"]
        rows.append([pt, names["eagleeye"], f"{x['wall_s']:.0f}", f"{x['candidates']} candidates, 2 workers", str(x["loadavg"])])
        ps = tl["prunesearch"]
        rows.append(
            [
                pt,
                "prunesearch search",
                f"{ps['wall_s']:.0f}",
                f"{ps['evaluated']} candidates, loop {ps['loop_s']:.0f} s, incl. Ray start",
                str(ps["loadavg"]),
            ]
        )
    lines.append(md_table(["point", "tool", "wall s", "what", "load average (1, 5, 15 min)"], rows))
    lines += ["", "## Verdict (target: prunesearch ahead of every peer at every point, at equal or smaller budget)", ""]
    lines += [
        "Budget: every tool at a point has the same target, prunesearch at equal or higher weight sparsity "
        "(unstructured) and at most the target MACs ratio (structured; see the MACs ratio column for each tool). "
        '"As run": peers as their users run them (torch L1 without recalibration, Torch-Pruning as documented, '
        'EagleEye-style with its adaptive BN). "All": also the hybrid rows that borrow prunesearch\'s recalibration.',
        "",
    ]
    rows = []
    for v in r["verdict"]:
        lat = v.get("latency_within_1_3x")
        row = [v["point"], _p(v["prunesearch_test"])]
        for name in ("as_run", "all"):
            c = v[name]
            row += [
                f"{c['best_peer']} {_p(c['best_peer_test'])}",
                f"{_f(None if c['margin'] is None else 100 * c['margin'], '{:+.1f}')} ({_f(c['margin_over_2se'], '{:+.1f}')})",
                "yes" if c["ahead"] else "NO",
            ]
        row.append("" if lat is None else ("b1 " + ("ok" if lat.get("b1") else "NO") + ", b256 " + ("ok" if lat.get("b256") else "NO")))
        rows.append(row)
    lines.append(
        md_table(
            [
                "point",
                "prunesearch test",
                "best peer as run",
                "margin (/ 2 SE)",
                "ahead",
                "best peer, all rows",
                "margin (/ 2 SE)",
                "ahead",
                "latency within 1.3x of MACs",
            ],
            rows,
        )
    )
    lines += ["", "Margins in points of test accuracy; (/ 2 SE) below 1 in size: within the noise of 1017 test images.", ""]
    reasons = [f"- **{v['point']}**: {v['reason']}" for v in r["verdict"] if v.get("reason")]
    if reasons:
        lines += ["Where the target is missed, and why:", ""] + reasons
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
