"""The base model of a search: loaded from its checkpoint, or trained once and cached."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from pipeline.data.splits import Splits
from pipeline.models import build_model, load_base
from pipeline.models.checkpoint import CheckpointError, read_state_dict
from pipeline.train import train_classifier
from search.config import ConfigError, SearchConfig

log = logging.getLogger(__name__)


def base_state(cfg: SearchConfig, splits: Splits) -> dict[str, torch.Tensor]:
    """The dense base model's state dict.

    With ``model.checkpoint`` the checkpoint is loaded (``weights_only=True``). Without
    one, the model is trained for ``base_training.steps`` on the training split the
    first time and cached as ``<run_dir>/base/<model>.pt``; later runs load the cache.
    """
    if cfg.model.checkpoint:
        return build_model(cfg.model).state_dict()
    cache = cache_path(cfg)
    if cache.exists():
        return load_base(cfg.model, cached_state(cache)).state_dict()
    if cfg.base_training.steps == 0:
        raise ConfigError("model.checkpoint is not set and base_training.steps is 0: there is no trained model to prune")
    steps = cfg.base_training.steps
    log.info(
        "no model.checkpoint: training the base model %s on %d training images for %d steps, once (cached at %s)",
        cfg.model.name,
        len(splits.train.x),
        steps,
        cache,
    )
    torch.manual_seed(cfg.base_training.seed)
    model = build_model(cfg.model.model_copy(update={"checkpoint": None}))
    t0 = time.monotonic()
    train_classifier(model, splits.train.x, splits.train.y, steps, cfg.base_training.lr, seed=cfg.base_training.seed, on_step=_StepLog(t0))
    log.info("trained the base model in %.0f s", time.monotonic() - t0)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(cache)  # atomic: a killed run never leaves a half-written cache
    return model.state_dict()


def cache_path(cfg: SearchConfig) -> Path:
    """Where the base model trained for ``cfg`` (no ``model.checkpoint``) is cached."""
    return cfg.inside_run_dir(f"base/{cfg.model.name.replace(':', '_')}-{cfg.data.name}-s{cfg.base_training.seed}.pt")


def cached_state(cache: Path) -> dict[str, torch.Tensor]:
    """The cached base model's tensors, read as every checkpoint is (``weights_only=True``);
    a ``CheckpointError`` naming the cache for a file that is not plain tensors."""
    try:
        return read_state_dict(cache)
    except CheckpointError as e:
        raise CheckpointError(
            f"the cached base model {cache} is not a plain state dict: {e}. It is the search's own cache: "
            "delete it to train the base model again, or set model.checkpoint"
        ) from None


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
