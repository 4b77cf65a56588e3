"""The base model of a search: loaded from its checkpoint, or trained once and cached."""

from __future__ import annotations

import logging

import torch

from pipeline.data import Splits
from pipeline.models import build_model, load_base
from pipeline.train import train_classifier

from search.config import SearchConfig

log = logging.getLogger(__name__)


def base_state(cfg: SearchConfig, splits: Splits) -> dict[str, torch.Tensor]:
    """The dense base model's state dict.

    With ``model.checkpoint`` the checkpoint is loaded (``weights_only=True``). Without
    one, the model is trained for ``base_training.steps`` on the training split the
    first time and cached as ``<run_dir>/base/<model>.pt``; later runs load the cache.
    """
    if cfg.model.checkpoint:
        return build_model(cfg.model).state_dict()
    cache = cfg.inside_run_dir(f"base/{cfg.model.name.replace(':', '_')}-{cfg.data.name}-s{cfg.base_training.seed}.pt")
    if cache.exists():
        return load_base(cfg.model, torch.load(cache, map_location="cpu", weights_only=True)).state_dict()
    if cfg.base_training.steps == 0:
        raise ValueError("model.checkpoint is not set and base_training.steps is 0: there is no trained model to prune")
    log.info("training the base model %s for %d steps (cached at %s)", cfg.model.name, cfg.base_training.steps, cache)
    torch.manual_seed(cfg.base_training.seed)
    model = build_model(cfg.model.model_copy(update={"checkpoint": None}))
    train_classifier(model, splits.train.x, splits.train.y, cfg.base_training.steps, cfg.base_training.lr, seed=cfg.base_training.seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(cache)  # atomic: a killed run never leaves a half-written cache
    return model.state_dict()
