"""Multi-fidelity searches for real: local Ray actors, an Optuna journal, an MLflow SQLite store."""

from __future__ import annotations

import json

import optuna
import pytest
import ray
from optuna.trial import TrialState

from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig
from pipeline.spec import CandidateResult, CandidateSpec
from search.cli.parser import main as cli_main
from search.cluster.pool import EvaluatorPool
from search.config import ConfigError
from search.export.rebuild import ExportError, rebuild
from search.records import query
from search.records.runs import Recorder
from search.runner.driver import run_search
from search.study.fidelity import PRUNED, make_pruner, rung0_full_pairs, spearman, stop_at_rung
from search.study.rungs import FidelityConfig
from search.study.study import RUN_ID_ATTR, open_study, repair

from conftest import candidate_runs, search_config

# digits: 256 calibration and 300 validation images by default
RUNGS = [{"recal_images": 32, "recon_images": 0, "val_images": 100}, {"recal_images": 32, "recon_images": 64, "val_images": 200}]
CONSTRAINED = {"mode": "constrained", "min_sparsity": 0.85}
# sparse enough that digits candidates differ on 100 images
SPACE = {"sparsity": [0.85, 0.98], "reconstruct": ["none", "lsq"], "recon": {"images": [64, 128]}}


def _cfg(tmp_path, trials, fidelity=None, **over):
    over.setdefault("objective", CONSTRAINED)
    over.setdefault("space", SPACE)
    if fidelity is not None:
        over["fidelity"] = fidelity
    return search_config(tmp_path, "fid", trials, sampler={"startup_trials": 3, "seed": 7}, **over)


def _study(cfg):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(cfg.run_path / "optuna.journal")))
    return optuna.load_study(study_name=cfg.name, storage=storage)


def test_a_pareto_search_with_fidelity_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ConfigError, match="fidelity.enabled needs objective.mode: constrained"):
        _cfg(tmp_path, 4, fidelity={"enabled": True}, objective={"mode": "pareto"})
    with pytest.raises(ConfigError, match="fidelity.rungs.0.val_images"):
        _cfg(tmp_path, 4, fidelity={"enabled": True, "rungs": [{"val_images": 0}]})
    assert FidelityConfig().rung(2).final and FidelityConfig().rung(0).val_images == 256


def test_the_pruner_is_a_no_op_when_fidelity_is_off(tmp_path):
    assert isinstance(make_pruner(_cfg(tmp_path, 4)), optuna.pruners.NopPruner)
    on = _cfg(tmp_path, 4, fidelity={"enabled": True, "pruner": "hyperband"})
    assert isinstance(make_pruner(on), optuna.pruners.HyperbandPruner)


def test_spearman_ranks():
    assert spearman([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.9, 0.7]) == pytest.approx(0.8)
    assert spearman([0.1, 0.2], [0.3, 0.4]) != spearman([0.1, 0.2], [0.3, 0.4])  # NaN: too few pairs


def test_a_pruned_candidate_recorded_before_a_crash_is_told_from_its_record(tmp_path):
    """The driver died between recording a stopped candidate and telling Optuna: resume
    tells it PRUNED from its record, and neither re-queues nor loses it."""
    cfg = _cfg(tmp_path, 4, fidelity={"enabled": True, "rungs": RUNGS})
    recorder = Recorder(cfg.resolved_tracking_uri(), cfg.experiment)
    parent = recorder.start_parent(None, cfg.name, {})
    study = open_study(cfg)
    trial = study.ask()
    metrics = {"accuracy": 0.5, "sparsity": 0.8, "macs": 1e5, "macs_ratio": 0.3, "fidelity": 0.0}
    stop_at_rung(trial, cfg, 0, metrics)
    result = CandidateResult(CandidateSpec(target_sparsity=0.8), "ok", metrics)
    run_id = recorder.record(parent, trial.number, result, {"state": PRUNED})
    waiting = len(study.get_trials(states=(TrialState.WAITING,)))  # the other baseline
    told, requeued = repair(study, cfg, recorder, parent)
    assert (told, requeued) == (1, 0)
    t = study.trials[trial.number]
    assert t.state == TrialState.PRUNED and t.user_attrs[RUN_ID_ATTR] == run_id
    assert len(study.get_trials(states=(TrialState.WAITING,))) == waiting  # nothing re-queued
    assert repair(study, cfg, recorder, parent) == (0, 0)


@pytest.mark.slow
def test_promoted_rungs_return_to_the_actor_holding_their_work_or_are_redone(ray_local, digits, digits_model):
    init = (ModelConfig(), ray.put(digits_model.state_dict()), ray.put(digits), MeasureConfig(latency_repeats=2), 1, "cpu")
    pool = EvaluatorPool(2, init, queue=1, name="fidtest")
    f = FidelityConfig(enabled=True, rungs=RUNGS)
    try:
        assert pool.wait_ready(120) == 2
        specs = {n: CandidateSpec(target_sparsity=0.6 + 0.05 * n, seed=n) for n in range(4)}
        for n, spec in specs.items():
            pool.submit(n, spec, f.rung(0))
        first = _drain(pool, 4)
        for n in specs:
            pool.submit(n, specs[n], f.rung(1), first=True)
        second = _drain(pool, 4)
        for n in specs:
            assert second[n].info["pid"] == first[n].info["pid"], "a promoted rung left the actor holding its work"
            assert second[n].info["rung_cache"] == "hit" and second[n].metrics["fidelity"] == 1
        # the actor holding candidate 0's work dies: its next rung is redone (from the start) and says so
        home = next(i for i, a in enumerate(pool.actors) if ray.get(a.node.remote())["pid"] == int(first[0].info["pid"]))
        ray.kill(pool.actors[home], no_restart=False)
        pool.submit(0, specs[0], f.rung(2), first=True)
        last = _drain(pool, 1)[0]
        assert last.state == "ok", last.error
        assert last.info["rung_cache"] == "miss" and last.metrics["fidelity"] == 2 and "test_accuracy" in last.metrics
    finally:
        pool.shutdown()


def _drain(pool, n: int) -> dict[int, CandidateResult]:
    out: dict[int, CandidateResult] = {}
    for _ in range(600):
        out.update(dict(pool.wait(timeout=1.0)))
        if len(out) == n:
            return out
    raise AssertionError(f"only {len(out)} of {n} results")


@pytest.mark.slow
def test_a_multi_fidelity_search_records_pruned_candidates_once_and_best_shows_full_ones(tmp_path, ray_local, capsys):
    cfg = _cfg(tmp_path, 10, fidelity={"enabled": True, "rungs": RUNGS})
    out = run_search(cfg, quiet=True)
    assert out.recorded_total == 10 and out.failed == 0
    client, runs = candidate_runs(cfg)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == list(range(10))  # each candidate once
    pruned = [r for r in runs if r.data.tags["state"] == PRUNED]
    full = [r for r in runs if r.data.tags["state"] == "ok"]
    assert pruned and full, [r.data.tags["state"] for r in runs]
    assert all(r.data.metrics["fidelity"] < 2 and r.info.status == "FINISHED" for r in pruned)
    assert all(r.data.metrics["fidelity"] == 2 and "test_accuracy" in r.data.metrics for r in full)
    study = _study(cfg)
    states = {t.number: t.state for t in study.trials}
    assert {int(r.data.tags["trial_number"]) for r in pruned} == {n for n, s in states.items() if s == TrialState.PRUNED}

    uri = cfg.resolved_tracking_uri()
    shown = query.best(uri, cfg.name, top=None, front=False, feasible=None)
    assert {r["run_id"] for r in shown} == {r.info.run_id for r in full}
    every = query.best(uri, cfg.name, top=None, front=False, feasible=None, fidelity="any")
    assert {r["run_id"] for r in every} == {r.info.run_id for r in runs}
    for flag, expected in (("full", full), ("any", runs)):  # the CLI's `best --fidelity`
        assert cli_main(["best", "--tracking-uri", uri, "--all", "--feasibility", "any", "--fidelity", flag, "--format", "json"]) == 0
        assert {r["run_id"] for r in json.loads(capsys.readouterr().out)} == {r.info.run_id for r in expected}
    with pytest.raises(ExportError, match="stopped by the trial pruner at fidelity rung"):
        rebuild(uri, pruned[0].info.run_id)
    parent = client.get_run(out.parent_run_id)
    assert parent.data.metrics["candidates_pruned"] == len(pruned) and parent.data.metrics["candidates"] == len(full)
    assert "rung0_vs_full.png" in {a.path for a in client.list_artifacts(out.parent_run_id)}
    low, high = rung0_full_pairs(study)
    assert len(high) == len(full) and all(0 <= v <= 1 for v in low)
    if len(set(low)) > 1 and len(set(high)) > 1:  # else undefined, and not logged
        assert parent.data.metrics["spearman_rung0_full"] == pytest.approx(spearman(low, high))
    else:
        assert "spearman_rung0_full" not in parent.data.metrics

    # resumed with a larger budget: the stopped candidates stay recorded, none is re-run
    out2 = run_search(_cfg(tmp_path, 13, fidelity={"enabled": True, "rungs": RUNGS}), quiet=True)
    assert out2.recorded_total == 13
    _, runs2 = candidate_runs(cfg)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs2) == list(range(13))
    assert {r.info.run_id for r in pruned} <= {r.info.run_id for r in runs2 if r.data.tags["state"] == PRUNED}


@pytest.mark.slow
def test_with_fidelity_off_its_settings_change_nothing(tmp_path, ray_local):
    """Same seed: the same trials and the same measurements with the section absent or
    present but off (another pruner and rungs), and no trial reports an intermediate value."""
    one = {"count": 1, "queue": 1}  # one candidate at a time: what the sampler has seen is the same at each ask
    plain = _cfg(tmp_path / "a", 5, actors=one)
    off = _cfg(tmp_path / "b", 5, actors=one, fidelity={"enabled": False, "pruner": "hyperband", "rungs": RUNGS[:1]})
    seen = []
    for cfg in (plain, off):
        run_search(cfg, quiet=True)
        trials = sorted(_study(cfg).trials, key=lambda t: t.number)
        assert all(t.state == TrialState.COMPLETE and not t.intermediate_values for t in trials)
        seen.append([(t.params, t.values) for t in trials])
    assert seen[0] == seen[1]
