"""Decoding a subset of a ``Dataset`` through a ``DataLoader`` with worker processes, checked item by item.

Every item must be ``(image, label)``: a (C, H, W) tensor (uint8 0..255 or float in
[0, 1]) and an integer. A bad item is a ``DataError`` naming the split and the index
(the worker sends the problem back as data, so the message is the user's, not a
re-raised traceback). The subset is written into one preallocated array: the only
copy is the raw pixels of the subset, never float32.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import InputError


class DataError(InputError):
    """The data set is missing, malformed or too small for the request."""


def _where(ds: Any, index: int, split: str) -> str:
    samples = getattr(ds, "samples", None)  # torchvision's folder data sets name the file
    path = f" ({samples[index][0]})" if isinstance(samples, list) and 0 <= index < len(samples) else ""
    return f"data: split {split!r}, index {index}{path}"


def check_item(item: Any, index: int, split: str, ds: Any = None) -> tuple[torch.Tensor, int]:
    """``item`` as (image tensor, int label), or a ``DataError`` saying what is wrong with it."""
    where = _where(ds, index, split)
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{where}: an item must be (image, label), got {type(item).__name__}")
    img, label = item
    if isinstance(img, np.ndarray):
        img = torch.from_numpy(img)
    if not isinstance(img, torch.Tensor):
        raise DataError(f"{where}: the image must be a (C, H, W) tensor, got {type(img).__name__} (add a ToTensor / PILToTensor transform)")
    if img.ndim != 3:
        raise DataError(f"{where}: the image must have shape (C, H, W), got {tuple(img.shape)}")
    if not (img.dtype == torch.uint8 or img.dtype.is_floating_point):
        raise DataError(f"{where}: the image must be uint8 (0..255) or float in [0, 1], got {img.dtype}")
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.dtype.is_floating_point:
        label = label.item()
    if isinstance(label, bool) or not isinstance(label, numbers.Integral):
        raise DataError(f"{where}: the label must be an int, got {type(label).__name__} {label!r}")
    if label < 0:
        raise DataError(f"{where}: labels must be >= 0, got {label}")
    return img, int(label)


class Checked(Dataset):
    """``ds`` at ``indices``; each item comes back as (image, label, index, problem or "")."""

    def __init__(self, ds: Any, indices: np.ndarray, split: str) -> None:
        self.ds, self.indices, self.split = ds, indices, split

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[Any, int, int, str]:
        i = int(self.indices[k])
        try:
            img, label = check_item(self.ds[i], i, self.split, self.ds)
        except DataError as e:
            return None, -1, i, str(e)
        except Exception as e:  # noqa: BLE001 - the user's Dataset or an unreadable file
            return None, -1, i, f"{_where(self.ds, i, self.split)}: reading it raised {type(e).__name__}: {str(e)[:300]}"
        return img, label, i, ""


def collate(items: list[tuple[Any, int, int, str]], split: str = "") -> tuple[torch.Tensor | None, torch.Tensor | None, str]:
    """A batch of checked items -> (images (n, C, H, W), labels (n,), ""), or (None, None,
    problem) for the first problem: a worker returns it as data and the reader raises it
    (``batches``), so the message is the user's, not a DataLoader traceback."""
    for _img, _, _i, problem in items:
        if problem:
            return None, None, problem
    first = items[0]
    for img, _, i, _ in items:
        if img.shape != first[0].shape or img.dtype != first[0].dtype:
            return (
                None,
                None,
                (
                    f"data: split {split!r}, index {i}: image {tuple(img.shape)} {img.dtype} differs from index {first[2]}'s "
                    f"{tuple(first[0].shape)} {first[0].dtype}; every image of a data set must have one shape and dtype"
                ),
            )
    return torch.stack([it[0] for it in items]), torch.tensor([it[1] for it in items], dtype=torch.int64), ""


def batches(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (images, labels) batches of a ``DataLoader`` built on ``Checked`` and ``collate``;
    the first problem an item had raises ``DataError`` here, in the reading process."""
    for raw, y, problem in loader:
        if problem:
            raise DataError(problem)
        yield raw, y


def decode(ds: Any, indices: np.ndarray, split: str, workers: int, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of ``ds`` at ``indices``: raw (N, C, H, W) (uint8, or float32
    for float images) and int64 (N,), decoded by ``workers`` DataLoader processes."""
    if len(indices) == 0:
        raise DataError(f"data: split {split!r} is empty")
    first, _ = check_item(ds[int(indices[0])], int(indices[0]), split, ds)
    dtype = np.uint8 if first.dtype == torch.uint8 else np.float32
    out = np.empty((len(indices), *first.shape), dtype=dtype)
    labels = np.empty(len(indices), dtype=np.int64)
    loader = DataLoader(Checked(ds, indices, split), batch_size=batch, num_workers=workers, collate_fn=partial(collate, split=split))
    pos = 0
    for raw, y in batches(loader):
        if tuple(raw.shape[1:]) != tuple(first.shape) or (raw.dtype == torch.uint8) != (dtype == np.uint8):
            raise DataError(
                f"data: split {split!r}, indices {indices[pos : pos + len(y)].tolist()[:4]}...: images {tuple(raw.shape[1:])} {raw.dtype} "
                f"differ from index {int(indices[0])}'s {tuple(first.shape)} {first.dtype}; every image must have one shape and dtype"
            )
        out[pos : pos + len(y)] = raw.numpy()
        labels[pos : pos + len(y)] = y.numpy()
        pos += len(y)
    return out, labels
