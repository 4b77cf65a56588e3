"""Records sized for thousands of candidates: refit weights compressed, kept for the front
only or replayed (``records.refit_weights``)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateResult, CandidateSpec
from search.records.refit import RefitPolicy


def _plan(refit: bool = True) -> PrunePlan:
    g = torch.Generator().manual_seed(0)
    return PrunePlan(
        masks={"conv.weight": torch.rand(4, 3, 3, 3, generator=g) > 0.5},
        channels={"conv": torch.tensor([0, 2, 3])},
        weights={"fc.weight": torch.randn(10, 4, generator=g)},
        refit={"conv.weight": torch.randn(3, 3, 3, 3, generator=g)} if refit else {},
    )


def test_plan_round_trips_with_float_byte_planes_and_reads_plain_plans():
    plan = _plan()
    back = PrunePlan.from_parquet(plan.to_parquet())
    for field in ("masks", "channels", "weights", "refit"):
        got, want = getattr(back, field), getattr(plan, field)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # a plan written before byte planes (plain float32 bytes, no metadata) still reads
    w = plan.refit["conv.weight"].numpy()
    rows = {"kind": ["refit"], "name": ["conv.weight"], "shape": [list(w.shape)], "data": [w.tobytes()]}
    buf = io.BytesIO()
    pq.write_table(pa.table(rows), buf)
    assert torch.equal(PrunePlan.from_parquet(buf.getvalue()).refit["conv.weight"], plan.refit["conv.weight"])


def test_plan_parquet_is_zstd_compressed_and_smaller_than_its_floats():
    big = PrunePlan(refit={"w": torch.randn(256, 256, 3, 3) * 0.01})
    data = big.to_parquet()
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert meta.row_group(0).column(3).compression == "ZSTD"
    assert len(data) < 0.95 * big.refit["w"].numel() * 4


def _result(acc: float, macs: float, state: str = "ok") -> CandidateResult:
    spec = CandidateSpec(method="magnitude", granularity="unstructured", target_sparsity=0.5)
    return CandidateResult(spec=spec, state=state, metrics={"accuracy": acc, "macs": macs}, plan=_plan().to_parquet())


def _has_refit(result: CandidateResult) -> bool:
    return bool(PrunePlan.from_parquet(result.plan).refit)


def test_front_policy_keeps_refit_weights_of_candidates_on_the_front_when_recorded():
    policy = RefitPolicy("front")
    kept = [
        _has_refit(policy.apply(_result(a, m), {"feasible": f}))
        for a, m, f in [
            (0.90, 100.0, 1.0),  # first: on the front
            (0.80, 120.0, 1.0),  # dominated by the first
            (0.95, 150.0, 1.0),  # more accurate, more MACs: on the front
            (0.99, 50.0, 0.0),  # infeasible: never best, no weights, and it dominates nothing
            (0.85, 90.0, 1.0),  # fewer MACs than any feasible one: on the front
            (0.90, 100.0, 1.0),  # an exact duplicate of the first: the first keeps the weights
        ]
    ]
    assert kept == [True, False, True, False, True, False]
    # masks and kept channels stay whatever happens to the refit weights
    stripped = PrunePlan.from_parquet(RefitPolicy("front", [{"state": "ok", "accuracy": 1.0, "macs": 1.0}]).apply(_result(0.5, 9.0), {}).plan)
    assert not stripped.refit and stripped.masks.keys() == {"conv.weight"} and stripped.channels.keys() == {"conv"}


@pytest.mark.parametrize("setting", ["all", "replay"])
def test_other_settings_leave_results_as_the_actor_sent_them(setting):
    r = _result(0.1, 1e9)
    policy = RefitPolicy(setting, [{"state": "ok", "accuracy": 1.0, "macs": 1.0, "feasible": 1.0}])
    assert policy.apply(r, {"feasible": 1.0}) is r


def test_resumed_front_counts_the_recorded_feasible_candidates_only():
    rows = [
        {"state": "ok", "accuracy": 0.9, "macs": 100.0, "feasible": 1.0},
        {"state": "failed"},
        {"state": "ok", "accuracy": 0.99, "macs": 10.0, "feasible": 0.0},
    ]
    policy = RefitPolicy("front", rows)
    assert not _has_refit(policy.apply(_result(0.85, 110.0), {"feasible": 1.0}))
    assert _has_refit(policy.apply(_result(0.95, 110.0), {"feasible": 1.0}))


@pytest.fixture(scope="module")
def front_search(tmp_path_factory, ray_local):
    """A real digits search whose records keep refit weights for the front only."""
    import search as ps

    from conftest import search_config

    cfg = search_config(
        tmp_path_factory.mktemp("refit_front"),
        "digits-refit-front",
        5,
        actors={"count": 1},
        space={"methods": ["magnitude"], "granularity": ["unstructured", "channel"], "reconstruct": ["lsq"], "sparsity": [0.6, 0.95]},
        records={"refit_weights": "front"},
    )
    return ps.run(cfg)


@pytest.mark.slow
def test_front_records_keep_refit_weights_on_the_front_and_every_candidate_rebuilds(front_search, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    from search.export.rebuild import artifact, rebuild

    res = front_search
    ok = res.frame[res.frame.state == "ok"]
    front = set(res.pareto.run_id)
    client = MlflowClient(res.tracking_uri)
    replayed = []
    for rid in ok.run_id:
        plan = PrunePlan.from_parquet(artifact(client, rid, "plan.parquet", str(tmp_path)))
        assert plan.masks or plan.channels
        if rid in front:
            assert plan.refit, "a front candidate keeps its refit weights"
        if not plan.refit:
            replayed.append(rid)
            rebuilt = rebuild(res.tracking_uri, rid)  # replays the fit; raises unless the accuracy reproduces
            assert "recon_s" in rebuilt.metrics and rebuilt.rebuilt_accuracy == rebuilt.recorded_accuracy
    assert replayed, "some candidate off the front was recorded without refit weights"
    # in a fresh process, through the CLI: export verifies the rebuilt accuracy
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "replayed.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "export", replayed[0], "--tracking-uri", res.tracking_uri, "-o", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file()


@pytest.mark.slow
def test_a_replay_on_other_calibration_images_is_refused(front_search, tmp_path):
    from mlflow.tracking import MlflowClient

    from search.export.rebuild import ExportError, artifact, rebuild

    res = front_search
    client = MlflowClient(res.tracking_uri)
    rid = next(
        r for r in res.frame[res.frame.state == "ok"].run_id if not PrunePlan.from_parquet(artifact(client, r, "plan.parquet", str(tmp_path))).refit
    )
    client.set_tag(rid, "info.calib_sha256", "0" * 64)  # as if the data had changed since the search
    with pytest.raises(ExportError, match="data changed since the search"):
        rebuild(res.tracking_uri, rid)
