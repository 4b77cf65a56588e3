"""The constraints of a constrained search: Optuna's constraint values and feasibility."""

from __future__ import annotations

from search.config import SearchConfig


def constraint_values(cfg: SearchConfig, metrics: dict[str, float]) -> dict[str, float]:
    """Optuna constraint values by name (<= 0 is feasible) for constrained mode."""
    o = cfg.objective
    vals = {}
    if o.max_macs_ratio is not None:
        vals["max_macs_ratio"] = metrics["macs_ratio"] - o.max_macs_ratio
    if o.min_sparsity is not None:
        vals["min_sparsity"] = o.min_sparsity - metrics["sparsity"]
    return vals


def is_feasible(cfg: SearchConfig, metrics: dict[str, float]) -> bool:
    """Whether a measured candidate meets the constraints (always, in pareto mode).

    The same test as Optuna's (every constraint value <= 0), so ``best`` and the
    summaries agree with ``study.best_trial``.
    """
    return cfg.objective.mode != "constrained" or all(v <= 0 for v in constraint_values(cfg, metrics).values())
