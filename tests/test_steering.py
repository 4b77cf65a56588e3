"""Power-law steering places pressure where the target sparsity lies."""

from __future__ import annotations

import math

import numpy as np

from search.config import parse_config
from search.steering import PressureSteering


def _cfg(target=0.9, methods=("hyperflows",)):
    return parse_config({"space": {"methods": list(methods), "target_sparsity": target, "knobs": {"hyperflows": {"pressure": [0.001, 10.0]}}}})


def _density(gamma, c=0.1, a0=1.0, a1=0.1):
    return c * gamma ** -(a0 + a1 * math.log(gamma))


def test_steering_proposes_the_pressure_of_the_target_density():
    steering = PressureSteering(_cfg(0.9), every=2)
    rng = np.random.default_rng(0)
    for g in np.geomspace(0.005, 2.0, 8):
        steering.observe({"pressure": float(g)}, "ok", 1 - _density(g) * math.exp(rng.normal(0, 0.02)))
    proposals = [steering.propose() for _ in range(6)]
    assert [p is None for p in proposals] == [True, False] * 3  # one trial in two is steered
    true_gamma = next(g for g in np.geomspace(0.01, 10, 200000) if _density(g) <= 0.1)
    for p in proposals[1::2]:
        assert abs(math.log(p["hyperflows.pressure"] / true_gamma)) < 0.15, (p, true_gamma)
        assert "method" not in p  # one method: it is not a trial parameter


def test_steering_names_the_method_when_the_space_has_several():
    steering = PressureSteering(_cfg(0.9, ("magnitude", "hyperflows")), every=1)
    for g in (0.01, 0.1, 0.5, 1.0):
        steering.observe({"pressure": g}, "ok", 1 - _density(g))
    assert steering.propose()["method"] == "hyperflows"


def test_steering_waits_for_points_and_ignores_failures():
    steering = PressureSteering(_cfg(0.9), every=1)
    for g in (0.01, 0.1, 1.0):
        steering.observe({"pressure": g}, "ok", 1 - _density(g))
    steering.observe({"pressure": 3.0}, "failed", None)
    assert steering.fit is None and steering.propose() is None


def test_steering_is_off_without_a_target_or_pressure_method():
    assert not PressureSteering(parse_config({"space": {"methods": ["hyperflows"]}})).active
    assert not PressureSteering(parse_config({"space": {"methods": ["magnitude"], "target_sparsity": 0.9}})).active
