"""Trial pruning of multi-fidelity candidates: Optuna's pruner, the steps rungs report
at, and how well the cheapest rung ranks candidates (Spearman against full accuracy).

"Trial pruning" here is Optuna's: stopping a candidate early. It has nothing to do
with the network pruning the candidates do.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config import SearchConfig
from search.study.rungs import FidelityConfig

PRUNED = "pruned"  # the MLflow ``state`` tag of a candidate stopped below the full rung


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    """The study's trial pruner: ``NopPruner`` with fidelity off (the search as without it)."""
    f = cfg.fidelity
    if not f.enabled:
        return optuna.pruners.NopPruner()
    if f.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=rung_step(f, f.full), reduction_factor=f.reduction_factor)
    # bootstrap_count 0: asynchronous (ASHA), a rung never waits to fill before promoting
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=f.reduction_factor, min_early_stopping_rate=0)


def rung_step(f: FidelityConfig, rung: int) -> int:
    """The Optuna step rung ``rung`` reports at: its resource, ``reduction_factor ** rung``
    (1, 3, 9, ...), so that each rung of successive halving is one of ours."""
    return int(f.reduction_factor**rung)


def rung0_full_pairs(study: optuna.Study) -> tuple[list[float], list[float]]:
    """(rung-0 accuracy, full accuracy) of every trial that reached the full rung."""
    low, full = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if RUNG0_ATTR in t.user_attrs and t.values:
            low.append(float(t.user_attrs[RUNG0_ATTR]))
            full.append(t.values[0])
    return low, full


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y``; NaN for fewer than 3 pairs or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def fidelity_summary(study: optuna.Study, cfg: SearchConfig) -> dict[str, Any]:
    """Parent-run metrics of a multi-fidelity search: ``spearman_rung0_full`` (when 3
    candidates reached full), ``candidates_full``, ``candidates_pruned``; empty with fidelity off."""
    if not cfg.fidelity.enabled:
        return {}
    low, full = rung0_full_pairs(study)
    out: dict[str, Any] = {"candidates_full": float(len(full))}
    out["candidates_pruned"] = float(len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))))
    rho = spearman(low, full)
    if not math.isnan(rho):
        out["spearman_rung0_full"] = rho
    return out


RUNG0_ATTR = "rung0_accuracy"  # Optuna user attribute: the rung-0 validation accuracy, as measured


def stop_at_rung(trial: optuna.Trial, cfg: SearchConfig, rung: int, metrics: dict[str, float]) -> bool:
    """Report a candidate's rung-``rung`` accuracy to Optuna and ask its pruner whether to
    stop the trial there. In constrained mode an infeasible candidate reports its accuracy
    minus 1, so that it ranks below every feasible one and is not promoted before them."""
    from search.study.constraints import is_feasible

    if rung == 0:
        trial.set_user_attr(RUNG0_ATTR, metrics["accuracy"])
    value = metrics["accuracy"] - (0.0 if is_feasible(cfg, metrics) else 1.0)
    trial.report(value, rung_step(cfg.fidelity, rung))
    return trial.should_prune()
