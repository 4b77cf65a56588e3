"""The base model of a search: loaded from its checkpoint, or trained once and cached."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from pipeline.data.splits import Splits
from pipeline.models import build_model, load_base
from pipeline.models.checkpoint import CheckpointError, read_state_dict
from pipeline.pruning.methods import get_method
from pipeline.train import train_classifier
from search.config import ConfigError, SearchConfig

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where trained base models are shared between run folders: ``$PRUNESEARCH_CACHE``,
    else ``$XDG_CACHE_HOME/prunesearch``, else ``~/.cache/prunesearch``."""
    if os.environ.get("PRUNESEARCH_CACHE"):
        return Path(os.environ["PRUNESEARCH_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "prunesearch"


def cache_name(cfg: SearchConfig) -> str:
    """The cached base model's file name: model, data and seed, then a digest of everything
    the training depends on (model and data settings, steps, learning rate)."""
    data = cfg.data.model_dump(mode="json")
    for field in ("path", "test_path"):  # the same files under another relative spelling are the same data
        if data.get(field):
            data[field] = str(Path(data[field]).expanduser().resolve())
    key = {"model": cfg.model.model_dump(mode="json", exclude={"checkpoint"}), "data": data, "training": cfg.base_training.model_dump(mode="json")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.model.name.replace(':', '_')}-{cfg.data.name}-s{cfg.base_training.seed}-{digest}.pt"


def needs_train(cfg: SearchConfig) -> bool:
    """Whether anything reads the training split: a method of the space that trains,
    fine-tuning, or a base model still to be trained (no checkpoint, no cache)."""
    trains = any(get_method(m).trains for m in cfg.space.methods) or cfg.finetune_steps > 0
    return trains or (not cfg.model.checkpoint and _cached(cfg) is None)


def base_state(cfg: SearchConfig, splits: Splits) -> dict[str, torch.Tensor]:
    """The dense base model's state dict.

    With ``model.checkpoint`` the checkpoint is loaded (``weights_only=True``). Without
    one, the model is trained for ``base_training.steps`` on the training split the
    first time and cached in ``cache_dir()/base``, shared by every run folder; each run
    folder keeps its own copy under ``<run_dir>/base`` (its records rebuild from it).
    """
    if cfg.model.checkpoint:
        return build_model(cfg.model).state_dict()
    cached = _cached(cfg)
    local, shared = cache_path(cfg), cache_dir() / "base" / cache_name(cfg)
    if cached is not None:
        state = load_base(cfg.model, cached_state(cached)).state_dict()
        if cached == shared:
            log.info("base model %s: the cached one (%s)", cfg.model.name, shared)
            _place(shared, local)
        return state
    if cfg.base_training.steps == 0:
        raise ConfigError("model.checkpoint is not set and base_training.steps is 0: there is no trained model to prune")
    steps = cfg.base_training.steps
    log.info(
        "no model.checkpoint: training the base model %s on %d training images for %d steps, once (cached at %s)",
        cfg.model.name,
        len(splits.train) if splits.train is not None else 0,
        steps,
        shared,
    )
    torch.manual_seed(cfg.base_training.seed)
    model = build_model(cfg.model.model_copy(update={"checkpoint": None}))
    t0 = time.monotonic()
    if splits.train is None:
        raise ConfigError("the base model must be trained but the training split was not loaded (search.runner.driver.needs_train)")
    train_classifier(model, splits.train, None, steps, cfg.base_training.lr, seed=cfg.base_training.seed, on_step=_StepLog(t0))
    log.info("trained the base model in %.0f s", time.monotonic() - t0)
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        _save(model.state_dict(), shared)
        _place(shared, local)
    except OSError as e:  # an unwritable user cache: the run folder's copy still serves this run and its records
        log.warning("could not write the shared base-model cache %s (%s); keeping it in the run folder only", shared, e)
        _save(model.state_dict(), local)
    return model.state_dict()


def _cached(cfg: SearchConfig) -> Path | None:
    """The trained base model already cached for ``cfg``: the run folder's copy, a run
    folder's file from before the shared cache, or the shared one; None: none yet."""
    name = cache_name(cfg)
    legacy = cfg.inside_run_dir(f"base/{name.rsplit('-', 1)[0]}.pt")
    return next((p for p in (cache_path(cfg), legacy, cache_dir() / "base" / name) if p.exists()), None)


def cache_path(cfg: SearchConfig) -> Path:
    """The run folder's copy of the base model trained for ``cfg`` (no ``model.checkpoint``);
    the shared one is ``cache_dir() / "base"`` under the same name."""
    return cfg.inside_run_dir(f"base/{cache_name(cfg)}")


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


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written cache


def _place(shared: Path, local: Path) -> None:
    """The run folder's copy of the shared file: a hard link where possible, else a copy."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f"{local.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(shared, tmp)
    except OSError:  # another file system
        shutil.copyfile(shared, tmp)
    tmp.replace(local)


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
