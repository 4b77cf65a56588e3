"""Data loaders: splits are deterministic and disjoint; ImageFolder and npz load real files."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.data.splits import DataConfig, load_data


def test_digits_split_is_deterministic_and_disjoint():
    a, b = load_data(DataConfig()), load_data(DataConfig())
    assert torch.equal(a.calib.x, b.calib.x) and torch.equal(a.val.y, b.val.y)
    rows = lambda s: {tuple(r.flatten().tolist()) for r in s.x}  # noqa: E731
    assert not rows(a.calib) & rows(a.val) and not rows(a.val) & rows(a.test)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.calib) == 256 and len(a.val) == 300 and len(a.test) == 300


def test_npz_with_test_file_and_normalisation(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (80, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(80) % 4)
    np.savez(tmp_path / "test.npz", x=x[:10], y=np.arange(10) % 4)
    s = load_data(
        DataConfig(
            name="npz",
            path=str(tmp_path / "train.npz"),
            test_path=str(tmp_path / "test.npz"),
            mean=(0.5, 0.5, 0.5),
            std=(0.25, 0.25, 0.25),
            calib_size=20,
            val_size=20,
        )
    )
    assert len(s.test) == 10 and len(s.train) == 40 and s.num_classes == 4
    expected = (x[:1].astype(np.float32) / 255 - 0.5) / 0.25
    assert torch.allclose(s.test.x[:1], torch.from_numpy(expected.transpose(0, 3, 1, 2)))


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    s = load_data(DataConfig(name="imagefolder", path=str(tmp_path), image_size=16, calib_size=4, val_size=4, test_size=4))
    assert s.input_shape == (3, 16, 16) and s.num_classes == 2
    assert len(s.train) + len(s.calib) + len(s.val) + len(s.test) == 24


def test_a_loader_that_returns_test_images_without_labels_is_a_data_error(monkeypatch):
    import pytest

    from pipeline.data.splits import LOADERS, DataError

    digits = LOADERS.get("digits")

    def no_test_labels(cfg):
        tx, ty, _, _ = digits(cfg)
        return tx, ty, tx[:10], None

    monkeypatch.setitem(LOADERS._entries, "digits", no_test_labels)
    with pytest.raises(DataError, match="returned test images without test labels"):
        load_data(DataConfig())
