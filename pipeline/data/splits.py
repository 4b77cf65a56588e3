"""Labelled image data, split into train / calibration / validation / test.

``load_data`` chooses every subset by index (``pipeline.data.subsets``), reads only
those images from the loader's source (``pipeline.data.sources``) and keeps them raw
(``pipeline.data.store``): uint8 (N, C, H, W), normalised on the device batch by batch.
Calibration and validation images always come from the training set: candidates are
selected on them, and the test split is for the final report only. The training split
is built only when asked for (a method trains), and then streamed where it is not
already in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.data import subsets
from pipeline.data.config import DataConfig
from pipeline.data.decode import DataError
from pipeline.data.preprocess import Preprocessing, fit_image
from pipeline.data.sources import LOADERS, ArrayImages, Loader, Source, load_source, register_loader, require
from pipeline.data.store import Split, Splits, StreamSplit

__all__ = [
    "LOADERS",
    "DataConfig",
    "DataError",
    "Loader",
    "Split",
    "Splits",
    "StreamSplit",
    "class_names",
    "fit_image",
    "load_data",
    "preprocessing",
    "register_loader",
]


def load_data(cfg: DataConfig, train: bool = True, record: Path | None = None) -> Splits:
    """Load, validate and split the data set of ``cfg``.

    Args:
        train: build the training split (in memory for array data sets, streamed for
            folders and Datasets); False leaves ``Splits.train`` None and reads none of it.
        record: a ``.npz`` of the subsets' positions: read when it exists (a resumed
            search), written otherwise.

    Raises:
        DataError: naming the file, field, split or index and what is wrong with it.
    """
    src = load_source(cfg)
    idx = subsets.resolve(cfg, len(src.train), len(src.test) if src.test is not None else None, record)
    test_set = src.test if src.test is not None else src.train
    parts = {k: (test_set if k == "test" else src.train).take(idx[k], k, cfg.workers) for k in ("calib", "val", "test")}
    channels = parts["val"][0].shape[1]
    mean, std = _mean_std(cfg, channels)
    stats = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    made = {k: Split(np.ascontiguousarray(x), torch.from_numpy(y), *stats) for k, (x, y) in parts.items()}
    train_split = _train(src, idx["train"], stats, cfg) if train else None
    if isinstance(train_split, Split):  # in memory (array data sets): checked like the subsets
        made["train"] = train_split
    for k, s in made.items():
        if s.images.dtype != np.uint8 and not np.isfinite(s.images).all():
            raise DataError(f"data: split {k!r}: {int((~np.isfinite(s.images)).sum())} pixel values are NaN or Inf; fix the images")
    return Splits(
        train=train_split,
        calib=made["calib"],
        val=made["val"],
        test=made["test"],
        num_classes=_num_classes(src, parts),
        black=tuple(float(v) for v in -np.divide(mean, std)),
        indices={**idx, "test_from": "train" if src.test is None else "test"},
    )


def _train(src: Source, rest: np.ndarray, stats: tuple[tuple[float, ...], tuple[float, ...]], cfg: DataConfig) -> Split | StreamSplit:
    if isinstance(src.train, ArrayImages):  # already in memory: index it
        x, y = src.train.take(rest, "train", 0)
        return Split(x, torch.from_numpy(y), *stats)
    return StreamSplit(src.train, rest, *stats, workers=cfg.workers)


def _num_classes(src: Source, parts: dict[str, tuple[np.ndarray, np.ndarray]]) -> int:
    """Largest label + 1: of every label where the sources list them, else of the subsets read."""
    top = max(int(y.max()) for _, y in parts.values())
    for s in (src.train, src.test):
        labels = s.labels() if s is not None else None
        if labels is not None and len(labels):
            top = max(top, int(labels.max()))
    return top + 1


def _mean_std(cfg: DataConfig, channels: int) -> tuple[np.ndarray, np.ndarray]:
    mean = np.array(cfg.mean if cfg.mean is not None else [0.5] * channels, dtype=np.float32)
    std = np.array(cfg.std if cfg.std is not None else [0.5] * channels, dtype=np.float32)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"data.mean/std: need {channels} values (one per channel), got {len(mean)} and {len(std)}")
    return mean, std


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
        cfg.resize_side if cfg.name == "imagefolder" else None,
        class_names(cfg),
    )


def class_names(cfg: DataConfig) -> tuple[str, ...] | None:
    """Label index -> class name where the data set names its classes (``npz`` does not)."""
    if cfg.name == "digits":
        return tuple(str(i) for i in range(10))
    if cfg.name == "imagefolder":
        from torchvision.datasets.folder import find_classes

        return tuple(find_classes(str(require(cfg.path, "data.path")))[0])
    if cfg.name in ("cifar10", "cifar100"):
        import torchvision

        cls = getattr(torchvision.datasets, cfg.name.upper())  # CIFAR10 / CIFAR100
        return tuple(cls(str(require(cfg.path, "data.path")), train=False, download=False).classes)
    return None
