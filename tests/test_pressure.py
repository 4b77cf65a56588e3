"""Hyperflows' pressure controller (pipeline.pruning.pressure): the trajectory, d0's bisection, the feedback rule."""

from __future__ import annotations

import pytest

from pipeline.pruning.pressure import PressureController, find_d0, trajectory


@pytest.mark.parametrize("target, periods", [(0.2, 36), (0.1, 56), (0.05, 56), (0.5, 10), (0.02, 100)])
def test_d0_bisection_hits_the_end_target(target, periods):
    d0 = find_d0(target, periods)
    path = trajectory(d0, periods)
    assert path[-1] == pytest.approx(target, rel=1e-6)
    assert all(a > b for a, b in zip(path, path[1:]))  # density only falls
    # sigmoid-shaped: the first periods remove more than the last ones
    assert path[0] < 1 and (1 - path[0]) > (path[-2] - path[-1]) / path[-2]


def test_unreachable_targets_are_refused():
    with pytest.raises(ValueError, match="out of reach"):
        find_d0(0.9999, 10)  # 0.999 ** 10 = 0.990: even d0 = 0.999 removes more
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        find_d0(1.2, 10)


def test_controller_raises_pressure_above_the_trajectory_and_lowers_it_below():
    ctl = PressureController.toward(0.2, 20)
    above = [e + 0.05 for e in ctl.expected[:6]]
    gammas = [ctl.update(d) for d in above]
    assert all(b > a for a, b in zip(gammas, gammas[1:])) and gammas[0] > 0
    # g grows by step + inertia_up, inertia_up by step / 4: 0.2, 0.45, 0.75, 1.1, 1.5, 1.95
    assert ctl.g == pytest.approx(1.95) and ctl.gamma == pytest.approx(1.95**1.5)
    below = [e - 0.05 for e in ctl.expected[6:12]]
    lowered = [ctl.update(d) for d in below]
    assert lowered[0] < gammas[-1] and all(b <= a for a, b in zip(lowered, lowered[1:]))
    # 0.2 + 0.25 + 0.3 + 0.35 + ... takes g = 1.95 to 0 within five periods; it stays at 0
    assert lowered[-1] == 0.0 and ctl.g == 0.0
    assert [h[0] for h in ctl.history] == list(range(1, 13))
    assert [h[2] for h in ctl.history] == ctl.expected[:12]  # each period compared with its own expected density
    ctl.update(1.0)  # above again: the inertia grown while rising is kept
    assert ctl.g == pytest.approx(0.2 + 0.3)


def test_starting_pressure_and_periods_past_the_plan():
    ctl = PressureController.toward(0.3, 3, gamma0=8.0)
    assert ctl.gamma == pytest.approx(8.0)
    for _ in range(5):
        ctl.update(0.0)  # below every expected density
    assert ctl.history[-1][2] == ctl.expected[-1]  # after the last period the end density holds
