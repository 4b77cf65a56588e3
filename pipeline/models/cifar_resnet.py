"""CIFAR ResNet-20/32/44/56/110 of He et al. (2016) with option-A shortcuts.

Module names match the public ``pytorch_resnet_cifar10`` (Idelbayev) models exactly
(``conv1``, ``bn1``, ``layer1..3.i.{conv1,bn1,conv2,bn2,shortcut}``, ``linear``), so its
checkpoints load unchanged. Unlike that code, the shortcut is a real module instead of a
lambda, so the whole network is ``torch.fx.symbolic_trace``-able and picklable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import InputError
from pipeline.models.registry import ModelConfig, register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``planes // 4`` channels each side.

    (N, planes/2, H, W) -> (N, planes, H/2, W/2). No parameters: the residual channels
    of both sides are tied through this padding.
    """

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.planes = planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.pad's 6-tuple pads (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4))

    def extra_repr(self) -> str:
        return f"planes={self.planes}"


class BasicBlock(nn.Module):
    """conv3x3(stride) -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Neither shortcut has parameters, so checkpoint keys are the same as upstream's
        # (whose identity shortcut is an empty nn.Sequential).
        self.shortcut: nn.Module
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # Out-of-place add (upstream uses +=): an in-place add would overwrite the bn2
        # output that forward hooks (activation statistics, pruning criteria) captured.
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: stem, three stages of n BasicBlocks (16/32/64
    channels, stride 1/2/2), global average pool, ``linear``.

    Input (N, 3, 32, 32) normalised RGB; output (N, num_classes) logits. ResNet-20
    (n=3): 0.27 M parameters, about 41 M MACs per image.
    """

    def __init__(self, num_blocks: tuple[int, int, int], num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)
        # As upstream: Kaiming-normal (fan_in) for conv and linear weights, PyTorch
        # defaults for biases and BatchNorm.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        # Global average pool; upstream's avg_pool2d(out, out.size(3)) is the same for
        # square maps, but a size-dependent kernel does not trace to a fixed graph.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# depth -> blocks per stage (depth = 6n + 2).
DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet of ``depth`` (one of ``DEPTHS``)."""
    if depth not in DEPTHS:
        raise InputError(f"CIFAR ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
    n = DEPTHS[depth]
    return CifarResNet((n, n, n), num_classes)


def _register(depth: int) -> None:
    @register_model(f"cifar_resnet{depth}")
    def build(cfg: ModelConfig) -> nn.Module:
        if cfg.kwargs:
            raise InputError(f"model.kwargs: cifar_resnet{depth} takes no kwargs, got {sorted(cfg.kwargs)}")
        return cifar_resnet(depth, cfg.num_classes)


for _depth in DEPTHS:
    _register(_depth)

__all__ = ["BasicBlock", "CifarResNet", "DEPTHS", "PadShortcut", "cifar_resnet"]
