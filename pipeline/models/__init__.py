"""Model registry: build a base model from a ``ModelConfig``.

Adding an architecture: one file with a ``@register_model(name)`` builder, one import
line below. Checkpoints always load with ``weights_only=True`` (``pipeline.checkpoint``).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from pydantic import Field
from torch import nn

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
_MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register a builder ``fn(cfg) -> nn.Module`` under ``name``."""

    def deco(fn: Builder) -> Builder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The base model of ``cfg`` in eval mode, with its checkpoint loaded if one is given.

    Raises:
        ValueError: unknown model name (listing the valid ones).
        pipeline.checkpoint.CheckpointError: unreadable or mismatched checkpoint.
    """
    if cfg.name not in _MODELS:
        close = difflib.get_close_matches(cfg.name, list(_MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"model.name: unknown model {cfg.name!r}; valid models: {list_models()}{hint}")
    model = _MODELS[cfg.name](cfg)
    if cfg.checkpoint:
        from pipeline.checkpoint import load_into

        load_into(model, cfg.checkpoint)
    return model.eval()


# Built-in architectures register themselves on import, one line each.
from pipeline.models import digits as _digits  # noqa: E402,F401
from pipeline.models import cifar_resnet as _cifar_resnet  # noqa: E402,F401
from pipeline.models import tv as _tv  # noqa: E402,F401
from pipeline.models import imported as _imported  # noqa: E402,F401

__all__ = ["ModelConfig", "build_model", "list_models", "register_model"]
