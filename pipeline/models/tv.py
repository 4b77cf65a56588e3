"""torchvision classifiers as ``torchvision:<name>``, randomly initialised.

``weights=None`` always: nothing is downloaded (the build machines are offline).
Pretrained weights come in through ``model.checkpoint`` like any other state dict.
"""

from __future__ import annotations

from torch import nn

from pipeline.errors import InputError
from pipeline.models.registry import ModelConfig, register_model

# torchvision.models builder names, registered as "torchvision:<name>". Add one to add a model.
TORCHVISION_MODELS: tuple[str, ...] = ("resnet18", "resnet50", "mobilenet_v2", "vgg11_bn")

# Arguments that the registry sets itself: weights would trigger a download.
_RESERVED = ("weights", "num_classes", "progress")


def _register(arch: str) -> None:
    @register_model(f"torchvision:{arch}")
    def build(cfg: ModelConfig) -> nn.Module:
        clash = sorted(set(cfg.kwargs) & set(_RESERVED))
        if clash:
            raise InputError(
                f"model.kwargs: {clash} cannot be set for torchvision:{arch} "
                f"(weights are never downloaded; use model.checkpoint and model.num_classes)"
            )
        # Imported here: torchvision.models takes ~1 s to import, and most runs never
        # build one of these.
        import torchvision

        return getattr(torchvision.models, arch)(weights=None, num_classes=cfg.num_classes, **cfg.kwargs)


for _arch in TORCHVISION_MODELS:
    _register(_arch)

__all__ = ["TORCHVISION_MODELS"]
