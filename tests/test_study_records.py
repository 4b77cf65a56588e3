"""Record, tell and repair without Ray: a real MLflow SQLite store and a real Optuna journal."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateResult, CandidateSpec
from search.config import parse_config
from search.records.runs import Recorder
from search.study.space import suggest
from search.study.study import RUN_ID_ATTR, open_study, repair, tell

optuna.logging.set_verbosity(optuna.logging.WARNING)
METRICS = {"accuracy": 0.9, "accuracy_before_recal": 0.5, "macs": 400.0, "macs_ratio": 0.4, "sparsity": 0.7, "params": 12.0}


@pytest.fixture
def setup(tmp_path):
    cfg = parse_config({"name": "unit", "run_dir": str(tmp_path / "run"), "objective": {"mode": "constrained", "max_macs_ratio": 0.3}})
    rec = Recorder(cfg.resolved_tracking_uri(), cfg.name, artifact_location=(tmp_path / "art").as_uri())
    return cfg, rec, rec.start_parent(None, cfg.name, {}), open_study(cfg)


def _result(spec: CandidateSpec, **metrics) -> CandidateResult:
    return CandidateResult(
        spec=spec, state="ok", metrics={**METRICS, **metrics}, plan=PrunePlan().to_parquet(), diagnostics=b"TABLE", diagnostics_png=b"\x89PNG"
    )


def test_a_record_holds_every_metric_param_and_artifact(setup):
    cfg, rec, parent, _ = setup
    spec = CandidateSpec(target_sparsity=0.7, knobs={"norm": 1.0})
    rid = rec.record(parent, 3, _result(spec), {"steered": "power-law"})
    run = rec.client.get_run(rid)
    assert run.info.status == "FINISHED" and run.data.metrics == {**METRICS, "target_sparsity": 0.7, "knob_norm": 1.0}
    assert run.data.params["method"] == "magnitude" and CandidateSpec.from_json(run.data.params["spec"]) == spec
    assert {k: run.data.tags[k] for k in ("trial_number", "state", "steered", "mlflow.parentRunId")} == {
        "trial_number": "3",
        "state": "ok",
        "steered": "power-law",
        "mlflow.parentRunId": parent,
    }
    assert {f.path for f in rec.client.list_artifacts(rid)} == {"spec.json", "plan.parquet", "bn_variance.parquet", "bn_variance.png"}

    failed = rec.client.get_run(rec.record(parent, 4, CandidateResult(spec=spec, state="failed", error="ValueError: boom")))
    assert failed.info.status == "FAILED" and failed.data.tags["state"] == "failed" and failed.data.tags["error"] == "ValueError: boom"


def test_constrained_tell_passes_the_constraint_to_optuna(setup):
    cfg, rec, parent, study = setup
    over, within = study.ask(), study.ask()
    tell(study, cfg, over, "r0", "ok", {**METRICS, "macs_ratio": 0.5})
    tell(study, cfg, within, "r1", "ok", {**METRICS, "macs_ratio": 0.25, "accuracy": 0.6})
    t0, t1 = study.trials

    # Optuna reads feasibility from these values (<= 0 feasible): 0.5 - 0.3 and 0.25 - 0.3
    def constraints(t):
        return {k: v for k, v in t.system_attrs.items() if "constraint" in k}

    assert list(constraints(t0).values()) == pytest.approx([0.2]) and list(constraints(t1).values()) == pytest.approx([-0.05])
    assert all(k.endswith("max_macs_ratio") for k in constraints(t0))
    assert (t0.user_attrs[RUN_ID_ATTR], t0.values, t1.values) == ("r0", [0.9], [0.6])


def test_repair_tells_recorded_trials_and_requeues_the_rest(setup):
    cfg, rec, parent, study = setup
    recorded, lost = study.ask(), study.ask()
    spec_r, spec_l = suggest(recorded, cfg), suggest(lost, cfg)
    rid = rec.record(parent, recorded.number, _result(spec_r, macs_ratio=0.2))
    half = rec.client.create_run(rec.experiment_id, tags={"mlflow.parentRunId": parent, "trial_number": str(lost.number)})
    # the driver was killed here: both trials RUNNING, one complete record, one half-written

    assert repair(study, cfg, rec, parent) == (1, 1)
    assert rec.client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    trials = study.get_trials()
    t_rec, t_lost = trials[recorded.number], trials[lost.number]
    assert t_rec.state == TrialState.COMPLETE and t_rec.user_attrs[RUN_ID_ATTR] == rid and t_rec.values == [METRICS["accuracy"]]
    assert t_lost.state == TrialState.FAIL and t_lost.params == lost.params
    # the lost candidate waits to be evaluated again, with its parameters (the baselines of a new study wait too)
    requeued = [t for t in trials if t.state == TrialState.WAITING and t.number > lost.number]
    assert [t.system_attrs["fixed_params"] for t in requeued][-1:] == [lost.params]
    again = [suggest(study.ask(), cfg) for _ in requeued][-1]  # a new trial's seed, the same candidate
    assert again.model_copy(update={"seed": spec_l.seed}) == spec_l
