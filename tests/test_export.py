"""Exports that run elsewhere: a fresh process with torch and numpy only (torch.export,
ONNX) or with ``load_exported``, and candidates logged as MLflow models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(digits_search, tmp_path_factory):
    """The best candidate exported through the CLI: .pt, .pt2, .json, .onnx, logged and registered."""
    from search.cli.parser import main

    res = digits_search
    rid = res.best(top=1).run_id[0]
    out = tmp_path_factory.mktemp("export") / "best.pt"
    rc = main(["export", rid, "--tracking-uri", res.tracking_uri, "-o", str(out), "--onnx", "--register", "digits-best"])
    assert rc == 0
    return res, rid, out


@pytest.mark.slow
def test_search_logs_its_pareto_front_as_mlflow_models(digits_search):
    import mlflow
    import mlflow.pytorch

    res = digits_search  # ran with log_models: true; runs before the export below logs anything
    front = set(res.pareto.run_id)
    mlflow.set_tracking_uri(res.tracking_uri)
    try:
        for rid in res.frame.run_id:
            if rid in front:
                assert mlflow.pytorch.load_model(f"runs:/{rid}/model")(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
            else:
                with pytest.raises(MlflowException):
                    mlflow.pytorch.load_model(f"runs:/{rid}/model")
    finally:
        mlflow.set_tracking_uri(None)


def _raw_val_images(cfg) -> tuple[np.ndarray, np.ndarray]:
    """The validation split's images as a user holds them: float pixels in [0, 1], (N, H, W, C),
    before any normalisation (the split rule of ``load_data``; checked against its labels)."""
    from sklearn.datasets import load_digits

    from pipeline.data.splits import load_data

    d = load_digits()
    order = np.random.default_rng(cfg.data.seed).permutation(len(d.target))
    idx = order[cfg.data.calib_size : cfg.data.calib_size + cfg.data.val_size]
    x, y = (d.images[idx] / 16.0).astype(np.float32)[..., None], d.target[idx]
    assert (torch.from_numpy(y) == load_data(cfg.data).val.y).all()
    return x, y


FRESH = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    stem, images = sys.argv[1], np.load(sys.argv[2])
    x, y = images["x"], images["y"]
    pre = json.load(open(stem + ".json"))["preprocessing"]
    batch = torch.from_numpy(((x - np.float32(pre["mean"])) / np.float32(pre["std"])).transpose(0, 3, 1, 2).copy())
    out = {"pt2": float((torch.export.load(stem + ".pt2").module()(batch).argmax(1).numpy() == y).mean())}
    import onnxruntime
    logits = onnxruntime.InferenceSession(stem + ".onnx", providers=["CPUExecutionProvider"]).run(None, {"images": batch.numpy()})[0]
    out["onnx"] = float((logits.argmax(1) == y).mean())
    out["prunesearch_imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "search"))
    from search.export.formats import load_exported
    model, transform = load_exported(stem + ".pt")
    with torch.no_grad():
        out["pt"] = float((model(transform(x)).argmax(1).numpy() == y).mean())
    out["classes"] = transform.class_names
    from pipeline.pruning.layers import prunable_weights
    from pipeline.measure import weight_sparsity
    weights = prunable_weights(model)
    out["sparsity"] = weight_sparsity(model, list(weights), sum(w.numel() for w in weights.values()))
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_export_reproduces_the_recorded_accuracy_in_a_fresh_process(exported, tmp_path):
    res, rid, out = exported
    recorded = float(res.frame.set_index("run_id").loc[rid, "accuracy"])
    x, y = _raw_val_images(res.cfg)
    np.savez(tmp_path / "val.npz", x=x, y=y)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH, str(out.with_suffix("")), str(tmp_path / "val.npz")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["prunesearch_imported"] == []  # torch.export and ONNX need nothing of prunesearch
    assert got["pt2"] == pytest.approx(recorded, abs=1e-9)
    assert got["pt"] == pytest.approx(recorded, abs=1e-9)
    assert abs(got["onnx"] - recorded) <= 1 / len(y)  # float rounding may flip one near-tie
    assert got["classes"] == [str(i) for i in range(10)]
    meta = json.loads(out.with_suffix(".json").read_text())["preprocessing"]
    assert got["sparsity"] == pytest.approx(float(res.frame.set_index("run_id").loc[rid, "sparsity"]), abs=1e-6)
    assert meta["mean"] == [0.5] and meta["std"] == [0.5] and meta["input_shape"] == [1, 8, 8] and meta["channel_order"] == "L"


@pytest.mark.slow
def test_logged_candidate_loads_with_mlflow_pytorch_and_is_registered(exported, monkeypatch):
    import mlflow
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    from search.export.formats import load_exported

    res, rid, out = exported
    monkeypatch.delenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", raising=False)  # the safe loader: pickle refused
    mlflow.set_tracking_uri(res.tracking_uri)
    try:
        logged = mlflow.pytorch.load_model(f"runs:/{rid}/model")
        registered = mlflow.pytorch.load_model("models:/digits-best/1")
        info = mlflow.models.get_model_info(f"runs:/{rid}/model")
        served = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    finally:
        mlflow.set_tracking_uri(None)
    model, _ = load_exported(out)
    batch = torch.randn(5, 1, 8, 8)  # any batch size: the batch dimension stayed dynamic
    with torch.no_grad():
        assert torch.allclose(logged(batch), model(batch), atol=1e-5)
        assert torch.allclose(registered(batch), model(batch), atol=1e-5)
        assert np.allclose(served.predict(batch.numpy()), model(batch).numpy(), atol=1e-5)
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 8, 8]
    assert info.metadata["preprocessing"]["mean"] == [0.5]
    assert MlflowClient(res.tracking_uri).get_model_version("digits-best", "1").run_id == rid


def test_transform_takes_uint8_float_and_pil_images():
    from PIL import Image

    from pipeline.data.preprocess import Preprocessing

    pre = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), (3, 4, 4), "RGB", 10)
    img = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    want = torch.from_numpy(((img / 255.0 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]).transpose(2, 0, 1)[None].astype(np.float32))
    assert pre(img).shape == (1, 3, 4, 4) and torch.allclose(pre(img), want, atol=1e-6)
    assert torch.allclose(pre(np.stack([img, img]))[1], want[0], atol=1e-6)
    assert torch.allclose(pre(img.astype(np.float32) / 255), want, atol=1e-6)
    assert torch.allclose(pre([Image.fromarray(img)]), want, atol=1e-6)
    assert torch.allclose(Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))(img), want)
    with pytest.raises(ValueError, match=r"\(N, 4, 4, 3\)"):
        pre(np.zeros((2, 5, 5, 3), np.uint8))


def test_transform_resizes_pil_images_as_the_imagefolder_loader():
    from PIL import Image

    from pipeline.data.preprocess import Preprocessing, fit_image

    pre = Preprocessing((0.5,) * 3, (0.5,) * 3, (3, 8, 8), "RGB", 2, resize=8)
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    assert torch.allclose(pre(big), pre(np.asarray(fit_image(big, 8))))


def test_export_without_output_or_model_log_is_refused():
    from search.export.formats import ExportError, export

    with pytest.raises(ExportError, match="-o FILE.pt"):
        export("sqlite:///nowhere.db", "abc", None)
