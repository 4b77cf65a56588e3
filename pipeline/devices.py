"""Which device an evaluator computes on, and a per-GPU lock for timing.

Ray 2.60 no longer hides GPUs from an actor that asked for none (ray issue 54868), so
``torch.cuda.is_available()`` says nothing about what an actor was given: the choice
follows the actor's ``num_gpus`` and the GPU ids Ray assigned it, never what is visible.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from pipeline.errors import InputError


class DeviceError(InputError):
    """The requested device is not what the actor was given."""


def pick_device(
    requested: str,
    num_gpus: float | None,
    gpu_ids: Sequence[str | int] = (),
    visible: str | None = None,
    cuda_available: bool | None = None,
) -> torch.device:
    """The device of an evaluator.

    Args:
        requested: ``auto``, ``cpu`` or ``cuda`` (``actors.device``).
        num_gpus: what the actor asked Ray for; None outside Ray (``auto`` is then CUDA
            when it is available).
        gpu_ids: the GPU ids Ray assigned (``ray.get_gpu_ids()``).
        visible: ``CUDA_VISIBLE_DEVICES`` of the process (Ray sets it to the assigned ids,
            so the assigned GPU is the visible index of its id; without it, the id is the index).
        cuda_available: ``torch.cuda.is_available()`` unless given.

    Raises:
        DeviceError: ``cuda`` without a GPU given, or a GPU given but none usable.
    """
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "cpu":
        return torch.device("cpu")
    if num_gpus is None:
        return torch.device("cuda" if requested == "cuda" or available else "cpu")
    if num_gpus == 0:
        if requested == "cuda":
            raise DeviceError("actors.device: cuda needs actors.num_gpus > 0 (an actor computes only on a GPU Ray gave it)")
        return torch.device("cpu")
    if not gpu_ids:
        raise DeviceError(f"actors.num_gpus: {num_gpus} requested but Ray assigned this actor no GPU id")
    if not available:
        raise DeviceError(f"actors.num_gpus: Ray assigned GPU {gpu_ids[0]} but CUDA is not usable in the actor (torch.cuda.is_available() is False)")
    return torch.device("cuda", visible_index(str(gpu_ids[0]), visible))


def visible_index(gpu_id: str, visible: str | None) -> int:
    """The CUDA index of physical GPU ``gpu_id`` in a process whose ``CUDA_VISIBLE_DEVICES`` is ``visible``."""
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    if gpu_id in ids:
        return ids.index(gpu_id)
    return int(gpu_id) if gpu_id.isdigit() else 0


def actor_device(requested: str, num_gpus: float | None) -> tuple[torch.device, str]:
    """``pick_device`` for this process (Ray's assignment when inside a Ray actor), and
    the GPU's node-wide key for ``GpuLock`` ('' on CPU)."""
    ids: list[str] = []
    if num_gpus:
        import ray

        ids = [str(i) for i in ray.get_gpu_ids()]
    dev = pick_device(requested, num_gpus, ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return dev, (ids[0] if ids else str(dev.index or 0)) if dev.type == "cuda" else ""


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model where the system tells it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux: the platform's word for it
        pass
    return platform.processor() or platform.machine()


class GpuLock:
    """A node-wide reader-writer lock per GPU (``flock`` on files in the temp folder).

    Candidates' work takes it shared; a latency measurement takes it exclusive, so no
    other actor's work runs on that GPU while it is timed. A turnstile lock keeps a
    waiting writer from starving: new readers queue behind it.
    """

    def __init__(self, key: str, folder: str | None = None) -> None:
        base = Path(folder or tempfile.gettempdir())
        self.turnstile = base / f"prunesearch-gpu-{key}.turn.lock"
        self.room = base / f"prunesearch-gpu-{key}.lock"

    @contextlib.contextmanager
    def _flock(self, path: Path, mode: int) -> Iterator[None]:
        with open(path, "a") as f:
            fcntl.flock(f, mode)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._flock(self.turnstile, fcntl.LOCK_EX):
            pass  # wait behind a writer that is queued
        with self._flock(self.room, fcntl.LOCK_SH):
            yield

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._flock(self.turnstile, fcntl.LOCK_EX), self._flock(self.room, fcntl.LOCK_EX):
            yield
