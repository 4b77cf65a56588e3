"""Bisecting for a common factor: the smallest value at which a monotone test passes.

Shared by every selection that meets a budget with one factor common to all layers
(unstructured per-tensor ratios in ``pipeline.pruning.thresholds``, channel selection in
``pipeline.pruning.structure.selection``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload


@overload
def smallest_passing(ok: Callable[[int], bool], lo: int, hi: int, steps: None = None) -> int | None: ...
@overload
def smallest_passing(ok: Callable[[float], bool], lo: float, hi: float, steps: int) -> float | None: ...
def smallest_passing(ok: Callable[[Any], bool], lo: float, hi: float, steps: int | None = None) -> float | None:
    """The smallest ``x`` in ``(lo, hi]`` with ``ok(x)``, for ``ok`` False below a boundary and True above.

    Args:
        ok: the monotone test; ``ok(lo)`` is never called.
        lo, hi: the bracket. Integers with ``steps=None``: exact integer search.
        steps: halvings of a float bracket; the answer is then within
            ``(hi - lo) / 2**steps`` above the boundary.

    Returns:
        ``x``, or None when ``ok(hi)`` is False (nothing in the bracket passes).
    """
    if not ok(hi):
        return None
    if steps is None:
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if ok(mid) else (mid, hi)
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
