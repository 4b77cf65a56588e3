"""Checks that need the data and the base model, run before any candidate is evaluated."""

from __future__ import annotations

import torch

from pipeline.build import apply_plan, plan_candidate
from pipeline.data.splits import DataError, Splits
from pipeline.measure import NumericsError, accuracy, macs
from pipeline.models import build_model, load_base
from pipeline.pruning.layers import stages
from pipeline.pruning.methods import PruneContext, get_method
from pipeline.spec import CandidateSpec
from search.config import ConfigError, SearchConfig


def check_labels(cfg: SearchConfig, splits: Splits) -> None:
    """Refuse labels the model cannot output (before the base model is built or trained)."""
    if splits.num_classes > cfg.model.num_classes:
        raise DataError(
            f"data: labels go up to {splits.num_classes - 1} but model.num_classes is {cfg.model.num_classes}; "
            "set model.num_classes to the number of classes"
        )


def check_model_fits(cfg: SearchConfig, splits: Splits) -> None:
    """Refuse images the model cannot take (channels, size), before it is trained or loaded."""
    model = build_model(cfg.model.model_copy(update={"checkpoint": None}))
    try:
        with torch.no_grad():
            model(splits.val.batch(0, 2))
    except RuntimeError as e:
        raise DataError(
            f"data: images of shape {splits.input_shape} (C, H, W) do not fit model {cfg.model.name} "
            f"({str(e)[:200]}); check data.name / data.path against the model"
        ) from None


def check_base_model(cfg: SearchConfig, splits: Splits, state: dict[str, torch.Tensor]) -> None:
    """Refuse a dense model that cannot be a base: NaN outputs or chance-level accuracy
    on the validation split (NaN weights, a broken normalisation, the wrong checkpoint)."""
    model = load_base(cfg.model, state)
    try:
        acc = accuracy(model, splits.val, splits.val.y)
    except NumericsError:
        raise DataError(
            "the dense base model gives NaN or Inf outputs on the validation images; check model.checkpoint for NaN weights and data.mean / data.std"
        ) from None
    # chance: what always answering the most frequent class scores (at least 1 / classes)
    chance = max(1.0 / splits.num_classes, float(torch.bincount(splits.val.y).max()) / max(len(splits.val.y), 1))
    if acc <= chance:
        raise DataError(
            f"the dense base model scores {acc:.3f} on the validation split, no better than chance ({chance:.3f}); "
            "check model.checkpoint, data.mean / data.std and the labels (or train it longer: base_training.steps)"
        )


def check_constraint(cfg: SearchConfig, splits: Splits, state: dict[str, torch.Tensor]) -> None:
    """Refuse a MACs constraint that no candidate of the space can meet, naming the field."""
    limit = cfg.objective.max_macs_ratio
    if cfg.objective.mode == "constrained" and limit is not None:
        lowest = most_pruned_macs_ratio(cfg, splits, state)
        if lowest is not None and lowest > limit:
            raise ConfigError(
                f"objective.max_macs_ratio: {limit} is below what any candidate of this space can reach "
                f"(lowest about {lowest:.3f} of dense MACs); raise it or widen space.sparsity / space.macs_ratio"
            )


def most_pruned_macs_ratio(cfg: SearchConfig, splits: Splits, state: dict[str, torch.Tensor]) -> float | None:
    """Effective-MACs ratio of the most aggressive one-shot candidate of the space (magnitude
    at the top of the sparsity range, or channels at the bottom of the MACs range); None
    when the space has no one-shot method (sizes are then outcomes of training). Measured
    on the space's candidates; ``structure.lowest_macs_ratio`` is the channel selection's
    floor on one channel graph."""
    if not any(get_method(m).target == "sparsity" for m in cfg.space.methods):
        return None
    model = load_base(cfg.model, state)
    ctx = PruneContext.from_splits(splits)
    x = ctx.example_input
    dense, _ = macs(model, x)
    ratios = []
    for gran in cfg.space.granularity:
        spec = CandidateSpec(
            granularity=gran,
            target_sparsity=cfg.space.sparsity[1] if gran == "unstructured" else None,
            target_macs_ratio=cfg.space.macs_ratio[0] if gran == "channel" else None,
            nm=min(cfg.space.nm, key=lambda p: p[0] / p[1]) if gran == "nm" else None,  # the sparsest pattern
            prune_stem=cfg.space.prune_stem,
            prune_head=cfg.space.prune_head,
        )
        try:
            ratios.append(macs(apply_plan(model, plan_candidate(model, ctx, spec)), x)[1] / dense)
        except ValueError as e:  # the bottom of the MACs range is itself unreachable
            raise ConfigError(f"space.macs_ratio: {e}") from None
    return min(ratios)


def model_stages(cfg: SearchConfig) -> dict[str, list[str]]:
    """Stage name -> its prunable layers (``space.prune_stem`` / ``prune_head`` honoured):
    the keys ``space.allocation`` accepts. Builds the architecture only (no checkpoint)."""
    return stages(build_model(cfg.model.model_copy(update={"checkpoint": None})), cfg.space.prune_stem, cfg.space.prune_head)


def check_allocation(cfg: SearchConfig) -> None:
    """Refuse ``space.allocation`` keys that are no stage of the model (they would do nothing)."""
    if not cfg.space.allocation:
        return
    stages = model_stages(cfg)
    unknown = sorted(set(cfg.space.allocation) - set(stages))
    if unknown:
        raise ConfigError(
            f"space.allocation: {', '.join(map(repr, unknown))} is no stage of model {cfg.model.name!r} with prunable layers; "
            f"its stages are {', '.join(stages)} (list them with `prunesearch stages CONFIG`)"
        )
