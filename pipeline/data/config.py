"""``DataConfig``: where the images come from and how they are split (YAML ``data:``)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from pipeline.errors import InputError
from pipeline.spec import Frozen


class DataConfig(Frozen):
    """Where the images come from and how they are split.

    Attributes:
        name: a registered loader (``pipeline.data.sources.LOADERS``): ``digits`` (ships
            with scikit-learn), ``npz`` (``x`` (N, H, W, C) uint8 and ``y``), ``cifar10`` /
            ``cifar100`` (torchvision layout under ``path``), ``imagefolder`` (one folder
            per class, read by ``torchvision.datasets.ImageFolder``), or ``import`` (your
            own ``torch.utils.data.Dataset`` per split, see ``import_path``).
        path: file or folder of the training images (not used by ``digits`` / ``import``).
        test_path: file or folder of the test images; without it the test split is
            carved out of ``path``.
        import_path: ``package.module:factory`` for ``name: import``; called as
            ``factory(split="train" | "test", **kwargs)``, it returns a Dataset whose items
            are ``(image, label)``: a (C, H, W) tensor, uint8 0..255 or float in [0, 1], and
            an int. ``split="test"`` may return None (the test split is then carved out).
        kwargs: keyword arguments of that factory.
        mean, std: per-channel normalisation applied to [0, 1] pixels.
        calib_size: calibration images (recalibration, scoring methods).
        val_size: validation images (candidate selection).
        test_size: test images: carved out of ``path`` (300 when unset) when there is no
            separate test set; from a separate test set, a seeded sample of this many
            (unset: all of it).
        train_size: cap on training images kept (for methods that train), or all.
        image_size: side of the square model input (``imagefolder``: the centre crop).
        resize: ``imagefolder``: the shorter side is resized to this before the centre
            crop; unset: ``image_size * 256 / 224`` rounded (256 at 224 px).
        workers: DataLoader worker processes that decode images (0: in the calling process).
        seed: seed of the deterministic split.
    """

    name: str = "digits"
    path: str | None = None
    test_path: str | None = None
    import_path: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    calib_size: int = Field(256, ge=1)
    val_size: int = Field(300, ge=1)
    test_size: int | None = Field(None, ge=1)
    train_size: int | None = Field(None, ge=1)
    image_size: int = Field(32, ge=8)
    resize: int | None = Field(None, ge=8)
    workers: int = Field(2, ge=0)
    seed: int = Field(0, ge=0)

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: tuple[float, ...] | None, info: ValidationInfo) -> tuple[float, ...] | None:
        if v is not None and not all(math.isfinite(x) for x in v):
            raise InputError("values must be finite numbers")
        if v is not None and info.field_name == "std" and not all(x > 0 for x in v):
            raise InputError("values must be > 0 (pixels are divided by them)")
        return v

    @property
    def resize_side(self) -> int:
        """The side the shorter edge is resized to before the centre crop (``imagefolder``)."""
        return self.resize if self.resize is not None else round(self.image_size * 256 / 224)

    @property
    def carved_test_size(self) -> int:
        """Test images carved out of ``path`` when there is no separate test set."""
        return self.test_size if self.test_size is not None else 300
