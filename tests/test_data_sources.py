"""Data sources: the loader registry, imagefolder and import data sets, subsets by index, raw storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_factories import reads

from pipeline.data import subsets
from pipeline.data.preprocess import normalise
from pipeline.data.splits import DataConfig, DataError, load_data
from pipeline.registry import RegistryError


def _digits_cfg(**over):
    base = {"name": "import", "import_path": "data_factories:digits", "calib_size": 50, "val_size": 60, "workers": 0}
    return DataConfig(**{**base, **over})


def test_a_misspelt_loader_is_refused_with_the_closest_name():
    from search.config import ConfigError, parse_config

    with pytest.raises(RegistryError, match="data.name: unknown data set 'imagefoldr'.*did you mean 'imagefolder'"):
        load_data(DataConfig(name="imagefoldr"))
    with pytest.raises(ConfigError, match="data.name: unknown data set 'cifar1O'.*did you mean 'cifar10'"):
        parse_config({"data": {"name": "cifar1O"}})


def test_an_import_data_set_gives_raw_subsets_normalised_like_today(tmp_path):
    s = load_data(_digits_cfg(test_size=100), train=False)
    assert s.train is None and s.val.images.dtype == np.float32 and s.input_shape == (1, 8, 8)
    assert len(s.calib) == 50 and len(s.val) == 60 and len(s.test) == 100 and s.num_classes == 10
    # batch-by-batch normalisation on the device is bit-identical to the host's normalise
    from data_factories import Digits

    ds = Digits("train")
    ref = normalise(ds.x[s.indices["val"]].numpy().transpose(0, 2, 3, 1), s.val.mean, s.val.std)
    assert torch.equal(s.val.x, ref) and torch.equal(s.val.batch(10, 20), ref[10:20])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("shape", r"split 'calib', index \d+: image \(1, 9, 9\).*differs"),
        ("label", r"split 'calib', index \d+: the label must be an int, got float"),
        ("pil", r"split 'calib', index \d+: the image must be a \(C, H, W\) tensor, got list"),
    ],
)
def test_a_bad_factory_output_is_named_by_split_and_index(bad, message):
    first_calib = subsets.choose(_digits_cfg(), 1500, 297)["calib"][3]  # not the first: checked in a batch
    with pytest.raises(DataError, match=message):
        load_data(_digits_cfg(kwargs={"bad": bad, "bad_index": int(first_calib)}), train=False)
    with pytest.raises(DataError, match=message):  # the same through DataLoader worker processes
        load_data(_digits_cfg(workers=2, kwargs={"bad": bad, "bad_index": int(first_calib)}), train=False)


def test_a_factory_that_returns_no_dataset_is_refused():
    with pytest.raises(DataError, match="not_a_dataset.*returned a int, not a Dataset"):
        load_data(_digits_cfg(import_path="data_factories:not_a_dataset"))
    with pytest.raises(DataError, match="data.import_path: 'data_factories:nope'.*no attribute 'nope'"):
        load_data(_digits_cfg(import_path="data_factories:nope"))


def test_subsets_are_deterministic_disjoint_and_a_resume_reads_the_recorded_ones(tmp_path):
    cfg = DataConfig(calib_size=20, val_size=30, test_size=40, seed=3)
    a, b = subsets.choose(cfg, 500, None), subsets.choose(cfg, 500, None)
    assert all(np.array_equal(a[k], b[k]) for k in subsets.KEYS)
    assert sum(len(v) for v in a.values()) == 500 and len(np.unique(np.concatenate(list(a.values())))) == 500
    assert not np.array_equal(subsets.choose(cfg.model_copy(update={"seed": 4}), 500, None)["val"], a["val"])
    rec = tmp_path / "subsets.npz"
    first = subsets.resolve(cfg, 500, None, rec)
    grown = subsets.resolve(cfg, 650, None, rec)  # the folder gained images: the run keeps its subsets
    assert all(np.array_equal(first[k], grown[k]) for k in subsets.KEYS)
    assert not np.array_equal(subsets.choose(cfg, 650, None)["val"], first["val"])
    with pytest.raises(DataError, match="calib_size: 21 differs from the 20 recorded"):
        subsets.resolve(cfg.model_copy(update={"calib_size": 21}), 500, None, rec)
    with pytest.raises(DataError, match="the images were removed"):
        subsets.resolve(cfg, 100, None, rec)


def test_the_train_split_is_streamed_and_never_read_when_not_asked_for(tmp_path):
    log = tmp_path / "reads.jsonl"
    s = load_data(_digits_cfg(kwargs={"log": str(log)}), train=False)
    got = reads(log)
    assert got["train"] == set(map(int, s.indices["calib"])) | set(map(int, s.indices["val"]))  # no training image
    log.unlink()
    s = load_data(_digits_cfg(kwargs={"log": str(log)}), train=True)
    assert reads(log)["train"] == got["train"]  # building the training split reads none of it ...
    from pipeline.train import batches

    x, y = next(batches(s.train, None, 16, torch.Generator().manual_seed(0)))
    assert x.shape == (16, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    new = reads(log)["train"] - got["train"]
    assert len(new) == 16 and new <= set(map(int, s.indices["train"]))  # ... a batch reads 16 of it


def _folder(root, per_class=12, size=(20, 24)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            px = np.clip(np.array(colour) + rng.integers(-25, 25, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / f"class{c}" / f"{i}.jpg")


def test_imagefolder_decodes_with_workers_resizes_the_short_side_and_centre_crops(tmp_path):
    from PIL import Image

    from pipeline.data.splits import fit_image

    _folder(tmp_path)
    cfg = DataConfig(name="imagefolder", path=str(tmp_path), image_size=16, calib_size=4, val_size=4, test_size=4, workers=2)
    s = load_data(cfg)
    assert s.val.images.dtype == np.uint8 and s.input_shape == (3, 16, 16) and s.num_classes == 2
    assert cfg.resize_side == 18 and DataConfig(image_size=224).resize_side == 256
    i = int(s.indices["val"][0])
    path = sorted(p for p in tmp_path.rglob("*.jpg"))[i]  # ImageFolder's order: class, then file name
    want = np.asarray(fit_image(Image.open(path).convert("RGB"), 18, 16)).transpose(2, 0, 1)
    assert np.array_equal(s.val.images[0], want)
    assert len(s.train) == 24 - 12 and s.train.__class__.__name__ == "StreamSplit"


def test_an_unreadable_image_is_named_with_its_path(tmp_path):
    _folder(tmp_path)
    cfg = DataConfig(name="imagefolder", path=str(tmp_path), image_size=16, calib_size=4, val_size=4, test_size=4, workers=0)
    i = int(subsets.choose(cfg, 24, None)["val"][1])
    bad = sorted(tmp_path.rglob("*.jpg"))[i]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=rf"split 'val', index {i} \({bad}\): reading it raised UnidentifiedImageError"):
        load_data(cfg)
