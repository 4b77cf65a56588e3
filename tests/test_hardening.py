"""Bad input and faults: each case asserts the exit code, the message, and that records survive."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from torch import nn

from pipeline.data.splits import DataConfig, load_data
from pipeline.evaluator import Evaluator
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig, register_model
from pipeline.spec import CandidateSpec
from search.cli.parser import main
from search.config import load_config, parse_config
from search.records.runs import RecordError
from search.runner.driver import run_search

from cli_process import CliProcess
from conftest import candidate_runs, search_config

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
        (
            {"x": __import__("numpy").zeros((10, 8, 8, 1), "uint8"), "y": __import__("numpy").zeros(9, "int64")},
            "labels must be integers of shape (10,)",
        ),
        ({"x": __import__("numpy").zeros((10, 8, 8, 1), "uint8"), "y": __import__("numpy").zeros(10, "int64")}, "cannot give calib_size"),
    ],
)
def test_malformed_data_is_named(tmp_path, data, message):
    import numpy as np

    from pipeline.data.splits import DataError

    path = tmp_path / "d.npz"
    np.savez(path, **data)
    with pytest.raises(DataError) as e:
        load_data(DataConfig(name="npz", path=str(path), calib_size=8, val_size=8, test_size=8))
    assert message in str(e.value)
    if message.startswith("cannot give"):  # the file is fine, only too small: the fields are named
        assert "calib_size=8" in str(e.value) and "val_size=8" in str(e.value)
    else:
        assert str(path) in str(e.value), str(e.value)


def test_cli_refuses_malformed_data_with_exit_2_naming_the_file(tmp_path, capsys):
    import numpy as np

    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((40, 8, 8, 1), "int32"), y=np.zeros(40, "int64"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "data": {"name": "npz", "path": str(data)}}))
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: {data}: images must be uint8 or float" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "optuna.journal").exists()  # refused before any work


def test_labels_beyond_the_model_are_refused_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "model": {"num_classes": 5}, "base_training": {"steps": 5}}))
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert "labels go up to 9 but model.num_classes is 5" in capsys.readouterr().err


def test_unreachable_macs_constraint_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "run_dir": str(tmp_path / "run"),
                "base_training": {"steps": 5},
                "space": {"sparsity": [0.3, 0.6]},
                "objective": {"mode": "constrained", "max_macs_ratio": 0.05},
            }
        )
    )
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert "objective.max_macs_ratio: 0.05 is below what any candidate" in capsys.readouterr().err


@pytest.mark.slow
def test_disk_full_for_artifacts_stops_cleanly_and_resumes(tmp_path, ray_local, capsys):
    budget = 24
    cfg = search_config(tmp_path, "diskfull", budget, base_training={"steps": 100}, measure={"latency_repeats": 2})
    art = cfg.run_path / "artifacts"
    art.mkdir(parents=True)
    # a real full disk: a 256 KiB tmpfs under the artifact store (about 15 candidates fit)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail(
            "this test mounts a 256 KiB tmpfs to fill the disk for real: it needs root and the `mount` command "
            f"(euid {os.geteuid()}, mount {shutil.which('mount') or 'not found'}); run it as root, e.g. in a container"
        )
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(art)], check=True)
    try:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
        assert main(["run", str(path), "--quiet"]) == 2  # the command, in this process (its Ray is already up)
        err = capsys.readouterr().err
        assert "error: could not record trial" in err and "No space left on device" in err and "Traceback" not in err
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


def _signal_cfg(tmp_path, name: str, budget: int):
    path = tmp_path / "c.yaml"
    # slow candidates (about 0.5 s each) so that signals land mid-search
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "run_dir": str(tmp_path / "run"),
                "budget": {"trials": budget},
                "actors": {"count": 2, "queue": 2},
                "base_training": {"steps": 100},
                "measure": {"latency_repeats": 60, "latency_batch": 64, "test_accuracy": False},
            }
        )
    )
    return path, load_config(path)


def _journal_trials(cfg) -> list:
    import optuna

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(cfg.run_path / "optuna.journal")))
    return optuna.load_study(study_name=cfg.name, storage=storage).trials


def _parent(cfg):
    """The search's parent run, or None before it exists."""
    client, _ = candidate_runs(cfg)
    if client is None or client.get_experiment_by_name(cfg.name) is None:
        return None
    runs = client.search_runs([client.get_experiment_by_name(cfg.name).experiment_id], "tags.`prunesearch.role` = 'search'")
    return runs[0] if runs else None


@pytest.mark.slow
def test_ctrl_c_finishes_in_flight_candidates_and_resumes(tmp_path, ray_local):
    from search.study.study import RUN_ID_ATTR

    budget = 12
    path, cfg = _signal_cfg(tmp_path, "ctrlc", budget)
    with CliProcess("run", str(path), "--quiet") as proc:
        proc.wait_until(lambda: len(candidate_runs(cfg)[1]) >= 2, 240, "2 recorded candidates")
        at_signal = len(candidate_runs(cfg)[1])
        proc.signal(signal.SIGINT)
        assert proc.proc.wait(timeout=180) == 130, proc.err()[-2000:]
    client, runs = candidate_runs(cfg)
    trials = _journal_trials(cfg)
    # every trial started before the signal was finished and recorded; none is left running
    assert all(t.state.is_finished() and RUN_ID_ATTR in t.user_attrs for t in trials), [t.state for t in trials]
    assert sorted(t.user_attrs[RUN_ID_ATTR] for t in trials) == sorted(r.info.run_id for r in runs)
    # nothing new was started: at most the 2 actors x queue 2 in flight at the signal were added
    assert at_signal <= len(runs) <= at_signal + 4 < budget, (at_signal, len(runs))
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs)
    assert client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    out = run_search(cfg, quiet=True)
    _, runs = candidate_runs(cfg)
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)) and out.recorded_total == budget


@pytest.mark.slow
def test_sigterm_and_a_second_interrupt_leave_the_parent_killed(tmp_path):
    path, cfg = _signal_cfg(tmp_path, "sigterm", 40)
    # SIGTERM while the actors start (outside the candidate loop), as `timeout` sends it
    with CliProcess("run", str(path), "--quiet") as proc:
        proc.wait_until(lambda: _parent(cfg) is not None, 240, "parent run")
        proc.signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=120) == 130, proc.err()[-2000:]
    assert _parent(cfg).info.status == "KILLED" and candidate_runs(cfg)[1] == []

    # resumed, then SIGTERM mid-search and a second interrupt while candidates are in flight
    with CliProcess("run", str(path), "--quiet") as proc:
        proc.wait_until(lambda: len(candidate_runs(cfg)[1]) >= 2, 240, "2 recorded candidates")
        proc.signal(signal.SIGTERM)
        proc.wait_until(lambda: "interrupted: finishing" in proc.err(), 60, "the interrupt notice")
        proc.signal(signal.SIGINT)
        assert proc.proc.wait(timeout=120) == 130, proc.err()[-2000:]
    assert _parent(cfg).info.status == "KILLED"
    runs = candidate_runs(cfg)[1]
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)) < 40 and all(r.info.status in ("FINISHED", "FAILED") for r in runs)


@pytest.mark.slow
@pytest.mark.slow  # starts Ray
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


def test_every_error_class_has_one_root_and_input_errors_exit_2():
    from pipeline.data.splits import DataError
    from pipeline.errors import InputError, PrunesearchError
    from pipeline.measure import NumericsError
    from pipeline.models.checkpoint import CheckpointError
    from pipeline.pruning.structure import UnsupportedModelError
    from search.cluster.submit import SubmitError
    from search.config import ConfigError
    from search.export.formats import ExportError
    from search.records.query import QueryError

    for cls in (CheckpointError, DataError, UnsupportedModelError, ConfigError, ExportError, QueryError, RecordError, SubmitError):
        assert issubclass(cls, InputError), cls
    assert issubclass(NumericsError, PrunesearchError) and not issubclass(NumericsError, InputError)
    # the builtin each used to be still catches it
    assert issubclass(RecordError, ValueError) and issubclass(QueryError, LookupError) and issubclass(ConfigError, ValueError)
    # one builtin each: an InputError is a ValueError, never a RuntimeError too
    for cls in (RecordError, ExportError):
        assert not issubclass(cls, RuntimeError), cls


def test_a_programming_error_keeps_its_traceback(monkeypatch, tmp_path):
    import search.runner.driver

    def broken(cfg, quiet=False):
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr(search.runner.driver, "run_search", broken)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run")}))
    with pytest.raises(ValueError, match="a bug"):
        main(["run", str(cfg), "--quiet"])


def test_tell_is_once_through_public_optuna_api(tmp_path):
    import optuna

    from search.study.study import open_study, recorded_trials, running_trial, tell

    cfg = parse_config({"run_dir": str(tmp_path / "run"), "objective": {"mode": "constrained", "max_macs_ratio": 0.5}})
    study = open_study(cfg)
    trial = study.ask()
    handle = running_trial(study, cfg, trial.number)  # as a resumed driver sees it
    metrics = {"accuracy": 0.9, "macs": 10.0, "macs_ratio": 0.4, "sparsity": 0.5}
    tell(study, cfg, handle, "run-1", "ok", metrics)
    tell(study, cfg, trial, "run-2", "ok", metrics)  # a repeated completion is ignored, not raised
    done = study.get_trials()[0]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.user_attrs["mlflow_run_id"] == "run-1"
    assert done.values == [0.9] and recorded_trials(study) == 1
    assert "._trial_id" not in (ROOT / "search" / "study" / "study.py").read_text()
