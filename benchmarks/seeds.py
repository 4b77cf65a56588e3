"""The ``seeds`` section of benchmarks/methods.py: Hyperflows' pressure controller and OCS'
MACs-cost term on the shared ResNet-20 (issue 25).

- hyperflows, ``pressure_schedule: controller``, at each (target sparsity, steps,
  regrowth steps) of ``SeedsConfig.controller_runs``: the step budgets of the constant
  rows that landed nearest each target (360 + 50 near 80 %, 560 + 60 near 90 %);
- hyperflows at a constant pressure steered by the power law: ``SeedsConfig.fit_pressures``
  at the 560 + 60 budget, ``search.study.powerlaw.fit_pressure`` on their densities, then one
  run at the pressure ``predict_pressure`` gives for each target (skipped with ``steered=False``);
- OCS at 2x fewer MACs with each ``macs_cost`` choice: the chosen channels per stage, how
  many differ from the run without the term, and the accuracy.

Only this section: ``methods.py --sections seeds --rows-from results/methods.json`` (the other
rows, the recalibration settings and the dense reference are then kept from that run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pipeline.evaluator import Evaluator
from pipeline.pruning.methods import get_method
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateResult, CandidateSpec
from search.study import powerlaw

from common import log

Row = dict[str, Any]


@dataclass(frozen=True)
class SeedsConfig:
    # (target sparsity, steps, regrowth_steps); flow_lr 0.01 and one controller period per
    # 10 steps: a presence moves up to 0.1 per period, as an epoch moves it in the paper
    controller_runs: tuple[tuple[float, int, int], ...] = ((0.8, 360, 50), (0.9, 560, 60), (0.95, 560, 60))
    controller_knobs: tuple[tuple[str, float], ...] = (("flow_lr", 0.01), ("controller_every", 10))
    fit_budget: tuple[int, int] = (560, 60)
    fit_pressures: tuple[float, ...] = (3.0, 10.0, 30.0)
    steered: bool = True
    ocs_reduction: float = 2.0
    # ``millions`` (the authors' factor) is the methods.json row "ocs" at 2x: same knobs, same code path
    macs_costs: tuple[str, ...] = ("off", "standardized", "millions")

    @classmethod
    def quick(cls) -> "SeedsConfig":
        """Exercises every code path in a few minutes (budgets too small to mean anything)."""
        return cls(controller_runs=((0.8, 30, 5),), fit_budget=(30, 5), fit_pressures=(3.0, 30.0), steered=False)


def run_seeds(
    ev: Evaluator,
    cfg: SeedsConfig,
    spec_of: Callable[..., CandidateSpec],
    ocs_spec_of: Callable[[str], CandidateSpec],
    row_of: Callable[..., Row],
) -> list[Row]:
    """The section's rows. ``spec_of(method, point, **kw)``: an unstructured candidate of the
    benchmark's setting; ``ocs_spec_of(macs_cost)``: its OCS candidate at ``cfg.ocs_reduction``;
    ``row_of(ev, result, label, point, pivot=..., note=...)``: methods.py's row."""
    rows: list[Row] = []
    for target, steps, regrowth in cfg.controller_runs:
        knobs = {"pressure_schedule": 1.0, "steps": float(steps), "regrowth_steps": float(regrowth), **dict(cfg.controller_knobs)}
        log(f"hyperflows controller target {target:.0%} steps {steps}+{regrowth}")
        res = ev.evaluate(spec_of("hyperflows", target, knobs=knobs))
        rows.append(_hyperflows_row(ev, res, row_of, target, "controller", f"target {target:.0%}"))
    if cfg.steered:
        rows += _steered(ev, cfg, spec_of, row_of)
    base = None
    for how in cfg.macs_costs:
        log(f"ocs {cfg.ocs_reduction}x macs_cost={how}")
        res = ev.evaluate(ocs_spec_of(how))
        row = row_of(ev, res, f"ocs macs_cost={how}", cfg.ocs_reduction, pivot=f"ocs (macs_cost {how})", note=f"macs_cost={how}")
        row["section"] = "seeds"
        if res.state == "ok":
            kept = {g: set(k.tolist()) for g, k in PrunePlan.from_parquet(res.plan).channels.items()}
            base = base or kept
            row["macs_cost"] = how
            row["channels_differing_from_off"] = sum(len(kept[g] ^ base[g]) for g in kept) // 2
            row["macs_cost_diagnostics"] = {
                k: res.metrics.get(f"ocs_{k}") for k in ("macs_factor_min", "macs_factor_max", "macs_cost_changed_channels")
            }
            row["stable_epoch"] = res.metrics.get("ocs_stable_epoch")
        rows.append(row)
    return rows


def _hyperflows_row(ev: Evaluator, res: CandidateResult, row_of: Callable[..., Row], target: float, schedule: str, note: str) -> Row:
    row = row_of(ev, res, f"hyperflows {schedule}", target, pivot=f"hyperflows ({schedule})", note=note)
    row.update(section="seeds", pressure_schedule=schedule, target_sparsity=target)
    if res.state == "ok":
        row["off_target"] = row["sparsity"] - target
        row["pruning_density"] = res.metrics.get("hyperflows_pruning_density")
        log(f"  -> sparsity {row['sparsity']:.4f} (target {target}, off by {row['off_target']:+.4f})")
    return row


def _steered(ev: Evaluator, cfg: SeedsConfig, spec_of: Callable[..., CandidateSpec], row_of: Callable[..., Row]) -> list[Row]:
    """Constant pressure: fit at ``cfg.fit_budget``, then one run at each target's predicted pressure."""
    steps, regrowth = cfg.fit_budget
    budget = {"steps": float(steps), "regrowth_steps": float(regrowth)}
    rows, points = [], []
    for p in cfg.fit_pressures:
        log(f"hyperflows constant pressure {p:g} (fit point, {steps}+{regrowth})")
        res = ev.evaluate(spec_of("hyperflows", None, knobs={"pressure": p, **budget}))
        row = row_of(ev, res, "hyperflows constant (fit point)", float("nan"), pivot="hyperflows (fit points)", note=f"p={p:g}")
        row.update(section="seeds", pressure_schedule="constant")
        rows.append(row)
        if res.state == "ok":
            points.append((p, 1.0 - res.metrics["sparsity"]))
    try:
        fit = powerlaw.fit_pressure([g for g, _ in points], [d for _, d in points])
    except ValueError as e:
        log(f"  no power-law fit: {e}")
        return rows
    for target in sorted({t for t, _, _ in cfg.controller_runs}):
        try:
            est = powerlaw.predict_pressure(fit, 1.0 - target)
        except (ValueError, ArithmeticError) as e:
            log(f"  no pressure for {target:.0%}: {e}")
            continue
        log(f"hyperflows constant pressure {est.gamma:.4g} (power law for {target:.0%})")
        spec = spec_of("hyperflows", None, knobs={"pressure": est.gamma, **budget})
        assert get_method("hyperflows").target_for(spec.knobs) == "outcome"
        res = ev.evaluate(spec)
        row = _hyperflows_row(ev, res, row_of, target, "constant (power law)", f"p={est.gamma:.3g} for {target:.0%}")
        row["power_law"] = {**fit.to_dict(), "predicted_pressure": est.gamma, "interval": [est.low, est.high]}
        rows.append(row)
    return rows


def report(rows: list[Row]) -> list[str]:
    """The seeds section of methods.md (empty when the run has no seeds rows)."""
    from reporting import md_table, pct

    mine = [r for r in rows if r.get("section") == "seeds" and r["state"] == "ok"]
    if not mine:
        return []
    hf = [r for r in mine if r["method"] == "hyperflows" and r.get("pressure_schedule") != "constant"]
    fit = [r for r in mine if r["method"] == "hyperflows" and r.get("pressure_schedule") == "constant"]
    oc = [r for r in mine if r["method"] == "ocs"]
    out = ["\n## Seed methods as their papers run them (issue 25)\n"]
    if hf:
        body = [
            [
                r["pressure_schedule"],
                f"{r['target_sparsity']:.0%}",
                f"{int(r['knobs']['steps'])}+{int(r['knobs']['regrowth_steps'])}",
                r["note"],
                f"{r['sparsity']:.4f}",
                f"{r['off_target']:+.4f}",
                "" if r.get("pruning_density") is None else f"{1 - r['pruning_density']:.4f}",
                pct(r["test_accuracy_before_recal"]),
                pct(r["test_accuracy"]),
                f"{r['prune_s']:.0f}",
            ]
            for r in hf
        ]
        head = [
            "schedule",
            "target",
            "steps",
            "run",
            "weight sparsity",
            "off target",
            "sparsity at end of pruning",
            "test before recal",
            "test",
            "prune s",
        ]
        out.append(md_table(head, body))
    if fit:
        out.append("\nPower-law fit points (constant pressure): " + ", ".join(f"{r['note']} → {r['sparsity']:.4f}" for r in fit) + "\n")
    if oc:
        body = [
            [
                r["macs_cost"],
                f"{r['macs_cost_diagnostics']['macs_factor_min']:.3f}-{r['macs_cost_diagnostics']['macs_factor_max']:.3f}",
                str(int(r["macs_cost_diagnostics"]["macs_cost_changed_channels"])),
                str(r["channels_differing_from_off"]),
                " / ".join(f"{k} {v}" for k, v in r.get("kept_per_stage", {}).items()),
                f"{r['macs_reduction']:.2f}x",
                "" if r.get("stable_epoch") is None else f"{r['stable_epoch']:.0f}",
                pct(r["test_accuracy_before_recal"]),
                pct(r["test_accuracy"]),
            ]
            for r in oc
        ]
        head = [
            "OCS macs_cost",
            "factor range",
            "channels moved at epoch 0",
            "final channels ≠ off",
            "kept per stage",
            "MACs",
            "stable epoch",
            "test before recal",
            "test",
        ]
        out.append("\n" + md_table(head, body))
    return out
