"""Which candidates' records keep reconstruction's refit weights (``records.refit_weights``).

Refit weights are float32 copies of every refit layer (ResNet-50: tens of MB per
candidate); masks and kept channels are a few hundred KB. ``front`` keeps them for the
candidates on the Pareto front (max accuracy, min effective MACs) of the feasible
candidates recorded so far: a candidate on the final front is on the front when it is
recorded, so every candidate ``best`` can return keeps its weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateResult
from search.records.query import pareto_front


class RefitPolicy:
    """Drops refit weights from the results whose records should not keep them.

    Args:
        setting: ``all``, ``front`` or ``replay`` (in ``replay`` the actors already send none).
        recorded: rows of candidates already recorded (``query.candidate_rows``; a resumed
            search's front), each with ``state``, ``accuracy``, ``macs`` and ``feasible``.
    """

    def __init__(self, setting: str, recorded: Iterable[dict[str, Any]] = ()) -> None:
        self.setting = setting
        self._feasible = [_point(r) for r in recorded if _counts(r.get("state", ""), r)]

    def apply(self, result: CandidateResult, extra: dict[str, float]) -> CandidateResult:
        """``result`` as its record should keep it; ``extra`` holds the driver's ``feasible``."""
        if self.setting != "front":
            return result
        row = {**result.metrics, **extra}
        counts = _counts(result.state, row)
        on_front = counts and _on_front(self._feasible, _point(row))
        if counts:
            self._feasible.append(_point(row))
        if on_front or not result.plan:
            return result
        plan = PrunePlan.from_parquet(result.plan)
        if not plan.refit:
            return result
        return dataclasses.replace(result, plan=dataclasses.replace(plan, refit={}).to_parquet())


def _counts(state: str, row: dict[str, Any]) -> bool:
    return state == "ok" and row.get("feasible", 1.0) == 1.0 and "accuracy" in row and "macs" in row


def _point(row: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": float(row["accuracy"]), "macs": float(row["macs"])}


def _on_front(points: list[dict[str, Any]], candidate: dict[str, Any]) -> bool:
    # the candidate goes last: an exact duplicate of an earlier point is not on the front
    return any(p is candidate for p in pareto_front([*points, candidate]))
