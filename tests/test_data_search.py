"""Searches end to end on data sets that are not arrays: a user's Dataset (``import``) and an image folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_factories import reads

from search.runner.driver import run_search

from conftest import candidate_runs, search_config


@pytest.mark.slow
def test_an_import_data_set_runs_a_search_and_its_train_split_is_never_read(tmp_path, ray_local, digits_model):
    torch.save(digits_model.state_dict(), tmp_path / "digits.pt")
    log = tmp_path / "reads.jsonl"
    data = {
        "name": "import",
        "import_path": "data_factories:digits",
        "kwargs": {"log": str(log)},
        "calib_size": 64,
        "val_size": 100,
        "test_size": 100,
    }
    over = {"data": data, "model": {"checkpoint": str(tmp_path / "digits.pt")}, "space": {"methods": ["magnitude"]}, "recalibration": {"images": 64}}
    cfg = search_config(tmp_path, "imported", 3, **over)
    out = run_search(cfg, quiet=True)
    assert (out.evaluated, out.failed) == (3, 0)
    _, runs = candidate_runs(cfg)
    assert all(r.data.tags["info.device_type"] == "cpu" and r.data.tags["info.latency_precision"] == "fp32" for r in runs)
    assert min(r.data.metrics["accuracy"] for r in runs) > 0.5
    record = cfg.inside_run_dir("data/imported-subsets.npz")
    with np.load(record) as f:
        calib, val, test = (set(map(int, f[k])) for k in ("calib", "val", "test"))
    got = reads(log)
    assert got["train"] == calib | val and got["test"] == test  # not one training image read
    # a resumed search reads the recorded subsets again, and still no training image
    log.unlink()
    assert run_search(search_config(tmp_path, "imported", 4, **over), quiet=True).evaluated == 1
    assert reads(log)["train"] == calib | val


@pytest.mark.slow
def test_an_image_folder_runs_a_search_with_a_streamed_training_split(tmp_path, ray_local):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        (tmp_path / "images" / f"c{c}").mkdir(parents=True)
        for i in range(40):
            px = np.clip(np.array(colour) + rng.integers(-40, 40, (18, 22, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(tmp_path / "images" / f"c{c}" / f"{i}.jpg")
    data = {"name": "imagefolder", "path": str(tmp_path / "images"), "image_size": 16, "calib_size": 16, "val_size": 24, "test_size": 16}
    over = {
        "data": data,
        "model": {"name": "cifar_resnet20", "num_classes": 2},
        "base_training": {"steps": 40},
        "space": {"methods": ["magnitude"]},
        "recalibration": {"images": 16, "batch_size": 8},
    }
    cfg = search_config(tmp_path, "folder", 2, **over)
    out = run_search(cfg, quiet=True)
    assert (out.evaluated, out.failed) == (2, 0)
    _, runs = candidate_runs(cfg)
    assert all("accuracy" in r.data.metrics and r.data.tags["info.device_type"] == "cpu" for r in runs)
