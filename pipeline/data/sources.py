"""Where images come from: the registry of loaders and the two shapes of image set.

A loader turns a ``DataConfig`` into a ``Source``: a training ``ImageSet`` and, where the
data set has one, a test ``ImageSet``. An ``ArrayImages`` is a data set already in
memory as arrays (``npz``, ``cifar10`` / ``cifar100``, ``digits``): its subsets are taken
by indexing. A ``DatasetImages`` is any ``torch.utils.data.Dataset`` of (image, label)
(``imagefolder``, ``import``): its subsets are decoded by a ``DataLoader`` with worker
processes (``pipeline.data.decode``), and only the images a subset needs are read.
Register another loader with ``@register_loader("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.data.config import DataConfig
from pipeline.data.decode import DataError, decode
from pipeline.errors import InputError
from pipeline.registry import Registry


@dataclass
class ArrayImages:
    """Images (N, H, W, C) uint8 or float in [0, 1], and integer labels (N,)."""

    x: np.ndarray
    y: np.ndarray
    where: str = ""

    def __len__(self) -> int:
        return len(self.y)

    def labels(self) -> np.ndarray | None:
        return self.y

    def take(self, indices: np.ndarray, split: str, workers: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw (n, C, H, W) images (uint8, or float32) and labels at ``indices``."""
        x = self.x[indices]
        x = x if x.dtype == np.uint8 else x.astype(np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), self.y[indices]


@dataclass
class DatasetImages:
    """A ``Dataset`` whose items are (image (C, H, W) tensor, int label)."""

    ds: Any
    where: str = ""

    def __len__(self) -> int:
        return len(self.ds)

    def labels(self) -> np.ndarray | None:
        """Every label without decoding an image, where the data set lists them (``targets``)."""
        t = getattr(self.ds, "targets", None)
        return np.asarray(t, dtype=np.int64) if t is not None and len(t) == len(self.ds) else None

    def take(self, indices: np.ndarray, split: str, workers: int) -> tuple[np.ndarray, np.ndarray]:
        return decode(self.ds, indices, split, workers)


ImageSet = ArrayImages | DatasetImages


@dataclass
class Source:
    """A loader's answer: the training images, and the test images if the data set has them."""

    train: ImageSet
    test: ImageSet | None = None
    class_names: tuple[str, ...] | None = None


Loader = Callable[[DataConfig], Any]  # -> Source (or the older (train_x, train_y, test_x, test_y) tuple)
LOADERS: Registry[Loader] = Registry("data set", field="data.name")


def register_loader(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register a loader ``fn(cfg) -> Source`` under ``name``."""
    return LOADERS.register(name)


def list_loaders() -> list[str]:
    return LOADERS.names()


def load_source(cfg: DataConfig) -> Source:
    """The ``Source`` of ``cfg`` (a registry error naming the closest loader for a typo)."""
    out = LOADERS.get(cfg.name)(cfg)
    if isinstance(out, Source):
        return out
    tx, ty, ex, ey = out  # an array loader: (train_x, train_y, test_x | None, test_y | None)
    if ex is not None and ey is None:
        raise DataError(f"data loader {cfg.name!r} returned test images without test labels; return both, or neither")
    train = ArrayImages(*validate_arrays(tx, ty, cfg.path or cfg.name))
    return Source(train, ArrayImages(*validate_arrays(ex, ey, cfg.test_path or cfg.name)) if ex is not None else None)


def validate_arrays(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    if x.ndim != 4:
        raise DataError(f"{where}: images must have shape (N, H, W, C), got {x.shape}")
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{where}: images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return x, y.astype(np.int64), where


def require(path: str | None, field: str) -> Path:
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
    tx, ty = _read_npz(require(cfg.path, "data.path"), "data.path")
    if cfg.test_path:
        ex, ey = _read_npz(require(cfg.test_path, "data.test_path"), "data.test_path")
        return tx, ty, ex, ey
    return tx, ty, None, None


def _torchvision_cifar(cfg: DataConfig, cls_name: str):
    import torchvision

    root = require(cfg.path, "data.path")
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


def eval_transform(resize: int, crop: int):
    """PIL image -> uint8 (3, crop, crop) tensor: RGB, shorter side resized to ``resize``
    (bilinear, antialiased), centre crop; the standard evaluation transform."""
    from torchvision import transforms as T

    return T.Compose([T.Lambda(_rgb), T.Resize(resize), T.CenterCrop(crop), T.PILToTensor()])


def _rgb(img):
    return img.convert("RGB")


def _folder(root: Path, cfg: DataConfig, field: str) -> DatasetImages:
    import torchvision

    try:
        ds = torchvision.datasets.ImageFolder(str(root), transform=eval_transform(cfg.resize_side, cfg.image_size))
    except (FileNotFoundError, RuntimeError) as e:  # no class folders, or no images in them
        raise DataError(f"{field}: {root} is not an image folder (one folder per class): {e}") from None
    return DatasetImages(ds, str(root))


@register_loader("imagefolder")
def _imagefolder(cfg: DataConfig) -> Source:
    train = _folder(require(cfg.path, "data.path"), cfg, "data.path")
    test = _folder(require(cfg.test_path, "data.test_path"), cfg, "data.test_path") if cfg.test_path else None
    return Source(train, test, tuple(train.ds.classes))


@register_loader("import")
def _imported(cfg: DataConfig) -> Source:
    from pipeline.models.imported import import_object

    if not cfg.import_path:
        raise DataError('data.import_path: name: import needs import_path, e.g. "mypkg.data:make_dataset"')
    try:
        factory = import_object(cfg.import_path)
    except InputError as e:
        raise DataError(str(e).replace("model.import_path", "data.import_path")) from None
    if not callable(factory):
        raise DataError(f"data.import_path: {cfg.import_path!r} is a {type(factory).__name__}, not a function")
    sets: dict[str, DatasetImages | None] = {}
    for split in ("train", "test"):
        try:
            ds = factory(split=split, **cfg.kwargs)
        except TypeError as e:
            raise DataError(f"data.kwargs: {cfg.import_path}(split={split!r}, **{cfg.kwargs!r}) failed: {e}") from e
        if ds is None and split == "test":
            sets[split] = None
            continue
        if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise DataError(
                f"data.import_path: {cfg.import_path}(split={split!r}) returned a {type(ds).__name__}, not a Dataset (__getitem__ and __len__)"
            )
        sets[split] = DatasetImages(ds, f"{cfg.import_path}(split={split!r})")
    train = sets["train"]
    assert train is not None
    classes = getattr(train.ds, "classes", None)
    return Source(train, sets["test"], tuple(map(str, classes)) if classes is not None else None)
