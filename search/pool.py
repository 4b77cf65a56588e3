"""A pool of evaluator actors with bounded resubmission when an actor dies.

The pool keeps ``queue`` candidates in flight per actor so an actor never waits for
the driver; it hands back ``(ticket, CandidateResult)`` pairs as they complete. A
candidate whose actor died (``RayActorError``, a node lost) is resubmitted to the
least-loaded live actor up to ``max_retries`` times, then returned as a failed
result: never lost silently, never returned twice.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

from pipeline.evaluator import evaluator_actor
from pipeline.spec import CandidateResult, CandidateSpec

log = logging.getLogger(__name__)
_LOST = (RayActorError, WorkerCrashedError, ObjectLostError)


@dataclass
class _Job:
    ticket: int
    spec: CandidateSpec
    actor: int
    attempts: int = 1
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
        cls = evaluator_actor(num_cpus, num_gpus, resources)
        # held for the pool's life: a restarted actor re-reads its arguments from the object store
        self._init_args = init_args
        # SPREAD places actors over nodes first, so a cluster's workers all get some
        self.actors = [
            cls.options(scheduling_strategy="SPREAD", name=f"{name}-{i}" if name else None).remote(*init_args)
            for i in range(count)
        ]
        self.queue = queue
        self.max_retries = max_retries
        self.inflight: dict[ray.ObjectRef, _Job] = {}
        self.load = [0] * count

    @property
    def capacity(self) -> int:
        """How many more candidates can be submitted now."""
        return len(self.actors) * self.queue - len(self.inflight)

    def submit(self, ticket: int, spec: CandidateSpec) -> None:
        self._send(_Job(ticket, spec, actor=self._least_loaded()))

    def _least_loaded(self) -> int:
        return min(range(len(self.actors)), key=lambda i: self.load[i])

    def _send(self, job: _Job) -> None:
        self.load[job.actor] += 1
        self.inflight[self.actors[job.actor].evaluate.remote(job.spec)] = job

    def wait(self, timeout: float | None = None) -> list[tuple[int, CandidateResult]]:
        """Block until at least one candidate completes (or ``timeout`` s); return those done."""
        if not self.inflight:
            return []
        ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            job = self.inflight.pop(ref)
            self.load[job.actor] -= 1
            result = self._collect(ref, job)
            if result is not None:
                done.append((job.ticket, result))
        return done

    def _collect(self, ref: ray.ObjectRef, job: _Job) -> CandidateResult | None:
        try:
            result = ray.get(ref)
            if job.attempts == 1:
                return result
            return dataclasses.replace(result, info={**result.info, "attempts": str(job.attempts), "lost": "; ".join(job.errors)[:2000]})
        except _LOST as e:
            job.errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            if job.attempts <= self.max_retries:
                log.warning("actor %d lost candidate %d; resubmitting (attempt %d)", job.actor, job.ticket, job.attempts + 1)
                job.attempts += 1
                # prefer another actor: the dead one may be restarting or gone with its node
                self.load[job.actor] += 1000
                job_actor, job.actor = job.actor, self._least_loaded()
                self.load[job_actor] -= 1000
                self._send(job)
                return None
            return CandidateResult(spec=job.spec, state="failed", error=f"actor lost {job.attempts} times: {'; '.join(job.errors)}")
        except RayTaskError as e:  # the evaluator itself raised (it should return failures instead)
            return CandidateResult(spec=job.spec, state="failed", error=str(e)[:2000])

    def nodes(self, timeout: float = 60) -> list[dict[str, Any]]:
        """Where each actor runs (waits for actors to start)."""
        return ray.get([a.node.remote() for a in self.actors], timeout=timeout)

    def wait_ready(self, timeout: float = 300) -> int:
        """Wait until every actor has loaded the model and data (or ``timeout`` s: on an
        autoscaling cluster some may still be pending); returns how many are ready."""
        ready, _ = ray.wait([a.node.remote() for a in self.actors], num_returns=len(self.actors), timeout=timeout)
        return len(ready)

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
