"""A real multi-node Ray cluster and an MLflow tracking server on this machine, for tests.

``LocalCluster`` starts a Ray head and extra Ray nodes with ``ray start``, each with its
own temp dir, its own ports (all on 127.0.0.1) and a distinct custom resource, so that
it can never collide with another test's ``ray.init()`` or another engineer's cluster.
``MlflowServer`` runs ``mlflow server`` on 127.0.0.1 with a SQLite backend and a local
artifacts destination, in its own process group.

Cleanup never uses ``ray stop`` (it stops every Ray on the machine): a node's
processes are found by its temp dir in their command lines (GCS, raylet, dashboard,
agents, log monitor) plus everything the raylet spawned (workers, the job driver),
and killed by pid.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

try:
    import psutil
except ImportError:  # Ray vendors psutil in ray/thirdparty_files (added to sys.path by `import ray`)
    import importlib.util

    sys.path.append(str(Path(importlib.util.find_spec("ray").origin).parent / "thirdparty_files"))
    import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, mlflow, python


def free_port(taken: set[int]) -> int:
    """A TCP port free on 127.0.0.1 right now, not in ``taken`` (which it joins)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port


def free_range(taken: set[int], size: int) -> int:
    """First port of ``size`` consecutive ports that are free now and not in ``taken``."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - size)
        ports = range(base, base + size)
        if taken.intersection(ports):
            continue
        try:
            for p in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        taken.update(ports)
        return base
    raise RuntimeError(f"no {size} consecutive free ports found")


# Ray keeps a cluster on 127.0.0.1 only when it believes multi-node clusters are off:
# otherwise `ray start`, `ray.init(address=...)` and every agent rewrite a loopback
# address into the machine's LAN address (services.resolve_ip_for_localhost) and the
# GCS, raylets and agents listen on all interfaces. ray_env() therefore sets
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for every process of these clusters (node IP =
# 127.0.0.1 everywhere), and `ray start` runs through this wrapper, which lets it add a
# second node anyway (its "multi-node is off" guard) without the loopback rewrite.
_RAY_START_LOOPBACK = (
    "import sys, ray._private.ray_constants as c, ray._private.services as s; "
    "c.ENABLE_RAY_CLUSTER = True; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def ray_env(**extra: str) -> dict[str, str]:
    """Environment of the processes a test starts: the venv first on PATH, no token auth.

    Ray 2.60 turns token authentication on when a token exists (~/.ray/auth_token);
    these clusters bind to 127.0.0.1 only, so the tests opt out explicitly.
    """
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # node IP 127.0.0.1 in every process (see _RAY_START_LOOPBACK)
        RAY_USAGE_STATS_ENABLED="0",
        # node death is noticed after ~3 s instead of ~15 s (GCS health checks of raylets)
        RAY_health_check_period_ms="1000",
        RAY_health_check_timeout_ms="1000",
        RAY_health_check_failure_threshold="3",
        GIT_PYTHON_REFRESH="quiet",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _kill(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(procs, timeout=10)


@dataclass
class RayNode:
    """One ``ray start`` node: its temp dir, ports and custom resource."""

    name: str
    temp_dir: Path
    resource: str
    ports: dict[str, int] = field(default_factory=dict)
    node_id: str = ""

    def processes(self) -> list[psutil.Process]:
        """Every live process of this node: those naming its temp dir, and their descendants."""
        mine = re.compile(re.escape(str(self.temp_dir)) + r"(/|\s|$)")
        roots = [p for p in psutil.process_iter() if mine.search(_cmdline(p))]
        found = {p.pid: p for p in roots}
        for p in roots:
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        return [p for p in found.values() if p.pid != os.getpid()]

    def kill(self) -> int:
        """SIGKILL every process of this node (as a machine failure would); returns how many."""
        procs = self.processes()
        _kill(procs)
        return len(procs)


class LocalCluster:
    """A Ray head plus extra nodes started with ``ray start`` on 127.0.0.1.

    Args:
        base: folder for the temp dirs (short: Ray's socket paths must stay < 108 bytes).
        head_cpus: CPUs the head advertises (the job driver needs none).
        taken: ports already handed out (shared with an MLflow server).
    """

    def __init__(self, base: Path, head_cpus: int = 1, taken: set[int] | None = None) -> None:
        self.base = base
        self.head_cpus = head_cpus
        self.taken = taken if taken is not None else set()
        self.nodes: list[RayNode] = []
        self.env = ray_env()

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.head.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.head.ports['dashboard-port']}"

    def _node_ports(self, head: bool) -> dict[str, int]:
        names = [
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        ]
        if head:
            names += ["port", "dashboard-port", "ray-client-server-port"]
        ports = {n: free_port(self.taken) for n in names}
        ports["min-worker-port"] = free_range(self.taken, 40)
        ports["max-worker-port"] = ports["min-worker-port"] + 39
        return ports

    def _start(self, name: str, resource: str, cpus: int, head: bool) -> RayNode:
        node = RayNode(name, self.base / name, resource)
        node.temp_dir.mkdir(parents=True)
        node.ports = self._node_ports(head)
        self.nodes.append(node)  # before starting: a failed start is still cleaned up
        cmd = [
            sys.executable,
            "-c",
            _RAY_START_LOOPBACK,
            "start",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps({resource: 1})}",
            f"--temp-dir={node.temp_dir}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
        ]
        cmd += [f"--{k}={v}" for k, v in node.ports.items()]
        if head:
            cmd += ["--head", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
        else:
            cmd += [f"--address={self.gcs_address}"]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        return node

    def start(self, workers: int = 1, worker_cpus: int = 1, timeout: float = 90) -> "LocalCluster":
        """Start the head (resource ``head_node``) and ``workers`` nodes (``worker_node_<i>``)."""
        self._start("head", "head_node", self.head_cpus, head=True)
        for i in range(workers):
            self._start(f"w{i}", f"worker_node_{i}" if workers > 1 else "worker_node", worker_cpus, head=False)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Wait for the Jobs API and for every node to be alive; learn the node ids."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                alive = {n["resource"]: n["node_id"] for n in self.alive_nodes()}
                if all(n.resource in alive for n in self.nodes):
                    for n in self.nodes:
                        n.node_id = alive[n.resource]
                    # the Jobs API answers (plain HTTP: RAY_ADDRESS in this process must not redirect it)
                    with urllib.request.urlopen(f"{self.dashboard_url}/api/jobs/", timeout=10) as r:
                        json.load(r)
                    return
            except Exception as e:  # the dashboard is still starting
                last = e
            time.sleep(1)
        raise TimeoutError(f"cluster not ready after {timeout}s: {last!r}")

    def alive_nodes(self) -> list[dict[str, str]]:
        """Alive nodes as {node_id, resource} (their custom resource), from the dashboard's state API."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=100&detail=true", timeout=10) as r:
            data = json.load(r)
        rows = data["data"]["result"]["result"]
        out = []
        for n in rows:
            if n.get("state") != "ALIVE":
                continue
            custom = [k for k in (n.get("resources_total") or {}) if k in {x.resource for x in self.nodes}]
            out.append({"node_id": n["node_id"], "resource": custom[0] if custom else ""})
        return out

    def stop(self) -> None:
        """Kill every process of every node, then remove the temp dirs."""
        for node in reversed(self.nodes):
            node.kill()
        # a second sweep: a process forked while the first one ran
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.base, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend and a local artifacts destination."""

    def __init__(self, base: Path, taken: set[int]) -> None:
        self.base = base
        self.port = free_port(taken)
        self.artifacts = base / "artifacts"
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> "MlflowServer":
        self.base.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{self.base / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.artifacts),
        ]
        self.log = open(self.base / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, env=ray_env(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.base)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"mlflow server not answering on {self.uri} after {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        p = self.base / "server.log"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


def short_tempdir(prefix: str) -> Path:
    """A short temp dir under /tmp (Ray's unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
