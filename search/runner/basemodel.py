"""The base model of a search: loaded from its checkpoint, or trained once and cached."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pipeline.data.splits import Splits
from pipeline.models import build_model, load_base
from pipeline.pruning.methods import get_method
from pipeline.train import train_classifier
from search.config import ConfigError, SearchConfig

log = logging.getLogger(__name__)


def base_cache(cfg: SearchConfig) -> Path:
    """Where a base model trained for ``cfg`` (no checkpoint) is cached."""
    return cfg.inside_run_dir(f"base/{cfg.model.name.replace(':', '_')}-{cfg.data.name}-s{cfg.base_training.seed}.pt")


def needs_train(cfg: SearchConfig) -> bool:
    """Whether anything reads the training split: a method of the space that trains,
    fine-tuning, or a base model still to be trained (no checkpoint, no cache)."""
    trains = any(get_method(m).trains for m in cfg.space.methods) or cfg.finetune_steps > 0
    return trains or (not cfg.model.checkpoint and not base_cache(cfg).exists())


def base_state(cfg: SearchConfig, splits: Splits) -> dict[str, torch.Tensor]:
    """The dense base model's state dict.

    With ``model.checkpoint`` the checkpoint is loaded (``weights_only=True``). Without
    one, the model is trained for ``base_training.steps`` on the training split the
    first time and cached as ``<run_dir>/base/<model>.pt``; later runs load the cache.
    """
    if cfg.model.checkpoint:
        return build_model(cfg.model).state_dict()
    cache = base_cache(cfg)
    if cache.exists():
        return load_base(cfg.model, torch.load(cache, map_location="cpu", weights_only=True)).state_dict()
    if cfg.base_training.steps == 0:
        raise ConfigError("model.checkpoint is not set and base_training.steps is 0: there is no trained model to prune")
    steps = cfg.base_training.steps
    log.info(
        "no model.checkpoint: training the base model %s on %d training images for %d steps, once (cached at %s)",
        cfg.model.name,
        len(splits.train) if splits.train is not None else 0,
        steps,
        cache,
    )
    torch.manual_seed(cfg.base_training.seed)
    model = build_model(cfg.model.model_copy(update={"checkpoint": None}))
    t0 = time.monotonic()
    if splits.train is None:
        raise ConfigError("the base model must be trained but the training split was not loaded (search.runner.driver.needs_train)")
    train_classifier(model, splits.train, None, steps, cfg.base_training.lr, seed=cfg.base_training.seed, on_step=_StepLog(t0))
    log.info("trained the base model in %.0f s", time.monotonic() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(cache)  # atomic: a killed run never leaves a half-written cache
    return model.state_dict()


class _StepLog:
    """Logs training progress at most every ``every_s`` seconds, with the time left."""

    def __init__(self, t0: float, every_s: float = 10.0) -> None:
        self.t0, self.every_s, self.last = t0, every_s, t0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s and done < total:
            self.last = now
            left = (now - self.t0) / done * (total - done)
            log.info("base model: step %d/%d, %.0f s in, ~%.0f s left", done, total, now - self.t0, left)
