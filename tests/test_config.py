"""Configuration errors are refused before any work starts, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.cli import main
from search.config import ConfigError, load_config, parse_config

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
        # cluster configs name files that exist on the cluster, not here
        names.add(load_config(path, check_paths="cluster" not in path.name).name)
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
