"""Every search starts from the baselines: their parameters, and a real Optuna journal study."""

from __future__ import annotations

import logging
import math

import optuna
import pytest

from search.config import parse_config
from search.study.baselines import BASELINE_ATTR, MARGIN, baseline_params, targets
from search.study.space import suggest
from search.study.study import open_study

WIDE = {
    "methods": ["magnitude", "random", "hyperflows", "ocs"],
    "granularity": ["unstructured", "channel"],
    "scope": ["global", "layerwise"],
    "allocation": {"layer1": [0.5, 1.5]},
    "knobs": {"magnitude": {"norm": [1, 2]}},
    "reconstruct": ["none", "lsq"],
}


def _cfg(tmp_path=None, space=None, **over):
    base = {"space": space or WIDE, **({"run_dir": str(tmp_path / "run")} if tmp_path else {})}
    return parse_config({**base, **over}, check_paths=False)


def test_one_baseline_per_method_scope_granularity_and_reconstruction():
    params = baseline_params(_cfg())
    # magnitude, random: 2 granularities x 2 scopes x 2 reconstructions; hyperflows, ocs: 1 x 1 x 2
    assert len(params) == 8 + 8 + 2 + 2
    keys = [(p["method"], p.get(f"{p['method']}.granularity"), p.get(f"{p['method']}.scope"), p["reconstruct"]) for p in params]
    assert len(set(keys)) == len(keys)
    assert {p["reconstruct"] for p in params} == {"none", "lsq"}


def test_baseline_params_are_exactly_what_the_space_asks_for():
    cfg = _cfg(objective={"mode": "constrained", "max_macs_ratio": 0.5, "min_sparsity": 0.6})
    for p in baseline_params(cfg):
        trial = optuna.trial.FixedTrial(p)
        spec = suggest(trial, cfg)
        # every parameter is asked for under that name (reconstruct once the space asks for it)
        assert set(trial.params) - {"reconstruct"} == set(p) - {"reconstruct"}, p
        assert trial.params.get("reconstruct", p["reconstruct"]) == p["reconstruct"]
        assert spec.allocation == {}
        if spec.method == "magnitude":
            assert spec.knobs == {"norm": 1.0}  # the default, though the space searches it
        if spec.method == "hyperflows":  # no default: the geometric middle of its range
            assert spec.knobs["pressure"] == pytest.approx(math.sqrt(1e-4 * 1.0))
            assert spec.target_sparsity is None and spec.target_macs_ratio is None
        elif spec.granularity == "unstructured":
            assert spec.target_sparsity == pytest.approx(0.6 + MARGIN)
        else:
            assert spec.target_macs_ratio == pytest.approx(0.5 - MARGIN)


def test_single_choices_are_not_params():
    params = baseline_params(_cfg(space={"methods": ["magnitude"]}))
    assert params == [{"target_sparsity": pytest.approx((0.3 + 0.97) / 2)}]


def test_targets_by_mode_clamped_into_the_space():
    space = {"sparsity": [0.4, 0.7], "macs_ratio": [0.3, 0.6], "target_sparsity": 0.5}
    assert targets(_cfg(space=space)) == (0.5, pytest.approx(0.45))  # pareto: target_sparsity, middle of the MACs range
    only_macs = _cfg(space=space, objective={"mode": "constrained", "max_macs_ratio": 0.2})
    assert targets(only_macs) == (0.7, 0.3)  # 1 - 0.2 and 0.2 - margin, both clamped
    only_sparsity = _cfg(space=space, objective={"mode": "constrained", "min_sparsity": 0.55})
    assert targets(only_sparsity) == (pytest.approx(0.55 + MARGIN), pytest.approx(0.45))


def test_a_new_study_starts_with_the_baselines_and_a_resumed_one_does_not_enqueue_again(tmp_path, caplog):
    cfg = _cfg(tmp_path, name="base", budget={"trials": 4})
    with caplog.at_level(logging.WARNING, logger="search.study.baselines"):
        study = open_study(cfg)
    expected = baseline_params(cfg)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == len(expected) == 20 and all(t.user_attrs[BASELINE_ATTR] for t in waiting)
    assert "budget.trials is 4 but the space has 20 baselines" in caplog.text
    # the first trials asked are the baselines, in order, with their parameters
    for p in expected[:3]:
        trial = study.ask()
        spec = suggest(trial, cfg)
        assert trial.user_attrs[BASELINE_ATTR]
        assert trial.params == {k: v for k, v in p.items() if k in trial.params} and set(p) - set(trial.params) <= {"reconstruct"}
        assert spec.allocation == {}
        study.tell(trial, [0.5, 100.0])
    # resuming (the same run folder) loads the study and enqueues nothing
    again = open_study(cfg)
    assert len(again.trials) == len(expected)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials) == 3
    nxt = again.ask()
    suggest(nxt, cfg)
    assert nxt.params == {k: v for k, v in expected[3].items() if k in nxt.params}  # the waiting baselines run first
    assert set(expected[3]) - set(nxt.params) <= {"reconstruct"}


@pytest.mark.slow
def test_a_constrained_search_starts_from_its_baselines_and_reports_only_feasible_candidates(tmp_path, ray_local):
    from search.records.query import best
    from search.runner.driver import run_search

    from conftest import candidate_runs, search_config

    space = {"methods": ["magnitude", "random"], "sparsity": [0.5, 0.98]}
    over = {"space": space, "objective": {"mode": "constrained", "min_sparsity": 0.96}}
    cfg = search_config(tmp_path, "feasible", 6, **over)
    out = run_search(cfg, quiet=True)
    assert (out.evaluated, out.failed) == (6, 0)

    study = open_study(cfg)
    first = sorted(study.trials, key=lambda t: t.number)[:2]
    assert [t.params for t in first] == [{"method": m, "target_sparsity": 0.96 + MARGIN} for m in ("magnitude", "random")]
    assert all(t.user_attrs[BASELINE_ATTR] for t in first) and not any(BASELINE_ATTR in t.user_attrs for t in study.trials[2:])
    client, runs = candidate_runs(cfg)
    by_trial = {int(r.data.tags["trial_number"]): r for r in runs}
    assert sorted(n for n, r in by_trial.items() if r.data.tags.get("baseline") == "1") == [0, 1]
    for r in runs:  # the feasible metric is the constraint
        assert r.data.metrics["feasible"] == float(r.data.metrics["sparsity"] >= 0.96)
    assert by_trial[0].data.metrics["feasible"] == by_trial[1].data.metrics["feasible"] == 1.0  # rounding stays inside
    infeasible = [r.data.metrics["accuracy"] for r in runs if r.data.metrics["feasible"] == 0]
    feasible_best = max(r.data.metrics["accuracy"] for r in runs if r.data.metrics["feasible"] == 1)
    assert infeasible and max(infeasible) > feasible_best  # the sampler found a more accurate, infeasible candidate
    assert study.best_trial.value == feasible_best  # Optuna's answer, which best and the summary now agree with
    rows = best(out.tracking_uri, cfg.name)
    assert rows and all(r["feasible"] == 1.0 for r in rows) and rows[0]["accuracy"] == feasible_best
    assert client.get_run(out.parent_run_id).data.metrics["best_accuracy"] == feasible_best

    out2 = run_search(search_config(tmp_path, "feasible", 7, **over), quiet=True)  # resumed: no baseline again
    assert out2.evaluated == 1 and out2.recorded_total == 7
    _, runs = candidate_runs(cfg)
    assert sum(r.data.tags.get("baseline") == "1" for r in runs) == 2 and len(open_study(cfg).trials) == 7


def test_a_baseline_lost_by_a_killed_driver_is_requeued_as_a_baseline(tmp_path):
    from search.records.runs import Recorder
    from search.study.study import repair

    cfg = _cfg(tmp_path, name="lost", space={"methods": ["magnitude", "random"]})
    study = open_study(cfg)
    trial = study.ask()  # a baseline in flight when the driver died: RUNNING, never recorded
    suggest(trial, cfg)
    rec = Recorder(cfg.resolved_tracking_uri(), cfg.name, artifact_location=(tmp_path / "art").as_uri())
    assert repair(study, cfg, rec, rec.start_parent(None, cfg.name, {})) == (0, 1)
    again = study.ask()
    assert again.user_attrs[BASELINE_ATTR] and suggest(again, cfg).method == "random"  # the other baseline still waits first
    requeued = study.ask()
    assert requeued.user_attrs[BASELINE_ATTR] and suggest(requeued, cfg).method == "magnitude"
