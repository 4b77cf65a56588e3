"""The embedded default: a small BatchNorm CNN for 8x8 scikit-learn digits."""

from __future__ import annotations

from torch import nn

from pipeline.models.registry import ModelConfig, register_model


class DigitsCNN(nn.Module):
    """conv(1->16)-BN-ReLU, conv(16->32)-BN-ReLU, conv(32->64, stride 2)-BN-ReLU, GAP, linear.

    Input (N, 1, 8, 8); output (N, num_classes) logits. Width 32: 96 k parameters,
    2.3 M MACs per image; wide enough that a 90 %-sparse copy still separates the
    classes once its BatchNorm statistics are recalibrated.
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(1, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("digits_cnn")
def digits_cnn(cfg: ModelConfig) -> nn.Module:
    return DigitsCNN(cfg.num_classes, **cfg.kwargs)
