"""Dataset factories for ``data.name: import`` tests (``data_factories:NAME``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


class Digits(Dataset):
    """scikit-learn digits as (1, 8, 8) float tensors in [0, 1]; every read logged to ``log``."""

    def __init__(self, split: str, log: str | None = None, bad: str = "", bad_index: int = -1) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        cut = 1500
        sl = slice(0, cut) if split == "train" else slice(cut, None)
        self.x = torch.from_numpy((d.images[sl] / 16.0).astype(np.float32))[:, None]
        self.y = d.target[sl].astype(np.int64)
        self.split, self.log, self.bad, self.bad_index = split, log, bad, bad_index

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps([self.split, int(i)]) + "\n")
        img, label = self.x[i], int(self.y[i])
        if i == self.bad_index and self.bad == "shape":
            img = torch.zeros(1, 9, 9)
        if i == self.bad_index and self.bad == "label":
            return img, float(label)
        if i == self.bad_index and self.bad == "pil":
            return img.numpy().tolist(), label
        return img, label


def digits(split: str, log: str | None = None, bad: str = "", bad_index: int = -1, test: bool = True):
    """The factory: ``Digits`` for either split (no test set with ``test=False``)."""
    if split == "test" and not test:
        return None
    return Digits(split, log, bad, bad_index)


def reads(log: Path) -> dict[str, set[int]]:
    """Split -> indices read, from a ``Digits`` log."""
    out: dict[str, set[int]] = {"train": set(), "test": set()}
    if log.exists():
        for line in log.read_text().splitlines():
            split, i = json.loads(line)
            out[split].add(i)
    return out


def not_a_dataset(split: str):
    return 42 if split == "train" else None
