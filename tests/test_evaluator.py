"""The evaluator in-process: recalibration settings, fine-tuning, independence of candidates."""

from __future__ import annotations

import io

import pyarrow.parquet as pq
import pytest

from pipeline.evaluator import Evaluator
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec, RecalSpec, ReconSpec


@pytest.fixture(scope="module")
def evaluator(digits, digits_model):
    return Evaluator(ModelConfig(), digits_model.state_dict(), digits, MeasureConfig(latency_repeats=2), threads=1)


def test_fine_tuning_keeps_the_mask_and_records_both_accuracies(evaluator):
    r = evaluator.evaluate(CandidateSpec(target_sparsity=0.95, finetune_steps=40))
    assert r.state == "ok", r.error
    m = r.metrics
    assert m["finetune_steps"] == 40 and m["finetune_s"] > 0
    # training moved the network: at 95 % sparsity 40 steps lift accuracy (measured 0.88 -> 0.98)
    assert m["accuracy"] > m["accuracy_before_finetune"] + 0.03, (m["accuracy_before_finetune"], m["accuracy"])
    assert m["sparsity"] == pytest.approx(0.95, abs=1e-4)  # pruned weights stay zero through training


def test_keep_better_keeps_the_stored_statistics_when_they_score_higher(evaluator):
    # at 10 % sparsity the stored statistics are still right; 8 calibration images are a poor estimate
    spec = CandidateSpec(target_sparsity=0.1, recal=RecalSpec(images=8, batch_size=8, keep_better=True))
    plain = evaluator.evaluate(spec.model_copy(update={"recal": RecalSpec(images=8, batch_size=8)}))
    # the premise, asserted rather than assumed (measured: 0.98 stored, 0.91 recalibrated)
    assert plain.metrics["recal_applied"] == 1.0
    assert plain.metrics["accuracy"] < plain.metrics["accuracy_before_recal"] - 0.02, plain.metrics
    r = evaluator.evaluate(spec)
    assert r.metrics["recal_applied"] == 0.0
    assert r.metrics["accuracy"] == r.metrics["accuracy_before_recal"] == plain.metrics["accuracy_before_recal"]


def test_fine_tuning_learning_rate_comes_from_the_spec(evaluator):
    spec = CandidateSpec(target_sparsity=0.95, finetune_steps=20)
    default, slow = evaluator.evaluate(spec), evaluator.evaluate(spec.model_copy(update={"finetune_lr": 1e-6}))
    assert default.metrics["accuracy_before_finetune"] == slow.metrics["accuracy_before_finetune"]
    assert slow.metrics["accuracy"] == pytest.approx(slow.metrics["accuracy_before_finetune"], abs=0.01)  # lr 1e-6: nothing moves
    assert default.metrics["accuracy"] != slow.metrics["accuracy"]


def test_method_diagnostics_surface_as_metrics(evaluator):
    spec = CandidateSpec(method="ocs", granularity="channel", target_sparsity=None, target_macs_ratio=0.5, knobs={"epochs": 4, "steps_per_epoch": 5})
    r = evaluator.evaluate(spec)
    assert r.state == "ok", r.error
    assert 1 <= r.metrics["ocs_stable_epoch"] <= 4 and r.metrics["ocs_stabilized"] in (0.0, 1.0)
    assert not any("history" in k for k in r.metrics)  # lists stay in plan.parquet
    assert len(PrunePlan.from_parquet(r.plan).diagnostics["stability_history"]) == r.metrics["ocs_stable_epoch"]


def test_candidates_do_not_affect_each_other(evaluator):
    spec = CandidateSpec(target_sparsity=0.8)
    first = evaluator.evaluate(spec).metrics
    evaluator.evaluate(CandidateSpec(method="random", target_sparsity=0.97, finetune_steps=5))
    again = evaluator.evaluate(spec).metrics
    for k in ("accuracy", "accuracy_before_recal", "sparsity", "macs", "params"):
        assert first[k] == again[k], k


def test_signal_collapse_diagnostic(evaluator):
    r = evaluator.evaluate(CandidateSpec(target_sparsity=0.9))
    t = pq.read_table(io.BytesIO(r.diagnostics)).to_pydict()
    assert t["layer"] == ["bn1", "bn2", "bn3"]
    # the variance shrinks layer after layer once pruned (measured: 1.0, 0.79, 0.67) and
    # recalibration brings every layer back to the dense variance
    before, after = t["var_ratio_before"], t["var_ratio_after"]
    assert before[0] > before[1] > before[2] and before[2] < 0.85
    assert all(abs(1 - v) < 0.1 for v in after)
    assert r.diagnostics_png[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unsupported_spec_is_a_failed_result(evaluator):
    r = evaluator.evaluate(CandidateSpec(method="ocs", granularity="unstructured", target_sparsity=0.5))
    assert r.state == "failed" and "granularity" in r.error


@pytest.mark.parametrize(
    "spec",
    [
        # the stored statistics score higher (keep_better keeps them; premise asserted below)
        CandidateSpec(target_sparsity=0.1, recal=RecalSpec(images=8, batch_size=8, keep_better=True)),
        CandidateSpec(target_sparsity=0.9, recal=RecalSpec(images=256, augment=True, keep_better=True)),
        CandidateSpec(target_sparsity=0.1, recal=RecalSpec(images=8, batch_size=8)),  # keep_better off: the recalibrated ones
        CandidateSpec(method="magnitude", granularity="channel", scope="layerwise", target_macs_ratio=0.5, recal=RecalSpec(keep_better=True)),
        CandidateSpec(target_sparsity=0.8, reconstruct=ReconSpec(mode="lsq", images=64), recal=RecalSpec(keep_better=True)),
    ],
    ids=["stored-better", "recal-better", "no-keep-better", "channel", "reconstructed"],
)
def test_validation_accuracy_is_the_accuracy_evaluate_records(evaluator, spec):
    full = evaluator.evaluate(spec)
    assert full.state == "ok", full.error
    assert evaluator.validation_accuracy(spec) == full.metrics["accuracy"]
    if spec.recal.images == 8 and spec.recal.keep_better:
        assert full.metrics["recal_applied"] == 0.0  # the keep-better branch was exercised


def test_validation_accuracy_raises_what_evaluate_records_as_failed(evaluator):
    spec = CandidateSpec(method="hyperflows", granularity="channel", target_macs_ratio=0.5)
    assert evaluator.evaluate(spec).state == "failed"
    with pytest.raises(ValueError, match="granularity"):
        evaluator.validation_accuracy(spec)
