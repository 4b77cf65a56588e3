"""Which images go where: calibration / validation / test / train positions, chosen by index.

The positions come from one seeded permutation of the training set (the split seed),
so they are the same on every machine and every run; ``resolve`` records them in a
``.npz`` next to the run (a resumed search reads the recorded positions, so it scores
the same images even if the folder gained some since).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.data.config import DataConfig
from pipeline.data.decode import DataError

KEYS = ("calib", "val", "test", "train")


def choose(cfg: DataConfig, n_train: int, n_test: int | None) -> dict[str, np.ndarray]:
    """Positions of each subset for a training set of ``n_train`` images and a separate
    test set of ``n_test`` (None: the test split is carved out of the training set).

    ``calib``, ``val`` (and a carved ``test``) are disjoint slices of one permutation of
    ``range(n_train)`` seeded by ``cfg.seed``; ``train`` is the rest (capped at ``train_size``).
    ``test`` indexes the separate test set when there is one (all of it, or a seeded
    sample of ``test_size``).
    """
    order = np.random.default_rng(cfg.seed).permutation(n_train)
    carve = cfg.carved_test_size if n_test is None else 0
    need = cfg.calib_size + cfg.val_size + carve
    if need >= len(order):
        raise DataError(
            f"data: {len(order)} training images cannot give calib_size={cfg.calib_size}, "
            f"val_size={cfg.val_size}"
            + ("" if n_test is not None else f", test_size={carve}")
            + " and leave any for training; lower those sizes or add images"
        )
    cut1, cut2 = cfg.calib_size, cfg.calib_size + cfg.val_size
    out = {"calib": order[:cut1], "val": order[cut1:cut2]}
    if n_test is None:
        out["test"], rest = order[cut2 : cut2 + carve], order[cut2 + carve :]
    else:
        rest = order[cut2:]
        take = n_test if cfg.test_size is None else min(cfg.test_size, n_test)
        out["test"] = np.arange(n_test) if take == n_test else np.sort(np.random.default_rng(cfg.seed).permutation(n_test)[:take])
    out["train"] = rest[: cfg.train_size] if cfg.train_size is not None else rest
    return out


def resolve(cfg: DataConfig, n_train: int, n_test: int | None, record: Path | None) -> dict[str, np.ndarray]:
    """``choose``'s positions, or the ones recorded at ``record`` (written there the first time)."""
    if record is not None and record.exists():
        with np.load(record, allow_pickle=False) as f:
            got = {k: f[k] for k in KEYS}
        sizes = {"calib": cfg.calib_size, "val": cfg.val_size}
        for k, n in sizes.items():
            if len(got[k]) != n:
                raise DataError(f"data.{k}_size: {n} differs from the {len(got[k])} recorded in {record}; keep the size of a resumed search")
        limit = {"calib": n_train, "val": n_train, "train": n_train, "test": n_train if n_test is None else n_test}
        for k, idx in got.items():
            if len(idx) and int(idx.max()) >= limit[k]:
                raise DataError(
                    f"data: {record} records {k} image {int(idx.max())} but the data set has {limit[k]}; the images were removed since the search began"
                )
        return got
    got = choose(cfg, n_train, n_test)
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(record.name + ".tmp.npz")
        np.savez(tmp, calib=got["calib"], val=got["val"], test=got["test"], train=got["train"])
        tmp.replace(record)
    return got
