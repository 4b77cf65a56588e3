"""Bad input and faults: each case asserts the exit code, the message, and that records survive."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pipeline.data import DataConfig, load_data
from pipeline.evaluator import Evaluator
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig, register_model
from pipeline.spec import CandidateSpec
from conftest import candidate_runs, search_config
from search.cli import main
from search.config import load_config, parse_config
from search.driver import run_search
from search.records import RecordError

ROOT = Path(__file__).resolve().parents[1]


class NanWhenSparse(nn.Module):
    """Produces NaN logits once any weight of its layer is zero (a numerically broken candidate)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out / (self.fc.weight != 0).all().float() * 0 if not (self.fc.weight != 0).all() else out


@register_model("test_nan_when_sparse")
def _nan_model(cfg: ModelConfig) -> nn.Module:
    return NanWhenSparse()


def test_nan_candidate_is_a_failed_result_with_the_reason(digits):
    ev = Evaluator(ModelConfig(name="test_nan_when_sparse"), NanWhenSparse().state_dict(), digits, MeasureConfig(latency_repeats=1))
    result = ev.evaluate(CandidateSpec(target_sparsity=0.5))
    assert result.state == "failed" and "NaN or Inf" in result.error
    assert ev.evaluate(CandidateSpec(target_sparsity=0.5)).state == "failed"  # the evaluator lives on


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_is_refused_at_start(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "tracking_uri": f"http://127.0.0.1:{_free_port()}"}))
    t0 = time.monotonic()
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert time.monotonic() - t0 < 30
    assert "does not answer" in capsys.readouterr().err


@pytest.mark.parametrize(
    "data, message",
    [
        ({"x": "not an array"}, "must hold arrays 'x' and 'y'"),
        ({"x": __import__("numpy").zeros((10, 8, 8), "uint8"), "y": __import__("numpy").zeros(10, "int64")}, "(N, H, W, C)"),
        ({"x": __import__("numpy").zeros((10, 8, 8, 1), "int32"), "y": __import__("numpy").zeros(10, "int64")}, "dtype int32"),
        ({"x": __import__("numpy").zeros((10, 8, 8, 1), "uint8"), "y": __import__("numpy").full(10, -1)}, "labels must be >= 0"),
        ({"x": __import__("numpy").zeros((10, 8, 8, 1), "uint8"), "y": __import__("numpy").zeros(9, "int64")}, "labels must be integers of shape (10,)"),
        ({"x": __import__("numpy").zeros((10, 8, 8, 1), "uint8"), "y": __import__("numpy").zeros(10, "int64")}, "cannot give calib_size"),
    ],
)
def test_malformed_data_is_named(tmp_path, data, message):
    import numpy as np

    from pipeline.data import DataError

    path = tmp_path / "d.npz"
    np.savez(path, **data)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="npz", path=str(path), calib_size=8, val_size=8, test_size=8))
    assert message in str(e.value)
    if message.startswith("cannot give"):  # the file is fine, only too small: the fields are named
        assert "calib_size=8" in str(e.value) and "val_size=8" in str(e.value)
    else:
        assert str(path) in str(e.value), str(e.value)


def test_labels_beyond_the_model_are_refused_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "model": {"num_classes": 5}, "base_training": {"steps": 5}}))
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert "labels go up to 9 but model.num_classes is 5" in capsys.readouterr().err


def test_unreachable_macs_constraint_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "base_training": {"steps": 5}, "space": {"sparsity": [0.3, 0.6]},
        "objective": {"mode": "constrained", "max_macs_ratio": 0.05}}))
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert "objective.max_macs_ratio: 0.05 is below what any candidate" in capsys.readouterr().err


@pytest.mark.slow
def test_disk_full_for_artifacts_stops_cleanly_and_resumes(tmp_path, ray_local):
    budget = 24
    cfg = search_config(tmp_path, "diskfull", budget, base_training={"steps": 100}, measure={"latency_repeats": 2})
    art = cfg.run_path / "artifacts"
    art.mkdir(parents=True)
    # a real full disk: a 256 KiB tmpfs under the artifact store (about 15 candidates fit)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(art)], check=True)
    try:
        with pytest.raises(RecordError, match="No space left on device"):
            run_search(cfg, quiet=True)
        client, runs = candidate_runs(cfg)
        assert 0 < len(runs) < budget and all(r.info.status == "FINISHED" for r in runs)
        for r in runs:  # what was recorded is complete
            assert "plan.parquet" in {f.path for f in client.list_artifacts(r.info.run_id)}
        subprocess.run(["mount", "-o", "remount,size=64m", str(art)], check=True)  # space freed
        out = run_search(cfg, quiet=True)
        _, runs = candidate_runs(cfg)
        numbers = [int(r.data.tags["trial_number"]) for r in runs]
        assert len(numbers) == len(set(numbers)) and out.recorded_total == budget
        assert sum(r.data.tags["state"] == "ok" for r in runs) == budget
    finally:
        subprocess.run(["umount", "-l", str(art)], check=False)


@pytest.mark.slow
def test_ctrl_c_finishes_in_flight_candidates_and_resumes(tmp_path, ray_local):
    budget = 12
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "ctrlc", "run_dir": str(tmp_path / "run"), "budget": {"trials": budget},
                                    "actors": {"count": 2}, "base_training": {"steps": 100},
                                    "measure": {"latency_repeats": 60, "latency_batch": 64, "test_accuracy": False}}))
    cfg = load_config(path)
    ray_tmp = tempfile.mkdtemp(prefix="psc", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "run", str(path), "--quiet"], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while len(candidate_runs(cfg)[1]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", ray_tmp], check=False)
    client, runs = candidate_runs(cfg)
    assert 2 <= len(runs) < budget and all(r.info.status in ("FINISHED", "FAILED") for r in runs)
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    out = run_search(cfg, quiet=True)
    _, runs = candidate_runs(cfg)
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)) and out.recorded_total == budget


def test_local_ray_listens_on_loopback_only(ray_local):
    import ipaddress

    import psutil

    listening = set()
    for proc in [psutil.Process()] + psutil.Process().children(recursive=True):
        try:
            listening |= {(proc.name(), c.laddr.ip) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    assert any("gcs" in name or "raylet" in name for name, _ in listening), listening
    exposed = {(n, ip) for n, ip in listening if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback}
    assert exposed == set(), f"Ray services listening beyond loopback: {exposed}"


def test_corrupt_checkpoint_is_refused_by_the_cli(tmp_path, capsys):
    ckpt = tmp_path / "model.th"
    ckpt.write_bytes(b"not a checkpoint at all")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "model": {"name": "digits_cnn", "checkpoint": str(ckpt)}}))
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and "error:" in err
