"""Tests for search.study.powerlaw: pressure power law, inverse prediction, accuracy fit, plot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from search.records.plots import plot_fits
from search.study.powerlaw import AccuracyFit, PressureFit, fit_accuracy, fit_pressure, predict_pressure

C, A0, A1, SIGMA = 0.8, 0.7, 0.03, 0.02
# 12 log-spaced pressures 1..1000: D from 0.8 down to 1.5e-3 (sparsity up to 99.85 %).
GAMMA = np.geomspace(1.0, 1000.0, 12)


def true_density(g: np.ndarray, a1: float = A1) -> np.ndarray:
    return C * g ** -(A0 + a1 * np.log(g))


def noisy(seed: int, a1: float = A1, g: np.ndarray = GAMMA) -> np.ndarray:
    # Multiplicative noise, sigma 0.02 in ln D: how run-to-run scatter of final density behaves.
    return true_density(g, a1) * np.exp(np.random.default_rng(seed).normal(0.0, SIGMA, g.size))


def analytic_se(p: int) -> np.ndarray:
    """Standard errors of (ln c, a0[, a1]) for this design: sigma^2 (X'X)^-1."""
    L = np.log(GAMMA)
    X = np.stack([np.ones_like(L), -L, -(L**2)][:p], axis=1)
    return np.sqrt(np.diag(SIGMA**2 * np.linalg.inv(X.T @ X)))


def test_recovers_quadratic_constants() -> None:
    # For this design se(ln c, a0, a1) = (0.0148, 0.0100, 0.0014); tolerances are 4 se
    # (two-sided tail ~6e-5 each), so a correct fit essentially never fails on any seed.
    se = analytic_se(3)
    fit = fit_pressure(GAMMA, noisy(0))
    assert fit.quadratic and fit.n == 12 and fit.n_excluded == 0
    assert abs(math.log(fit.c / C)) < 4 * se[0]
    assert abs(fit.a0 - A0) < 4 * se[1]
    assert abs(fit.a1 - A1) < 4 * se[2]
    assert fit.r2 > 0.999
    # Reported noise and covariance match the truth: s within ~2.5 sd of sigma (dof 9).
    assert 0.5 * SIGMA < fit.resid_std < 1.6 * SIGMA
    rep_se = np.sqrt(np.diag(np.asarray(fit.cov)))
    np.testing.assert_allclose(rep_se, se * fit.resid_std / SIGMA, rtol=1e-9)


def test_recovers_pure_power_law() -> None:
    se2, se3 = analytic_se(2), analytic_se(3)
    d = noisy(1, a1=0.0)
    pure = fit_pressure(GAMMA, d, quadratic=False)
    assert not pure.quadratic and pure.a1 == 0.0 and len(pure.cov) == 2
    assert abs(pure.a0 - A0) < 4 * se2[1] and abs(math.log(pure.c / C)) < 4 * se2[0]
    quad = fit_pressure(GAMMA, d)  # the quadratic fit must find no curvature
    assert abs(quad.a1) < 4 * se3[2] and abs(quad.a0 - A0) < 4 * se3[1]


def test_few_points_fall_back_to_pure() -> None:
    fit = fit_pressure(GAMMA[[0, 5, 11]], true_density(GAMMA[[0, 5, 11]], 0.0))
    assert not fit.quadratic and fit.a1 == 0.0
    assert fit.a0 == pytest.approx(A0, abs=1e-12) and fit.c == pytest.approx(C, rel=1e-12)


def test_unpruned_and_zero_points_excluded_and_counted() -> None:
    d = noisy(2)
    g_all = np.concatenate([[0.1, 0.3, 0.5], GAMMA, [5000.0]])
    d_all = np.concatenate([[1.0, 1.0, 1.2], d, [0.0]])  # below threshold: D >= 1; collapsed: 0
    fit = fit_pressure(g_all, d_all)
    ref = fit_pressure(GAMMA, d)
    assert fit.n == 12 and fit.n_excluded == 4
    assert (fit.c, fit.a0, fit.a1) == pytest.approx((ref.c, ref.a0, ref.a1), rel=1e-12)
    assert (fit.gamma_min, fit.gamma_max) == (1.0, 1000.0)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="usable"):
        fit_pressure([1.0, 2.0, 3.0], [1.0, 0.5, 1.1])
    with pytest.raises(ValueError, match="gamma must be > 0"):
        fit_pressure([0.0, 2.0, 3.0], [0.9, 0.5, 0.3])
    with pytest.raises(ValueError, match="3 points"):
        fit_accuracy([0.5, 1.0], [0.8, 0.9])


def test_dict_round_trip() -> None:
    for quad in (True, False):
        fit = fit_pressure(GAMMA, noisy(3), quadratic=quad)
        d = fit.to_dict()
        assert all(type(v) is float for v in d.values())
        assert PressureFit.from_dict(d) == fit
    afit = AccuracyFit(e0=0.07, k=0.01, b=0.9, r2=0.99, resid_std=0.003, n=12)
    assert AccuracyFit.from_dict(afit.to_dict()) == afit


def test_predict_returns_target_on_curve() -> None:
    fit = fit_pressure(GAMMA, noisy(4))
    for target in (0.5, 0.1, 0.02, 0.002):
        est = predict_pressure(fit, target)
        assert fit.density(est.gamma) == pytest.approx(target, rel=1e-9)
        assert est.low < est.gamma < est.high and not est.extrapolated
    far = predict_pressure(fit, 1e-4)  # beyond the sparsest fitted point
    assert far.extrapolated and far.gamma > 1000.0


def test_interval_coverage() -> None:
    # Calibration setting the interval is built for: fit on a fresh noisy draw, then one
    # new run at the true pressure lands at a noisy density; its pressure must lie in the
    # 90 % interval ~90 % of the time (exact for this linear-Gaussian model). With 200
    # repeats the binomial sd is 2.1 %, so [80 %, 97 %] is > 3 sd on both sides.
    hits = 0
    for seed in range(200):
        rng = np.random.default_rng(1000 + seed)
        fit = fit_pressure(GAMMA, noisy(1000 + seed))
        g_true = math.exp(rng.uniform(math.log(2.0), math.log(500.0)))
        observed = float(true_density(np.array(g_true)) * math.exp(rng.normal(0.0, SIGMA)))
        est = predict_pressure(fit, observed, level=0.9)
        hits += est.low <= g_true <= est.high
    assert 0.80 <= hits / 200 <= 0.97


def test_unreachable_target_raises() -> None:
    # a1 < 0: ln D is convex in ln gamma, so density bottoms out at ~0.069 near gamma = e^7.
    g = np.geomspace(1.0, 1000.0, 8)
    fit = fit_pressure(g, C * g ** -(A0 - 0.05 * np.log(g)))
    with pytest.raises(ValueError, match=r"reachable densities: \[0.06"):
        predict_pressure(fit, 0.01)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        predict_pressure(fit, 1.0)


def test_accuracy_fit_recovers_curve() -> None:
    # err = 0.07 + 0.01 D^-0.9 over D in [0.02, 1]: accuracy 0.92 dense, 0.59 at 98 % sparsity.
    # Over 200 seeds the estimates scatter with sd (e0, k, b) = (0.0023, 0.0008, 0.020);
    # tolerances are ~4 sd.
    dens = np.geomspace(0.02, 1.0, 12)
    truth = 1.0 - (0.07 + 0.01 * dens**-0.9)
    acc = truth + np.random.default_rng(5).normal(0.0, 0.003, dens.size)
    fit = fit_accuracy(dens, acc)
    assert fit.e0 == pytest.approx(0.07, abs=0.01)
    assert fit.k == pytest.approx(0.01, abs=0.0035)
    assert fit.b == pytest.approx(0.9, abs=0.08)
    assert np.max(np.abs(fit.accuracy(dens) - truth)) < 0.01 and fit.r2 > 0.99


def _pixels(png: bytes) -> np.ndarray:
    import io

    from matplotlib.image import imread

    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return imread(io.BytesIO(png), format="png")[..., :3]  # (H, W, RGB) floats in [0, 1]


def _share_near(img: np.ndarray, rgb: tuple[int, int, int]) -> float:
    return float((np.abs(img - np.array(rgb) / 255).max(axis=-1) < 0.08).mean())


def test_plot_returns_png() -> None:
    d = noisy(6)
    pfit = fit_pressure(GAMMA, d)
    one = _pixels(plot_fits(np.append(GAMMA, 0.5), np.append(d, 1.0), pfit))
    dens = np.geomspace(0.02, 1.0, 8)
    acc = 1.0 - (0.07 + 0.01 * dens**-0.9)
    two = _pixels(plot_fits(GAMMA, d, pfit, dens, acc, fit_accuracy(dens, acc)))
    half = two.shape[1] // 2
    assert one.shape[0] == two.shape[0] and abs(two.shape[1] - 2 * one.shape[1]) <= 0.1 * two.shape[1]  # one panel, then two
    for panel in (one, two[:, :half], two[:, half:]):
        # something is drawn in every panel: axes and text, the points in matplotlib's first
        # colour and the fitted curve in the next free one (green after the excluded point)
        assert (panel.min(axis=-1) < 0.5).mean() > 0.01
        assert _share_near(panel, (31, 119, 180)) > 0.001
        assert max(_share_near(panel, (255, 127, 14)), _share_near(panel, (44, 160, 44))) > 0.001
