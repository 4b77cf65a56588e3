"""Records that fail cleanly: tampered artifacts, broken stores, export's output and
model name, each refused as one line naming the file and the problem (exit 2), before
any rebuild. The store is tiny and crafted (a real MLflow SQLite store; plans written by
``PrunePlan``): validation runs before a model is rebuilt, so no candidate is evaluated."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.models import ModelConfig, build_model
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateResult, CandidateSpec
from search.cli.parser import main
from search.config import parse_config
from search.records.runs import Recorder
from search.records.store import create_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(run folder, {name: run id}, client): a parent search and two candidates, one
    unstructured (a mask) and one channel plan (kept channels of conv1)."""
    run = tmp_path_factory.mktemp("guards") / "run"
    run.mkdir()
    torch.manual_seed(0)
    ckpt = run / "base.pt"
    torch.save(build_model(ModelConfig()).state_dict(), ckpt)  # shapes are what the checks compare
    cfg = parse_config({"name": "guards", "run_dir": str(run), "model": {"checkpoint": str(ckpt)}})
    create_store(run / "mlflow.db")
    rec = Recorder(cfg.resolved_tracking_uri(), cfg.name, artifact_location=(run / "artifacts").as_uri())
    parent = rec.start_parent(None, cfg.name, {})
    rec.log_parent_artifact(parent, "config.json", cfg.model_dump_json().encode())
    masks = {"conv2.weight": torch.rand(64, 32, 3, 3) > 0.5}
    unstructured = CandidateResult(CandidateSpec(target_sparsity=0.5), "ok", {"accuracy": 0.5}, plan=PrunePlan(masks=masks).to_parquet())
    chan = PrunePlan(channels={"conv1": torch.arange(0, 32, 2)}).to_parquet()
    channel = CandidateResult(CandidateSpec(granularity="channel", target_macs_ratio=0.6), "ok", {"accuracy": 0.5}, plan=chan)
    ids = {"mask": rec.record(parent, 0, unstructured), "channel": rec.record(parent, 1, channel)}
    return run, ids, rec.client, rec


def _copy(store, which: str) -> tuple[str, Path]:
    """A fresh record with the artifacts of ``which`` (to tamper with), and its artifact folder."""
    run, ids, client, rec = store
    src = client.get_run(ids[which])
    spec = CandidateSpec.from_json(src.data.params["spec"])
    art = Path(src.info.artifact_uri.removeprefix("file://"))
    result = CandidateResult(spec, "ok", {"accuracy": 0.5}, plan=(art / "plan.parquet").read_bytes())
    rid = rec.record(src.data.tags["mlflow.parentRunId"], 7, result)
    return rid, Path(client.get_run(rid).info.artifact_uri.removeprefix("file://"))


def _export(run: Path, rid: str, *extra: str, name: str = "out") -> int:
    return main(["export", rid, "-o", f"exports/{name}.pt", "--run-dir", str(run), *extra])


def _rewrite_plan(folder: Path, edit) -> None:
    table = pq.read_table(folder / "plan.parquet")
    rows = table.to_pylist()
    edit(rows)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), buf)
    (folder / "plan.parquet").write_bytes(buf.getvalue())


def _renamed(folder: Path) -> None:
    table = pq.read_table(folder / "plan.parquet")
    buf = io.BytesIO()
    pq.write_table(table.rename_columns(["kynd", *table.column_names[1:]]), buf)
    (folder / "plan.parquet").write_bytes(buf.getvalue())


def _channels(values: list[int]):
    def edit(rows):
        rows[0].update(data=torch.tensor(values, dtype=torch.int64).numpy().tobytes(), shape=[len(values)])

    return edit


def _spec(**change):
    def edit(folder: Path) -> None:
        spec = json.loads((folder / "spec.json").read_text())
        (folder / "spec.json").write_text(json.dumps({**spec, **change}))

    return edit


TAMPERED = {
    "truncated plan": ("mask", lambda f: (f / "plan.parquet").write_bytes((f / "plan.parquet").read_bytes()[:200]), "plan.parquet", "cannot be read"),
    "empty plan": ("mask", lambda f: (f / "plan.parquet").write_bytes(b""), "plan.parquet", "is empty"),
    "renamed column": ("mask", _renamed, "plan.parquet", "lacks the column 'kind'"),
    "mask of the wrong shape": (
        "mask",
        lambda f: _rewrite_plan(f, lambda r: r[0].update(shape=[32, 32, 3, 3])),
        "plan.parquet",
        "has shape (32, 32, 3, 3)",
    ),
    "unknown row kind": ("mask", lambda f: _rewrite_plan(f, lambda r: r[0].update(kind="magic")), "plan.parquet", "unknown kind 'magic'"),
    "negative channel": ("channel", lambda f: _rewrite_plan(f, _channels([-1, 2, 4])), "plan.parquet", "conv1"),
    "channel too large": ("channel", lambda f: _rewrite_plan(f, _channels([0, 2, 99])), "plan.parquet", "conv1"),
    "duplicated channel": ("channel", lambda f: _rewrite_plan(f, _channels([0, 2, 2])), "plan.parquet", "conv1"),
    "spec not JSON": ("mask", lambda f: (f / "spec.json").write_text("{not json"), "spec.json", "is not JSON"),
    "target out of range": ("mask", _spec(target_sparsity=5), "spec.json", "target_sparsity"),
    "extra field": ("mask", _spec(surprise=1), "spec.json", "surprise: Extra inputs are not permitted"),
    "spec disagrees with params": (
        "mask",
        _spec(finetune_steps=100000),
        "spec.json",
        "disagrees with the run's recorded params: finetune_steps: 100000",
    ),
    "unknown method": ("mask", _spec(method="nosuch"), "spec.json", "nosuch"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_record_is_one_line_naming_the_artifact(store, capsys, case):
    which, tamper, artifact, problem = TAMPERED[case]
    rid, folder = _copy(store, which)
    tamper(folder)
    capsys.readouterr()
    assert _export(store[0], rid, name=case.replace(" ", "-")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {artifact} of run {rid}") and problem in err, err
    assert "\n" not in err and "Traceback" not in err


def test_export_refuses_to_overwrite_and_names_a_file_used_as_a_folder(store, capsys):
    run, ids, _, _ = store
    out = run / "exports" / "kept.pt"
    out.parent.mkdir(exist_ok=True)
    out.write_text("mine")
    out.with_suffix(".json").write_text("mine too")
    capsys.readouterr()
    assert _export(run, ids["mask"], name="kept") == 2
    err = capsys.readouterr().err
    assert f"would overwrite {out}, {out.with_suffix('.json')}" in err and "--force" in err
    assert out.read_text() == "mine"
    (run / "notes.txt").write_text("x")
    assert main(["export", ids["mask"], "-o", "notes.txt/x.pt", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "notes.txt is a file, not a folder (Not a directory)" in err and "File exists" not in err


def test_register_name_is_checked_before_any_work(store, capsys):
    run, ids, client, _ = store
    capsys.readouterr()
    assert main(["export", ids["mask"], "--register", "../../evil", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--register '../../evil'" in err and "Traceback" not in err
    assert "model" not in {f.path for f in client.list_artifacts(ids["mask"])}  # nothing was logged
    assert client.search_logged_models([client.get_run(ids["mask"]).info.experiment_id]) == []


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _newer_schema(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = 'ffff00001111'")
    con.commit()
    con.close()


BROKEN = {
    "empty": (lambda db, good: db.write_bytes(b""), "is empty (0 bytes)"),
    "garbage": (lambda db, good: db.write_bytes(b"\x13garbage" * 500), "is not a readable SQLite database"),
    "truncated": (lambda db, good: db.write_bytes(good.read_bytes()[:40960]), "mlflow.db"),
    "newer schema": (lambda db, good: (shutil.copy(good, db), _newer_schema(db)), "does not know (ffff00001111"),
}


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("verb", ["best", "curves", "export"])
def test_a_broken_store_is_refused_read_only_by_read_verbs(store, tmp_path, capsys, case, verb):
    make, problem = BROKEN[case]
    db = tmp_path / "mlflow.db"
    make(db, store[0] / "mlflow.db")
    before = _sha(db)
    argv = {"best": ["best"], "curves": ["curves"], "export": ["export", store[1]["mask"], "-o", "x.pt"]}[verb]
    capsys.readouterr()
    assert main([*argv, "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"the MLflow store {db}" in err and problem in err and "Traceback" not in err, err
    assert _sha(db) == before  # opened read-only: no tables created, nothing migrated


@pytest.mark.slow
def test_an_empty_store_is_refused_by_the_command_without_a_traceback(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    p = subprocess.run(
        [sys.executable, "-m", "search.cli", "best", "--run-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 2 and "is empty (0 bytes)" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert (tmp_path / "mlflow.db").stat().st_size == 0


def test_a_record_that_passes_the_checks_is_not_refused_by_them(store):
    run, ids, client, _ = store
    from search.export import validate

    for which in ("mask", "channel"):
        r = client.get_run(ids[which])
        art = Path(r.info.artifact_uri.removeprefix("file://"))
        spec = validate.read_spec((art / "spec.json").read_bytes(), "spec.json", r.data.params["spec"])
        plan = validate.read_plan((art / "plan.parquet").read_bytes(), "plan.parquet", ModelConfig())
        assert spec.granularity == ("channel" if which == "channel" else "unstructured") and (plan.channels or plan.masks)
