"""Bad numbers and a bad environment: exit 2 before any work, a message naming the field,
no traceback (split from test_hardening.py)."""

from __future__ import annotations

import socket
import subprocess
import time

import numpy as np
import pytest
import torch
import yaml

from search.cli.parser import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, capsys, **cfg) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "base_training": {"steps": 60}, **cfg}))
    t0 = time.monotonic()
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 60 and "Traceback" not in err and "error: " in err, err
    return err


@pytest.mark.parametrize(
    "cfg, field",
    [
        ({"space": {"methods": ["hyperflows"], "knobs": {"hyperflows": {"pressure": [float("nan"), 0.1]}}}}, "space.knobs.hyperflows.pressure.0"),
        ({"sampler": {"seed": -1}}, "sampler.seed"),
        ({"actors": {"num_cpus": float("inf")}}, "actors.num_cpus: Input should be a finite number"),
        ({"data": {"std": [0.0]}}, "data.std: values must be > 0"),
        ({"optuna_storage": "garbage"}, "optuna_storage: 'garbage' is not a database URL"),
        ({"tracking_uri": "foo://bar"}, "cannot reach the MLflow tracking store at foo://bar"),
        ({"model": {"kwargs": {"depth": 3}}}, "model.kwargs: digits_cnn does not take ['depth']"),
        ({"name": "n" * 3000}, "name: String should have at most 100 characters"),
    ],
)
def test_bad_numbers_and_stores_are_refused_before_any_work(tmp_path, capsys, cfg, field):
    err = _run(tmp_path, capsys, **cfg)
    assert field in err, err
    assert not (tmp_path / "run" / "optuna.journal").exists()  # no study, no trial left RUNNING


def test_nan_pixels_and_images_that_do_not_fit_the_model_are_named(tmp_path, capsys):
    x = np.random.default_rng(0).random((400, 8, 8, 1)).astype(np.float32)
    x[3, 2, 2, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(400) % 10)
    small = {"calib_size": 64, "val_size": 64, "test_size": 64}
    assert "1 pixel values are NaN or Inf" in _run(
        tmp_path, capsys, data={"name": "npz", "path": str(tmp_path / "nan.npz"), **small}, recalibration={"images": 64}
    )
    rgb = (np.random.default_rng(0).random((400, 8, 8, 3)) * 255).astype(np.uint8)
    np.savez(tmp_path / "rgb.npz", x=rgb, y=np.arange(400) % 10)
    err = _run(tmp_path, capsys, data={"name": "npz", "path": str(tmp_path / "rgb.npz"), **small}, recalibration={"images": 64})
    assert "data: images of shape (3, 8, 8) (C, H, W) do not fit model digits_cnn" in err


def test_a_dense_model_that_cannot_be_a_base_is_refused(tmp_path, capsys):
    from pipeline.models import ModelConfig, build_model

    state = build_model(ModelConfig()).state_dict()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    err = _run(tmp_path, capsys, model={"checkpoint": str(tmp_path / "nan.pt")})
    assert "dense base model gives NaN or Inf outputs" in err and "model.checkpoint" in err
    constant = build_model(ModelConfig()).state_dict()  # always answers class 3: chance level
    constant["fc.weight"].zero_()
    constant["fc.bias"].zero_()
    constant["fc.bias"][3] = 1.0
    torch.save(constant, tmp_path / "constant.pt")
    err = _run(tmp_path, capsys, model={"checkpoint": str(tmp_path / "constant.pt")})
    assert "no better than chance" in err


def test_a_corrupt_image_in_an_image_folder_is_named(tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    # 7 images: 6 in the subsets, 1 for the training the base model needs; each is decoded
    sizes = {"calib_size": 2, "val_size": 2, "test_size": 2}
    err = _run(
        tmp_path, capsys, data={"name": "imagefolder", "path": str(tmp_path / "imgs"), **sizes}, model={"num_classes": 2}, recalibration={"images": 2}
    )
    broken = tmp_path / "imgs" / "b" / "broken.png"
    assert f"index 6 ({broken}): reading it raised UnidentifiedImageError" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, field",
    [
        (["run", "CFG", "--trials", "0"], "--trials: must be at least 1, got 0"),
        (["run", "CFG", "--trials", "-3"], "--trials: must be at least 1, got -3"),
        (["best", "--top", "-1"], "--top: must be at least 1, got -1"),
        (["best", "--max-macs", "nan"], "--max-macs: must be a finite number, got nan"),
        (["best", "--min-accuracy", "1.5"], "--min-accuracy: must be a fraction in [0, 1]"),
    ],
)
def test_command_line_numbers_are_checked(tmp_path, capsys, argv, field):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run")}))
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "c.yaml") if a == "CFG" else a for a in argv])
    assert e.value.code == 2 and field in capsys.readouterr().err


def test_unreachable_services_fail_within_seconds(tmp_path, capsys):
    port = _free_port()
    err = _run(tmp_path, capsys, ray_address=f"127.0.0.1:{port}")
    assert f"ray_address: nothing answers at 127.0.0.1:{port}" in err
    assert not (tmp_path / "run" / "mlflow.db").exists()  # refused before the store is made
    t0 = time.monotonic()
    assert main(["best", "--tracking-uri", f"http://127.0.0.1:{port}"]) == 2
    assert time.monotonic() - t0 < 15 and "does not answer" in capsys.readouterr().err


def test_a_read_only_run_folder_is_refused_within_seconds(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)  # a real read-only file system
    try:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"run_dir": str(ro / "run")}))
        t0 = time.monotonic()
        assert main(["run", str(path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert time.monotonic() - t0 < 10 and f"run_dir: cannot write to {ro / 'run'}" in err and "Traceback" not in err
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
