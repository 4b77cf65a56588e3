"""Live progress of a search: candidates done and failed, best so far, time left."""

from __future__ import annotations

import logging
import sys
import time

from pipeline.spec import CandidateResult

log = logging.getLogger("prunesearch")


class Progress:
    """A tqdm bar on a terminal; one log line per candidate in quiet mode (jobs)."""

    def __init__(self, total: int, quiet: bool = False) -> None:
        self.total, self.quiet = total, quiet
        self.done = self.failed = 0
        self.best = float("nan")
        self.t0 = time.monotonic()
        self.bar = None
        if not quiet and total > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="cand", file=sys.stderr, dynamic_ncols=True)

    def update(self, result: CandidateResult) -> None:
        self.done += 1
        if result.state != "ok":
            self.failed += 1
        else:
            acc = result.metrics["accuracy"]
            self.best = acc if self.best != self.best else max(self.best, acc)
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, best_acc=f"{self.best:.3f}")
            self.bar.update(1)
        else:
            left = (time.monotonic() - self.t0) / self.done * (self.total - self.done)
            log.info("candidate %d/%d %s (failed %d, best accuracy %.4f, ~%.0f s left)", self.done, self.total, result.state, self.failed, self.best, left)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
