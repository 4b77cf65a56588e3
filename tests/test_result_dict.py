"""``CandidateResult.to_dict`` / ``from_dict``: a result survives JSON unchanged."""

from __future__ import annotations

import json

from pipeline.spec import CandidateResult, CandidateSpec, RecalSpec


def test_a_result_round_trips_through_json():
    spec = CandidateSpec(
        method="screening", granularity="channel", target_macs_ratio=0.5, knobs={"screening_weight": 0.25}, recal=RecalSpec(augment=True)
    )
    res = CandidateResult(
        spec=spec,
        state="ok",
        metrics={"accuracy": 0.81, "macs": 2.0e7},
        info={"host": "vm", "threads": "1"},
        plan=bytes(range(256)),  # every byte value
        diagnostics=b"PAR1",
        diagnostics_png=b"\x89PNG\r\n",
    )
    back = CandidateResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res
    assert back.spec.to_json() == spec.to_json()


def test_a_failed_result_round_trips_and_missing_bytes_are_empty():
    res = CandidateResult(spec=CandidateSpec(target_sparsity=0.3), state="failed", error="ValueError: boom")
    data = json.loads(json.dumps(res.to_dict()))
    assert CandidateResult.from_dict(data) == res
    del data["diagnostics_png"]
    assert CandidateResult.from_dict(data).diagnostics_png == b""


def test_a_nan_metric_survives_json_and_a_nulled_one_reads_back_as_nan():
    import math

    res = CandidateResult(spec=CandidateSpec(), state="ok", metrics={"recon_error": math.nan, "accuracy": 0.5})
    back = CandidateResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert math.isnan(back.metrics["recon_error"]) and back.metrics["accuracy"] == 0.5
    nulled = {**res.to_dict(), "metrics": {"recon_error": None, "accuracy": 0.5}}  # what a strict JSON writer leaves
    assert math.isnan(CandidateResult.from_dict(nulled).metrics["recon_error"])
