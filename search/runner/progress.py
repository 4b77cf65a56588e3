"""Live progress of a search: candidates done and failed, best so far, time left.

Time left counts the candidates in flight: one whose method trains reports its steps
(``EvaluatorPool.running``), so its duration is projected from the fraction done
instead of assumed equal to the quick candidates before it.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from pipeline.spec import CandidateResult

log = logging.getLogger("prunesearch")

STATUS_EVERY_S = 15.0  # how often the driver asks busy actors what they are doing


def eta_s(elapsed_s: float, done: int, running: list[dict[str, Any]], not_started: int, parallel: int, durations: Sequence[float] = ()) -> float:
    """Seconds left, NaN before anything is known.

    The candidates not started yet take the observed wall time per candidate
    (``elapsed_s / done``), or more when candidates that train are in flight: their full
    duration is projected from the steps they report. The candidates in flight add what
    is left of the slowest of them.

    Args:
        elapsed_s: wall seconds since the first candidate was submitted.
        done: candidates finished. not_started: candidates neither finished nor in flight.
        running: ``EvaluatorPool.running()`` entries (``elapsed_s``, ``step``, ``total``).
        parallel: actors evaluating at once. durations: seconds of each finished candidate
            on its actor (its ``prune_s + recal_s + finetune_s + eval_s``).
    """
    projected = [r["elapsed_s"] * r["total"] / r["step"] for r in running if r.get("total") and r.get("step")]
    rates = [elapsed_s / done] if done else []
    if projected:
        known = list(durations) + projected
        rates.append(sum(known) / len(known) / max(parallel, 1))
    if not rates:
        return math.nan
    in_flight = max((p - r["elapsed_s"] for p, r in zip(projected, [r for r in running if r.get("total") and r.get("step")])), default=0.0)
    return max(in_flight, 0.0) + max(not_started, 0) * max(rates)


def describe(r: dict[str, Any]) -> str:
    """One line for a candidate in flight: ``trial 5 ocs/channel step 300/1200, 40 s``
    (``reconstruct layer 12/20`` while its reconstruction runs)."""
    spec = r["spec"]
    steps = f" {r.get('stage', 'step')} {r['step']}/{r['total']}," if r.get("total") else ""
    return f"trial {r['ticket']} {spec.method}/{spec.granularity}{steps} {r['elapsed_s']:.0f} s"


class Progress:
    """A tqdm bar on a terminal; log lines in quiet mode (jobs).

    Args:
        total: candidates this invocation will evaluate.
        quiet: log lines instead of a bar.
        parallel: actors evaluating at once (for the time left).
    """

    def __init__(self, total: int, quiet: bool = False, parallel: int = 1) -> None:
        self.total, self.quiet, self.parallel = total, quiet, parallel
        self.done = self.failed = 0
        self.best = float("nan")
        self.durations: list[float] = []
        self.t0 = time.monotonic()
        self.running: list[dict[str, Any]] = []
        self.bar = None
        if not quiet and total > 0:
            from tqdm.auto import tqdm  # Jupyter's widget where there is one, the terminal bar elsewhere

            # tqdm's own rate-based estimate is replaced by ``eta_s`` in the postfix
            self.bar = tqdm(
                total=total, unit="cand", file=sys.stderr, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
            )

    def eta(self) -> float:
        not_started = self.total - self.done - len(self.running)
        return eta_s(time.monotonic() - self.t0, self.done, self.running, not_started, self.parallel, self.durations)

    def _left(self) -> str:
        left = self.eta()
        return "?" if left != left else f"~{left:.0f} s left"

    def update(self, result: CandidateResult, stopped: bool = False) -> None:
        """One candidate finished (ok or failed); ``stopped``: by the trial pruner below the
        full rung (its accuracy is a cheap rung's: never the best shown)."""
        self.done += 1
        if result.state != "ok":
            self.failed += 1
        elif not stopped:
            acc = result.metrics["accuracy"]
            self.best = acc if self.best != self.best else max(self.best, acc)
            m = result.metrics
            self.durations.append(sum(m.get(k, 0.0) for k in ("prune_s", "recal_s", "finetune_s", "eval_s")))
        self.running = [r for r in self.running if r["spec"] != result.spec]
        if self.bar is not None:
            self._postfix()
            self.bar.update(1)
        else:
            log.info(
                "candidate %d/%d %s (failed %d, best accuracy %.4f, %s)", self.done, self.total, result.state, self.failed, self.best, self._left()
            )

    def update_running(self, running: list[dict[str, Any]]) -> None:
        """What the candidates in flight report (``EvaluatorPool.running``), every ``STATUS_EVERY_S``."""
        self.running = running
        if self.bar is not None:
            self._postfix()
            self.bar.refresh()
            return
        for r in running:
            if r["elapsed_s"] >= STATUS_EVERY_S:  # quick candidates say nothing until they finish
                log.info("%s (%s)", describe(r), self._left())

    def _postfix(self) -> None:
        assert self.bar is not None  # called only with a bar
        slow = max(self.running, key=lambda r: r["elapsed_s"], default=None)
        now = f", {describe(slow)}" if slow is not None and slow["elapsed_s"] >= STATUS_EVERY_S else ""
        self.bar.set_postfix_str(f"failed={self.failed}, best_acc={self.best:.3f}, {self._left()}{now}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
