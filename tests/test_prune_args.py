"""``ps.prune`` checks its own arguments: each problem is an InputError naming the argument."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pipeline.api import prune
from pipeline.errors import InputError
from pipeline.models import ModelConfig, build_model


def _cases(digits, digits_model):
    x, y = digits.calib.x, digits.calib.y
    nan_x = x.clone()
    nan_x[:] = math.nan
    inf_x = x.clone()
    inf_x[3, 0, 2, 2] = math.inf
    rgb = build_model(ModelConfig(name="cifar_resnet20"))
    return {
        "sparsity out of range": (dict(model=digits_model, sparsity=1.5, calib=(x, y)), r"sparsity=1\.5: a number in \(0, 1\)"),
        "channel with sparsity": (dict(model=digits_model, sparsity=0.5, granularity="channel", calib=(x, y)), r"pass macs_ratio="),
        "unstructured with macs_ratio": (dict(model=digits_model, macs_ratio=0.5, granularity="unstructured", calib=(x, y)), r"pass sparsity="),
        "1-channel images, 3-channel model": (dict(model=rgb, sparsity=0.5, calib=(x, y)), r"calib images: 1 channels .* first conv takes 3"),
        "float labels": (dict(model=digits_model, method="screening", sparsity=0.5, calib=(x, y.float())), r"calib labels: integer class indices"),
        "labels beyond the classes": (dict(model=digits_model, sparsity=0.5, calib=(x, y + 10)), r"calib labels: class indices must be in \[0, 10\)"),
        "unknown stage": (
            dict(model=digits_model, sparsity=0.5, calib=(x, y), allocation={"layer9": 0.5}),
            r"'layer9' is no stage .* its stages are conv1, conv2, conv3, fc",
        ),
        "negative multiplier": (
            dict(model=digits_model, sparsity=0.5, calib=(x, y), allocation={"conv2": -0.5}),
            r"allocation\['conv2'\]=-0\.5: a multiplier >= 0",
        ),
        "NaN images": (dict(model=digits_model, sparsity=0.5, calib=(nan_x, y)), rf"calib images: {len(x)} of {len(x)} images hold NaN or infinite"),
        "one infinite pixel": (
            dict(model=digits_model, sparsity=0.5, calib=(inf_x, y), reconstruct=True),
            r"calib images: 1 of \d+ images hold NaN or infinite",
        ),
        "no prunable layers": (
            dict(model=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), sparsity=0.5, calib=(x, y)),
            r"model: Sequential has no Conv2d or Linear",
        ),
        "meta-device model": (
            dict(model=copy.deepcopy(digits_model).to("meta"), sparsity=0.5, calib=(x, y)),
            r"model: its tensors are on the meta device",
        ),
        "method not a name": (dict(model=digits_model, method=123, sparsity=0.5, calib=(x, y)), r"method=123: give a method's name, one of \["),
        "negative recal_images": (dict(model=digits_model, sparsity=0.5, calib=(x, y), recal_images=-1), r"recal_images: "),
    }


CASES = [
    "sparsity out of range",
    "channel with sparsity",
    "unstructured with macs_ratio",
    "1-channel images, 3-channel model",
    "float labels",
    "labels beyond the classes",
    "unknown stage",
    "negative multiplier",
    "NaN images",
    "one infinite pixel",
    "no prunable layers",
    "meta-device model",
    "method not a name",
    "negative recal_images",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_an_input_error_naming_it(case, digits, digits_model):
    kwargs, message = _cases(digits, digits_model)[case]
    with pytest.raises(InputError, match=message):
        prune(**kwargs)


def test_every_case_is_run(digits, digits_model):
    assert sorted(CASES) == sorted(_cases(digits, digits_model))


def test_the_callers_model_keeps_its_modes(digits, digits_model):
    model = copy.deepcopy(digits_model).train()
    first = next(iter(model.children()))
    first.eval()  # a caller may hold submodules in another mode
    flags = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, _ = prune(model, sparsity=0.5, calib=(digits.calib.x, digits.calib.y))
    assert [m.training for m in model.modules()] == flags and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nor its weights or statistics
    assert not pruned.training


def test_results_best_refuses_a_nan_bound_before_reading_the_store(tmp_path):
    from search.api import Results
    from search.config import parse_config
    from search.records.query import QueryError

    db = tmp_path / "mlflow.db"
    res = Results(f"sqlite:///{db}", "exp", "parent", parse_config({"run_dir": str(tmp_path)}))
    with pytest.raises(QueryError, match=r"max_macs=nan: a finite number is expected"):
        res.best(max_macs=math.nan)
    with pytest.raises(QueryError, match=r"min_accuracy='high': a number is expected"):
        res.best(min_accuracy="high")
    assert not db.exists()


def test_run_refuses_a_dict_naming_load_config():
    import search as ps
    from search.config import ConfigError

    with pytest.raises(ConfigError, match=r"run\(\) takes a SearchConfig, got dict; make one with ps.load_config"):
        ps.run({"budget": {"trials": 1}})
