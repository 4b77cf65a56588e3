"""Faults during a real search: the driver killed with SIGKILL, an actor killed with ray.kill."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml

from search.config import load_config
from search.runner.driver import actor_prefix, run_search

from cli_process import ROOT, CliProcess, sigkill_group
from conftest import candidate_runs


def _write_cfg(tmp_path: Path, trials: int, **extra) -> Path:
    cfg = {
        "name": "faults",
        "run_dir": str(tmp_path / "run"),
        "budget": {"trials": trials},
        "actors": {"count": 2},
        "base_training": {"steps": 150},
        # slow candidates down (about 0.5 s each) so the kill lands mid-search
        "measure": {"latency_repeats": 60, "latency_batch": 64, "test_accuracy": False},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _records(cfg) -> list:
    return candidate_runs(cfg)[1]


def _assert_each_trial_once(runs, budget):
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers)), "a trial was recorded twice"
    ok = [r for r in runs if r.data.tags["state"] == "ok"]
    assert len(ok) == budget, (len(ok), budget)
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs)


@pytest.mark.slow
def test_driver_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path, ray_local):
    budget = 14
    cfg_path = _write_cfg(tmp_path, budget)
    cfg = load_config(cfg_path)
    proc = CliProcess("run", str(cfg_path), "--quiet")
    try:
        proc.wait_until(lambda: len(_records(cfg)) >= 3, 180, "3 recorded candidates")
    finally:
        sigkill_group(proc)  # the driver and its Ray at once; survivors are ended by their ids
    before = _records(cfg)
    assert 3 <= len(before) < budget, "the kill did not land mid-search"

    out = run_search(cfg, quiet=True)  # the same config again resumes
    runs = _records(cfg)
    _assert_each_trial_once(runs, budget)
    assert {r.info.run_id for r in before if r.info.status != "RUNNING"} <= {r.info.run_id for r in runs}
    assert out.recorded_total == budget


@pytest.mark.slow
def test_actor_killed_mid_search_loses_no_candidate(tmp_path, ray_local):
    budget = 12
    cfg = load_config(_write_cfg(tmp_path, budget, name="faults"))
    killed = []

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(_records(cfg)) < 2:
            time.sleep(0.1)
        runs = _records(cfg)
        if runs:
            parent = runs[0].data.tags["mlflow.parentRunId"]
            actor = ray.get_actor(f"{actor_prefix(cfg.name, parent)}-0")
            ray.kill(actor, no_restart=False)
            killed.append(time.monotonic())

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = run_search(cfg, quiet=True)
    t.join(timeout=5)
    assert killed, "the actor was never killed"
    runs = _records(cfg)
    _assert_each_trial_once(runs, budget)
    assert out.evaluated == budget and out.failed == 0
    # the candidates the dead actor held were evaluated again elsewhere, and say so
    retried = [r for r in runs if r.data.tags.get("info.attempts") == "2"]
    assert retried and all("lost" in r.data.tags["info.lost"].lower() or "actor" in r.data.tags["info.lost"].lower() for r in retried)


@pytest.mark.slow
def test_a_run_folder_has_one_driver(tmp_path):
    """Two drivers started at the same instant on a fresh folder, then a third mid-search:
    only the first runs (no half-migrated store); the others exit 2 naming the holder;
    every candidate is recorded once."""
    budget = 40  # enough work left that the late driver starts while the first still runs
    cfg_path = _write_cfg(tmp_path, budget)
    cfg = load_config(cfg_path)
    args = ("run", str(cfg_path), "--quiet")
    with CliProcess(*args) as first, CliProcess(*args) as second:
        deadline = time.monotonic() + 60
        while first.proc.poll() is None and second.proc.poll() is None:
            assert time.monotonic() < deadline, "neither driver was refused"
            time.sleep(0.1)
        loser, winner = (first, second) if first.proc.poll() is not None else (second, first)
        err = loser.err()
        assert loser.proc.returncode == 2 and f"search faults is running in {cfg.run_path} (pid {winner.proc.pid})" in err, err
        assert "Traceback" not in err
        winner.wait_until(lambda: len(_records(cfg)) >= 1, 400, "a recorded candidate")
        with CliProcess(*args) as late:  # mid-search: it must not repair the first driver's trials
            assert late.proc.wait(timeout=60) == 2 and f"(pid {winner.proc.pid})" in late.err()
        winner.track()
        assert winner.proc.wait(timeout=300) == 0, winner.err()[-2000:]
    runs = _records(cfg)
    _assert_each_trial_once(runs, budget)
    assert len(runs) == budget


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    from search.runner.lock import RunFolderLock, SearchRunningError

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from search.runner.lock import RunFolderLock\n"
            "with RunFolderLock(Path(sys.argv[1]), 'other'):\n    print('held', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(SearchRunningError, match=rf"search other is running in {tmp_path} \(pid {holder.pid}\)"):
            with RunFolderLock(tmp_path, "mine"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunFolderLock(tmp_path, "mine"):  # the dead holder's lock is taken
        assert f'"pid": {os.getpid()}' in (tmp_path / ".prunesearch.lock").read_text()


def test_a_shared_study_has_one_driver(tmp_path):
    import optuna

    from search.runner.lock import SearchRunningError, StudyHeartbeat

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = optuna.create_study(study_name="s", storage=url)
    second = optuna.load_study(study_name="s", storage=url)  # another driver's view
    with StudyHeartbeat(first, settle_s=0.1):
        with pytest.raises(SearchRunningError, match=rf"search s is running on this study \(pid {os.getpid()}"):
            with StudyHeartbeat(second, settle_s=0.1):
                pass
    with StudyHeartbeat(second, settle_s=0.1):  # released on exit: no wait for staleness
        pass


@pytest.mark.slow
def test_nothing_of_a_local_ray_outlives_a_killed_driver(tmp_path):
    import psutil

    cfg_path = _write_cfg(tmp_path, 30, name="orphans")
    cfg = load_config(cfg_path)
    with CliProcess("run", str(cfg_path), "--quiet") as proc:
        proc.wait_until(lambda: len(_records(cfg)) >= 1, 400, "a recorded candidate")
        tree = list(proc.tracked.values())
        assert any("raylet" in " ".join(p.cmdline()) for p in tree if _running(p))
        proc.proc.kill()  # the driver alone, as the OOM killer would
        proc.proc.wait(timeout=30)
        _, alive = psutil.wait_procs(tree, timeout=15)
        assert [p for p in alive if _running(p)] == [], [" ".join(p.cmdline())[:120] for p in alive if _running(p)]


def _running(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE  # dead, waiting for a parent to reap it
    except psutil.NoSuchProcess:
        return False
