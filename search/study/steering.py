"""Power-law steering: place a steered knob (hyperflows' pressure) where the target lies.

Density after pressure-driven pruning follows D(gamma) = c * gamma^-(a0 + a1 ln gamma)
(docs/methods.md, 4). Once a few candidates are measured, the fit is inverted for the target
density and every ``every``-th new trial is enqueued at a pressure drawn log-uniformly
from the prediction interval; the others stay with the sampler, so the search keeps
exploring. Fits are refreshed as candidates arrive.

The knob that is steered and the knobs that set its reach (the training budget) are
class attributes of the method (``steered_knob``, ``budget_knobs``). Density depends on
the budget as much as on pressure (digits: per-budget fits R^2 0.93-0.99, all budgets
pooled 0.70), so one curve is fitted per method and budget, and a steered trial is
enqueued at the budget whose curve chose its pressure.

Budget knobs searched on a continuum rarely repeat a value: while no budget has enough
points for a fit, the steered trials go to the best-filled budget at log-uniform
pressures, so that its curve can be fitted.

Steering never ends a search: a fit that cannot predict (a flat curve with every density
near 1, a target out of reach) means "no proposal", logged with why.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from pipeline.pruning.methods import get_method
from pipeline.spec import CandidateResult
from search.config import SearchConfig
from search.study import encoding as enc
from search.study import powerlaw
from search.study.space import searched_knobs

log = logging.getLogger(__name__)

#: a method and its budget: (name, ((budget knob, value), ...))
Curve = tuple[str, tuple[tuple[str, float], ...]]
#: what fitting or inverting a curve can raise on degenerate points (numpy's LinAlgError is a ValueError)
_NO_FIT = (ValueError, ArithmeticError)


class PressureSteering:
    """Proposes trial parameters at the steered-knob value predicted for ``space.target_sparsity``.

    Args:
        cfg: the search config; steering is active only when ``space.target_sparsity``
            is set and some method in the space has a ``steered_knob``.
        every: steer one trial in ``every``.
        min_points: measured candidates of one method and budget needed before its fit.
    """

    def __init__(self, cfg: SearchConfig, every: int = 2, min_points: int = 4) -> None:
        self.cfg, self.every, self.min_points = cfg, every, min_points
        self.methods = [m for m in cfg.space.methods if get_method(m).steered_knob]
        self.active = cfg.space.target_sparsity is not None and bool(self.methods)
        self.points: dict[Curve, list[tuple[float, float]]] = {}
        self.fits: dict[Curve, powerlaw.PressureFit] = {}
        self.rng = random.Random(cfg.seed)
        self.asked = 0

    def budget(self, method: str, knobs: dict[str, float]) -> Curve:
        """The curve a candidate of ``method`` with ``knobs`` belongs to (defaults filled in)."""
        m = get_method(method)
        return method, tuple((k, float(m.knob_of(knobs, k))) for k in m.budget_knobs)

    def observe(self, method: str, knobs: dict[str, float], state: str, sparsity: float | None) -> None:
        """Add one measured candidate (its method, knobs, state and achieved weight sparsity)."""
        steered = get_method(method).steered_knob if method in self.methods else None
        if state != "ok" or steered is None or steered not in knobs or sparsity is None:
            return
        curve = self.budget(method, knobs)
        pts = self.points.setdefault(curve, [])
        pts.append((knobs[steered], 1.0 - sparsity))
        if len(pts) >= self.min_points:
            try:
                self.fits[curve] = powerlaw.fit_pressure([g for g, _ in pts], [d for _, d in pts])
            except _NO_FIT as e:  # e.g. every point below the threshold pressure
                self.fits.pop(curve, None)
                log.debug("no fit for %s yet: %s", _name(curve), e)

    def observe_result(self, result: CandidateResult) -> None:
        self.observe(result.spec.method, dict(result.spec.knobs), result.state, result.metrics.get("sparsity"))

    def propose(self) -> dict[str, Any] | None:
        """Fixed parameters for the next trial, or None to leave it to the sampler."""
        self.asked += 1
        if not self.active or self.asked % self.every:
            return None
        if not self.fits:
            return self._seed_a_budget()
        assert self.cfg.space.target_sparsity is not None  # self.active
        target = 1.0 - self.cfg.space.target_sparsity
        usable = {}
        for curve, fit in self.fits.items():
            try:
                usable[curve] = powerlaw.predict_pressure(fit, target)
            except _NO_FIT as e:
                log.info("no %s prediction for %s (fit of %d points, R2 %.3f): %s", _steered(curve), _name(curve), fit.n, fit.r2, e)
        if not usable:
            return None
        curve = sorted(usable)[self.rng.randrange(len(usable))]
        est = usable[curve]
        low, high = self._range(curve)
        lo, hi = max(est.low, low), min(est.high, high)
        gamma = est.gamma if not (0 < lo < hi and math.isfinite(hi)) else math.exp(self.rng.uniform(math.log(lo), math.log(hi)))
        return self._params(curve, gamma)

    def _seed_a_budget(self) -> dict[str, Any] | None:
        """Enough candidates for a fit, but spread over budgets that rarely repeat (budget
        knobs searched on a continuum): one more at the budget with the most points (the
        first seen among equals), at a pressure drawn log-uniformly from the space, so
        that one budget's curve can be fitted. None while fewer than ``min_points``."""
        if sum(len(p) for p in self.points.values()) < self.min_points:
            return None
        curve = max(self.points, key=lambda c: len(self.points[c]))
        if len(self.points[curve]) >= self.min_points:
            return None  # that curve has its points and still no fit: the sampler decides
        low, high = self._range(curve)
        return self._params(curve, math.exp(self.rng.uniform(math.log(low), math.log(high))))

    def _range(self, curve: Curve) -> tuple[float, float]:
        method, name = curve[0], _steered(curve)
        knob = get_method(method).knobs[name]
        return self.cfg.space.knobs.get(method, {}).get(name, (knob.low, knob.high))

    def _params(self, curve: Curve, gamma: float) -> dict[str, Any]:
        method, budget = curve
        low, high = self._range(curve)
        params: dict[str, Any] = {enc.knob_param(method, _steered(curve)): min(max(gamma, low), high)}
        searched = searched_knobs(self.cfg.space, method)  # the others keep their default, as fitted
        params.update({enc.knob_param(method, k): _typed(get_method(method).knobs[k], v) for k, v in budget if k in searched})
        if len(self.cfg.space.methods) > 1:
            params[enc.METHOD] = method
        return params


def _steered(curve: Curve) -> str:
    return str(get_method(curve[0]).steered_knob)


def _name(curve: Curve) -> str:
    return f"{curve[0]} at " + ", ".join(f"{k}={v:g}" for k, v in curve[1]) if curve[1] else curve[0]


def _typed(knob: Any, value: float) -> float | int:
    return round(value) if knob.integer else value
