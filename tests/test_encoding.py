"""The trial encoding: one spelling of every setting, and records in the old spelling still load."""

from __future__ import annotations

import torch
from optuna.trial import FixedTrial

from pipeline.evaluator import Evaluator
from pipeline.measure import MeasureConfig
from pipeline.spec import CandidateSpec, ReconSpec
from search.config import parse_config
from search.export import export, load_exported
from search.records import runs
from search.records.query import candidate_rows
from search.study import encoding as enc
from search.study.baselines import baseline_params
from search.study.space import suggest
from tests.conftest import search_config


def _old_spec_params(spec: CandidateSpec) -> dict[str, str]:
    """How records were spelled before ``search.study.encoding`` (the writer of that version)."""
    p = {
        "method": spec.method,
        "granularity": spec.granularity,
        "scope": spec.scope,
        "target_sparsity": "" if spec.target_sparsity is None else f"{spec.target_sparsity:.6g}",
        "target_macs_ratio": "" if spec.target_macs_ratio is None else f"{spec.target_macs_ratio:.6g}",
        "reconstruct": spec.reconstruct.mode,
        "recal_images": str(spec.recal.images),
        "recal_mode": spec.recal.mode,
        "recal_augment": str(spec.recal.augment),
        "recal_pad": str(spec.recal.pad),
        "finetune_steps": str(spec.finetune_steps),
        "finetune_lr": f"{spec.finetune_lr:.6g}",
        "seed": str(spec.seed),
        "spec": spec.to_json(),
        "recon_images": str(spec.reconstruct.images),
        "recon_ridge": f"{spec.reconstruct.ridge:.6g}",
        "recon_layers": spec.reconstruct.layers,
    }
    p.update({f"knob.{k}": f"{v:.6g}" for k, v in spec.knobs.items()})
    return p


def test_the_target_and_the_measured_ratio_have_different_names():
    cfg = parse_config({"space": {"granularity": ["channel"], "macs_ratio": [0.3, 0.6]}})
    trial = FixedTrial({enc.TARGET_MACS_RATIO: 0.4})
    spec = suggest(trial, cfg)
    assert spec.target_macs_ratio == 0.4 and trial.params == {enc.TARGET_MACS_RATIO: 0.4}
    assert enc.TARGET_MACS_RATIO != "macs_ratio"  # the metric's name
    assert all(enc.TARGET_MACS_RATIO in p for p in baseline_params(cfg))  # the baselines spell it alike
    # an older study's parameter, re-enqueued by resume repair, asks for the same candidate
    assert suggest(FixedTrial(enc.upgrade_params({"macs_ratio": 0.4})), cfg) == spec
    # the multivariate TPE sampler draws dimensions in name order: the new name sorts where the old did
    names = sorted(["allocate", "alloc.layer1", "method", "magnitude.scope", "hyperflows.pressure", "reconstruct", "target_sparsity"])
    assert sorted([*names, "macs_ratio"]).index("macs_ratio") == sorted([*names, enc.TARGET_MACS_RATIO]).index(enc.TARGET_MACS_RATIO)


def test_the_reconstruction_image_count_has_one_name_from_yaml_to_the_record():
    cfg = parse_config({"space": {"reconstruct": ["lsq"]}, "reconstruction": {"images": 96}})
    spec = suggest(FixedTrial({"target_sparsity": 0.5}), cfg)
    assert spec.reconstruct == ReconSpec(mode="lsq", images=96)
    params = enc.spec_params(spec)
    assert params["reconstruct.images"] == "96" and "recon_images" not in params and "recal.images" in params


def test_a_record_in_the_old_spelling_loads_rebuilds_and_exports(digits, digits_model, tmp_path, monkeypatch):
    ckpt = tmp_path / "digits.pt"
    torch.save(digits_model.state_dict(), ckpt)
    cfg = search_config(tmp_path, "old-spelling", 1, model={"checkpoint": str(ckpt)})
    spec = CandidateSpec(target_sparsity=0.7, reconstruct=ReconSpec(mode="lsq", images=64), knobs={"norm": 2.0})
    result = Evaluator(cfg.model, digits_model.state_dict(), digits, MeasureConfig(latency_repeats=1, collapse_plot=False)).evaluate(spec)
    assert result.state == "ok", result.error
    monkeypatch.setattr(runs, "spec_params", _old_spec_params)  # the old writer
    recorder = runs.Recorder(cfg.resolved_tracking_uri(), cfg.name, artifact_location=str(tmp_path / "artifacts"))
    parent = recorder.start_parent(None, cfg.name, {})
    recorder.log_parent_artifact(parent, "config.json", cfg.model_dump_json().encode())
    run_id = recorder.record(parent, 0, result)
    monkeypatch.undo()

    (row,) = candidate_rows(cfg.resolved_tracking_uri(), cfg.name)
    assert "recon_images" in recorder.client.get_run(run_id).data.params  # the premise: old spelling
    assert (row["method"], row["reconstruct"], row["knobs"]) == ("magnitude", "lsq", {"norm": 2.0})
    assert row["accuracy"] == result.metrics["accuracy"]
    out = export(cfg.resolved_tracking_uri(), run_id, tmp_path / "old.pt", tolerance=0.0)
    assert out.rebuilt_accuracy == out.recorded_accuracy == result.metrics["accuracy"]
    assert out.path is not None
    loaded = load_exported(out.path)
    with torch.no_grad():
        acc = (loaded.model(digits.val.x).argmax(1) == digits.val.y).float().mean().item()
    assert abs(acc - result.metrics["accuracy"]) < 1e-6  # the exported file is the recorded candidate
