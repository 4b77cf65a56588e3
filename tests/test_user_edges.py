"""What a new user meets after the demo: the README's commands, the verbs' messages and
help, the notebook API, the shared base-model cache, the example configs and packaging."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.spec import CandidateResult, CandidateSpec, ReconSpec
from search.records.runs import Recorder

from conftest import search_config

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``prunesearch ARGS`` as a user runs it: a child process, this tree first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _using_it_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Using it", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in block.splitlines() if line.strip()]


def test_readme_commands_after_the_demo_name_what_the_demo_records():
    from search.config import parse_config

    demo = parse_config({})  # what `prunesearch demo` runs
    queries = [c for c in _using_it_commands() if c[0] in ("best", "curves")]
    assert len(queries) >= 3
    for cmd in queries:
        assert cmd[cmd.index("--experiment") + 1] == demo.experiment, cmd
        if "--method" in cmd:
            assert cmd[cmd.index("--method") + 1] in demo.space.methods, cmd
    for cmd in (c for c in _using_it_commands() if c[0] in ("run", "stages")):
        assert (ROOT / cmd[1]).is_file(), cmd


def _spec(scope="global", reconstruct="none", granularity="unstructured", **kw) -> CandidateSpec:
    target = {"target_sparsity": 0.9} if granularity == "unstructured" else {"target_macs_ratio": 0.5}
    return CandidateSpec(method="magnitude", granularity=granularity, scope=scope, reconstruct=ReconSpec(mode=reconstruct), **target, **kw)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A run folder whose store holds one search of 5 magnitude/unstructured candidates."""
    run = tmp_path_factory.mktemp("edges") / "run"
    run.mkdir()
    rec = Recorder(f"sqlite:///{run / 'mlflow.db'}", "edges", artifact_location=(run / "artifacts").as_uri())
    parent = rec.start_parent(None, "edges", {})
    for i, s in enumerate([0.5, 0.7, 0.8, 0.9, 0.95]):
        spec = _spec(scope="layerwise" if i == 1 else "global")
        metrics = {"accuracy": 0.98 - s**4 * 0.5, "test_accuracy": 0.9, "macs": 1e6 * (1 - s), "sparsity": s, "params": 1.0}
        rec.record(parent, i, CandidateResult(spec=spec, state="ok", metrics=metrics))
    return run


@pytest.mark.slow
def test_best_refuses_unknown_names_and_says_why_nothing_matches(store, tmp_path, capsys, monkeypatch):
    from search.cli.parser import main

    bad = cli("best", "--run-dir", str(store), "--method", "magnitud")
    assert bad.returncode == 2 and "did you mean 'magnitude'" in bad.stderr, bad.stderr
    assert main(["best", "--run-dir", str(store), "--granularity", "chanel"]) == 2
    assert "did you mean 'channel'" in capsys.readouterr().err
    assert main(["best", "--run-dir", str(store), "--granularity", "channel", "--all"]) == 1
    never = capsys.readouterr().err
    assert "no channel candidate at all" in never and "--all" not in never, never
    assert main(["best", "--run-dir", str(store), "--min-accuracy", "0.999", "--all"]) == 1
    tight = capsys.readouterr().err
    assert "loosen them" in tight and "add --all" not in tight, tight
    monkeypatch.chdir(tmp_path)
    assert main(["best", "--run-dir", str(store), "--format", "parquet", "-o", "front.parquet"]) == 0
    assert (store / "front.parquet").is_file() and not (tmp_path / "front.parquet").exists()  # export's rule: inside the run folder


@pytest.mark.slow
def test_curves_predicts_accuracy_at_the_target_without_a_pressure_fit(store):
    out = cli("curves", "--run-dir", str(store), "--target-sparsity", "0.9")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("accuracy at sparsity 0.900"))
    assert re.search(r": 0\.\d{4} from 1 - acc = \S+ \+ \S+ \* D\^-\S+, D = 0\.100", line), line
    assert "no pressure can be predicted" in out.stdout


def test_best_table_shows_what_distinguishes_candidates():
    from search.records.query import format_table

    base = {"run_id": "r", "trial": 0, "method": "magnitude", "granularity": "unstructured", "accuracy": 0.9, "macs": 1.0}
    rows = [
        {**base, "scope": "global", "reconstruct": "none", "allocation": {}},
        {**base, "trial": 1, "scope": "layerwise", "reconstruct": "lsq", "allocation": {"conv1": 0.5}, "test_accuracy": 0.88},
    ]
    head, first, second = (line.split() for line in format_table(rows).splitlines())
    assert head[4:8] == ["scope", "recon", "alloc", "accuracy"] and "test_accuracy" in head
    assert first[4:7] == ["global", "none", "off"] and second[4:7] == ["layerwise", "lsq", "on"]
    assert "0.8800" in second and "0.8800" not in first  # measured for one candidate only


def test_every_verb_documents_each_flag_and_shows_examples():
    import argparse

    from search.cli.parser import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {"demo", "run", "init", "best", "curves", "export", "stages", "ui", "submit"}
    for verb, p in sub.choices.items():
        for action in p._actions:
            assert action.help, f"{verb} {action.option_strings or action.dest} has no help"
        examples = p.epilog.split("examples:", 1)[1].strip().splitlines()
        assert 2 <= len(examples) <= 3 and all(e.strip().startswith(f"prunesearch {verb}") for e in examples), (verb, examples)
    for verb in ("best", "export"):  # one rule for -o, stated in both
        assert "a relative path is inside the run folder" in " ".join(sub.choices[verb].format_help().split()), verb


def test_search_package_lists_its_api_for_completion():
    import search

    assert {"load_config", "run", "results", "Results", "prune", "macs", "load_exported"} <= set(dir(search))


def test_the_api_speaks_where_logging_is_not_set_up(capsys):
    import logging

    from search.api import _talking

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # a notebook: nobody configured logging
    try:
        with _talking():
            logging.getLogger("search.runner.basemodel").info("training the base model X")
        logging.getLogger("search.runner.basemodel").info("after the run")
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert "training the base model X" in err and "after the run" not in err


def test_base_model_cache_is_shared_between_run_folders(tmp_path, digits, caplog, monkeypatch):
    import torch

    from search.runner.basemodel import base_state, cache_name

    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    one = search_config(tmp_path / "a", "base", trials=1, base_training={"steps": 4})
    two = search_config(tmp_path / "b", "base", trials=1, base_training={"steps": 4})
    with caplog.at_level("INFO", logger="search.runner.basemodel"):
        first = base_state(one, digits)
    assert any("training the base model" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("INFO", logger="search.runner.basemodel"):
        second = base_state(two, digits)  # another run folder: loaded, not trained again
    assert not [r for r in caplog.records if "training" in r.getMessage()]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "cache" / "base" / cache_name(one)).is_file() and (two.run_path / "base" / cache_name(two)).is_file()
    longer = search_config(tmp_path / "c", "base", trials=1, base_training={"steps": 5})
    assert cache_name(longer) != cache_name(one)  # another training budget is another model


@pytest.mark.slow
def test_init_writes_the_example_configs_and_version_answers(tmp_path):
    from search.config import load_config

    out = cli("init", str(tmp_path / "cfg"))
    assert out.returncode == 0, out.stderr
    written = sorted(p.name for p in (tmp_path / "cfg").iterdir())
    assert written == sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) and "own_model.yaml" in written
    own = load_config(tmp_path / "cfg" / "own_model.yaml", check_paths=False)
    assert own.model.name == "import" and own.model.import_path and own.data.name == "imagefolder"
    again = cli("init", str(tmp_path / "cfg"))
    assert again.returncode == 0 and "kept" in again.stdout  # never overwrites
    version = cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"prunesearch \S+\n", version.stdout)


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_builds_without_deprecations(tmp_path):
    import shutil
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns("runs", ".venv", "*.egg-info", "build", ".git", "__pycache__", ".*cache"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w"), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "deprecated" not in (build.stdout + build.stderr).lower()
    wheel = zipfile.ZipFile(next((tmp_path / "w").glob("prunesearch-*.whl")))
    names = set(wheel.namelist())
    assert {f"search/examples/{p.name}" for p in (ROOT / "configs").glob("*.yaml")} <= names
    meta = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta


def test_collapse_plot_names_its_candidate(digits, digits_model, monkeypatch):
    import pipeline.evaluator as evaluator
    from pipeline.measure import MeasureConfig
    from pipeline.models import ModelConfig
    from pipeline.repair.collapse import plot_title, variance_figure

    titles: list[str] = []
    real = evaluator.variance_plot
    monkeypatch.setattr(evaluator, "variance_plot", lambda table, title="": titles.append(title) or real(table, title))
    ev = evaluator.Evaluator(ModelConfig(), digits_model.state_dict(), digits, MeasureConfig(latency_repeats=1), threads=1)
    result = ev.evaluate(_spec(granularity="channel"), trial=7)
    assert result.state == "ok" and titles == ["trial 7: magnitude/channel, global, MACs ratio 0.5"]
    fig = variance_figure(result.diagnostics, plot_title(_spec(), 3))
    assert fig.axes[0].get_title() == "trial 3: magnitude/unstructured, global, sparsity 0.9"


@pytest.mark.slow
def test_exports_carry_their_preprocessing_and_a_named_batch(digits_search, tmp_path):
    import onnx
    import torch

    res = digits_search
    run_id = res.best(top=1).run_id[0]
    out = res.export(run_id, tmp_path / "m.pt", onnx=True)
    props = {p.key: p.value for p in onnx.load(str(out.onnx)).metadata_props}
    sidecar = json.loads(out.preprocessing.read_text())["preprocessing"]
    for key in ("mean", "std", "input_shape", "class_names"):
        assert json.loads(props[key]) == sidecar[key], key
    assert props["channel_order"] == sidecar["channel_order"] == "L"
    assert onnx.load(str(out.onnx)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    extra = {"prunesearch.json": ""}
    torch.export.load(out.program, extra_files=extra)
    assert json.loads(extra["prunesearch.json"]) == props


@pytest.mark.slow
def test_notebook_run_shows_a_bar_and_the_training_log_unless_quiet(tmp_path, ray_local, monkeypatch, caplog, capfd):
    import logging

    import search as ps

    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache"))
    cfg = search_config(tmp_path / "talk", "talk", trials=1, actors={"count": 1}, base_training={"steps": 6})
    assert logging.getLogger().getEffectiveLevel() == logging.WARNING  # what a notebook has: INFO enabled by nobody
    ps.run(cfg)
    messages = [r.getMessage() for r in caplog.records]
    assert any("training the base model" in m for m in messages) and any("trained the base model in" in m for m in messages)
    assert "100%|" in capfd.readouterr().err  # tqdm's bar, finished
    caplog.clear()
    monkeypatch.setenv("PRUNESEARCH_CACHE", str(tmp_path / "cache2"))
    quiet = search_config(tmp_path / "hush", "hush", trials=1, actors={"count": 1}, base_training={"steps": 6})
    ps.run(quiet, quiet=True)
    assert not [r for r in caplog.records if "base model" in r.getMessage() or "candidate" in r.getMessage()]
    assert "100%|" not in capfd.readouterr().err


def test_the_end_of_a_search_names_the_next_steps(tmp_path):
    from search.cli.commands import next_steps
    from search.runner.driver import SearchOutcome

    cfg = search_config(tmp_path, "steps", trials=1)
    cfg.run_path.mkdir(parents=True)
    uri = f"sqlite:///{cfg.run_path / 'mlflow.db'}"
    rec = Recorder(uri, "steps", artifact_location=(cfg.run_path / "artifacts").as_uri())
    parent = rec.start_parent(None, "steps", {})
    rec.log_parent_artifact(parent, "population.png", b"png")
    out = SearchOutcome(parent, uri, "steps", evaluated=1, failed=0, recorded_total=1, interrupted=False)
    text = "\n".join(next_steps(cfg, out, "abc123"))
    assert " export abc123 -o best.pt --onnx --run-dir " in text and str(cfg.run_path / "best.pt") in text
    folder = next(line.split(":", 1)[1].split("/ (")[0].strip() for line in text.splitlines() if "plots" in line)
    assert (Path(folder) / "population.png").is_file()  # where the PNGs really are
    assert " ui --run-dir " in text and " best --run-dir " in text and "--experiment steps" in text


def test_ui_on_a_taken_port_is_refused_before_starting_a_server(tmp_path, capsys):
    import socket

    from mlflow.tracking import MlflowClient

    from search.cli.parser import main

    run = tmp_path / "run"
    run.mkdir()
    MlflowClient(f"sqlite:///{run / 'mlflow.db'}").search_experiments()  # a real (empty) store: ui checks it first
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["ui", "--run-dir", str(run), "--port", str(port)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
