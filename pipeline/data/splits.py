"""Labelled image data, split into train / calibration / validation / test.

Every loader returns uint8-or-float images that ``load_data`` normalises into float32
(N, C, H, W) tensors. Calibration and validation images always come from the
training set: candidates are selected on them, and the test split is for the final
report only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from pipeline.data.preprocess import Preprocessing, fit_image, normalise
from pipeline.errors import InputError
from pipeline.registry import Registry
from pipeline.spec import Frozen


class DataConfig(Frozen):
    """Where the images come from and how they are split.

    Attributes:
        name: ``digits`` (ships with scikit-learn), ``npz`` (``x`` (N, H, W, C) uint8
            and ``y``), ``cifar10`` / ``cifar100`` (torchvision layout under ``path``),
            or ``imagefolder`` (one folder per class).
        path: file or folder of the training images (not used by ``digits``).
        test_path: file or folder of the test images; without it the test split is
            carved out of ``path``.
        mean, std: per-channel normalisation applied to [0, 1] pixels.
        calib_size: calibration images (recalibration, scoring methods).
        val_size: validation images (candidate selection).
        test_size: test images taken from ``path`` when ``test_path`` is absent.
        train_size: cap on training images kept (for methods that train), or all.
        image_size: resize side for ``imagefolder``.
        seed: seed of the deterministic split.
    """

    name: Literal["digits", "npz", "cifar10", "cifar100", "imagefolder"] = "digits"
    path: str | None = None
    test_path: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    calib_size: int = Field(256, ge=1)
    val_size: int = Field(300, ge=1)
    test_size: int = Field(300, ge=1)
    train_size: int | None = Field(None, ge=1)
    image_size: int = Field(32, ge=8)
    seed: int = Field(0, ge=0)

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: tuple[float, ...] | None, info: ValidationInfo) -> tuple[float, ...] | None:
        if v is not None and not all(math.isfinite(x) for x in v):
            raise InputError("values must be finite numbers")
        if v is not None and info.field_name == "std" and not all(x > 0 for x in v):
            raise InputError("values must be > 0 (pixels are divided by them)")
        return v


@dataclass
class Split:
    """Images float32 (N, C, H, W), normalised; labels int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Splits:
    train: Split
    calib: Split
    val: Split
    test: Split
    num_classes: int
    black: tuple[float, ...] | None = None  # a black pixel after normalisation, per channel

    def to(self, device: torch.device | str) -> "Splits":
        """The same splits with every tensor on ``device``."""
        return Splits(self.train.to(device), self.calib.to(device), self.val.to(device), self.test.to(device), self.num_classes, self.black)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.val.x.shape[1:])  # type: ignore[return-value]


class DataError(InputError):
    """The data set is missing, malformed or too small for the request."""


# A loader returns (train_x, train_y, test_x | None, test_y | None); x uint8 (N, H, W, C)
# or float in [0, 1], y integer labels.
Loader = Callable[[DataConfig], tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]
LOADERS: Registry[Loader] = Registry("data set", field="data.name")


def register_loader(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register a loader ``fn(cfg) -> (train_x, train_y, test_x, test_y)`` under ``name``."""
    return LOADERS.register(name)


def load_data(cfg: DataConfig) -> Splits:
    """Load, validate, normalise and split the data set of ``cfg``.

    Raises:
        DataError: naming the file or field and what is wrong with it.
    """
    tx, ty, ex, ey = LOADERS.get(cfg.name)(cfg)
    tx, ty = _validate(tx, ty, cfg.path or cfg.name)
    if ex is not None:
        if ey is None:
            raise DataError(f"data loader {cfg.name!r} returned test images without test labels; return both, or neither")
        ex, ey = _validate(ex, ey, cfg.test_path or cfg.name)
    num_classes = int(max(ty.max(), ey.max() if ey is not None else 0)) + 1
    order = np.random.default_rng(cfg.seed).permutation(len(ty))
    need = cfg.calib_size + cfg.val_size + (0 if ex is not None else cfg.test_size)
    if need >= len(order):
        raise DataError(
            f"data: {len(order)} training images cannot give calib_size={cfg.calib_size}, "
            f"val_size={cfg.val_size}"
            + ("" if ex is not None else f", test_size={cfg.test_size}")
            + " and leave any for training; lower those sizes or add images"
        )
    cut1, cut2 = cfg.calib_size, cfg.calib_size + cfg.val_size
    calib, val = order[:cut1], order[cut1:cut2]
    if ex is None:
        cut3 = cut2 + cfg.test_size
        ex, ey, rest = tx[order[cut2:cut3]], ty[order[cut2:cut3]], order[cut3:]
    else:
        rest = order[cut2:]
    if cfg.train_size is not None:
        rest = rest[: cfg.train_size]
    norm = _normaliser(cfg, tx.shape[-1])
    return Splits(
        train=Split(norm(tx[rest]), torch.from_numpy(ty[rest])),
        calib=Split(norm(tx[calib]), torch.from_numpy(ty[calib])),
        val=Split(norm(tx[val]), torch.from_numpy(ty[val])),
        test=Split(norm(ex), torch.from_numpy(ey)),
        num_classes=num_classes,
        black=tuple(float(v) for v in -np.divide(*_mean_std(cfg, tx.shape[-1]))),
    )


def _validate(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 4:
        raise DataError(f"{where}: images must have shape (N, H, W, C), got {x.shape}")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{where}: images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return x, y.astype(np.int64)


def _mean_std(cfg: DataConfig, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.array(cfg.mean if cfg.mean is not None else [0.5] * channels, dtype=np.float32)
    std = np.array(cfg.std if cfg.std is not None else [0.5] * channels, dtype=np.float32)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean/std: need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    return mean, std


def _normaliser(cfg: DataConfig, channels: int) -> Callable[[np.ndarray], torch.Tensor]:
    mean, std = _mean_std(cfg, channels)

    def norm(x: np.ndarray) -> torch.Tensor:
        out = normalise(x, mean, std)
        if not torch.isfinite(out).all():
            raise DataError(f"data: {int((~torch.isfinite(out)).sum())} pixel values are NaN or Inf; fix the images")
        return out

    return norm


def preprocessing(cfg: DataConfig, splits: Splits) -> Preprocessing:
    """The preprocessing ``load_data`` applied for ``cfg``, as plain data for an export."""
    c = splits.input_shape[0]
    mean, std = _mean_std(cfg, c)
    order = {1: "L", 3: "RGB"}.get(c, f"C{c}")
    return Preprocessing(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        splits.input_shape,
        order,
        splits.num_classes,
        cfg.image_size if cfg.name == "imagefolder" else None,
        class_names(cfg),
    )


def class_names(cfg: DataConfig) -> tuple[str, ...] | None:
    """Label index -> class name where the data set names its classes (``npz`` does not)."""
    if cfg.name == "digits":
        return tuple(str(i) for i in range(10))
    if cfg.name == "imagefolder":
        from torchvision.datasets.folder import find_classes

        return tuple(find_classes(str(_require(cfg.path, "data.path")))[0])
    if cfg.name in ("cifar10", "cifar100"):
        import torchvision

        cls = getattr(torchvision.datasets, cfg.name.upper())  # CIFAR10 / CIFAR100
        return tuple(cls(str(_require(cfg.path, "data.path")), train=False, download=False).classes)
    return None


def _require(path: str | None, field: str) -> Path:
    if not path:
        raise DataError(f"{field}: this data set needs a path")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{field}: {p} does not exist; point it at the data set")
    return p


@register_loader("digits")
def _digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    return x, d.target.astype(np.int64), None, None


def _read_npz(path: Path, field: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{field}: {path} must hold arrays 'x' and 'y', found {sorted(f.files)}")
            return f["x"], f["y"]
    except (OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{field}: {path} is not a readable .npz file ({e})") from e


@register_loader("npz")
def _npz(cfg: DataConfig):
    tx, ty = _read_npz(_require(cfg.path, "data.path"), "data.path")
    if cfg.test_path:
        ex, ey = _read_npz(_require(cfg.test_path, "data.test_path"), "data.test_path")
        return tx, ty, ex, ey
    return tx, ty, None, None


def _torchvision_cifar(cfg: DataConfig, cls_name: str):
    import torchvision

    root = _require(cfg.path, "data.path")
    cls = getattr(torchvision.datasets, cls_name)
    try:
        train, test = cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except RuntimeError as e:
        raise DataError(f"data.path: no {cls_name} data under {root} ({e}); nothing is downloaded") from e
    return train.data, np.array(train.targets), test.data, np.array(test.targets)


@register_loader("cifar10")
def _cifar10(cfg: DataConfig):
    return _torchvision_cifar(cfg, "CIFAR10")


@register_loader("cifar100")
def _cifar100(cfg: DataConfig):
    return _torchvision_cifar(cfg, "CIFAR100")


def _image_folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    import torchvision
    from PIL import UnidentifiedImageError

    try:
        ds = torchvision.datasets.ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:  # no class folders, or no images in them
        raise DataError(f"data.path: {root} is not an image folder (one folder per class): {e}") from None
    xs = []
    for i in range(len(ds)):
        try:
            img, _ = ds[i]
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"data: {ds.samples[i][0]} cannot be read as an image ({type(e).__name__}); remove or replace it") from None
        xs.append(np.asarray(fit_image(img.convert("RGB"), size)))
    return np.stack(xs).astype(np.uint8), np.array(ds.targets)


@register_loader("imagefolder")
def _imagefolder(cfg: DataConfig):
    tx, ty = _image_folder(_require(cfg.path, "data.path"), cfg.image_size)
    if cfg.test_path:
        ex, ey = _image_folder(_require(cfg.test_path, "data.test_path"), cfg.image_size)
        return tx, ty, ex, ey
    return tx, ty, None, None
