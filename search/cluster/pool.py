"""A pool of evaluator actors with bounded resubmission when an actor dies.

Candidates are sent only to actors that have answered (loaded the model and data), at
most ``queue`` in flight per actor so none waits for the driver; the rest wait in a
backlog. An actor that dies goes back to "not answered" until Ray restarts it. A
candidate whose actor died (``RayActorError``, a node lost) goes back to the front of
the backlog, up to ``max_retries`` times, then is returned as a failed result: never
lost silently, never returned twice. An actor that cannot be placed (no node has its
resources) never receives work, so it cannot hold candidates hostage.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

from pipeline.evaluator import Evaluator
from pipeline.spec import CandidateResult, CandidateSpec

log = logging.getLogger(__name__)
_LOST = (RayActorError, WorkerCrashedError, ObjectLostError)


class SharedArgs:
    """Holds the evaluators' constructor arguments (ObjectRefs inside) for the pool's life.

    Why: an actor with ``max_restarts > 0`` given ObjectRefs as constructor arguments
    makes Ray log an error per actor ("has constructor arguments in the object store",
    ray-project/ray#53727), even nested ones. Evaluators get a handle to this holder
    only its Ray name (a handle is an object-store argument too; no restarts: it lives on
    the driver's node, as the objects' owner does) and fetch the arguments on every (re)start.
    """

    def __init__(self, args: tuple) -> None:
        self.args = args

    def get(self) -> tuple:
        return self.args


class _SharedArgsEvaluator(Evaluator):
    """An ``Evaluator`` built from the arguments a ``SharedArgs`` actor holds."""

    def __init__(self, shared: str) -> None:
        args = ray.get(ray.get_actor(shared).get.remote())
        super().__init__(*(ray.get(a) if isinstance(a, ray.ObjectRef) else a for a in args))


def evaluator_actor(
    num_cpus: float = 1, num_gpus: float = 0, resources: dict[str, float] | None = None, max_restarts: int = 3, cls: type = Evaluator
):
    """``cls`` (an ``Evaluator``; the pool's ``_SharedArgsEvaluator``) as a Ray actor class
    with the given resource request.

    A restarted actor re-runs ``__init__`` (reloading the model and data from the
    object store); in-flight calls are not retried by Ray: the driver resubmits them.
    Candidates run one at a time; ``status`` is answered from its own concurrency group
    (call it with ``.options(concurrency_group="status")``) while one runs.
    """
    # type-ignored: ray's overloads of remote() leave out concurrency_groups, an actor option
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, max_restarts=max_restarts, concurrency_groups={"status": 1})(  # type: ignore[call-overload]
        cls
    )


@dataclass
class _Job:
    ticket: int
    spec: CandidateSpec
    attempts: int = 0  # evaluations lost with their actor
    errors: list[str] = field(default_factory=list)


class EvaluatorPool:
    """``count`` evaluator actors sharing the base model and data through the object store.

    Args:
        count: number of actors.
        init_args: ``Evaluator`` constructor arguments (ObjectRefs for large ones).
        num_cpus, num_gpus, resources: what each actor requests from Ray.
        queue: candidates in flight per actor.
        max_retries: resubmissions of a candidate whose actor died.
        name: prefix of the actors' Ray names (``{name}-{i}``, listed by ``ray list actors``).
    """

    def __init__(
        self,
        count: int,
        init_args: tuple,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        queue: int = 2,
        max_retries: int = 2,
        name: str = "",
    ) -> None:
        cls = evaluator_actor(num_cpus, num_gpus, resources, cls=_SharedArgsEvaluator)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        # held for the pool's life: a restarted actor re-reads its arguments through it
        shared = f"{name or 'prunesearch'}-args-{uuid.uuid4().hex[:8]}"
        self._shared = ray.remote(num_cpus=0, max_restarts=0)(SharedArgs).options(name=shared, scheduling_strategy=here).remote(init_args)
        # SPREAD places actors over nodes first, so a cluster's workers all get some
        self.actors = [cls.options(scheduling_strategy="SPREAD", name=f"{name}-{i}" if name else None).remote(shared) for i in range(count)]
        self.queue = queue
        self.max_retries = max_retries
        self.inflight: dict[ray.ObjectRef, tuple[_Job, int]] = {}
        self.backlog: deque[_Job] = deque()
        self.load = [0] * count
        self.ready: set[int] = set()
        self._probes: dict[ray.ObjectRef, int] = {}
        for i in range(count):
            self._probe(i)

    def _probe(self, i: int) -> None:
        """Ask actor ``i`` to answer; it gets work once it has (after placement or restart)."""
        self.ready.discard(i)
        self._probes[self.actors[i].node.remote()] = i

    def _refresh(self, timeout: float = 0) -> None:
        if not self._probes:
            return
        done, _ = ray.wait(list(self._probes), num_returns=len(self._probes), timeout=timeout)
        for ref in done:
            i = self._probes.pop(ref)
            try:
                ray.get(ref)
                self.ready.add(i)
            except _LOST:  # died again before answering: ask once more (Ray restarts it)
                self._probe(i)

    @property
    def capacity(self) -> int:
        """How many more candidates can be submitted now without waiting in the backlog."""
        self._refresh()
        return sum(self.queue - self.load[i] for i in self.ready) - len(self.backlog)

    @property
    def busy(self) -> bool:
        """Candidates are in flight or waiting for an actor."""
        return bool(self.inflight or self.backlog)

    def submit(self, ticket: int, spec: CandidateSpec) -> None:
        self.backlog.append(_Job(ticket, spec))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.backlog:
            free = [i for i in self.ready if self.load[i] < self.queue]
            if not free:
                return
            i = min(free, key=lambda k: self.load[k])
            job = self.backlog.popleft()
            self.load[i] += 1
            self.inflight[self.actors[i].evaluate.remote(job.spec)] = (job, i)

    def wait(self, timeout: float | None = None) -> list[tuple[int, CandidateResult]]:
        """Block until a candidate completes or an actor becomes ready (or ``timeout`` s);
        return the ``(ticket, result)`` pairs completed."""
        self._dispatch()
        refs = list(self.inflight) + list(self._probes)
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        self._refresh()
        done = []
        for ref in ready:
            if ref not in self.inflight:
                continue
            job, i = self.inflight.pop(ref)
            self.load[i] -= 1
            result = self._collect(ref, job, i)
            if result is not None:
                done.append((job.ticket, result))
        self._dispatch()
        return done

    def _collect(self, ref: ray.ObjectRef, job: _Job, actor: int) -> CandidateResult | None:
        try:
            result = ray.get(ref)
        except _LOST as e:
            if actor in self.ready:
                self._probe(actor)  # no more work for it until it answers again
            # a call refused by an actor that is restarting never ran: it does not count
            if not isinstance(e, ActorUnavailableError) or "restarting" not in str(e):
                job.attempts += 1
                job.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            if job.attempts <= self.max_retries:
                log.warning("actor %d lost candidate %d; resubmitting (retry %d)", actor, job.ticket, job.attempts)
                self.backlog.appendleft(job)
                return None
            return CandidateResult(spec=job.spec, state="failed", error=f"actor lost {job.attempts} times: {'; '.join(job.errors)}")
        except RayTaskError as e:  # the evaluator itself raised (it should return failures instead)
            return CandidateResult(spec=job.spec, state="failed", error=str(e)[:2000])
        if not job.attempts:
            return result
        return dataclasses.replace(result, info={**result.info, "attempts": str(job.attempts + 1), "lost": "; ".join(job.errors)[:2000]})

    def wait_ready(self, timeout: float = 300) -> int:
        """Wait until every actor has loaded the model and data (or ``timeout`` s: on an
        autoscaling cluster some may still be pending); returns how many are ready."""
        self._refresh(timeout)
        return len(self.ready)

    def running(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """What busy actors report of the candidate each evaluates now: ``ticket``,
        ``spec``, ``elapsed_s``, ``step``/``total`` (training steps, 0/0 when the method
        does not train). Actors that do not answer within ``timeout`` s are left out."""
        busy = sorted({i for _, i in self.inflight.values()})
        refs = {self.actors[i].status.options(concurrency_group="status").remote(): i for i in busy}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        out = []
        for ref in done:
            try:
                st = ray.get(ref)
            except Exception:  # a dying actor says nothing; the pool learns it from its results
                continue
            jobs = [job for job, i in self.inflight.values() if i == refs[ref] and st is not None and job.spec == st["spec"]]
            if jobs:
                out.append({**st, "ticket": jobs[0].ticket})
        return out

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        assert isinstance(self._shared, ActorHandle)  # ray types a new actor as a handle or its class
        ray.kill(self._shared)
