"""prunesearch against peer tools on the shared ResNet-20 and exact CIFAR-10 images.

What is compared, and how, is in ``benchmarks/README.md`` (section peers). Every peer
that recalibrates, scores or fine-tunes a network does it through the product: the
evaluator (``Evaluator.rebuild``, with ``CandidateSpec.finetune_steps`` for fine-tuning),
``select_channels`` (the EagleEye-style sampler's per-layer ratios) and the record
reader ``search.export.rebuild.rebuild`` (prunesearch's winners). Settings come from
``configs/resnet20_cifar10.yaml``.

    .venv/bin/python benchmarks/peers.py [--quick] [--candidates 24] [--shared ../shared]
    .venv/bin/python benchmarks/peers_report.py          # peers.md again from peers.json

Writes peers.json and, from it alone, peers.md (``peers_report.py``) to
benchmarks/results (``--quick``: a temporary folder). Needs ``torch-pruning`` (the
``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from pipeline import measure  # noqa: E402
from pipeline.evaluator import Evaluator  # noqa: E402
from pipeline.measure import MeasureConfig  # noqa: E402
from pipeline.pruning.bisection import smallest_passing  # noqa: E402
from pipeline.pruning.layers import prunable_weights  # noqa: E402
from pipeline.pruning.methods.magnitude import filter_norms  # noqa: E402
from pipeline.pruning.plan import PrunePlan  # noqa: E402
from pipeline.pruning.structure import channel_graph, lowest_macs_ratio, select_channels  # noqa: E402
from pipeline.spec import CandidateSpec, RecalSpec  # noqa: E402
from pipeline.train import train_classifier  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.export.rebuild import rebuild  # noqa: E402

from common import (  # noqa: E402
    RESULTS_DIR,
    Timer,
    bench_parser,
    dense_reference,
    load_resnet20_cifar,
    loadavg,
    log,
    machine_info,
    make_evaluator,
    plan_accuracy,
    plan_model,
    ranked_candidates,
    resnet20_config,
    run_resnet20_search,
    write_json,
    write_text,
)
from peers_report import markdown, verdict  # noqa: E402

SPARSITIES = (0.7, 0.8, 0.9)
MACS_TARGETS = (2 / 3, 0.5, 0.4)  # 1.5x, 2x, 2.5x fewer MACs
EAGLEEYE_MAX_FRACTION = 0.75  # the EagleEye sampler's cap: no layer loses more
ALLOC = [0.25, 2.0]  # per-stage multiplier on the pruned fraction (prunesearch's structured space)
CHANNEL_SPEC = {
    "method": "magnitude",
    "granularity": "channel",
    "scope": "layerwise",
    "target_sparsity": None,
    "prune_stem": False,
    "prune_head": False,
}
BLOCK_CONV1 = tuple(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))
# the evaluator fine-tunes with train_classifier's batch (it passes none)
FT_BATCH = inspect.signature(train_classifier).parameters["batch_size"].default


def main() -> None:
    ap = bench_parser(__doc__, "one point per part, few candidates, short fine-tuning")
    ap.add_argument("--candidates", type=int, default=24, help="candidates per prunesearch search and per EagleEye-style search (per point)")
    ap.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning steps for every winner")
    ap.add_argument("--spearman-steps", type=int, default=100, help="fine-tuning steps per candidate of the Spearman measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker and for latency")
    ap.add_argument("--sparsities", type=float, nargs="*", default=None, help=f"unstructured points (default {SPARSITIES}; none: skip)")
    ap.add_argument("--macs-ratios", type=float, nargs="*", default=None, help=f"structured MACs ratios (default {MACS_TARGETS}; none: skip)")
    ap.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning part (and the Spearman measurement)")
    ap.add_argument("--no-reconstruct", action="store_true", help="prunesearch's space without reconstruction (space.reconstruct [none])")
    ap.add_argument("--recon-images", type=int, default=None, help="reconstruction.images of prunesearch's searches (default: the config's)")
    ap.add_argument("--recon-ridge", type=float, default=None, help="reconstruction.ridge of prunesearch's searches (default: the config's)")
    ap.add_argument("--recon-layers", default=None, choices=["pruned", "all"], help="reconstruction.layers (default: the config's)")
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
    sparsities = (0.8,) if args.quick else tuple(SPARSITIES if args.sparsities is None else args.sparsities)
    targets = (0.5,) if args.quick else tuple(MACS_TARGETS if args.macs_ratios is None else args.macs_ratios)
    val_size = 300 if args.quick else None
    shared = Path(args.shared).expanduser().resolve()
    t_start = time.perf_counter()

    torch.set_num_threads(args.threads)
    cfg = resnet20_config(shared, {} if val_size is None else {"data": {"val_size": val_size}})
    calib, val_size = cfg.data.calib_size, cfg.data.val_size
    assets = load_resnet20_cifar(shared, calib, val_size)
    ev = make_evaluator(assets, args.threads, _measure_cfg())
    s = assets.splits
    dense = {**dense_reference(ev), "weights": sum(w.numel() for w in prunable_weights(assets.base, True, True).values())}
    result: dict[str, Any] = {
        "machine": machine_info(),
        "command": " ".join(["python benchmarks/peers.py", *sys.argv[1:]]),
        "quick": args.quick,
        "settings": {
            "calib_images": calib,
            "val_images": len(s.val),
            "train_images": len(s.train),
            "test_images": len(s.test),
            "recalibration": cfg.recalibration.model_dump(),
            "candidates_per_search": args.candidates,
            "sampler": cfg.sampler.name,
            "finetune": {
                "steps": args.finetune_steps,
                "batch": FT_BATCH,
                "lr": CandidateSpec.model_fields["finetune_lr"].default,
                "schedule": "cosine, SGD momentum 0.9, wd 5e-4",  # as pipeline/train.py train_classifier (no constant there)
            },
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
    pool = ProcessPoolExecutor(2, mp_context=ctx, initializer=_worker_init, initargs=(str(shared), calib, val_size, args.threads))
    bench = Bench(args, shared, runs_root, ev, cfg)
    try:
        result["unstructured"] = part_unstructured(bench, sparsities)
        result["structured"] = part_structured(bench, targets, pool)
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
                r.pop("_spec", None)
    result["structured_spearman_candidates"] = result["finetune"].pop("_candidates", [])
    write_json(out_dir / "peers.json", result)
    write_text(out_dir / "peers.md", markdown(result))
    print(markdown(result))
    log(f"wrote {out_dir / 'peers.json'} and {out_dir / 'peers.md'}")


@dataclass
class Bench:
    """What every part of one run shares: the arguments, the shared assets folder, the
    searches' run folders, the in-process evaluator and the ResNet-20 config."""

    args: argparse.Namespace
    shared: Path
    runs_root: Path
    ev: Evaluator
    cfg: SearchConfig

    @property
    def recal(self) -> RecalSpec:
        """prunesearch's recalibration (the config's), for every tool that gets one."""
        return self.cfg.recalibration


def _measure_cfg() -> MeasureConfig:
    # test accuracy for the report only; latency is measured separately (part_latency)
    return MeasureConfig(test_accuracy=True, collapse_plot=False, latency_repeats=1, latency_batch=1)


def _tp_version() -> str:
    try:
        from importlib.metadata import version

        return version("torch-pruning")
    except Exception:
        return ""


# -- workers (EagleEye-style candidates, fine-tuning) -----------------------------------

_W: dict[str, Any] = {}


def _worker_init(shared: str, calib: int, val: int, threads: int) -> None:
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore")
    _W["ev"] = make_evaluator(load_resnet20_cifar(Path(shared), calib, val), threads, _measure_cfg())


def _eval_plan(spec_json: str, plan_bytes: bytes) -> dict[str, float]:
    """The evaluator's replay of one plan (recalibration, measurements): its metrics and wall seconds."""
    t0 = time.perf_counter()
    _, r = _W["ev"].rebuild(CandidateSpec.from_json(spec_json), PrunePlan.from_parquet(plan_bytes))
    return {**r.metrics, "wall_s": time.perf_counter() - t0}


def _finetune(spec_json: str, plan_bytes: bytes, steps: int) -> dict[str, float]:
    """The evaluator's fine-tuning of one plan's network (``finetune_steps``: recalibrated,
    then SGD at the spec's ``finetune_lr``, masks kept), scored on validation and test.

    BatchNorm layers run in train mode during fine-tuning and their running statistics
    are re-estimated with momentum 0.1, so after a few dozen steps the recalibration
    before it makes no difference."""
    spec = CandidateSpec.from_json(spec_json).model_copy(update={"finetune_steps": steps})
    m = _eval_plan(spec.to_json(), plan_bytes)
    return {"val_accuracy": m["accuracy"], "test_accuracy": m["test_accuracy"], "wall_s": m["finetune_s"], "steps": steps}


# -- prunesearch searches -------------------------------------------------------------


def _prunesearch_point(b: Bench, name: str, space: dict[str, Any], constraint: dict[str, float]) -> dict[str, Any]:
    """One real constrained prunesearch search (Ray started by the search, 2 actors) and
    its best candidate on validation among the feasible ones meeting ``constraint`` (a
    ``search.records.query.FILTERS`` bound: ``min_sparsity`` or ``max_macs_ratio``;
    ``common.ranked_candidates``), rebuilt from its record."""
    a = b.args
    recon = {"images": a.recon_images, "ridge": a.recon_ridge, "layers": a.recon_layers}
    overrides = {
        "name": name,
        "run_dir": str(b.runs_root / name),
        "data": {"val_size": b.cfg.data.val_size},
        "space": {**space, "reconstruct": ["none"] if a.no_reconstruct else ["none", "lsq"]},
        "objective": {"mode": "constrained", **constraint},
        "reconstruction": {k: v for k, v in recon.items() if v is not None},
        "sampler": {"startup_trials": max(2, a.candidates // 3)},
        "budget": {"trials": a.candidates},
        "actors": {"count": 2, "threads": a.threads},
        "measure": _measure_cfg().model_dump(),
    }
    srch = run_resnet20_search(b.shared, overrides, replace=("space", "objective"))
    rows = ranked_candidates(srch, feasible=True, **constraint)
    out: dict[str, Any] = {
        "label": "prunesearch best searched candidate",
        "candidates": a.candidates,
        "evaluated": srch.outcome.evaluated,
        "failed": srch.outcome.failed,
        "eligible": len(rows),
        "wall_s": srch.wall_s,
        "loop_s": srch.outcome.loop_s,
        "loadavg": [srch.loadavg_before, srch.loadavg_after],
        "space": space,
    }
    if not rows:
        return {**out, "error": "no eligible candidate"}
    best = rows[0]  # validation only
    rb = rebuild(srch.outcome.tracking_uri, best["run_id"])  # the record reader; checks the recorded accuracy
    m = rb.metrics
    out.update(
        {
            "recipe": _spec_summary(rb.spec),
            "spec": rb.spec.model_dump(),
            "run_trial": best["trial"],
            "val_before_recal": m["accuracy_before_recal"],
            "val_accuracy": m["accuracy"],
            "test_accuracy": m["test_accuracy"],
            "test_before_recal": plan_accuracy(b.ev, rb.plan, rb.spec, b.ev.splits.test),
            "recorded_val_accuracy": best["accuracy"],
            "recorded_test_accuracy": best.get("test_accuracy"),
            "sparsity": m["sparsity"],
            "macs_ratio": m["macs_ratio"],
            "macs": m["macs"],
            "recal_applied": m["recal_applied"],
            "all_candidates": [{k: r.get(k) for k in ("trial", "method", "accuracy", "test_accuracy", "sparsity", "macs_ratio")} for r in srch.rows],
            "_plan": rb.plan.to_parquet(),
            "_spec": rb.spec.to_json(),
        }
    )
    return out


def _spec_summary(spec: CandidateSpec) -> str:
    parts = [spec.method, spec.scope]
    parts += [f"{k}={v:.2f}" for k, v in spec.knobs.items()]
    if spec.allocation:
        parts.append("alloc " + "/".join(f"{v:.2f}" for _, v in sorted(spec.allocation.items())))
    if spec.reconstruct.mode != "none":
        parts.append(f"+ {spec.reconstruct.mode} reconstruction")
    return " ".join(parts)


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


def part_unstructured(b: Bench, sparsities) -> list[dict[str, Any]]:
    s, points = b.ev.splits, []
    for t in sparsities:
        log(f"unstructured {t:.0%}: torch global_unstructured L1; load {loadavg()}")
        tools: dict[str, dict[str, Any]] = {}
        model, masks, prune_s = torch_global_l1(b.ev.base, t)
        spec = CandidateSpec(method="magnitude", granularity="unstructured", target_sparsity=t, recal=b.recal)
        _, r = b.ev.rebuild(spec, PrunePlan(masks=masks))
        m = r.metrics
        tools["torch_l1"] = {
            "label": "torch global_unstructured L1 (no recalibration)",
            "sparsity": measure.pruned_fraction(model, b.ev.base),  # over every conv/linear weight
            "val_accuracy": measure.accuracy(model, s.val, s.val.y),
            "test_accuracy": measure.accuracy(model, s.test, s.test.y),
            "wall_s": prune_s,
            "loadavg": loadavg(),
            "_plan": PrunePlan(masks=masks).to_parquet(),
            "_spec": spec.to_json(),
        }
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
        log(f"unstructured {t:.0%}: prunesearch search ({b.args.candidates} candidates); load {loadavg()}")
        space = {
            "methods": ["magnitude", "screening", "activation"],
            "granularity": ["unstructured"],
            "scope": ["global", "layerwise"],
            "sparsity": [t, min(t + 0.01, 0.99)],
            "knobs": {"screening": {"screening_weight": [0.0, 1.0]}},
        }
        tools["prunesearch"] = ps = _prunesearch_point(b, f"peers-unstructured-{round(t * 100)}", space, {"min_sparsity": t})
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


TP_RATIO_TOL = 1e-4  # bisection tolerance on Torch-Pruning's pruning_ratio
TP_RATIO_MAX = 0.95


def tp_for_target(base, example, target: float, global_pruning: bool) -> dict[str, Any]:
    """Smallest ``pruning_ratio`` in (0, 0.95] whose pruned model has at most ``target`` of
    the dense MACs by ``tp.utils.count_ops_and_params``, within ``TP_RATIO_TOL`` above it
    (``bisection.smallest_passing``); the model and its timing."""
    import torch_pruning as tp

    dense_ops = float(tp.utils.count_ops_and_params(base, example)[0])
    calls = 0

    def meets(ratio: float) -> bool:
        nonlocal calls
        calls += 1
        return _tp_ops_ratio(_tp_prune(base, example, ratio, global_pruning), example, dense_ops) <= target

    t0 = time.perf_counter()
    ratio = smallest_passing(meets, 0.0, TP_RATIO_MAX, math.ceil(math.log2(TP_RATIO_MAX / TP_RATIO_TOL)))
    if ratio is None:
        raise RuntimeError(f"Torch-Pruning cannot reach MACs ratio {target} with pruning_ratio {TP_RATIO_MAX}")
    bisect_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    model = _tp_prune(base, example, ratio, global_pruning)
    step_s = time.perf_counter() - t1
    return {
        "model": model,
        "pruning_ratio": ratio,
        "tp_macs_ratio": _tp_ops_ratio(model, example, dense_ops),
        "bisect_s": bisect_s,
        "step_s": step_s,
        "bisect_evals": calls + 1,  # with the final prune
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


def check_equivalent(ev: Evaluator, tp_model: nn.Module, plan: PrunePlan, spec: CandidateSpec, x: torch.Tensor) -> float:
    """Max |logit difference| between Torch-Pruning's network and prunesearch's ``shrink`` of the same channels."""
    ours = plan_model(ev, plan, spec)
    sd_tp, sd_ours = tp_model.state_dict(), ours.state_dict()
    if set(sd_tp) != set(sd_ours) or any(sd_tp[k].shape != sd_ours[k].shape for k in sd_tp):
        raise RuntimeError("Torch-Pruning's network has other tensors or shapes than the same channels removed by prunesearch")
    with torch.no_grad():
        return float((tp_model.eval()(x) - ours.eval()(x)).abs().max())


def eagleeye_plans(graph, scores: dict[str, torch.Tensor], target: float, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` random per-layer channel plans meeting ``target`` (MACs ratio), EagleEye-style.

    Each plan draws a random direction u (one uniform number per layer) and keeps what
    ``select_channels`` keeps with u as per-layer ratios on the removed fraction: layer l
    loses round(f * u_l * size_l) channels (at most 75 %), with the smallest common f
    that meets the MACs target, and keeps the filters of highest score. A draw that
    cannot meet the target is redrawn (EagleEye rejects them).
    """
    floor = lowest_macs_ratio(graph, EAGLEEYE_MAX_FRACTION)
    if target < floor:
        raise ValueError(f"MACs ratio {target} is below {floor:.4f}, the lowest the EagleEye sampler's {EAGLEEYE_MAX_FRACTION:.0%} cap reaches")
    rng = np.random.default_rng(seed)
    names = [g.name for g in graph.groups]
    plans: list[dict[str, torch.Tensor]] = []
    for _ in range(100 * n):
        u = {g: float(rng.uniform(0.0, 1.0)) for g in names}
        try:
            plans.append(select_channels(graph, scores, target, scope="layerwise", group_ratios=u, max_prune_fraction=EAGLEEYE_MAX_FRACTION))
        except ValueError:
            continue
        if len(plans) == n:
            return plans
    raise RuntimeError(f"only {len(plans)} of {100 * n} random directions met MACs ratio {target}")


def part_structured(b: Bench, targets, pool) -> list[dict[str, Any]]:
    base, s = b.ev.base, b.ev.splits
    example = s.val.x[:1]
    graph = channel_graph(base, example, prune_stem=False, prune_head=False)
    if sorted(g.name for g in graph.groups) != sorted(BLOCK_CONV1):
        raise RuntimeError(f"unexpected channel groups {[g.name for g in graph.groups]}")
    modules = dict(base.named_modules())
    l1 = {g: filter_norms(modules[g].weight, 1) for g in BLOCK_CONV1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default_note = tp_documented_default(base, example)
    log(f"Torch-Pruning with only the classifier ignored: {default_note}")
    points = []
    for t in targets:
        tools: dict[str, dict[str, Any]] = {}
        spec = CandidateSpec(**CHANNEL_SPEC, target_macs_ratio=t, recal=b.recal)  # what the peers' plans are replayed as
        for key, glob in (("tp_layer", False), ("tp_global", True)):
            log(f"structured {t:.3f}: Torch-Pruning {'global' if glob else 'per-layer'}; load {loadavg()}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    r = tp_for_target(base, example, t, glob)
                except Exception as e:
                    tools[key] = {"error": f"{type(e).__name__}: {e}"}
                    continue
            model = r.pop("model")
            plan = PrunePlan(channels=recover_channels(base, model))
            diff = check_equivalent(b.ev, model, plan, spec, s.val.x[:256])
            _, rr = b.ev.rebuild(spec, plan)
            m = rr.metrics
            tools[key] = {
                "label": f"Torch-Pruning MagnitudeImportance, {'global' if glob else 'per-layer'}",
                **r,
                "macs_ratio": m["macs_ratio"],
                "macs": m["macs"],
                "max_logit_diff_vs_shrink": diff,
                "channels": {g: int(v.numel()) for g, v in plan.channels.items()},
                "val_accuracy": measure.accuracy(model, s.val, s.val.y),
                "test_accuracy": measure.accuracy(model, s.test, s.test.y),
                "val_recal": m["accuracy"],
                "test_recal": m["test_accuracy"],
                "recal_applied": m["recal_applied"],
                "recal_s": m["recal_s"],
                "wall_s": r["bisect_s"] + r["step_s"],
                "loadavg": loadavg(),
                "_plan": plan.to_parquet(),
                "_spec": spec.to_json(),
            }
            log(
                f"  MACs ratio {m['macs_ratio']:.3f} (tp {r['tp_macs_ratio']:.3f}), test {tools[key]['test_accuracy']:.4f}, "
                f"+recal {m['test_accuracy']:.4f}; logits vs shrink {diff:.1e}"
            )

        log(f"structured {t:.3f}: EagleEye-style random search ({b.args.candidates} candidates, 2 workers); load {loadavg()}")
        load0 = loadavg()
        with Timer() as tm:
            plans = [PrunePlan(channels=c) for c in eagleeye_plans(graph, l1, t, b.args.candidates, seed=round(t * 1000))]
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
            "_spec": spec.to_json(),
        }
        log(f"  best val {c['accuracy']:.4f} test {c['test_accuracy']:.4f} MACs ratio {c['macs_ratio']:.3f}, {tm.s:.0f} s")

        log(f"structured {t:.3f}: prunesearch search ({b.args.candidates} candidates); load {loadavg()}")
        # scope: layerwise only, the better channel scope on this model (methods benchmark,
        # benchmarks/results/methods.md: magnitude at 2x fewer MACs)
        space = {
            "methods": ["magnitude", "screening", "activation", "bn_activation"],
            "granularity": ["channel"],
            "scope": ["layerwise"],
            "macs_ratio": [max(t - 0.01, 0.01), t],
            "prune_stem": False,
            "prune_head": False,
            "knobs": {"magnitude": {"norm": [1, 2]}, "screening": {"screening_weight": [0.0, 1.0]}},
            "allocation": {"layer1": ALLOC, "layer2": ALLOC, "layer3": ALLOC},
        }
        ps = _prunesearch_point(b, f"peers-structured-{round(t * 1000)}", space, {"max_macs_ratio": t})
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
                    "_spec": spec.to_json(),
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
                if "_plan" in r:
                    jobs.append((part, i, key, r["_spec"], r["_plan"]))
    ee = []
    for point in result["structured"]:
        ee = point.pop("_ee_candidates", None) or ee
    log(
        f"fine-tuning {len(jobs)} winners x {args.finetune_steps} steps and {len(ee)} candidates x {args.spearman_steps} steps "
        f"(2 workers); load {loadavg()}"
    )
    load0 = loadavg()
    with Timer() as tm:
        futs = [pool.submit(_finetune, spec, plan, args.finetune_steps) for *_, spec, plan in jobs]
        sfuts = [pool.submit(_finetune, c["_spec"], c["_plan"], args.spearman_steps) for c in ee]
        for n, ((part, i, key, *_), f) in enumerate(zip(jobs, futs), 1):
            result[part][i]["tools"][key]["finetuned"] = f.result()
            log(f"  winner {n}/{len(jobs)} {part} {i} {key}: test {f.result()['test_accuracy']:.4f} ({f.result()['wall_s']:.0f} s)")
        for n, (c, f) in enumerate(zip(ee, sfuts), 1):
            c["finetuned"] = f.result()
            c.pop("_plan")
            c.pop("_spec")
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
                models[f"{i}:{key}"] = plan_model(ev, r["_plan"], CandidateSpec.from_json(r["_spec"]))
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


if __name__ == "__main__":
    main()
