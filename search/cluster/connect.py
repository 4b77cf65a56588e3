"""The Ray cluster a search runs on: a local single-node Ray on 127.0.0.1 that dies with
this process, or a cluster joined at ``ray_address``; and how many actors it holds."""

from __future__ import annotations

import logging
import os
import socket

import ray

from pipeline.errors import InputError
from search.cluster.reaper import reap_with
from search.config import SearchConfig

log = logging.getLogger(__name__)


def default_actor_count(cfg: SearchConfig, resources: dict[str, float]) -> int:
    """As many actors as the cluster's CPUs (and GPUs, when actors ask for them) hold now.

    An autoscaling cluster starts with few nodes: set ``actors.count`` there.
    """
    fits = [resources.get("CPU", 1) // cfg.actors.num_cpus]
    if cfg.actors.num_gpus:
        fits.append(resources.get("GPU", 0) // cfg.actors.num_gpus)
        if not resources.get("GPU"):
            log.warning("actors ask for GPUs but the cluster has none yet; starting 1 actor (set actors.count)")
    return max(1, int(min(fits)))


def placeable_actors(cfg: SearchConfig, resources: dict[str, float]) -> tuple[int, str]:
    """How many actors of ``cfg.actors``'s request ``resources`` (Ray's totals) hold at once,
    and what limits them (``"2 CPU at actors.num_cpus 1"``)."""
    a = cfg.actors
    asks = {"CPU": a.num_cpus, **({"GPU": a.num_gpus} if a.num_gpus else {}), **a.resources}
    fits = {k: int(resources.get(k, 0) // v) for k, v in asks.items() if v > 0}
    key = min(fits, key=lambda k: fits[k])
    field = {"CPU": "actors.num_cpus", "GPU": "actors.num_gpus"}.get(key, f"actors.resources.{key}")
    return fits[key], f"{resources.get(key, 0):g} {key} at {field} {asks[key]:g} each"


def actor_count(cfg: SearchConfig, resources: dict[str, float], can_grow: bool) -> int:
    """The number of actors to start: ``actors.count`` (default: what the cluster holds now).

    A count larger than the cluster holds is clamped, saying so, on a Ray that cannot
    grow (the local one); on a cluster that may add nodes it is kept, with a warning.

    Raises:
        InputError: not even one actor fits a Ray that cannot grow.
    """
    if cfg.actors.count is None:
        return default_actor_count(cfg, resources)
    fits, why = placeable_actors(cfg, resources)
    if cfg.actors.count <= fits:
        return cfg.actors.count
    if can_grow:
        log.warning("actors.count %d: the cluster holds %d actors now (%s); the rest start when nodes join", cfg.actors.count, fits, why)
        return cfg.actors.count
    if fits == 0:
        raise InputError(f"actors: no actor fits this machine's Ray ({why}); lower the request or set ray_address to a cluster that has it")
    log.warning("actors.count %d is more than this machine's Ray holds (%s): clamped to %d actors", cfg.actors.count, why, fits)
    return fits


def connect_ray(cfg: SearchConfig) -> bool:
    """Start a local Ray bound to 127.0.0.1, or join ``ray_address``. True if started here."""
    if ray.is_initialized():
        return False
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:  # a cluster, or a Ray job's driver
        field = "ray_address" if cfg.ray_address else "$RAY_ADDRESS"
        try:
            ray.init(address=cfg.ray_address or None, log_to_driver=False)
        except ConnectionError as e:
            raise InputError(f"{field}: no Ray cluster at {address!r} ({str(e)[:200]}); start it (ray start --head) or fix {field}") from None
        return False
    start_local_ray(num_cpus=os.cpu_count())
    _reapers.append(reap_with(os.getpid()))  # the local Ray dies with this process, even by SIGKILL
    return True


_reapers: list = []


def stop_local_ray() -> None:
    """Shut down the local Ray ``connect_ray`` started, and its watcher."""
    ray.shutdown()
    while _reapers:
        _reapers.pop().stdin.close()  # the watcher kills what shutdown left, then exits


def check_ray_address(cfg: SearchConfig, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at a ``host:port`` Ray address (ray.init
    would wait for minutes); ``auto`` and other forms are left to Ray."""
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or ""
    field = "ray_address" if cfg.ray_address else "$RAY_ADDRESS"
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or "/" in host or not port.isdigit():  # auto, http://..., a bare host: Ray's own rules
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise InputError(f"{field}: nothing answers at {address} ({e.strerror or e}); start the cluster or fix {field}") from None


def start_local_ray(num_cpus: int | None = None) -> None:
    """A single-node Ray whose every process (GCS, raylet, agents, workers) listens on
    127.0.0.1 only.

    ``_node_ip_address="127.0.0.1"`` alone is not enough: while multi-node support is on,
    Ray rewrites loopback addresses into the machine's network address and its services
    listen on all interfaces. A local search needs no other node, so multi-node support
    is switched off for this process and the ones it starts.
    """
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by Ray's processes
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process read it at import
    # Ray turns token authentication on for a new local cluster (a safe default, kept)
    # and warns that it did on every start: that notice is not for a search's user.
    auth_log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = auth_log.level
    auth_log.setLevel(logging.ERROR)
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
    finally:
        auth_log.setLevel(level)
