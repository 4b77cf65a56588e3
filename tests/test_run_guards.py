"""A search that refuses cleanly: links planted for its lock and store, changed inputs on
resume, requests the cluster cannot meet, settings that would pass validation and fail
(or silently ruin candidates) later, a pickled base-model cache, a full disk; refused
configs create no MLflow store. Each is refused before Ray starts."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.errors import InputError
from search.cli.parser import main
from search.config import ConfigError, parse_config


def _write(tmp_path: Path, **cfg) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "base_training": {"steps": 20}, **cfg}))
    return path


def _refused(path: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " in err, err
    return err


def test_a_symlinked_lock_or_store_is_refused_and_its_target_untouched(tmp_path, capsys):
    outside = tmp_path / "precious.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".prunesearch.lock").symlink_to(outside)
    path = _write(tmp_path)
    err = _refused(path, capsys)
    assert ".prunesearch.lock is a symbolic link" in err and outside.read_text() == "precious"
    (run / ".prunesearch.lock").unlink()
    (run / "mlflow.db").symlink_to(outside)
    err = _refused(path, capsys)
    assert "mlflow.db is a symbolic link" in err and outside.read_text() == "precious"


def _npz(path: Path, flip: bool = False) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (120, 8, 8, 1), dtype=np.uint8)
    np.savez(path, x=255 - x if flip else x, y=np.arange(120) % 10)


def test_a_resume_over_changed_data_or_checkpoint_is_refused_listing_them(tmp_path, capsys):
    from search.study.resume import check_resume, record_config

    data, ckpt = tmp_path / "d.npz", tmp_path / "m.pt"
    _npz(data)
    torch.save({"w": torch.zeros(3)}, ckpt)
    cfg = parse_config(
        {"run_dir": str(tmp_path / "run"), "data": {"name": "npz", "path": str(data)}, "model": {"checkpoint": str(ckpt)}}, check_paths=False
    )
    cfg.run_path.mkdir()
    record_config(cfg)
    check_resume(cfg)  # unchanged inputs resume
    _npz(data, flip=True)  # same size, every image flipped
    torch.save({"w": torch.ones(3)}, ckpt)
    with pytest.raises(ConfigError) as e:
        check_resume(cfg)
    assert f"data.path: {data} changed content" in str(e.value) and f"model.checkpoint: {ckpt} changed" in str(e.value)
    path = tmp_path / "c.yaml"  # the command refuses it too, before any work
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert "was scored on other input files" in _refused(path, capsys)


def test_a_big_input_is_fingerprinted_by_size_mtime_and_samples(tmp_path, monkeypatch):
    from search.study import fingerprint

    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 1000)
    monkeypatch.setattr(fingerprint, "SAMPLE_BYTES", 100)
    f = tmp_path / "big.bin"
    f.write_bytes(bytes(5000))
    before = fingerprint.fingerprints({"data.path": f})
    assert "sample_sha256" in before["data.path"] and "sha256" not in before["data.path"]
    f.write_bytes(bytes(2500) + b"\x01" + bytes(2499))  # the middle sample changes, the size does not
    assert fingerprint.changes(before, fingerprint.fingerprints({"data.path": f})) == [f"data.path: {f} changed content"]


def test_an_actor_count_beyond_the_local_ray_is_clamped_saying_so(caplog):
    from search.cluster.connect import actor_count

    cfg = parse_config({"actors": {"count": 64}})
    with caplog.at_level(logging.WARNING):
        assert actor_count(cfg, {"CPU": 2.0}, can_grow=False) == 2
    assert "actors.count 64 is more than this machine's Ray holds (2 CPU at actors.num_cpus 1 each): clamped to 2" in caplog.text
    assert actor_count(cfg, {"CPU": 2.0}, can_grow=True) == 64  # a cluster may add nodes: kept, with a warning
    with pytest.raises(InputError, match="no actor fits"):
        actor_count(parse_config({"actors": {"count": 2, "num_gpus": 1}}), {"CPU": 2.0}, can_grow=False)


def test_latency_repeats_are_bounded_and_timed_within_a_budget():
    from pipeline.measure import latency_ms

    with pytest.raises(ConfigError, match="measure.latency_repeats"):
        parse_config({"measure": {"latency_repeats": 1_000_000_000}})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    t0 = time.monotonic()
    assert latency_ms(model, (1, 8, 8), 1, 10_000_000, budget_s=0.2) > 0
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    "space, field",
    [
        ({"space": {"reconstruct": []}}, "space.reconstruct: List should have at least 1 item"),
        ({"reconstruction": {"ridge": 1e300}}, "reconstruction.ridge: Input should be less than or equal to 10"),
    ],
)
def test_empty_choices_and_a_huge_ridge_are_refused_at_validation(space, field):
    with pytest.raises(ConfigError) as e:
        parse_config(space)
    assert field in str(e.value)


def test_a_refit_that_scores_worse_keeps_the_unrefit_weights_and_warns(digits, caplog):
    from pipeline.evaluator import Evaluator
    from pipeline.measure import MeasureConfig
    from pipeline.models import ModelConfig, build_model
    from pipeline.pruning.plan import PrunePlan
    from pipeline.spec import CandidateSpec, RecalSpec, ReconSpec
    from pipeline.train import train_classifier

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model(ModelConfig())
    train_classifier(model, digits.train.x, digits.train.y, steps=80)
    ev = Evaluator(ModelConfig(), model.state_dict(), digits, MeasureConfig(latency_repeats=1, collapse_plot=False, test_accuracy=False))
    spec = CandidateSpec(target_sparsity=0.5, reconstruct=ReconSpec(mode="lsq", images=1, ridge=0.0), recal=RecalSpec(images=0))
    with caplog.at_level(logging.WARNING):
        result = ev.evaluate(spec)
    m = result.metrics
    assert result.state == "ok" and m["accuracy_before_recon"] > 0.5, result.error
    assert m["accuracy_after_recon"] < m["accuracy_before_recon"] and m["recon_applied"] == 0.0
    assert m["accuracy"] == m["accuracy_before_recon"] and not PrunePlan.from_parquet(result.plan).refit  # the rebuild replays the kept weights
    assert m["recon_underdetermined"] > 0 and "underdetermined" in caplog.text and "raise reconstruction.images" in caplog.text


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/prunesearch-payload-ran",))


def test_a_pickled_base_model_cache_is_refused_like_a_checkpoint_and_no_store_is_created(tmp_path, capsys):
    from search.runner.basemodel import cache_path

    path = _write(tmp_path)
    cache = cache_path(parse_config(yaml.safe_load(path.read_text())))
    cache.parent.mkdir(parents=True)
    torch.save({"conv1.weight": _Payload()}, cache)  # a __reduce__ payload in torch's own format
    Path("/tmp/prunesearch-payload-ran").unlink(missing_ok=True)
    err = _refused(path, capsys)
    assert str(cache) in err and "pickled code" in err and "delete it to train the base model again" in err
    assert "weights_only=False" not in err and not Path("/tmp/prunesearch-payload-ran").exists()
    assert not (tmp_path / "run" / "mlflow.db").exists()


@pytest.mark.parametrize(
    "cfg, problem",
    [
        ({"model": {"checkpoint": "BAD"}}, "is corrupt, truncated or not a PyTorch file"),
        ({"data": {"val_size": 10_000_000}}, "val_size"),
        ({"data": {"name": "npz", "path": "OBJ"}}, "data.path"),
    ],
)
def test_a_refused_config_creates_no_store(tmp_path, capsys, cfg, problem):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    text = yaml.safe_dump(cfg).replace("BAD", str(tmp_path / "bad.pt")).replace("OBJ", str(tmp_path / "obj.npz"))
    err = _refused(_write(tmp_path, **yaml.safe_load(text)), capsys)
    assert problem in err
    assert not (tmp_path / "run" / "mlflow.db").exists()


def test_a_half_created_store_is_repaired_and_one_with_runs_is_not(tmp_path):
    from search.records.store import StoreError, create_store, store_problem

    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)  # what a disk that filled mid-migration left behind
    con.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    con.execute("CREATE TABLE _alembic_tmp_params (key TEXT)")
    con.commit()
    con.close()
    assert "not a complete MLflow store" in store_problem(db)
    create_store(db)
    assert store_problem(db) == "" and len(list(tmp_path.glob("mlflow.db.broken-*"))) == 1
    con = sqlite3.connect(db)
    con.execute("INSERT INTO runs (run_uuid, experiment_id, lifecycle_stage) VALUES ('r', 0, 'active')")
    con.execute("DROP TABLE tags")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="tables tags are missing"):
        create_store(db)  # it holds a run: never moved aside


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str):
    """A real small disk: a tmpfs of ``size`` mounted on ``folder`` for the block."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.fail(f"this test mounts a {size} tmpfs to fill the disk for real: it needs root and the `mount` command")
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_leaves_no_half_created_store_and_says_disk_full(tmp_path):
    from search.records.store import create_store, store_problem

    with _tmpfs(tmp_path / "small", "64k") as folder:
        with pytest.raises(InputError, match="disk full: cannot create the MLflow store"):
            create_store(folder / "mlflow.db")
        assert list(folder.iterdir()) == []  # neither the store nor its temporary file
        subprocess.run(["mount", "-o", "remount,size=8m", str(folder)], check=True)  # space freed
        create_store(folder / "mlflow.db")
        assert store_problem(folder / "mlflow.db") == ""


def test_a_disk_that_fills_mid_search_is_one_line_saying_disk_full(tmp_path, capsys):
    from pipeline.pruning.plan import PrunePlan
    from pipeline.spec import CandidateResult, CandidateSpec
    from search.records.runs import Recorder, RecordError
    from search.records.store import create_store

    with _tmpfs(tmp_path / "small", "2m") as folder:
        create_store(folder / "mlflow.db")
        rec = Recorder(f"sqlite:///{folder / 'mlflow.db'}", "full", artifact_location=(folder / "artifacts").as_uri())
        parent = rec.start_parent(None, "full", {})
        plan = PrunePlan(masks={"w": torch.rand(400, 400) > 0.5}, weights={"v": torch.rand(100, 100)}).to_parquet()
        result = CandidateResult(CandidateSpec(), "ok", {f"m{i}": float(i) for i in range(50)}, plan=plan)
        with pytest.raises(RecordError) as e:
            for trial in range(200):
                rec.record(parent, trial, result)
        assert str(e.value).startswith("disk full: could not record trial") and "\n" not in str(e.value)
    main(["best", "--run-dir", str(tmp_path)])  # the command quiets MLflow's own error log (a traceback) of what it reports
    assert logging.getLogger("mlflow.store.db.utils").level == logging.CRITICAL


def test_a_copied_run_folder_keeps_its_fingerprints(tmp_path):
    from search.runner.basemodel import cache_name
    from search.study.resume import check_resume, record_config

    cfg = parse_config({"run_dir": str(tmp_path / "run")})
    name = cache_name(cfg)
    (tmp_path / "run" / "base").mkdir(parents=True)
    (tmp_path / "run" / "base" / name).write_bytes(b"weights")  # the cached base model
    record_config(cfg)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    check_resume(cfg.model_copy(update={"run_dir": str(tmp_path / "copy")}))  # the cache is the copy's own
    (tmp_path / "copy" / "base" / name).write_bytes(b"other weights")
    with pytest.raises(ConfigError, match=f"base model cache: base/{name} changed size"):
        check_resume(cfg.model_copy(update={"run_dir": str(tmp_path / "copy")}))
