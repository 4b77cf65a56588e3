"""The README's promises about a real search, checked through the command line.

Two small real searches on digits share one run folder and serve every test here:
- ``prom-hf``: hyperflows only, steered to 90 % sparsity by the power-law fit, the base
  model trained and cached on first use;
- ``prom-ocs``: OCS channel candidates from a base *checkpoint* (the first search's
  cached model), one actor killed mid-search with ``max_retries: 0``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn

from pipeline.data.splits import load_data
from pipeline.models import ModelConfig, build_model
from search.cli.parser import main
from search.config import load_config
from search.export.formats import load_exported
from search.runner.driver import actor_prefix

from conftest import candidate_runs
from macs_count import count_macs

ROOT = Path(__file__).resolve().parents[1]
HF_TRIALS, OCS_TRIALS = 10, 6
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _kill_first_actor_after_a_record(cfg, killed: list) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not candidate_runs(cfg)[1]:
        time.sleep(0.1)
    runs = candidate_runs(cfg)[1]
    if runs:
        ray.kill(ray.get_actor(f"{actor_prefix(cfg.name, runs[0].data.tags['mlflow.parentRunId'])}-0"), no_restart=False)
        killed.append(True)


@pytest.fixture(scope="module")
def searched(tmp_path_factory, ray_local):
    """(run folder, hyperflows config, OCS config, client), both searches run through `prunesearch run`."""
    base = tmp_path_factory.mktemp("promises")
    run = base / "run"
    common = {"run_dir": str(run), "actors": {"count": 2}, "measure": {"latency_repeats": 3}, "recalibration": {"images": 128}}
    hf = _write(
        base / "hf.yaml",
        {
            **common,
            "name": "prom-hf",
            "budget": {"trials": HF_TRIALS},
            "base_training": {"steps": 150},
            "space": {
                "methods": ["hyperflows"],
                "target_sparsity": 0.9,
                "knobs": {"hyperflows": {"pressure": [0.003, 3.0], "steps": [50, 60], "regrowth_steps": [0, 5], "flow_lr": [0.02, 0.03]}},
            },
        },
    )
    assert main(["run", str(hf), "--quiet"]) == 0
    cfg_hf = load_config(hf)
    checkpoint = next((run / "base").glob("digits_cnn-*.pt"))
    ocs = _write(
        base / "ocs.yaml",
        {
            **common,
            "name": "prom-ocs",
            "budget": {"trials": OCS_TRIALS},
            "model": {"name": "digits_cnn", "checkpoint": str(checkpoint)},
            "actors": {"count": 2, "max_retries": 0},
            "space": {
                "methods": ["ocs"],
                "granularity": ["channel"],
                "macs_ratio": [0.4, 0.7],
                "knobs": {"ocs": {"epochs": [4, 5], "steps_per_epoch": [5, 6]}},
            },
        },
    )
    cfg_ocs = load_config(ocs)
    killed: list = []
    killer = threading.Thread(target=_kill_first_actor_after_a_record, args=(cfg_ocs, killed), daemon=True)
    killer.start()
    assert main(["run", str(ocs), "--quiet"]) == 0
    killer.join(timeout=10)
    assert killed, "the actor was never killed"
    return run, cfg_hf, cfg_ocs, MlflowClient(cfg_hf.resolved_tracking_uri())


def _ok(cfg) -> list:
    return sorted((r for r in candidate_runs(cfg)[1] if r.data.tags["state"] == "ok"), key=lambda r: int(r.data.tags["trial_number"]))


def _parent(client: MlflowClient, cfg):
    return client.get_run(candidate_runs(cfg)[1][0].data.tags["mlflow.parentRunId"])


def _export(run: Path, run_id: str, name: str, *extra: str) -> int:
    return main(["export", run_id, "-o", f"exports/{name}.pt", "--run-dir", str(run), *extra])


def _nonzero_params(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def _top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return int((model.eval()(x).argmax(1) == y).sum()) / len(y)


def test_recorded_size_and_accuracy_metrics_match_an_independent_count(searched, capsys):
    run, cfg_hf, cfg_ocs, _ = searched
    splits = load_data(cfg_hf.data)
    base = build_model(ModelConfig())
    base.load_state_dict(torch.load(next((run / "base").glob("digits_cnn-*.pt")), weights_only=True))
    base_dense, _ = count_macs(base, splits.val.x[:1])
    for cfg in (cfg_hf, cfg_ocs):
        r = _ok(cfg)[0]
        m = r.data.metrics
        assert _export(run, r.info.run_id, f"count-{cfg.name}") == 0
        model, _ = load_exported(run / "exports" / f"count-{cfg.name}.pt")
        dense, effective = count_macs(model, splits.val.x[:1])
        assert m["base_macs"] == base_dense
        assert m["macs"] == effective and m["macs_dense"] == dense  # effective: non-zero weights only
        assert m["macs_ratio"] == pytest.approx(effective / base_dense, rel=1e-12) and m["macs_ratio"] < 1
        assert m["params"] == _nonzero_params(model) < _nonzero_params(base)
        assert m["test_accuracy"] == pytest.approx(_top1(model, splits.test.x, splits.test.y), abs=1e-9)
        assert m["accuracy"] == pytest.approx(_top1(model, splits.val.x, splits.val.y), abs=1e-9)
    capsys.readouterr()


def test_parent_run_holds_config_plots_front_and_fit_metrics(searched):
    from search.config import SearchConfig
    from search.study.powerlaw import fit_pressure

    run, cfg_hf, _, client = searched
    parent = _parent(client, cfg_hf)
    assert parent.info.status == "FINISHED"
    names = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "pareto.parquet", "population.png", "pressure_fit.png"} <= names, names
    d = run.parent / "parent-artifacts"
    assert SearchConfig.model_validate_json(Path(client.download_artifacts(parent.info.run_id, "config.json", str(d))).read_text()) == cfg_hf
    for png in ("population.png", "pressure_fit.png"):
        assert Path(client.download_artifacts(parent.info.run_id, png, str(d))).read_bytes().startswith(PNG)
    # the fit metrics are those of the density-vs-pressure points the candidates recorded
    ok = _ok(cfg_hf)
    fit = fit_pressure([float(r.data.params["knob.pressure"]) for r in ok], [1 - r.data.metrics["sparsity"] for r in ok])
    pm = parent.data.metrics
    assert pm["candidates"] == len(ok) == HF_TRIALS and pm["candidates_failed"] == 0
    assert pm["pressure.c"] == pytest.approx(fit.c, rel=1e-6) and pm["pressure.a0"] == pytest.approx(fit.a0, rel=1e-6, abs=1e-9)
    assert pm["best_accuracy"] == max(r.data.metrics["accuracy"] for r in ok)
    front = pq.read_table(client.download_artifacts(parent.info.run_id, "pareto.parquet", str(d))).to_pydict()
    assert len(front["run_id"]) == pm["pareto_size"] >= 1


def test_every_candidate_has_its_collapse_diagnostic(searched):
    run, cfg_hf, cfg_ocs, client = searched
    for r in _ok(cfg_hf) + _ok(cfg_ocs):
        assert {"bn_variance.png", "bn_variance.parquet", "plan.parquet", "spec.json"} <= {f.path for f in client.list_artifacts(r.info.run_id)}
    r = _ok(cfg_ocs)[0]
    d = str(run.parent / "bn")
    assert Path(client.download_artifacts(r.info.run_id, "bn_variance.png", d)).read_bytes().startswith(PNG)
    table = pq.read_table(client.download_artifacts(r.info.run_id, "bn_variance.parquet", d)).to_pydict()
    assert table["layer"] == ["bn1", "bn2", "bn3"]


def test_steered_candidates_are_tagged(searched):
    _, cfg_hf, _, _ = searched
    runs = candidate_runs(cfg_hf)[1]
    steered = [r for r in runs if r.data.tags.get("steered") == "power-law"]
    assert steered, "no candidate was steered"
    # steering needs 4 measured candidates first; the sampler proposes the rest
    assert all(int(r.data.tags["trial_number"]) >= 4 for r in steered) and len(steered) < len(runs)


def test_best_table_lists_the_pareto_front(searched, capsys):
    run, cfg_hf, _, _ = searched
    capsys.readouterr()
    assert main(["best", "--run-dir", str(run), "--experiment", "prom-hf", "--format", "table"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["run_id", "trial", "method", "gran"] and "accuracy" in lines[0]
    # the front, computed here: no other candidate is at least as accurate with fewer MACs
    ok = [(r.info.run_id, r.data.metrics["accuracy"], r.data.metrics["macs"]) for r in _ok(cfg_hf)]
    front = {i for i, a, m in ok if not any((a2 >= a and m2 < m) or (a2 > a and m2 <= m) for _, a2, m2 in ok)}
    assert {line.split()[0] for line in lines[1:]} == front
    assert all(line.split()[2:4] == ["hyperflows", "unst"] for line in lines[1:])


def test_failed_candidates_are_recorded_with_the_reason_and_the_search_goes_on(searched):
    _, _, cfg_ocs, client = searched
    runs = candidate_runs(cfg_ocs)[1]
    failed = [r for r in runs if r.data.tags["state"] == "failed"]
    # the killed actor's candidates, not retried (max_retries 0): FAILED, with the reason
    assert failed and all(r.info.status == "FAILED" and r.data.tags["error"].startswith("actor lost 1 times") for r in failed)
    assert len(runs) == OCS_TRIALS and sorted(int(r.data.tags["trial_number"]) for r in runs) == list(range(OCS_TRIALS))
    first_failure = min(int(r.data.tags["trial_number"]) for r in failed)
    assert any(int(r.data.tags["trial_number"]) > first_failure for r in _ok(cfg_ocs))  # it went on
    parent = _parent(client, cfg_ocs)
    assert parent.info.status == "FINISHED" and parent.data.metrics["candidates_failed"] == len(failed)


def test_export_of_a_channel_candidate_from_a_checkpoint_is_physically_smaller(searched, capsys):
    run, _, cfg_ocs, _ = searched
    r = _ok(cfg_ocs)[0]
    capsys.readouterr()
    assert _export(run, r.info.run_id, "ocs") == 0
    out = capsys.readouterr().out
    assert f"rebuilt {r.info.run_id}: accuracy" in out and str(run / "exports" / "ocs.pt") in out
    assert (run / "exports" / "ocs.pt2").is_file() and (run / "exports" / "ocs.json").is_file()
    model, _ = load_exported(run / "exports" / "ocs.pt")
    base = build_model(cfg_ocs.model)  # the checkpoint the search started from
    convs = lambda m: [c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)]  # noqa: E731
    assert sum(convs(model)) < sum(convs(base)) and sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in base.parameters())
    blob = torch.load(run / "exports" / "ocs.pt", weights_only=True)
    assert json.loads(json.loads(blob["recipe"])["model"])["checkpoint"] == cfg_ocs.model.checkpoint


@pytest.mark.parametrize("which", ["hf", "ocs"])
def test_export_of_a_training_method_carries_its_trained_weights(searched, which):
    run, cfg_hf, cfg_ocs, _ = searched
    cfg = cfg_hf if which == "hf" else cfg_ocs
    r = _ok(cfg)[-1]
    assert _export(run, r.info.run_id, f"trained-{which}") == 0
    model, _ = load_exported(run / "exports" / f"trained-{which}.pt")
    splits = load_data(cfg.data)
    assert _top1(model, splits.val.x, splits.val.y) == pytest.approx(r.data.metrics["accuracy"], abs=1e-9)
    # the base model with the same channels removed: what an export without trained weights would hold
    from pipeline.pruning.structure import shrink

    base = build_model(ModelConfig())
    base.load_state_dict(torch.load(next((run / "base").glob("digits_cnn-*.pt")), weights_only=True))
    channels = json.loads(torch.load(run / "exports" / f"trained-{which}.pt", weights_only=True)["recipe"])["channels"]
    if channels:
        base = shrink(base, {k: torch.tensor(v, dtype=torch.int64) for k, v in channels.items()})
    trained, untrained = model.state_dict(), base.state_dict()
    weights = [k for k in trained if k.endswith(".weight") and trained[k].dim() > 1]
    assert weights and all(trained[k].shape == untrained[k].shape for k in weights)
    # the surviving weights are not the base model's
    assert not any(torch.allclose(trained[k][trained[k] != 0], untrained[k][trained[k] != 0]) for k in weights)


def _crafted_record(searched, name: str, model: dict | None = None, accuracy_offset: float = 0.0) -> str:
    """A copy of a recorded candidate under a new parent run in experiment ``name``."""
    from pipeline.spec import CandidateResult, CandidateSpec
    from search.records.runs import Recorder

    run, cfg_hf, _, client = searched
    src = _ok(cfg_hf)[0]
    d = run.parent / f"craft-{name}"
    spec = CandidateSpec.from_json(Path(client.download_artifacts(src.info.run_id, "spec.json", str(d))).read_text())
    plan = Path(client.download_artifacts(src.info.run_id, "plan.parquet", str(d))).read_bytes()
    cfg = cfg_hf.model_copy(update={"name": name, "model": ModelConfig.model_validate(model) if model else cfg_hf.model})
    rec = Recorder(cfg_hf.resolved_tracking_uri(), name, artifact_location=(run / "artifacts").as_uri())
    parent = rec.start_parent(None, name, {})
    rec.log_parent_artifact(parent, "config.json", cfg.model_dump_json().encode())
    metrics = {**src.data.metrics, "accuracy": src.data.metrics["accuracy"] + accuracy_offset}
    return rec.record(parent, 0, CandidateResult(spec=spec, state="ok", metrics=metrics, plan=plan))


def test_export_refuses_an_import_model_without_allow_import(searched, capsys):
    run, _, _, _ = searched
    checkpoint = str(next((run / "base").glob("digits_cnn-*.pt")))
    rid = _crafted_record(searched, "prom-import", {"name": "import", "import_path": "pipeline.models.digits:DigitsCNN", "checkpoint": checkpoint})
    capsys.readouterr()
    assert _export(run, rid, "imported") == 2
    err = capsys.readouterr().err
    assert "pipeline.models.digits:DigitsCNN" in err and "--allow-import" in err and "Traceback" not in err
    assert not (run / "exports" / "imported.pt").exists()
    assert _export(run, rid, "imported", "--allow-import") == 0  # trusted on purpose: rebuilt and verified
    assert (run / "exports" / "imported.pt").is_file()


def test_export_refuses_a_record_whose_accuracy_does_not_reproduce(searched, capsys):
    run, _, _, _ = searched
    rid = _crafted_record(searched, "prom-drift", accuracy_offset=0.05)
    capsys.readouterr()
    assert _export(run, rid, "drift") == 2
    err = capsys.readouterr().err
    assert "differs from the recorded" in err and "Traceback" not in err
    assert not (run / "exports" / "drift.pt").exists()


def test_export_output_paths_cannot_leave_the_run_folder(searched, capsys):
    run, cfg_hf, _, _ = searched
    rid = _ok(cfg_hf)[0].info.run_id
    capsys.readouterr()
    assert main(["export", rid, "-o", "../escaped.pt", "--run-dir", str(run)]) == 2
    assert "stays inside the run folder" in capsys.readouterr().err and not (run.parent / "escaped.pt").exists()
    absolute = run.parent / "elsewhere" / "on-purpose.pt"
    assert main(["export", rid, "-o", str(absolute), "--run-dir", str(run)]) == 0 and absolute.is_file()


def test_telemetry_is_off_when_the_project_is_imported():
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "RAY_USAGE_STATS_ENABLED")}
    code = "import os, search.cli.parser; print(os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['RAY_USAGE_STATS_ENABLED'])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["true", "0"], out.stderr[-2000:]


def test_a_tracking_server_dying_mid_search_stops_with_exit_2_and_resumes(tmp_path, ray_local, capsys, monkeypatch):
    from cluster_fixtures import MlflowServer, short_tempdir

    # MLflow's client retries a dead server 7 times with exponential back-off (about 4 min
    # in all) before it gives up; one quick retry shows the same behaviour sooner
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    budget = 10
    server = MlflowServer(short_tempdir("psd"), set())
    server.start()
    try:
        path = _write(
            tmp_path / "c.yaml",
            {
                "name": "prom-server",
                "run_dir": str(tmp_path / "run"),
                "tracking_uri": server.uri,
                "budget": {"trials": budget},
                "actors": {"count": 2},
                "base_training": {"steps": 100},
                "measure": {"latency_repeats": 60, "latency_batch": 64, "test_accuracy": False},
            },
        )
        cfg = load_config(path)

        def stop_after_two() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and sum(r.info.status == "FINISHED" for r in candidate_runs(cfg)[1]) < 2:
                time.sleep(0.2)
            server.stop()

        stopper = threading.Thread(target=stop_after_two, daemon=True)
        stopper.start()
        assert main(["run", str(path), "--quiet"]) == 2
        stopper.join(timeout=30)
        err = capsys.readouterr().err
        assert "error: could not record trial" in err and server.uri in err and "Traceback" not in err

        server.start()  # fixed: the same store again
        _, before = candidate_runs(cfg)
        complete = [r for r in before if r.info.status == "FINISHED"]  # the incomplete one may await the resume's clean-up
        assert 2 <= len(complete) < budget and len(before) - len(complete) <= 1
        assert main(["run", str(path), "--quiet"]) == 0
        _, runs = candidate_runs(cfg)
        numbers = [int(r.data.tags["trial_number"]) for r in runs]
        assert len(numbers) == len(set(numbers)) and sum(r.data.tags["state"] == "ok" for r in runs) == budget
        assert all(r.info.status == "FINISHED" for r in runs)
        assert {r.info.run_id for r in complete} <= {r.info.run_id for r in runs}
    finally:
        server.stop()
