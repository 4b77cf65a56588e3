"""Fidelity rungs in one evaluator (in-process): settings per rung, reuse of lower rungs' work."""

from __future__ import annotations

from collections import Counter

import pytest

import pipeline.build as build_module
import pipeline.fidelity as fidelity_module
from pipeline.evaluator import Evaluator
from pipeline.fidelity import Rung, rung_spec
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig
from pipeline.spec import CandidateSpec, RecalSpec, ReconSpec

RUNG0 = Rung(index=0, recal_images=32, recon_images=0, val_images=64)
RUNG1 = Rung(index=1, recal_images=32, recon_images=64, val_images=128)
FULL = Rung(index=2, final=True)


@pytest.fixture(scope="module")
def evaluator(digits, digits_model):
    return Evaluator(ModelConfig(), digits_model.state_dict(), digits, MeasureConfig(latency_repeats=2), threads=1)


@pytest.fixture
def calls(monkeypatch):
    """Counts of the method's planning, reconstruction and recalibration calls (the real ones run)."""
    seen: Counter[str] = Counter()

    def spy(module, name):
        real = getattr(module, name)

        def counted(*args, **kwargs):
            seen[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    spy(build_module, "plan_candidate")
    spy(build_module, "reconstruct")
    spy(build_module, "recalibrate")
    spy(fidelity_module, "recalibrate")
    return seen


def test_rung_spec_lowers_the_candidates_settings_and_the_final_rung_keeps_them():
    spec = CandidateSpec(target_sparsity=0.8, recal=RecalSpec(images=256), reconstruct=ReconSpec(mode="lsq", images=512))
    low = rung_spec(spec, RUNG0)
    assert low.recal.images == 32 and low.reconstruct.mode == "none" and low.target_sparsity == 0.8
    assert rung_spec(spec, RUNG1).reconstruct.images == 64 and rung_spec(spec, RUNG1).reconstruct.mode == "lsq"
    assert rung_spec(spec, FULL) == spec
    # a rung never raises a setting above the candidate's own
    assert rung_spec(spec.model_copy(update={"recal": {"images": 16}}), RUNG0).recal.images == 16


def test_a_candidate_promoted_to_rung_1_is_neither_pruned_nor_recalibrated_twice(evaluator, calls):
    spec = CandidateSpec(target_sparsity=0.9, recal=RecalSpec(images=64, batch_size=32), seed=3)
    r0 = evaluator.evaluate(spec, RUNG0)
    assert r0.state == "ok", r0.error
    assert r0.metrics["fidelity"] == 0 and r0.metrics["val_images"] == 64 and r0.info["rung_cache"] == "miss"
    assert r0.spec.recal.images == 32  # the record rebuilds what was measured
    r1 = evaluator.evaluate(spec, RUNG1)
    assert r1.metrics["fidelity"] == 1 and r1.metrics["val_images"] == 128 and r1.info["rung_cache"] == "hit"
    assert calls == {"plan_candidate": 1, "recalibrate": 1}, calls
    assert r1.metrics["sparsity"] == r0.metrics["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_reconstruction_at_rung_1_is_reused_by_the_full_rung_and_matches_a_plain_evaluation(evaluator, calls):
    spec = CandidateSpec(target_sparsity=0.9, recal=RecalSpec(images=64, batch_size=32), reconstruct=ReconSpec(mode="lsq", images=64), seed=5)
    for rung in (RUNG0, RUNG1):
        assert evaluator.evaluate(spec, rung).state == "ok"
    assert calls["reconstruct"] == 1
    full = evaluator.evaluate(spec, FULL)
    assert full.state == "ok", full.error
    # one plan and one reconstruction for all three rungs; recalibration after each change of weights or settings
    assert calls["plan_candidate"] == 1 and calls["reconstruct"] == 1, calls
    assert full.metrics["fidelity"] == 2 and full.info["rung_cache"] == "hit" and full.spec == spec
    assert {"test_accuracy", "latency_ms", "recon_s", "recon_error"} <= set(full.metrics)
    plain = evaluator.evaluate(spec)
    assert full.metrics["accuracy"] == pytest.approx(plain.metrics["accuracy"], abs=1e-9)
    assert full.metrics["sparsity"] == pytest.approx(plain.metrics["sparsity"], abs=1e-9)


def test_an_evaluator_without_the_candidates_work_redoes_it_and_says_so(evaluator, calls):
    spec = CandidateSpec(target_sparsity=0.7, recal=RecalSpec(images=64, batch_size=32), seed=11)
    r1 = evaluator.evaluate(spec, RUNG1)  # as if rung 0 had run on another actor
    assert r1.state == "ok" and r1.info["rung_cache"] == "miss"
    assert calls["plan_candidate"] == 1
