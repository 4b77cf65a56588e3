"""Power-law steering places pressure where the target sparsity lies."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from search.config import parse_config
from search.study import powerlaw
from search.study.steering import PressureSteering


def _cfg(target=0.9, methods=("hyperflows",)):
    return parse_config({"space": {"methods": list(methods), "target_sparsity": target, "knobs": {"hyperflows": {"pressure": [0.001, 10.0]}}}})


def _density(gamma, c=0.1, a0=1.0, a1=0.1):
    return c * gamma ** -(a0 + a1 * math.log(gamma))


def test_steering_proposes_the_pressure_of_the_target_density():
    steering = PressureSteering(_cfg(0.9), every=2)
    rng = np.random.default_rng(0)
    for g in np.geomspace(0.005, 2.0, 8):
        steering.observe("hyperflows", {"pressure": float(g)}, "ok", 1 - _density(g) * math.exp(rng.normal(0, 0.02)))
    proposals = [steering.propose() for _ in range(6)]
    assert [p is None for p in proposals] == [True, False] * 3  # one trial in two is steered
    true_gamma = next(g for g in np.geomspace(0.01, 10, 200000) if _density(g) <= 0.1)
    for p in proposals[1::2]:
        assert abs(math.log(p["hyperflows.pressure"] / true_gamma)) < 0.15, (p, true_gamma)
        assert "method" not in p  # one method: it is not a trial parameter


def test_steering_names_the_method_when_the_space_has_several():
    steering = PressureSteering(_cfg(0.9, ("magnitude", "hyperflows")), every=1)
    for g in (0.01, 0.1, 0.5, 1.0):
        steering.observe("hyperflows", {"pressure": g}, "ok", 1 - _density(g))
    assert steering.propose()["method"] == "hyperflows"


def test_steering_waits_for_points_and_ignores_failures():
    steering = PressureSteering(_cfg(0.9), every=1)
    for g in (0.01, 0.1, 1.0):
        steering.observe("hyperflows", {"pressure": g}, "ok", 1 - _density(g))
    # a failed candidate with a sparsity would be a fourth point (min_points=4) and give a fit
    steering.observe("hyperflows", {"pressure": 3.0}, "failed", 1 - _density(3.0))
    steering.observe("hyperflows", {"pressure": 5.0}, "ok", None)  # no measured sparsity: no point either
    assert [[g for g, _ in pts] for pts in steering.points.values()] == [[0.01, 0.1, 1.0]]
    assert not steering.fits and steering.propose() is None
    steering.observe("hyperflows", {"pressure": 3.0}, "ok", 1 - _density(3.0))  # the fourth real point does fit
    assert steering.fits


def test_steering_is_off_without_a_target_or_pressure_method():
    assert not PressureSteering(parse_config({"space": {"methods": ["hyperflows"]}})).active
    assert not PressureSteering(parse_config({"space": {"methods": ["magnitude"], "target_sparsity": 0.9}})).active


def test_steering_survives_a_flat_fit(caplog):
    # every candidate below the threshold pressure: densities about 0.999, the slope is noise
    steering = PressureSteering(_cfg(0.9), every=1)
    rng = np.random.default_rng(0)
    for g in (0.001, 0.003, 0.01, 0.03, 0.1):
        steering.observe("hyperflows", {"pressure": g}, "ok", 1 - 0.999 * math.exp(rng.normal(0, 1e-4)))
    assert steering.fits  # the fit itself exists ...
    with caplog.at_level(logging.INFO, logger="search.study.steering"):
        assert steering.propose() is None  # ... but predicts nothing, and nothing escapes
    assert "too flat" in caplog.text or "not reachable" in caplog.text, caplog.text


def test_flat_fit_is_no_prediction_not_an_overflow():
    fit = powerlaw.fit_pressure([0.001, 0.01, 0.1, 1.0], [0.9990, 0.99905, 0.9991, 0.99895], quadratic=False)
    assert 0 < fit.a0 < 1e-3
    with pytest.raises(ValueError, match="too flat"):
        powerlaw.predict_pressure(fit, 0.1)


def _two_budgets(steering):
    """Points of two hyperflows budgets: 300 steps prunes far less at a pressure than 1000 steps."""
    rng = np.random.default_rng(1)
    for g in np.geomspace(0.005, 8.0, 8):
        for steps, c in ((300, 0.3), (1000, 0.05)):
            d = _density(g, c=c, a0=0.8 if steps == 300 else 1.2, a1=0.05) * math.exp(rng.normal(0, 0.02))
            steering.observe("hyperflows", {"pressure": float(g), "steps": steps}, "ok", 1 - d)


def test_fits_are_made_per_budget_and_recover_each_curve():
    steering = PressureSteering(_cfg(0.9), every=1)
    _two_budgets(steering)
    fits = {dict(b)["steps"]: f for (m, b), f in steering.fits.items()}
    assert sorted(fits) == [300.0, 1000.0]
    assert fits[300.0].c == pytest.approx(0.3, rel=0.1) and fits[300.0].a0 == pytest.approx(0.8, abs=0.05)
    assert fits[1000.0].c == pytest.approx(0.05, rel=0.1) and fits[1000.0].a0 == pytest.approx(1.2, abs=0.05)
    assert min(f.r2 for f in fits.values()) > 0.99
    pooled = powerlaw.fit_pressure(*zip(*[p for pts in steering.points.values() for p in pts]))
    assert pooled.r2 < 0.8  # the pooled fit describes neither budget


def test_a_steered_trial_runs_at_the_budget_whose_curve_chose_its_pressure():
    cfg = parse_config(
        {"space": {"methods": ["hyperflows"], "target_sparsity": 0.9, "knobs": {"hyperflows": {"pressure": [0.001, 10.0], "steps": [100, 2000]}}}}
    )
    steering = PressureSteering(cfg, every=1)
    _two_budgets(steering)
    seen = set()
    for _ in range(20):
        p = steering.propose()
        steps = p["hyperflows.steps"]
        c, a0 = (0.3, 0.8) if steps == 300 else (0.05, 1.2)
        true_gamma = next(g for g in np.geomspace(1e-3, 10, 100000) if _density(g, c=c, a0=a0, a1=0.05) <= 0.1)
        assert abs(math.log(p["hyperflows.pressure"] / true_gamma)) < 0.3, (p, true_gamma)
        assert isinstance(steps, int) and "hyperflows.flow_lr" not in p  # flow_lr is not searched: it keeps its default
        seen.add(steps)
    assert seen == {300, 1000}


def test_budgets_that_never_repeat_get_one_budget_filled_until_it_can_be_fitted():
    cfg = parse_config(
        {"space": {"methods": ["hyperflows"], "target_sparsity": 0.9, "knobs": {"hyperflows": {"pressure": [0.11, 10.0], "steps": [100, 2000]}}}}
    )
    steering = PressureSteering(cfg, every=1)

    def density(g):
        return _density(g, a1=0.0)  # 0.1 / g: below 1 on the whole range

    for i, g in enumerate((0.2, 0.4, 0.8, 1.6, 3.2)):  # a fresh steps value each time, as TPE samples them
        steering.observe("hyperflows", {"pressure": g, "steps": 300 + i}, "ok", 1 - density(g))
    assert not steering.fits
    for _ in range(3):  # the best-filled budget (the first seen among equals) gets the steered trials
        p = steering.propose()
        assert p["hyperflows.steps"] == 300 and 0.11 <= p["hyperflows.pressure"] <= 10.0
        steering.observe("hyperflows", {"pressure": p["hyperflows.pressure"], "steps": 300}, "ok", 1 - density(p["hyperflows.pressure"]))
    assert [dict(b)["steps"] for _, b in steering.fits] == [300.0]
    assert steering.propose()["hyperflows.pressure"] == pytest.approx(1.0, rel=1e-6)  # D = 0.1 at gamma = 1


def test_a_steered_proposal_becomes_that_candidate_through_optuna():
    import optuna

    from search.study.space import suggest

    cfg = parse_config(
        {
            "space": {
                "methods": ["magnitude", "hyperflows"],
                "target_sparsity": 0.9,
                "knobs": {"hyperflows": {"pressure": [0.001, 10.0], "steps": [100, 2000], "flow_lr": [1e-4, 3e-2]}},
            }
        }
    )
    steering = PressureSteering(cfg, every=1)
    for g in np.geomspace(0.005, 8.0, 6):
        steering.observe("hyperflows", {"pressure": float(g), "steps": 400, "flow_lr": 0.002}, "ok", 1 - _density(g))
    params = steering.propose()
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(params, user_attrs={"steered": True})
    spec = suggest(study.ask(), cfg)
    assert spec.method == "hyperflows"
    assert spec.knobs == {"pressure": params["hyperflows.pressure"], "steps": 400.0, "flow_lr": 0.002}


def test_report_fits_the_knob_each_method_steers():
    from search.records.report import fit_curves, steered_points

    rows = [{"method": "hyperflows", "knobs": {"pressure": g, "steps": 100.0}, "sparsity": 1 - 0.1 * g**-0.9} for g in (0.01, 0.1, 1.0, 3.0)]
    rows += [
        {"method": "magnitude", "knobs": {"norm": 1.0}, "sparsity": 0.3},  # steers nothing
        {"method": "no_such_method", "knobs": {"pressure": 0.5}, "sparsity": 0.9},  # a record of a method gone from the registry
        {"method": "hyperflows", "knobs": {"steps": 100.0}, "sparsity": 0.2},  # without its steered knob
    ]
    points = steered_points(rows)
    assert list(points) == ["pressure"] and points["pressure"][0] == [0.01, 0.1, 1.0, 3.0]
    assert points["pressure"][1] == pytest.approx([0.1 * g**-0.9 for g in (0.01, 0.1, 1.0, 3.0)])
    fit = fit_curves(rows)["pressure"]
    assert fit.a0 == pytest.approx(0.9, abs=1e-6) and fit.c == pytest.approx(0.1, rel=1e-6)


def test_report_never_pools_two_methods_that_steer_a_knob_of_one_name(monkeypatch):
    from pipeline.pruning.methods.hyperflows import Hyperflows
    from pipeline.pruning.methods.registry import METHODS
    from search.records.report import steered_points

    monkeypatch.setitem(METHODS._entries, "hyperflows_twin", type("Twin", (Hyperflows,), {}))
    rows = [{"method": m, "knobs": {"pressure": g}, "sparsity": 0.5} for m in ("hyperflows", "hyperflows_twin") for g in (0.1, 1.0)]
    points = steered_points(rows)
    assert sorted(points) == ["hyperflows.pressure", "hyperflows_twin.pressure"]
    assert all(v == ([0.1, 1.0], [0.5, 0.5]) for v in points.values())
