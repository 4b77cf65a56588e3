"""The common-factor bisection shared by unstructured and channel selection."""

from __future__ import annotations

import pytest

from pipeline.pruning.bisection import smallest_passing


@pytest.mark.parametrize("boundary", [0, 1, 7, 99, 100])
def test_integer_search_is_exact_and_never_calls_lo(boundary):
    calls: list[int] = []

    def ok(k: int) -> bool:
        calls.append(k)
        return k >= boundary

    assert smallest_passing(ok, -1, 100) == boundary
    assert -1 not in calls


def test_float_search_is_within_the_bracket_over_two_to_the_steps():
    x = smallest_passing(lambda c: c >= 0.3, 0.0, 1.0, steps=30)
    assert 0.3 <= x <= 0.3 + 2**-30


def test_nothing_passing_in_the_bracket_is_none():
    assert smallest_passing(lambda k: k > 10, 0, 10) is None
    assert smallest_passing(lambda c: c > 1.0, 0.0, 1.0, steps=10) is None
