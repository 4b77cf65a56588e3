"""Curve fits the search uses: Hyperflows density vs pressure, accuracy vs density
(their figure: ``search.records.plots.fit_figure``).

Pressure (docs/methods.md section 4): final density D (fraction of prunable weights
kept, in (0, 1)) at fixed pressure gamma (dimensionless, > 0) follows
``D = c * gamma ** -(a0 + a1 * ln gamma)``, fitted as a quadratic in ln gamma by
least squares on ln D. Multiplicative run-to-run noise is additive in ln D, so
ordinary least squares there is the right (and exact-covariance) estimator.

Accuracy: error rate ``err(D) = 1 - acc = e0 + k * D ** -b``: an irreducible error
e0 plus a pruning-induced excess error that is k at D = 1 and grows as a power law
as weights are removed (the form of pruning scaling-law studies, e.g. Rosenfeld et
al. 2021). It has three interpretable, bounded parameters, is monotone in D, and
unlike a plain ``k * D ** -b`` it separates the dense error from the growth rate,
which a plain power law forces to be the same number. Predictions are clipped to
[0, 1] because the power law has no chance-level floor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from pipeline.errors import InputError

_MAX_SPAN = 60.0  # widest interval search in ln gamma (a factor e^60): beyond that say "unbounded"


class FitError(InputError):
    """A curve that cannot be fitted or inverted from the points given (too few, out of
    range, a target the curve does not reach)."""


@dataclass(frozen=True)
class PressureFit:
    """Fitted ``ln D = ln c - a0 ln g - a1 (ln g)^2``.

    ``cov`` is the covariance of (ln c, a0[, a1]) (note: ln c, not c); ``r2`` and
    ``resid_std`` are in ln D. ``n`` points were fitted, ``n_excluded`` dropped
    (D >= 1: below the threshold pressure, or D <= 0); gamma_min/max bound the
    fitted pressures.
    """

    c: float
    a0: float
    a1: float
    r2: float
    resid_std: float
    n: int
    cov: tuple[tuple[float, ...], ...]
    quadratic: bool
    n_excluded: int = 0
    gamma_min: float = math.nan
    gamma_max: float = math.nan

    def _ln_density(self, ln_gamma: np.ndarray) -> np.ndarray:
        return math.log(self.c) - self.a0 * ln_gamma - self.a1 * ln_gamma**2

    def density(self, gamma: ArrayLike) -> np.ndarray:
        """Fitted density (fraction kept) at pressure ``gamma``, capped at 1 (nothing pruned)."""
        return np.minimum(np.exp(self._ln_density(np.log(np.asarray(gamma, dtype=float)))), 1.0)

    def to_dict(self) -> dict[str, float]:
        """Flat float-only dict (MLflow metrics/params); ``cov`` as ``cov_ij``."""
        d = {k: float(v) for k, v in asdict(self).items() if k != "cov"}
        d.update({f"cov_{i}{j}": float(v) for i, row in enumerate(self.cov) for j, v in enumerate(row)})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PressureFit:
        """Inverse of :meth:`to_dict` (extra keys are ignored)."""
        names = [f.name for f in fields(cls) if f.name in d and f.name != "cov"]
        kw: dict[str, Any] = {k: float(d[k]) for k in names}
        kw.update(n=int(kw["n"]), n_excluded=int(kw.get("n_excluded", 0)), quadratic=bool(kw["quadratic"]))
        p = 3 if kw["quadratic"] else 2
        kw["cov"] = tuple(tuple(float(d[f"cov_{i}{j}"]) for j in range(p)) for i in range(p))
        return cls(**kw)


@dataclass(frozen=True)
class PressureEstimate:
    """Pressure for a target density with a ``level`` interval [low, high] (same units as gamma).

    ``extrapolated`` is True when ``gamma`` lies outside the fitted pressure range.
    """

    gamma: float
    low: float
    high: float
    level: float
    extrapolated: bool


def _design(ln_gamma: np.ndarray, p: int) -> np.ndarray:
    # Columns match the parameter vector (ln c, a0, a1): the minus signs are the model's.
    return np.stack([np.ones_like(ln_gamma), -ln_gamma, -(ln_gamma**2)][:p], axis=1)


def fit_pressure(gamma: ArrayLike, density: ArrayLike, quadratic: bool = True) -> PressureFit:
    """Least-squares fit of ln D against ln gamma.

    Args:
        gamma: pressures (> 0). density: final densities (fraction of weights kept).
        quadratic: fit the drifting exponent a1; forced off with < 4 usable points
            (or < 3 distinct pressures), where a1 would leave no residual to judge it.
    Raises:
        ValueError: non-positive or non-finite inputs, or < 2 usable points.
    """
    g = np.asarray(gamma, dtype=float).ravel()
    d = np.asarray(density, dtype=float).ravel()
    if g.shape != d.shape:
        raise FitError(f"gamma and density differ in length: {g.size} vs {d.size}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(d))):
        raise FitError("gamma and density must be finite")
    if np.any(g <= 0):
        raise FitError(f"gamma must be > 0 (got min {g.min():g})")
    keep = (d > 0) & (d < 1)  # D >= 1: below the threshold pressure, says nothing about the slope
    g, d, n_excl = g[keep], d[keep], int((~keep).sum())
    n_distinct = np.unique(g).size
    if g.size < 2 or n_distinct < 2:
        raise FitError(f"need >= 2 usable points at distinct gamma with 0 < D < 1; got {g.size} ({n_excl} excluded)")
    quad = quadratic and g.size >= 4 and n_distinct >= 3
    p = 3 if quad else 2
    x, y = np.log(g), np.log(d)
    X = _design(x, p)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    dof = g.size - p
    ss_res, ss_tot = float(resid @ resid), float(((y - y.mean()) ** 2).sum())
    # With zero residual degrees of freedom the noise is unknown: NaN, and no interval later.
    s = math.sqrt(ss_res / dof) if dof > 0 else math.nan
    cov = s**2 * np.linalg.inv(X.T @ X)
    return PressureFit(
        c=math.exp(beta[0]),
        a0=float(beta[1]),
        a1=float(beta[2]) if quad else 0.0,
        r2=1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        resid_std=s,
        n=int(g.size),
        cov=tuple(tuple(float(v) for v in row) for row in cov),
        quadratic=quad,
        n_excluded=n_excl,
        gamma_min=float(g.min()),
        gamma_max=float(g.max()),
    )


def decreasing_branch(fit: PressureFit) -> tuple[float, float]:
    """ln gamma range where D strictly decreases with gamma: d lnD/d ln g = -(a0 + 2 a1 L) < 0."""
    if fit.a1 > 0:
        return -fit.a0 / (2 * fit.a1), math.inf
    if fit.a1 < 0:
        return -math.inf, -fit.a0 / (2 * fit.a1)
    return (-math.inf, math.inf) if fit.a0 > 0 else (math.nan, math.nan)


def predict_pressure(fit: PressureFit, target_density: float, level: float = 0.9) -> PressureEstimate:
    """Pressure at which the fitted curve gives ``target_density``, with an interval.

    The interval inverts the ``level`` prediction band of ln D (Student t on the
    residual dof; variance = resid_std^2 + x' cov x): it is the set of gamma whose band
    contains ln target, so it covers the pressure at which one new run actually lands
    on the target (the classic calibration interval). It is searched on the
    decreasing branch only and reported as 0 / inf where unbounded.

    Raises:
        ValueError: target outside (0, 1), outside the curve's reachable range, or
            beyond a factor e^60 from the fitted pressures (a flat fit).
    """
    if not 0 < target_density < 1:
        raise FitError(f"target density must be in (0, 1), got {target_density}")
    if not 0 < level < 1:
        raise FitError(f"level must be in (0, 1), got {level}")
    lo_b, hi_b = decreasing_branch(fit)
    y0, lnc, a0, a1 = math.log(target_density), math.log(fit.c), fit.a0, fit.a1
    disc = a0**2 - 4 * a1 * (y0 - lnc)
    if math.isnan(lo_b) or disc < 0:
        if math.isnan(lo_b):
            rng = "none: the curve does not decrease with gamma"
        else:
            ext = math.exp(lnc + a0**2 / (4 * a1))  # ln D at the branch vertex
            rng = f"(0, {ext:.4g}]" if a1 > 0 else f"[{ext:.4g}, inf)"
        raise FitError(f"target density {target_density:g} not reachable by the fitted curve; reachable densities: {rng}")
    sq = math.sqrt(disc)
    # Root with a0 + 2 a1 L = +sq >= 0, i.e. the one on the decreasing branch; the
    # rationalised form avoids cancellation when a1 is tiny (and covers a1 = 0).
    L0 = -2 * (y0 - lnc) / (a0 + sq) if a0 + sq > 0 else (-a0 + sq) / (2 * a1)
    fitted = (math.log(fit.gamma_min), math.log(fit.gamma_max)) if fit.gamma_min > 0 else (0.0, 0.0)  # range unknown: around 1
    if not (math.isfinite(L0) and fitted[0] - _MAX_SPAN <= L0 <= fitted[1] + _MAX_SPAN):
        # a flat fit (every density near 1: the slope is noise) puts the target at a
        # pressure like e^1000; that is no prediction, and exp() of it would overflow
        raise FitError(
            f"target density {target_density:g} lies at pressure e^{L0:.4g}, more than a factor "
            f"e^{_MAX_SPAN:g} beyond the fitted pressures [{fit.gamma_min:.4g}, {fit.gamma_max:.4g}]: "
            f"the fitted curve is too flat to predict it (slope a0={a0:.3g}, a1={a1:.3g})"
        )
    p = 3 if fit.quadratic else 2
    cov = np.asarray(fit.cov, dtype=float)
    dof = fit.n - p
    gam = math.exp(L0)
    extrap = not fit.gamma_min * (1 - 1e-9) <= gam <= fit.gamma_max * (1 + 1e-9)
    if dof <= 0 or not math.isfinite(fit.resid_std):
        return PressureEstimate(gam, 0.0, math.inf, level, extrap)
    t = float(stats.t.ppf(0.5 + level / 2, dof))

    def excess(L: float) -> float:  # < 0 inside the band
        xv = _design(np.array([L]), p)[0]
        var = fit.resid_std**2 + xv @ cov @ xv
        return float((y0 - fit._ln_density(np.array(L))) ** 2 - t**2 * var)

    def edge(direction: float) -> float:
        limit = min(hi_b, L0 + _MAX_SPAN) if direction > 0 else max(lo_b, L0 - _MAX_SPAN)
        prev, step = L0, 0.05
        while True:  # geometric steps outward until the band is left, then bisect
            L = L0 + direction * step
            L = min(L, limit) if direction > 0 else max(L, limit)
            if excess(L) >= 0:
                return optimize.brentq(excess, min(prev, L), max(prev, L), xtol=1e-10)
            if L == limit:
                return limit if abs(limit - L0) < _MAX_SPAN else direction * math.inf
            prev, step = L, step * 2

    if not excess(L0) < 0:  # zero noise: the interval collapses to the point
        return PressureEstimate(gam, gam, gam, level, extrap)
    return PressureEstimate(gam, math.exp(edge(-1.0)), math.exp(edge(1.0)), level, extrap)


@dataclass(frozen=True)
class AccuracyFit:
    """Fitted ``1 - acc = e0 + k * D ** -b`` (accuracy and error as fractions, D fraction kept)."""

    e0: float
    k: float
    b: float
    r2: float
    resid_std: float
    n: int

    def accuracy(self, density: ArrayLike) -> np.ndarray:
        """Predicted accuracy (fraction) at ``density``, clipped to [0, 1]."""
        d = np.asarray(density, dtype=float)
        return np.clip(1.0 - (self.e0 + self.k * d**-self.b), 0.0, 1.0)

    def to_dict(self) -> dict[str, float]:
        """Flat float-only dict for MLflow."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AccuracyFit:
        """Inverse of :meth:`to_dict` (extra keys are ignored)."""
        kw: dict[str, Any] = {f.name: float(d[f.name]) for f in fields(cls)}
        return cls(**{**kw, "n": int(kw["n"])})


def _err_model(d: np.ndarray, e0: float, k: float, b: float) -> np.ndarray:
    return e0 + k * d**-b


def fit_accuracy(density: ArrayLike, accuracy: ArrayLike) -> AccuracyFit:
    """Fit ``1 - acc = e0 + k D^-b`` with bounds e0, k in [0, 1], b in [0, 10].

    Raises:
        ValueError: < 3 points, or density outside (0, 1] / non-finite values.
    """
    d = np.asarray(density, dtype=float).ravel()
    err = 1.0 - np.asarray(accuracy, dtype=float).ravel()
    if d.shape != err.shape:
        raise FitError(f"density and accuracy differ in length: {d.size} vs {err.size}")
    if d.size < 3:
        raise FitError(f"need >= 3 points to fit 3 parameters, got {d.size}")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(err))) or np.any((d <= 0) | (d > 1)):
        raise FitError("density must be finite and in (0, 1], accuracy finite")
    lb, ub = np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 10.0])
    # Start point: the model is linear in (e0, k) for fixed b, so scan b and solve exactly;
    # curve_fit from a poor start often stalls with b at a bound.
    best = (math.inf, np.array([0.0, 0.1, 1.0]))
    for b in np.linspace(0.05, 5.0, 100):
        A = np.stack([np.ones_like(d), d**-b], axis=1)
        e0k = np.clip(np.linalg.lstsq(A, err, rcond=None)[0], 0.0, 1.0)
        sse = float(((A @ e0k - err) ** 2).sum())
        if sse < best[0]:
            best = (sse, np.array([e0k[0], e0k[1], b]))
    p0 = np.clip(best[1], lb + 1e-9, ub - 1e-9)
    popt, _ = optimize.curve_fit(_err_model, d, err, p0=p0, bounds=(lb, ub), maxfev=20000)
    resid = err - _err_model(d, *popt)
    ss_res, ss_tot = float(resid @ resid), float(((err - err.mean()) ** 2).sum())
    return AccuracyFit(
        e0=float(popt[0]),
        k=float(popt[1]),
        b=float(popt[2]),
        r2=1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
        resid_std=math.sqrt(ss_res / (d.size - 3)) if d.size > 3 else math.nan,
        n=int(d.size),
    )
