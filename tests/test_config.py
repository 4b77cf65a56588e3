"""Configuration errors are refused before any work starts, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.cli.parser import main
from search.config import ConfigError, load_config, parse_config

from conftest import search_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "data, field",
    [
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
        ({"space": {"sparsity": [0.5, 1.2]}}, "space.sparsity"),
        ({"space": {"sparsity": [0.0, 0.5]}}, "space.sparsity"),
        ({"space": {"methods": []}}, "space.methods"),
        ({"space": {"methods": ["magnitud"]}}, "did you mean 'magnitude'"),
        ({"budget": {"trials": "many"}}, "budget.trials"),
        ({"budget": {"trials": 0}}, "budget.trials"),
        ({"model": {"num_classes": 1}}, "model.num_classes"),
        ({"objective": {"mode": "constrained"}}, "objective: constrained mode needs"),
        ({"sampler": {"name": "cmaes"}}, "sampler.name"),
        ({"recalibration": {"mode": "sometimes"}}, "recalibration.mode"),
        ({"actors": {"num_gpus": -1}}, "actors.num_gpus"),
        ({"name": "has space"}, "name"),
    ],
)
def test_invalid_fields_are_named(data, field):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert field in str(e.value)


def test_example_configs_are_valid():
    paths = sorted((ROOT / "configs").glob("*.yaml"))
    # the three examples the README names are there (a glob that matched nothing passes vacuously)
    assert {"digits.yaml", "resnet20_cifar10.yaml", "cluster.yaml"} <= {p.name for p in paths}, paths
    names = set()
    for path in paths:
        # cluster configs name files that exist on the cluster, own_model.yaml the user's: not here
        names.add(load_config(path, check_paths="cluster" not in path.name and path.name != "own_model.yaml").name)
    assert "digits-space" in names and len(names) == len(paths)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"model": {"name": "resnet9000"}}, "model.name: unknown model 'resnet9000'"),
        ({"model": {"name": "cifar_resnet20", "checkpoint": "/no/such.th"}}, "model.checkpoint: /no/such.th does not exist"),
        ({"data": {"name": "npz", "path": "/no/such.npz"}}, "data.path: /no/such.npz does not exist"),
        ({"recalibration": {"images": 1000}}, "recalibration.images"),
    ],
)
def test_cross_field_errors_are_named(data, field):
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert field in str(e.value)


def test_run_dir_paths_cannot_escape(tmp_path):
    cfg = parse_config({"run_dir": str(tmp_path)})
    assert cfg.inside_run_dir("a/b.pt") == tmp_path / "a" / "b.pt"
    with pytest.raises(ConfigError, match="escapes the run folder"):
        cfg.inside_run_dir("../outside.pt")
    assert cfg.inside_run_dir("/abs/on/purpose.pt") == Path("/abs/on/purpose.pt")


def test_cli_refuses_a_bad_config_with_exit_2_and_records_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "space": {"sparsity": [0.2, 1.5]}}))
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "space.sparsity" in err and "invalid configuration" in err
    assert not (tmp_path / "run").exists()


def test_cli_missing_config_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


ALIAS_BOMB = (
    "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 10)
    )
    + "name: *a9\n"
)


@pytest.mark.parametrize(
    "content, message",
    [
        (ALIAS_BOMB.encode(), "aliases (*name) expand to more than"),
        (b"name: x\n" + b"# padding\n" * 40000, "KiB; a config is at most"),
        ("name: d\u00e9mo\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 1)"),
        (b"", "is empty: it sets nothing"),
        (b"# only a comment\n", "is empty: it sets nothing"),
        (b"budget:\n  trials: 3\nbudget:\n  trials: 5\n", "duplicate key 'budget' on line 3 (first on line 1)"),
        (b"space:\n  sparsity: [0.1, 0.5]\n  sparsity: [0.2, 0.6]\n", "duplicate key 'sparsity' on line 3"),
        (b"- a list\n", "the top level must be a mapping"),
    ],
)
def test_config_files_are_read_bounded(tmp_path, capsys, content, message):
    import time

    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    t0 = time.monotonic()
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 5 and message in err and str(path) in err and len(err) < 500, err


def test_a_bad_value_is_quoted_as_a_short_excerpt():
    with pytest.raises(ConfigError) as e:
        parse_config({"space": {"methods": ["x" * 100_000]}})
    assert "space.methods: unknown pruning method" in str(e.value) and len(str(e.value)) < 400


@pytest.mark.parametrize(
    "data, field", [({"run_dir": "/"}, "run_dir: '/' is the file system root"), ({"name": "n" * 3000}, "name: String should have at most 100")]
)
def test_names_and_folders_that_cannot_work_are_refused(data, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        parse_config(data)


@pytest.mark.parametrize(
    "space, field",
    [
        (
            {"knobs": {"magnitude": {"nrom": [1, 2]}}},
            "space.knobs: magnitude.nrom: method 'magnitude' has no such knob; its knobs are ['norm']; did you mean 'norm'?",
        ),
        ({"knobs": {"hyperflow": {"pressure": [0.01, 0.1]}}}, "space.knobs: 'hyperflow': unknown pruning method 'hyperflow'"),
        ({"knobs": {"screening": {"screening_weight": [0.9, 0.1]}}}, "space.knobs: screening.screening_weight: range [0.9, 0.1] is reversed"),
        ({"knobs": {"screening": {"screening_weight": [0.0, 1.5]}}}, "leaves the knob's valid values [0.0, 1.0]"),
        ({"knobs": {"hyperflows": {"pressure": [float("nan"), 0.1]}}}, "space.knobs.hyperflows.pressure.0: Input should be a finite number"),
        ({"knobs": {"hyperflows": {"steps": [10.5, 20]}}}, "hyperflows.steps: range [10.5, 20.0] must hold whole numbers"),
        ({"sparsity": [0.9, 0.1]}, "space.sparsity: sparsity range [0.9, 0.1] is reversed"),
        ({"allocation": {"layer1": [1.5, 0.5]}}, "space.allocation: 'layer1': multiplier range [1.5, 0.5] must satisfy 0 <= low <= high"),
        ({"methods": ["ocs"], "granularity": ["unstructured"]}, "space.granularity: method 'ocs' supports ['channel']"),
    ],
)
def test_space_typos_are_named(space, field):
    with pytest.raises(ConfigError) as e:
        parse_config({"space": space})
    assert field in str(e.value), str(e.value)


def test_unknown_allocation_stages_are_refused_in_preflight_with_the_valid_ones(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"run_dir": str(tmp_path / "run"), "base_training": {"steps": 60}, "space": {"allocation": {"layr1": [0.5, 1.0], "conv2": [0.5, 1.0]}}}
        )
    )
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "space.allocation: 'layr1' is no stage of model 'digits_cnn'" in err and "its stages are conv1, conv2, conv3, fc" in err


def test_a_candidate_spec_has_one_target_and_cannot_change():
    from pipeline.spec import CandidateSpec

    assert CandidateSpec(granularity="channel", target_macs_ratio=0.5).target_sparsity is None
    assert CandidateSpec().target_sparsity == 0.5  # the unstructured default
    with pytest.raises(ValueError, match="a candidate has one target"):
        CandidateSpec(target_sparsity=0.5, target_macs_ratio=0.5)
    spec = CandidateSpec(knobs={"norm": 2})
    with pytest.raises(TypeError, match="read-only"):
        spec.knobs["norm"] = 1
    with pytest.raises(TypeError, match="read-only"):
        spec.allocation.update(layer1=0.5)
    changed = spec.model_copy(update={"knobs": {"norm": 1}})
    assert changed.knobs == {"norm": 1} and spec.knobs == {"norm": 2}
    with pytest.raises(TypeError):
        changed.knobs["norm"] = 2
    # a record written when channel specs carried the unused default target_sparsity 0.5
    old = '{"method":"magnitude","granularity":"channel","scope":"global","target_sparsity":0.5,"target_macs_ratio":0.4,"knobs":{},"allocation":{}}'
    assert CandidateSpec.from_json(old) == CandidateSpec(granularity="channel", target_macs_ratio=0.4)


def test_resume_accepts_fields_added_since_at_their_defaults(tmp_path):
    """A run folder recorded before a config section existed resumes when the section is at
    its defaults, and is still refused, naming the field, when it is not."""
    import json

    from search.study.resume import check_resume, record_config, recorded_config_path

    cfg = search_config(tmp_path, "upgrade", 4)
    cfg.run_path.mkdir(parents=True)  # the driver creates it before recording
    record_config(cfg)
    path = recorded_config_path(cfg)
    old = json.loads(path.read_text())
    del old["reconstruction"]  # as written by a prunesearch without reconstruction
    path.write_text(json.dumps(old))
    check_resume(cfg)
    changed = cfg.model_copy(update={"reconstruction": cfg.reconstruction.model_copy(update={"images": 512})})
    with pytest.raises(ConfigError, match=r"reconstruction\.images: 256 -> 512"):
        check_resume(changed)
