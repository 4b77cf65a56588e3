"""Hyperflows' pressure controller: steer gamma toward a sigmoid density trajectory (methods.md, 4).

Pure logic, no torch: the method (``pipeline.pruning.methods.hyperflows``) calls
``PressureController.update`` once per controller period with the current density.

The trajectory: the expected density after period t (1-based) of a pruning phase of
``P`` periods is prod over e <= t of d(e), d(e) = d0 + (0.999 - d0) sigmoid((6 / P)(e - P / 2)):
early periods remove a fraction 1 - d0 of what is left, late ones almost nothing, so
density falls fast and then settles. ``d0`` is found by bisection
(``pipeline.pruning.bisection``) so that the density after period P is the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.errors import InputError
from pipeline.pruning.bisection import smallest_passing

D_MAX = 0.999  # d(e) tends to it: late periods keep 99.9 % of what is left
STEP = 0.2  # the authors' controller step on g (gamma = g ** 1.5)


def period_factor(d0: float, e: float, periods: int) -> float:
    """d(e): the fraction of the density the trajectory keeps in period ``e`` (1-based)."""
    return d0 + (D_MAX - d0) / (1.0 + math.exp(-(6.0 / periods) * (e - periods / 2)))


def trajectory(d0: float, periods: int) -> list[float]:
    """Expected density after each period 1..``periods`` for factor ``d0`` (starting at density 1)."""
    out, density = [], 1.0
    for e in range(1, periods + 1):
        density *= period_factor(d0, e, periods)
        out.append(density)
    return out


def find_d0(target_density: float, periods: int, steps: int = 60) -> float:
    """The d0 in (0, 0.999] whose trajectory ends at ``target_density`` after ``periods`` periods.

    The end density grows monotonically with d0, so the smallest d0 whose trajectory
    ends at or above the target is bisected for (to 0.999 / 2**steps).

    Raises:
        ValueError: ``target_density`` outside (0, 1), ``periods`` < 1, or a target the
            trajectory cannot reach (below what d0 -> 0 gives, or above 0.999**periods).
    """
    if not 0 < target_density < 1:
        raise InputError(f"target density must be in (0, 1), got {target_density}")
    if periods < 1:
        raise InputError(f"the pruning phase needs at least one controller period, got {periods}")
    d0 = smallest_passing(lambda d: trajectory(d, periods)[-1] >= target_density, 0.0, D_MAX, steps)
    if d0 is None or trajectory(d0, periods)[-1] > target_density * 1.01 + 1e-9:
        lowest = trajectory(1e-12, periods)[-1]
        raise InputError(
            f"target density {target_density:.4g} is out of reach of a {periods}-period trajectory "
            f"(reachable: {lowest:.3g} to {D_MAX**periods:.4g}); give the pruning phase more or fewer controller periods"
        )
    return d0


@dataclass
class PressureController:
    """The authors' feedback rule on g, with gamma = g ** 1.5.

    Each ``update(density)``: above the expected density of this period, g += step +
    inertia_up and inertia_up += step / 4; otherwise g -= step + inertia_down,
    inertia_down += step / 4, and g >= 0. The inertias only grow, so a long run makes
    ever larger corrections in whichever direction it keeps needing.

    Attributes:
        expected: expected density after each period (``trajectory``).
        g: the controlled variable; ``gamma`` is the pressure the loss uses.
        history: per update: (period, density measured, expected density, gamma after it).
    """

    expected: list[float]
    g: float = 0.0
    step: float = STEP
    inertia_up: float = 0.0
    inertia_down: float = 0.0
    period: int = 0
    history: list[tuple[int, float, float, float]] = field(default_factory=list)

    @classmethod
    def toward(cls, target_density: float, periods: int, gamma0: float = 0.0) -> "PressureController":
        """A controller steering to ``target_density`` after ``periods`` periods, from pressure ``gamma0``."""
        return cls(expected=trajectory(find_d0(target_density, periods), periods), g=gamma0 ** (1 / 1.5))

    @property
    def gamma(self) -> float:
        """The pressure: g ** 1.5."""
        return self.g**1.5

    def update(self, density: float) -> float:
        """One period ends at ``density`` (fraction of weights present): adjust g and return the new gamma.
        After the last planned period the expected density stays at the trajectory's end."""
        expected = self.expected[min(self.period, len(self.expected) - 1)]
        self.period += 1
        if density > expected:
            self.g += self.step + self.inertia_up
            self.inertia_up += self.step / 4
        else:
            self.g = max(self.g - self.step - self.inertia_down, 0.0)
            self.inertia_down += self.step / 4
        self.history.append((self.period, density, expected, self.gamma))
        return self.gamma
