"""Base models: the registry (``pipeline.models.registry``) and the built-in architectures.

Adding an architecture: one file with a ``@register_model(name)`` builder, one import
line below. Checkpoints always load with ``weights_only=True`` (``pipeline.models.checkpoint``).
"""

from __future__ import annotations

# Built-in architectures register themselves on import, one line each.
from pipeline.models import cifar_resnet as _cifar_resnet  # noqa: F401
from pipeline.models import digits as _digits  # noqa: F401
from pipeline.models import imported as _imported  # noqa: F401
from pipeline.models import tv as _tv  # noqa: F401
from pipeline.models.registry import MODELS, ModelConfig, build_model, list_models, load_base, register_model

__all__ = ["MODELS", "ModelConfig", "build_model", "list_models", "load_base", "register_model"]
