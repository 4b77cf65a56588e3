"""Faults during a real search: the driver killed with SIGKILL, an actor killed with ray.kill."""

from __future__ import annotations

import threading
from pathlib import Path
import time

import pytest
import ray
import yaml

from cli_process import CliProcess, sigkill_group
from conftest import candidate_runs
from search.config import load_config
from search.driver import actor_prefix, run_search



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
