"""What a user sees of a search: progress and time left, the MLflow view, the UI verb, a quick resume."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.spec import CandidateSpec
from search.cli.ui import ui_command, ui_hint
from search.records.runs import EXPERIMENT_TAGS, KIND_TAG, PARAM_VALUE_MAX, Recorder, _fit, child_name, flat_params
from search.runner.progress import Progress, eta_s

from conftest import candidate_runs, search_config

ROOT = Path(__file__).resolve().parents[1]


def test_eta_counts_a_training_candidate_in_flight():
    # 4 quick candidates took 8 s on 2 actors; one in flight reports 100 of 1000 steps after 30 s
    running = [{"elapsed_s": 30.0, "step": 100, "total": 1000}]
    naive = eta_s(8.0, 4, [], 5, 2)
    honest = eta_s(8.0, 4, running, 4, 2, durations=[4.0] * 4)
    assert naive == pytest.approx(10.0)
    assert honest >= 270.0  # what is left of the trainer, at least
    assert math.isnan(eta_s(0.0, 0, [], 3, 2))


def test_progress_reports_steps_of_slow_candidates_in_quiet_mode(caplog):
    spec = CandidateSpec(method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=0.5)
    p = Progress(total=3, quiet=True, parallel=1)
    with caplog.at_level("INFO", logger="prunesearch"):
        p.update_running([{"spec": spec, "ticket": 7, "elapsed_s": 40.0, "step": 300, "total": 1200}])
        p.update_running([{"spec": spec, "ticket": 8, "elapsed_s": 2.0, "step": 1, "total": 1200}])  # quick: silent
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "trial 7 ocs/channel step 300/1200, 40 s" in lines[0] and "s left" in lines[0]


def test_methods_that_train_report_their_steps(digits_model, ctx):
    from pipeline.pruning.methods import get_method

    seen = []
    ctx.on_step = lambda done, total: seen.append((done, total))
    spec = CandidateSpec(
        method="hyperflows", granularity="unstructured", target_sparsity=None, knobs={"pressure": 0.1, "steps": 4, "regrowth_steps": 2}
    )
    get_method("hyperflows").plan(digits_model, ctx, spec)
    assert seen[0] == (1, 6) and seen[-1] == (6, 6)
    seen.clear()
    spec = CandidateSpec(method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=0.6, knobs={"epochs": 3, "steps_per_epoch": 2})
    get_method("ocs").plan(digits_model, ctx, spec)
    assert seen[-1] == (6, 6) and len(seen) == 6


def test_evaluator_status_shows_the_candidate_in_progress(digits, digits_model):
    from pipeline.evaluator import Evaluator
    from pipeline.measure import MeasureConfig
    from pipeline.models import ModelConfig

    ev = Evaluator(ModelConfig(), digits_model.state_dict(), digits, MeasureConfig(latency_repeats=1), threads=1)
    assert ev.status() is None
    spec = CandidateSpec(
        method="hyperflows", granularity="unstructured", target_sparsity=None, knobs={"pressure": 0.1, "steps": 400, "regrowth_steps": 0}
    )
    t = threading.Thread(target=ev.evaluate, args=(spec,))
    t.start()
    st = None
    deadline = time.monotonic() + 120
    while t.is_alive() and time.monotonic() < deadline:
        cur = ev.status()
        if cur and cur["step"]:
            st = cur
            break
        time.sleep(0.05)
    t.join()
    assert st is not None and st["spec"] == spec and st["total"] == 400 and 0 < st["step"] <= 400 and st["elapsed_s"] > 0
    assert ev.status() is None


def test_flat_params_and_their_length_limit():
    flat = flat_params({"a": 1, "space": {"sparsity": [0.5, 0.9], "knobs": {}, "m": {"x": None}}, "s": "txt"})
    assert flat == {"a": "1", "space.sparsity": "[0.5, 0.9]", "space.knobs": "{}", "space.m.x": "null", "s": "txt"}
    long = "x" * (PARAM_VALUE_MAX + 50)
    cut = _fit(long)
    assert len(cut) == PARAM_VALUE_MAX and cut.endswith("[truncated, see config.json]")
    assert _fit("short") == "short"
    assert child_name(7, CandidateSpec(method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=0.5)) == "trial-7 ocs/channel"


def test_ui_command_and_hint_need_no_activated_venv(tmp_path):
    cmd = ui_command("sqlite:///x.db", port=5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "ui"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert " ui --run-dir " in ui_hint(tmp_path) and str(tmp_path) in ui_hint(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _UiProcess:
    """``prunesearch ui`` on ``run`` as a child in its own session. Every descendant seen is
    remembered by id, and ``close`` ends the wrapper and each of them, so no server outlives a test."""

    def __init__(self, run: Path, port: int, tmp: Path) -> None:
        import psutil

        self.port, self.err_path, self.seen = port, tmp / "ui.err", {}
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "search.cli", "ui", "--run-dir", str(run), "--port", str(port)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        self.psutil = psutil

    def track(self) -> list:
        try:
            for c in self.psutil.Process(self.proc.pid).children(recursive=True):
                self.seen.setdefault(c.pid, c)
        except self.psutil.NoSuchProcess:
            pass
        return list(self.seen.values())

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_announced(self, timeout: float = 240) -> None:
        """Until the wrapper prints its URL; the server must answer at that moment."""
        deadline = time.monotonic() + timeout
        while "MLflow UI on" not in self.err():
            self.track()
            assert self.proc.poll() is None, self.err()[-2000:]
            assert time.monotonic() < deadline, "the UI never announced itself"
            time.sleep(0.2)
        self.track()
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=10).read()  # announced only once it answers

    def close(self) -> None:
        self.track()
        for p in [self.psutil.Process(self.proc.pid)] if self.proc.poll() is None else []:
            p.kill()
        for p in self.seen.values():
            try:
                p.kill()  # psutil refuses a reused pid (it checks the creation time)
            except self.psutil.NoSuchProcess:
                pass
        self.proc.wait(timeout=30)
        self.psutil.wait_procs(list(self.seen.values()), timeout=10)


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except Exception:  # ended meanwhile (a short-lived job consumer), or a zombie
        return []


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ui_verb_serves_the_run_folders_store_on_loopback(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rec = Recorder(f"sqlite:///{run / 'mlflow.db'}", "ui-check", artifact_location=(run / "artifacts").as_uri())
    assert rec.client.get_experiment(rec.experiment_id).tags[KIND_TAG] == EXPERIMENT_TAGS[KIND_TAG]
    port = _free_port()
    ui = _UiProcess(run, port, tmp_path)
    try:
        ui.wait_announced()
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui-check"
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        assert '"ui-check"' in body and "custom_model_development" in body  # the run folder's store, as a training experiment
        ui.proc.send_signal(signal.SIGINT)  # Ctrl-C: the wrapper ends its server too
        assert ui.proc.wait(timeout=60) == 0
    finally:
        ui.close()


@pytest.mark.slow
def test_nothing_of_ui_outlives_a_sigterm_to_the_wrapper(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    Recorder(f"sqlite:///{run / 'mlflow.db'}", "ui-term", artifact_location=(run / "artifacts").as_uri())
    port = _free_port()
    ui = _UiProcess(run, port, tmp_path)
    try:
        ui.wait_announced()
        tree = ui.track()
        server = [cmd for cmd in map(_cmdline, tree) if cmd[1:4] == ["-m", "mlflow", "ui"]]
        assert len(server) == 1, [_cmdline(p) for p in tree]
        if (os.cpu_count() or 1) <= 4:  # one worker on small machines, not MLflow's 4
            assert server[0][server[0].index("--workers") + 1] == "1", server
        ui.proc.send_signal(signal.SIGTERM)  # `prunesearch ui & kill $!`
        assert ui.proc.wait(timeout=60) == 0
        gone, alive = ui.psutil.wait_procs(tree, timeout=30)
        assert not alive, [(p.pid, _cmdline(p)) for p in alive]
        assert not _listening(port)
    finally:
        ui.close()


@pytest.mark.slow
def test_mlflow_view_and_a_finished_study_resumes_without_ray(tmp_path, ray_local, monkeypatch):
    import search.runner.driver as driver

    cfg = search_config(tmp_path, "view", trials=3)
    first = driver.run_search(cfg, quiet=True)
    client, runs = candidate_runs(cfg)
    names = sorted(r.info.run_name for r in runs)
    assert names == sorted(f"trial-{r.data.tags['trial_number']} magnitude/unstructured" for r in runs) and len(names) == 3
    exp = client.get_experiment_by_name("view")
    assert exp.tags[KIND_TAG] == "custom_model_development"
    parent = client.get_run(first.parent_run_id)
    p = parent.data.params
    assert p["budget.trials"] == "3" and p["space.methods"] == '["magnitude"]' and p["model.name"] == "digits_cnn" and p["sampler"] == "tpe"
    arts = {a.path for a in client.list_artifacts(first.parent_run_id)}
    assert {"population.png", "recalibration.png", "pareto.parquet"} <= arts
    assert all("dense_accuracy" in r.data.metrics for r in runs)

    def no_ray(*a, **k):
        raise AssertionError("a finished study started Ray")

    monkeypatch.setattr(driver, "connect_ray", no_ray)
    monkeypatch.setattr(driver, "load_data", no_ray)
    t0 = time.monotonic()
    again = driver.run_search(cfg, quiet=True)
    assert time.monotonic() - t0 < 60
    assert again.evaluated == 0 and again.recorded_total == 3 and again.parent_run_id == first.parent_run_id
    assert client.get_run(first.parent_run_id).info.status == "FINISHED"
    assert len(candidate_runs(cfg)[1]) == 3


def test_export_paths_stay_inside_the_run_folder_unless_absolute(tmp_path):
    from search.cli.parser import export_path, main

    run = tmp_path / "runs"
    assert export_path(str(run), "best.pt") == (run / "best.pt").resolve()
    assert export_path(str(run), "sub/../best.pt") == (run / "best.pt").resolve()
    assert export_path(str(run), str(tmp_path / "x.pt")) == tmp_path / "x.pt"
    with pytest.raises(ValueError, match="inside the run folder"):
        export_path(str(run), "../x.pt")
    run.mkdir()
    (run / "mlflow.db").touch()
    assert main(["export", "abc", "-o", "../x.pt", "--run-dir", str(run)]) == 2  # refused before anything is read
    assert not (tmp_path / "x.pt").exists()


def test_unknown_allocation_stage_is_refused_naming_the_stages(tmp_path):
    from search.config import ConfigError
    from search.runner.preflight import check_allocation, model_stages

    cfg = search_config(tmp_path, "stages", trials=1, space={"allocation": {"conv9": [0.5, 1.0]}})
    assert list(model_stages(cfg)) == ["conv1", "conv2", "conv3", "fc"]
    with pytest.raises(ConfigError, match="space.allocation: 'conv9'.*conv1, conv2, conv3, fc"):
        check_allocation(cfg)


def test_base_model_training_says_what_it_does_and_how_long(tmp_path, digits, caplog):
    from search.runner.basemodel import base_state

    cfg = search_config(tmp_path, "base", trials=1, base_training={"steps": 3})
    with caplog.at_level("INFO", logger="search.runner.basemodel"):
        base_state(cfg, digits)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "training the base model digits_cnn" in text and "for 3 steps" in text and "trained the base model in" in text
    caplog.clear()
    with caplog.at_level("INFO", logger="search.runner.basemodel"):
        base_state(cfg, digits)  # cached: loaded, not trained again
    assert not [r for r in caplog.records if "train" in r.getMessage()]


def test_stages_verb_lists_the_allocation_keys(tmp_path, capsys):
    from search.cli.parser import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: s\nrun_dir: " + str(tmp_path / "run") + "\n")
    assert main(["stages", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["conv1", "conv2", "conv3", "fc"]
