"""Cluster support: cluster.yaml, `prunesearch submit`, and real multi-node searches.

Fast tests check cluster.yaml against Ray's own launcher validation and the actors of
configs/cluster.yaml, and the submission logic of search/cluster/submit.py. Slow tests start a
real two-node Ray cluster (two `ray start` nodes, 127.0.0.1 only) and an MLflow
tracking server on this machine, submit searches through the Jobs API, and kill the
second node in the middle of one (see tests/cluster_fixtures.py).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from search.cluster.submit import STAGED_DIR, SubmitError, check_config, exit_code, follow_job, prepare
from search.config import load_config

from cluster_fixtures import BIN, ROOT, LocalCluster, MlflowServer, ray_env, short_tempdir

CLUSTER_YAML = ROOT / "cluster.yaml"
SEARCH_YAML = ROOT / "configs" / "cluster.yaml"


# ---------------------------------------------------------------- cluster.yaml


def _launcher_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _onprem_block() -> dict:
    """The commented on-premises variant of cluster.yaml, uncommented."""
    block = CLUSTER_YAML.read_text().split("# >>> on-premises\n")[1].split("# <<< on-premises")[0]
    return yaml.safe_load("\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in block.splitlines()))


def test_cluster_yaml_passes_the_launchers_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _launcher_config()
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` does before it starts anything

    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers, "no worker node type"
    for name, t in workers.items():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= cfg["max_workers"], name
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0, "the head must not take evaluator actors"
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"] if "ray start --head" in c)

    # the project is installed on every node, from where file_mounts put it
    mounted = set(cfg["file_mounts"])
    installs = [c for c in cfg["setup_commands"] if "pip install" in c and " -e " in c]
    assert installs and any(m.replace("/home/ubuntu", "~") in installs[0] or m in installs[0] for m in mounted)

    # the head runs the MLflow server that configs/cluster.yaml records to
    search = load_config(SEARCH_YAML, check_paths=False)
    port = search.tracking_uri.rsplit(":", 1)[1]
    assert any("mlflow server" in c and f"--port {port}" in c and "--artifacts-destination" in c for c in cfg["head_start_ray_commands"])


def test_onprem_variant_passes_the_launchers_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    onprem = _onprem_block()
    assert onprem["provider"]["type"] == "local" and onprem["provider"]["worker_ips"]
    cfg = {k: v for k, v in _launcher_config().items() if k not in ("available_node_types", "head_node_type", "provider", "auth", "max_workers")}
    cfg.update(onprem)
    prepared = prepare_config(cfg)
    validate_config(prepared)
    assert prepared["max_workers"] == len(onprem["provider"]["worker_ips"])


def test_worker_nodes_fit_the_actors_of_the_cluster_search_config():
    cfg = _launcher_config()
    actors = load_config(SEARCH_YAML, check_paths=False).actors
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]["resources"]
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}

    def fits(res: dict) -> int:
        """How many actors one node with ``res`` holds."""
        per = [res.get("CPU", 0) / actors.num_cpus]
        if actors.num_gpus:
            per.append(res.get("GPU", 0) / actors.num_gpus)
        per += [res.get(k, 0) / v for k, v in actors.resources.items()]
        return math.floor(min(per) + 1e-9)

    assert fits(head) == 0, "actors could land on the head"
    gpu_workers = {k: t for k, t in workers.items() if fits(t["resources"]) >= 1}
    assert gpu_workers, f"no worker type fits an actor requesting {actors}"
    for name, t in gpu_workers.items():
        res = t["resources"]
        if actors.num_gpus:
            assert res.get("GPU", 0) >= 1 and actors.num_gpus <= 1
            per_gpu = 1 / actors.num_gpus
            assert abs(per_gpu - round(per_gpu)) < 1e-9, "fractional GPUs must divide a GPU evenly"
            assert fits(res) * actors.num_gpus == pytest.approx(res["GPU"]), f"{name}: CPUs strand part of the GPUs"
        assert actors.count is not None, "set actors.count on an autoscaling cluster"
        assert actors.count <= fits(res) * t["max_workers"], f"{name}: {actors.count} actors never fit"
    assert actors.threads <= actors.num_cpus


def test_actors_cannot_write_to_the_stores():
    """What runs on worker nodes (pipeline/) never imports MLflow or Optuna: the driver is their only writer."""
    import ast

    offenders = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("mlflow", "optuna")]
    assert offenders == []


def test_cluster_search_config_is_ready_for_submission():
    cfg = load_config(SEARCH_YAML, check_paths=False)
    assert check_config(cfg) == []  # joins the job's cluster, absolute run_dir, an MLflow server
    assert cfg.actors.num_gpus > 0 and cfg.optuna_storage


# ---------------------------------------------------------------- search/cluster/submit.py


def test_prepare_runs_a_config_inside_the_working_dir_in_place():
    sub = prepare(SEARCH_YAML, ROOT)
    assert sub.staged is None
    assert sub.entrypoint == "python -m search.cli run configs/cluster.yaml --quiet"
    assert sub.runtime_env["working_dir"] == str(ROOT)
    assert {".venv", ".git", "runs", "benchmarks/results"} <= set(sub.runtime_env["excludes"])


def test_prepare_stages_a_config_outside_the_working_dir(tmp_path):
    cfg = tmp_path / "my search.yaml"
    cfg.write_text("name: x\nray_address: auto\n")
    sub = prepare(cfg, ROOT, excludes=["tests"])
    try:
        staged = Path(sub.runtime_env["working_dir"])
        assert sub.staged is not None and staged.is_relative_to(sub.staged)
        assert sub.entrypoint == f"python -m search.cli run '{STAGED_DIR}/my search.yaml' --quiet"
        assert (staged / STAGED_DIR / "my search.yaml").read_text() == cfg.read_text()
        assert (staged / "search" / "cli" / "__main__.py").is_file() and (staged / "pipeline").is_dir()
        for excluded in (".venv", ".git", "tests"):
            assert not (staged / excluded).exists(), excluded
        assert not list(staged.rglob("__pycache__"))
    finally:
        shutil.rmtree(sub.staged)


def test_prepare_refuses_a_folder_that_is_not_the_project(tmp_path):
    with pytest.raises(SubmitError, match="not the prunesearch project"):
        prepare(SEARCH_YAML, tmp_path)


def test_check_config_needs_ray_address_and_warns_about_local_stores(tmp_path):
    from search.config import parse_config

    with pytest.raises(SubmitError, match="ray_address"):
        check_config(parse_config({"name": "x"}))
    warnings = check_config(parse_config({"name": "x", "ray_address": "auto", "run_dir": "runs"}))
    assert any("run_dir" in w for w in warnings) and any("tracking_uri" in w for w in warnings)


def test_submit_refuses_a_bad_config_before_contacting_the_cluster(tmp_path, capsys):
    from search.cli.parser import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")  # no ray_address
    assert main(["submit", str(cfg), "--address", "http://127.0.0.1:9"]) == 2
    assert "ray_address" in capsys.readouterr().err


def test_exit_codes_follow_the_job_status():
    from ray.job_submission import JobStatus

    assert [exit_code(s) for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)] == [0, 1, 130]


class _FakeClient:
    """Jobs API stand-in: the log stream drops after 'a', polling then sees the rest."""

    def __init__(self) -> None:
        self.polls = 0

    async def tail_job_logs(self, job_id):
        yield "a\n"
        raise RuntimeError("WebSocket connection closed unexpectedly")

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        self.polls += 1
        return JobStatus.RUNNING if self.polls < 2 else JobStatus.FAILED

    def get_job_logs(self, job_id):
        return "a\nb\n" if self.polls < 2 else "a\nb\nc\n"


def test_follow_falls_back_to_polling_without_repeating_lines():
    out = io.StringIO()
    status = follow_job(_FakeClient(), "raysubmit_x", out, poll_s=0)
    assert out.getvalue() == "a\nb\nc\n" and exit_code(status) == 1


# ---------------------------------------------------------------- a real two-node cluster

PORTS: set[int] = set()


@pytest.fixture(scope="module")
def mlflow_server():
    """An MLflow tracking server on 127.0.0.1 (SQLite backend, proxied artifact store)."""
    base = short_tempdir("psm")
    server = MlflowServer(base, PORTS)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def two_nodes():
    """A Ray head (1 CPU, resource head_node) and a second node (1 CPU, resource worker_node)."""
    cluster = LocalCluster(short_tempdir("psr"), head_cpus=1, taken=PORTS)
    try:
        yield cluster.start(workers=1)
    finally:
        cluster.stop()


def _search_yaml(tmp_path: Path, server: MlflowServer, name: str, trials: int) -> Path:
    """configs/cluster.yaml made small for 2 CPUs: digits, CPU actors (one per node), local stores in tmp."""
    data = yaml.safe_load(SEARCH_YAML.read_text())
    for key in ("model", "data", "space", "sampler"):
        data.pop(key)  # the embedded digits default
    data.update(
        name=name,
        run_dir=str(tmp_path / "run"),
        tracking_uri=server.uri,
        optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        budget={"trials": trials},
        base_training={"steps": 150},
        measure={"latency_repeats": 3, "latency_batch": 1},
        actors={**data["actors"], "count": 2, "num_cpus": 1, "num_gpus": 0, "device": "cpu"},
    )
    path = tmp_path / f"{name}.yaml"  # outside the project: submit stages it
    path.write_text(yaml.safe_dump(data))
    return path


def _submit_cmd(cfg: Path, cluster: LocalCluster) -> list[str]:
    return [str(BIN / "prunesearch"), "submit", str(cfg), "--address", cluster.dashboard_url, "--follow"]


def _candidates(uri: str, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`prunesearch.role` = 'candidate'", max_results=1000)


def _study_trials(tmp_path: Path, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials


@pytest.mark.slow
def test_submitted_search_runs_on_both_nodes_and_records_everything_on_the_server(tmp_path, mlflow_server):
    from search.cluster.submit import connect
    from search.records.query import best

    trials = 8
    cfg = _search_yaml(tmp_path, mlflow_server, "cluster-itest", trials)
    with two_nodes() as cluster:
        t0 = time.monotonic()
        out = subprocess.run(_submit_cmd(cfg, cluster), cwd=ROOT, env=ray_env(), capture_output=True, text=True, timeout=300)
        job_s = time.monotonic() - t0
        log = f"stdout:\n{out.stdout[-4000:]}\nstderr:\n{out.stderr[-3000:]}"
        assert out.returncode == 0, log
        job_id = out.stdout.splitlines()[0].strip()
        assert job_id.startswith("raysubmit_") and f"job {job_id} SUCCEEDED" in out.stderr, log
        assert "candidates evaluated (0 failed)" in out.stdout, log  # --follow streamed the job's output
        assert "View run" not in out.stdout  # no MLflow URL line per candidate in the job's log

        info = connect(cluster.dashboard_url).get_job_info(job_id)
        assert info.status.value == "SUCCEEDED"
        # the driver, only writer of MLflow and Optuna, ran on the head
        assert info.driver_node_id == cluster.head.node_id
        nodes = {n.resource: n.node_id for n in cluster.nodes}
        first = {r.info.run_id for r in _candidates(mlflow_server.uri, "cluster-itest")}

        # the same config submitted again, with 2 more trials, resumes from the head's storage
        _search_yaml(tmp_path, mlflow_server, "cluster-itest", trials + 2)
        again = subprocess.run(_submit_cmd(cfg, cluster), cwd=ROOT, env=ray_env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "2 candidates evaluated (0 failed); 10 recorded" in again.stdout, again.stdout[-3000:]
        trials += 2

    runs = _candidates(mlflow_server.uri, "cluster-itest")
    assert first < {r.info.run_id for r in runs} and len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == list(range(trials))
    assert all(r.info.status == "FINISHED" for r in runs)
    # every candidate records its node; SPREAD put one actor on each
    assert {r.data.tags["node"] for r in runs} == {nodes["head_node"], nodes["worker_node"]}, job_s

    # artifacts went through the server into its artifact store, not to a node's disk
    for r in runs:
        assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
        assert (mlflow_server.artifacts / r.info.experiment_id / r.info.run_id / "artifacts" / "plan.parquet").is_file()

    # the study told each trial once, from its record
    study = _study_trials(tmp_path, "cluster-itest")
    assert sorted(t.user_attrs["mlflow_run_id"] for t in study) == sorted(r.info.run_id for r in runs)

    # `best` against the server's URI returns recorded candidates
    front = best(mlflow_server.uri, "cluster-itest", top=5)
    assert front and {row["run_id"] for row in front} <= {r.info.run_id for r in runs}
    assert all(row["node"] in nodes.values() for row in front)


@pytest.mark.slow
def test_search_survives_the_death_of_a_worker_node(tmp_path, mlflow_server):
    trials = 12
    name = "cluster-node-death"
    cfg = _search_yaml(tmp_path, mlflow_server, name, trials)
    job_log = tmp_path / "submit.log"
    with two_nodes() as cluster, open(job_log, "w") as logf:
        head, worker = cluster.nodes
        proc = subprocess.Popen(_submit_cmd(cfg, cluster), cwd=ROOT, env=ray_env(), stdout=logf, stderr=subprocess.STDOUT)
        try:
            # wait until the second node has evaluated something and the search is under way
            deadline = time.monotonic() + 240
            before = []
            while time.monotonic() < deadline and proc.poll() is None:
                before = _candidates(mlflow_server.uri, name)
                if len(before) >= 2 and any(r.data.tags.get("node") == worker.node_id for r in before):
                    break
                time.sleep(0.5)
            assert proc.poll() is None and len(before) < trials, f"the search ended before the kill:\n{job_log.read_text()[-4000:]}"
            killed = worker.kill()  # raylet, agents, log monitor, the evaluator on it: a dead machine
            assert killed >= 2
            t_kill = time.monotonic()
            rc = proc.wait(timeout=240)
            after_kill_s = time.monotonic() - t_kill
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        alive = {n["node_id"] for n in cluster.alive_nodes()}
    log = job_log.read_text()
    assert rc == 0 and "SUCCEEDED" in log, log[-4000:]
    assert worker.node_id not in alive and head.node_id in alive

    runs = _candidates(mlflow_server.uri, name)
    numbers = sorted(int(r.data.tags["trial_number"]) for r in runs)
    assert numbers == list(range(trials)), f"lost or duplicated trials: {numbers}"
    # completed candidates recorded before the death are still there, unchanged
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in runs}
    # the worker's in-flight candidates were retried on the head (or recorded as failed, with the reason)
    retried = [r for r in runs if int(r.data.tags.get("info.attempts", "1")) > 1]
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert retried or failed, "no candidate was in flight on the dead node"
    assert all(r.data.tags["node"] == head.node_id for r in retried)
    assert all("lost" in r.data.tags.get("error", "") for r in failed), [r.data.tags.get("error") for r in failed]
    # Optuna agrees: every trial finished once, pointing at its record
    study = _study_trials(tmp_path, name)
    assert all(t.state.is_finished() for t in study) and len(study) == trials
    assert sorted(t.user_attrs["mlflow_run_id"] for t in study) == sorted(r.info.run_id for r in runs)
    print(
        f"node death: {killed} processes killed; search finished {after_kill_s:.1f}s later; {len(retried)} retried on the head, {len(failed)} failed"
    )
