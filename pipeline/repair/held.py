"""Activations held between reconstruction segments, within a memory budget.

The segment walk (``pipeline.repair.walk``) keeps, for both networks and every
calibration batch, the values that cross the current segment boundary. Up to
``budget_bytes`` of them stay where they were computed (the actor's device); the rest
are offloaded: to CPU memory when the device is a GPU, to files in a private temporary
folder otherwise (written and read back whole, so they are not part of the process's
resident memory while they wait; a file is deleted as soon as its value is dead).
Offloading moves bytes only: a value read back is bit-identical to the one stored.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from typing import Any

import torch

Key = tuple[int, int, int]  # (network, node index, batch)


class HeldValues:
    """A key -> value store with at most ``budget_bytes`` of tensors resident.

    Args:
        budget_bytes: bytes of tensors kept on their device (``math.inf``: no limit).
    """

    def __init__(self, budget_bytes: float = math.inf) -> None:
        self.budget = budget_bytes
        self.resident = 0  # bytes of tensors kept on their device now
        self.peak_resident = 0
        self.offloaded = 0  # bytes written to CPU memory or files, in all
        self._values: dict[Key, Any] = {}
        self._cpu: dict[Key, tuple[torch.Tensor, torch.device]] = {}  # offloaded from a GPU
        self._files: dict[Key, tuple[str, torch.Tensor, torch.device]] = {}  # path, an empty twin, device
        self._folder: str | None = None

    def put(self, key: Key, value: Any) -> None:
        """Hold ``value`` (a tensor, or anything small such as a shape or a tuple)."""
        self.drop(key)
        if not isinstance(value, torch.Tensor):
            self._values[key] = value
            return
        size = value.numel() * value.element_size()
        if self.resident + size <= self.budget:
            self.resident += size
            self.peak_resident = max(self.peak_resident, self.resident)
            self._values[key] = value
            return
        self.offloaded += size
        if value.device.type != "cpu":
            self._cpu[key] = (value.to("cpu"), value.device)
            return
        path = os.path.join(self._dir(), "-".join(map(str, key)))
        value.detach().contiguous().numpy().tofile(path)
        # the twin keeps shape, dtype and strides: kernels given another memory layout may
        # sum in another order, and the refit would differ in the last digits
        self._files[key] = (path, torch.empty_strided(value.shape, value.stride(), dtype=value.dtype), value.device)

    def get(self, key: Key) -> Any:
        """The value held under ``key``, on the device it was computed on."""
        if key in self._files:
            path, twin, device = self._files[key]
            flat = torch.empty(twin.shape, dtype=twin.dtype)
            with open(path, "rb") as f:
                f.readinto(flat.numpy().data.cast("B"))
            out = flat if flat.stride() == twin.stride() else torch.empty_like(twin).copy_(flat)
            return out.to(device)
        if key in self._cpu:
            value, device = self._cpu[key]
            return value.to(device)
        return self._values[key]

    def __contains__(self, key: Key) -> bool:
        return key in self._values or key in self._cpu or key in self._files

    def drop(self, key: Key) -> None:
        """Forget ``key`` (its file is deleted)."""
        if key in self._files:
            os.unlink(self._files.pop(key)[0])
            return
        if self._cpu.pop(key, None) is not None:
            return
        value = self._values.pop(key, None)
        if isinstance(value, torch.Tensor):
            self.resident -= value.numel() * value.element_size()

    def keys(self) -> list[Key]:
        return [*self._values, *self._cpu, *self._files]

    def close(self) -> None:
        """Forget everything and remove the temporary folder."""
        self._values.clear()
        self._cpu.clear()
        self._files.clear()
        self.resident = 0
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _dir(self) -> str:
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="prunesearch-recon-")
        return self._folder
