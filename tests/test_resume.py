"""Resuming a recorded search: what may change, a copied folder, a cut journal, a lost
store (split from test_hardening.py). One small search is recorded once per module;
each test works on its own copy of the run folder or on the original, in file order."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from search.cli.parser import main
from search.config import load_config
from search.runner.driver import run_search

from conftest import candidate_runs

pytestmark = pytest.mark.slow


def _write(path: Path, run_dir: Path, **over) -> Path:
    data = {
        "name": "resume",
        "run_dir": str(run_dir),
        "budget": {"trials": 2},
        "actors": {"count": 1},
        "base_training": {"steps": 100},
        "measure": {"latency_repeats": 2, "test_accuracy": False},
    }
    for key, value in over.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("resume")
    cfg_path = _write(root / "c.yaml", root / "run")
    run_search(load_config(cfg_path), quiet=True)
    return root, cfg_path


def test_a_changed_config_is_refused_with_the_fields_and_safe_changes_are_taken(recorded, tmp_path, capsys):
    root, _ = recorded
    changed = _write(tmp_path / "changed.yaml", root / "run", data={"val_size": 200}, space={"methods": ["magnitude", "random"]})
    assert main(["run", str(changed), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "search 'resume' in" in err and "data.val_size: 300 -> 200" in err
    assert 'space.methods: ["magnitude"] -> ["magnitude", "random"]' in err and "Traceback" not in err
    _, runs = candidate_runs(load_config(changed))
    assert len(runs) == 2  # nothing was added
    safe = _write(tmp_path / "safe.yaml", root / "run", budget={"trials": 3}, actors={"count": 2}, measure={"latency_repeats": 3})
    out = run_search(load_config(safe), quiet=True)
    assert out.evaluated == 1 and out.recorded_total == 3


def test_a_copied_run_folder_is_refused_until_relocated_then_stays_inside_itself(recorded, tmp_path, capsys):
    root, _ = recorded
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(root / "run"), str(copy)], check=True)
    original = sorted(p for p in (root / "run" / "artifacts").rglob("*"))
    cfg_path = _write(tmp_path / "c.yaml", copy, budget={"trials": 4})
    assert main(["run", str(cfg_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"keeps its artifacts in {(root / 'run' / 'artifacts').as_uri()}, outside this run folder" in err
    fix = err.split("sqlite3 ", 1)[1].strip()
    db, sql = fix.split(" ", 1)
    with sqlite3.connect(db) as con:  # what the message says to run
        con.executescript(sql.strip('"'))
    out = run_search(load_config(cfg_path), quiet=True)
    assert out.evaluated >= 1 and sorted(p for p in (root / "run" / "artifacts").rglob("*")) == original
    client, runs = candidate_runs(load_config(cfg_path))
    assert all(r.info.artifact_uri.startswith(copy.as_uri()) for r in runs)


def test_a_journal_cut_mid_line_is_repaired_on_resume(recorded, caplog):
    root, cfg_path = recorded
    journal = root / "run" / "optuna.journal"
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 15])  # a crash in the middle of the last append
    cfg = load_config(_write(root / "more.yaml", root / "run", budget={"trials": 4}))
    out = run_search(cfg, quiet=True)
    assert "was cut short by a crash; dropped it" in caplog.text and out.recorded_total == 4
    assert journal.read_bytes().endswith(b"\n")
    _, runs = candidate_runs(cfg)
    numbers = [int(r.data.tags["trial_number"]) for r in runs]
    assert len(numbers) == len(set(numbers))


def test_a_resume_after_the_store_was_deleted_and_exports_to_bad_paths_are_named(recorded, tmp_path, capsys):
    root, _ = recorded
    copy = tmp_path / "lost"
    shutil.copytree(root / "run", copy)
    client, runs = candidate_runs(load_config(_write(tmp_path / "x.yaml", root / "run")))
    run_id = next(r.info.run_id for r in runs if r.data.tags["state"] == "ok")
    assert main(["export", run_id, "--run-dir", str(root / "run"), "-o", str(tmp_path)]) == 2
    assert f"-o: {tmp_path} is a folder" in capsys.readouterr().err
    parent = runs[0].data.tags["mlflow.parentRunId"]
    assert main(["export", parent, "--run-dir", str(root / "run"), "-o", str(tmp_path / "p.pt")]) == 2
    assert "is the parent run of search 'resume', not a candidate" in capsys.readouterr().err
    (copy / "mlflow.db").unlink()
    assert main(["run", str(_write(tmp_path / "c.yaml", copy)), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "which the MLflow store" in err and "does not have" in err and "Traceback" not in err
