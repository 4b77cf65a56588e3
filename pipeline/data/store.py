"""The images a search holds: subsets kept as raw pixels, normalised batch by batch on the device.

A ``Split`` keeps its images as they were decoded, uint8 (or float32 in [0, 1] for a
float source), (N, C, H, W), in a numpy array: Ray shares numpy arrays zero-copy among
the actors of a node, so every actor of a node reads one copy from the object store.
``Split.batch`` normalises a slice on the split's device, ``(pixel / 255 - mean) / std``
in float32, the same float32 operations in the same order as
``pipeline.data.preprocess.normalise`` (bit-identical values). A ``StreamSplit`` (the
training images of a folder or a user's Dataset) holds no pixels at all: it decodes
shuffled batches through a ``DataLoader`` with worker processes when a method trains.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Iterator

import numpy as np
import torch


def normalise_batch(raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw (N, C, H, W) pixels -> float32 normalised: uint8 as ``(p / 255 - mean) / std``,
    float as ``(p - mean) / std`` per channel; ``mean``/``std`` float32 (C,) on the same device."""
    x = raw.to(torch.float32) / 255.0 if raw.dtype == torch.uint8 else raw.to(torch.float32)
    return (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)


def _tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor view of ``a`` without a copy (object-store arrays are read-only; nothing writes them)."""
    if isinstance(a, torch.Tensor):
        return a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": the view is only read
        return torch.from_numpy(a)


@dataclass
class Split:
    """Raw images (N, C, H, W) uint8 or float32, labels int64 (N,), and their normalisation.

    ``images`` is a numpy array on the host (shared through Ray's object store) or, after
    ``to("cuda")``, a uint8 tensor on the GPU. Labels are small and always a tensor.
    """

    images: np.ndarray | torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: str = "cpu"

    def __len__(self) -> int:
        return len(self.y)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.from_numpy(np.asarray(self.mean, dtype=np.float32)).to(self.device)
        s = torch.from_numpy(np.asarray(self.std, dtype=np.float32)).to(self.device)
        return m, s

    def batch(self, start: int, stop: int) -> torch.Tensor:
        """Images ``start:stop`` normalised, float32 (n, C, H, W) on the split's device."""
        return normalise_batch(_tensor(self.images[start:stop]).to(self.device), *self._stats())

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images normalised, labels) at the positions ``idx``, on the split's device."""
        raw = self.images[idx.to(self.images.device)] if isinstance(self.images, torch.Tensor) else self.images[idx.numpy()]
        return normalise_batch(_tensor(raw).to(self.device), *self._stats()), self.y[idx.to(self.y.device)]

    @property
    def x(self) -> torch.Tensor:
        """Every image normalised, float32 (N, C, H, W): a float copy; prefer ``batch``."""
        return self.batch(0, len(self))

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    def to(self, device: torch.device | str) -> "Split":
        """The split normalising on ``device``; on a GPU the raw pixels move there once (uint8)."""
        dev = str(device)
        images = self.images
        if torch.device(dev).type != "cpu":
            images = _tensor(images).to(dev)
        return replace(self, images=images, y=self.y.to(dev), device=dev)

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled mini-batches (x normalised, y): the order of ``train.batches`` on tensors."""
        while True:
            order = torch.randperm(len(self), generator=generator)
            for i in range(0, len(self) - batch_size + 1, batch_size):
                yield self.take(order[i : i + batch_size])


class _EpochBatches:
    """Endless batches of positions in a shuffled order (``Split.shuffled_batches``'s order)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            order = torch.randperm(self.n, generator=self.generator)
            for i in range(0, self.n - self.batch_size + 1, self.batch_size):
                yield order[i : i + self.batch_size].tolist()


@dataclass
class StreamSplit:
    """Training images read on demand: ``source`` (a ``pipeline.data.sources.DatasetImages``)
    at ``indices``; nothing is decoded until a method asks for batches."""

    source: Any
    indices: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    workers: int = 2
    device: str = "cpu"
    y: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # labels are streamed too

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str) -> "StreamSplit":
        return replace(self, device=str(device))

    def shuffled_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled mini-batches decoded by a ``DataLoader`` (``workers`` processes)."""
        from torch.utils.data import DataLoader

        from pipeline.data.decode import Checked, batches, collate

        ds = Checked(self.source.ds, self.indices, "train")
        loader = DataLoader(
            ds, batch_sampler=_EpochBatches(len(self), batch_size, generator), num_workers=self.workers, collate_fn=partial(collate, split="train")
        )
        m = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        s = torch.tensor(self.std, dtype=torch.float32, device=self.device)
        for raw, y in batches(loader):
            yield normalise_batch(raw.to(self.device), m, s), y.to(self.device)


@dataclass
class Splits:
    """The four splits of a data set.

    Attributes:
        train: training images (``Split`` in memory, ``StreamSplit`` read on demand), or
            None when nothing trains (not read at all).
        calib, val, test: the subsets candidates are measured on.
        num_classes: labels are 0 .. num_classes - 1.
        black: a black pixel after normalisation, per channel.
        indices: positions of each subset in its source (``calib``, ``val``, ``test``,
            ``train``; ``test_from``: ``train`` when the test split was carved out of it).
    """

    train: Split | StreamSplit | None
    calib: Split
    val: Split
    test: Split
    num_classes: int
    black: tuple[float, ...] | None = None
    indices: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "Splits":
        """The same splits normalising on ``device``."""
        train = self.train.to(device) if self.train is not None else None
        return replace(self, train=train, calib=self.calib.to(device), val=self.val.to(device), test=self.test.to(device))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return self.val.shape
