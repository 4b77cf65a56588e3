"""Model registry: build a base model from a ``ModelConfig``.

Adding an architecture: one file with a ``@register_model(name)`` builder (importing
this module, never the package), one import line in ``pipeline/models/__init__.py``. Checkpoints always load with ``weights_only=True`` (``pipeline.models.checkpoint``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pydantic import Field
from torch import nn

from pipeline.errors import InputError
from pipeline.models.checkpoint import load_into
from pipeline.registry import Registry
from pipeline.spec import Frozen


class ModelConfig(Frozen):
    """Which base model to prune.

    Attributes:
        name: registered architecture (``prunesearch`` lists them in errors), e.g.
            ``digits_cnn``, ``cifar_resnet20``, ``torchvision:resnet18``, ``import``.
        num_classes: classifier outputs.
        checkpoint: path of a state dict (or ``{'state_dict': ...}``) to load with
            ``weights_only=True``; ``None`` keeps the builder's initialisation.
        import_path: ``package.module:Class`` for ``name: import``.
        kwargs: keyword arguments for the ``import`` class's constructor (plain data only).
    """

    name: str = "digits_cnn"
    num_classes: int = Field(10, ge=2)
    checkpoint: str | None = None
    import_path: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


Builder = Callable[[ModelConfig], nn.Module]
MODELS: Registry[Builder] = Registry("model", field="model.name")


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``fn(cfg) -> nn.Module`` under ``name``."""
    return MODELS.register(name)


def list_models() -> list[str]:
    """Names of all registered architectures, sorted."""
    return MODELS.names()


def build_model(cfg: ModelConfig) -> nn.Module:
    """The base model of ``cfg`` in eval mode, with its checkpoint loaded if one is given.

    Raises:
        pipeline.registry.RegistryError: unknown model name (listing the valid ones).
        pipeline.models.checkpoint.CheckpointError: unreadable or mismatched checkpoint.
    """
    builder = MODELS.get(cfg.name)
    try:
        model = builder(cfg)
    except TypeError as e:
        if not cfg.kwargs:
            raise  # a bug in the builder, not the user's kwargs
        raise InputError(f"model.kwargs: {cfg.name} does not take {sorted(cfg.kwargs)} ({e}); remove or rename them") from None
    if cfg.checkpoint:
        load_into(model, cfg.checkpoint)
    return model.eval()


def load_base(cfg: ModelConfig, state: dict[str, torch.Tensor], reshape: Callable[[nn.Module], nn.Module] | None = None) -> nn.Module:
    """The architecture of ``cfg`` (its checkpoint is not read) holding ``state``, in eval mode.

    ``reshape`` maps the freshly built model to the one ``state`` was saved from before
    loading (e.g. removing channels for a pruned state dict).
    """
    model = build_model(cfg.model_copy(update={"checkpoint": None}))
    if reshape is not None:
        model = reshape(model)
    model.load_state_dict(state)
    return model.eval()
