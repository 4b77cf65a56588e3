"""Power-law steering: place hyperflows pressure where the user's target sparsity lies.

Density after pressure-driven pruning follows D(gamma) = c * gamma^-(a0 + a1 ln gamma)
(methods.md, 4). Once a few candidates with a ``pressure`` knob are measured, the fit
is inverted for the target density and every ``every``-th new trial is enqueued at a
pressure drawn log-uniformly from the prediction interval; the others stay with the
sampler, so the search keeps exploring. Fits are refreshed as candidates arrive.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from pipeline.methods import get_method
from pipeline.spec import CandidateResult

from search import powerlaw
from search.config import SearchConfig

log = logging.getLogger(__name__)


class PressureSteering:
    """Proposes trial parameters at the pressure predicted for ``space.target_sparsity``.

    Args:
        cfg: the search config; steering is active only when ``space.target_sparsity``
            is set and some method in the space has a ``pressure`` knob.
        every: steer one trial in ``every``.
        min_points: measured candidates needed before the first fit.
    """

    def __init__(self, cfg: SearchConfig, every: int = 2, min_points: int = 4) -> None:
        self.cfg, self.every, self.min_points = cfg, every, min_points
        self.methods = [m for m in cfg.space.methods if "pressure" in get_method(m).knobs]
        self.active = cfg.space.target_sparsity is not None and bool(self.methods)
        self.points: list[tuple[float, float]] = []
        self.fit: powerlaw.PressureFit | None = None
        self.rng = random.Random(cfg.seed)
        self.asked = 0

    def observe(self, knobs: dict[str, float], state: str, sparsity: float | None) -> None:
        """Add one measured candidate (its knobs, state and achieved weight sparsity)."""
        if state != "ok" or "pressure" not in knobs or sparsity is None:
            return
        self.points.append((knobs["pressure"], 1.0 - sparsity))
        if len(self.points) >= self.min_points:
            try:
                self.fit = powerlaw.fit_pressure(*zip(*self.points))
            except ValueError as e:  # e.g. every point below the threshold pressure
                log.debug("no pressure fit yet: %s", e)

    def observe_result(self, result: CandidateResult) -> None:
        self.observe(dict(result.spec.knobs), result.state, result.metrics.get("sparsity"))

    def propose(self) -> dict[str, Any] | None:
        """Fixed parameters for the next trial, or None to leave it to the sampler."""
        self.asked += 1
        if not self.active or self.fit is None or self.asked % self.every:
            return None
        method = self.methods[self.asked // self.every % len(self.methods)]
        try:
            est = powerlaw.predict_pressure(self.fit, 1.0 - self.cfg.space.target_sparsity)
        except ValueError as e:
            log.info("target sparsity not reachable by the fitted curve: %s", e)
            return None
        knob = get_method(method).knobs["pressure"]
        low, high = self.cfg.space.knobs.get(method, {}).get("pressure", (knob.low, knob.high))
        lo, hi = max(est.low, low), min(est.high, high)
        gamma = est.gamma if not (0 < lo < hi and math.isfinite(hi)) else math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
        params: dict[str, Any] = {f"{method}.pressure": min(max(gamma, low), high)}
        if len(self.cfg.space.methods) > 1:
            params["method"] = method
        return params
