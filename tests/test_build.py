"""One candidate lifecycle: ``ps.prune``, the evaluator and export build the same network."""

from __future__ import annotations

import pytest
import torch

from pipeline.api import prune
from pipeline.build import BuildContext, build_candidate
from pipeline.errors import InputError
from pipeline.evaluator import Evaluator
from pipeline.measure import MeasureConfig
from pipeline.spec import CandidateSpec, RecalSpec, ReconSpec
from search.export.rebuild import rebuild
from search.records.runs import Recorder
from tests.conftest import search_config

CASES = {
    "unstructured": (dict(sparsity=0.8, reconstruct=True), CandidateSpec(target_sparsity=0.8, reconstruct=ReconSpec(mode="lsq"))),
    "channel": (dict(macs_ratio=0.5), CandidateSpec(granularity="channel", target_sparsity=None, target_macs_ratio=0.5)),
}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("case", list(CASES))
def test_prune_the_evaluator_and_export_build_the_same_network(case, digits, digits_model, tmp_path):
    kwargs, spec = CASES[case]
    ckpt = tmp_path / "digits.pt"
    torch.save(digits_model.state_dict(), ckpt)
    cfg = search_config(tmp_path, f"build-{case}", 1, model={"checkpoint": str(ckpt)})
    evaluator = Evaluator(cfg.model, digits_model.state_dict(), digits, MeasureConfig(latency_repeats=1, collapse_plot=False), threads=1)
    by_evaluator, result = evaluator.build(spec)
    assert result.state == "ok", result.error

    by_prune, _ = prune(digits_model, "magnitude", calib=(digits.calib.x, digits.calib.y), **kwargs)

    recorder = Recorder(cfg.resolved_tracking_uri(), cfg.name, artifact_location=str(tmp_path / "artifacts"))
    parent = recorder.start_parent(None, cfg.name, {})
    recorder.log_parent_artifact(parent, "config.json", cfg.model_dump_json().encode())
    run_id = recorder.record(parent, 0, result)
    by_export = rebuild(cfg.resolved_tracking_uri(), run_id, tolerance=0.0).model

    dense = digits_model.state_dict()
    assert not _equal(by_evaluator.state_dict(), {k: v for k, v in dense.items() if k in by_evaluator.state_dict()})  # it pruned
    assert _equal(by_prune.state_dict(), by_evaluator.state_dict())
    assert _equal(by_export.state_dict(), by_evaluator.state_dict())


def test_the_stages_take_their_own_image_counts(digits, digits_model):
    ctx = BuildContext.from_splits(digits)
    spec = CandidateSpec(target_sparsity=0.8, reconstruct=ReconSpec(mode="lsq", images=32), recal=RecalSpec(images=64))
    few = BuildContext(
        calib_x=digits.calib.x[:64], calib_y=digits.calib.y[:64], train_x=digits.train.x, train_y=digits.train.y,
        example_input=ctx.example_input, num_classes=ctx.num_classes, val_x=ctx.val_x, val_y=ctx.val_y,
    )  # fmt: skip
    a, b = build_candidate(digits_model, ctx, spec), build_candidate(digits_model, few, spec)
    assert _equal(a.model.state_dict(), b.model.state_dict())  # only the first 32 / 64 images are read
    assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.metrics["recon_layers"] > 0


def test_keep_better_without_validation_images_is_refused(digits, digits_model):
    ctx = BuildContext.from_splits(digits)
    bare = BuildContext(
        calib_x=ctx.calib_x, calib_y=ctx.calib_y, train_x=ctx.train_x, train_y=ctx.train_y, example_input=ctx.example_input, num_classes=10
    )
    with pytest.raises(InputError, match="keep_better"):
        build_candidate(digits_model, bare, CandidateSpec(recal=RecalSpec(keep_better=True)))
