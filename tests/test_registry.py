"""The one name registry behind methods, models and data loaders."""

from __future__ import annotations

import pytest

from pipeline.data.splits import LOADERS
from pipeline.models import MODELS, ModelConfig, build_model, list_models
from pipeline.pruning.methods import get_method, list_methods
from pipeline.pruning.methods.registry import METHODS, register_method
from pipeline.registry import Registry, RegistryError


def test_register_get_and_names():
    reg: Registry[int] = Registry("widget", field="parts.widget")
    reg.register("b")(2)
    reg.add("a", 1)
    assert reg.get("a") == 1 and reg.get("b") == 2 and reg.names() == ["a", "b"] and "a" in reg


def test_a_name_registered_twice_is_an_error_naming_both():
    reg: Registry[type] = Registry("widget")
    reg.add("w", int)
    with pytest.raises(RegistryError, match=r"widget 'w' is registered twice \(int and float\)"):
        reg.add("w", float)
    assert reg.get("w") is int  # the first registration stays


def test_an_unknown_name_lists_the_valid_ones_and_the_closest():
    reg: Registry[int] = Registry("widget", field="parts.widget")
    reg.add("sprocket", 1)
    reg.add("gear", 2)
    with pytest.raises(
        RegistryError, match=r"^parts.widget: unknown widget 'sprockt'; valid widgets: \['gear', 'sprocket'\]; did you mean 'sprocket'\?$"
    ):
        reg.get("sprockt")
    with pytest.raises(ValueError, match="valid widgets") as e:  # still a ValueError for callers that catch those
        reg.get("zzz")
    assert "did you mean" not in str(e.value)


def test_methods_models_and_loaders_share_it():
    assert list_methods() == METHODS.names() and "ocs" in METHODS
    assert list_models() == MODELS.names() and "digits_cnn" in MODELS
    assert {"digits", "npz", "cifar10", "cifar100", "imagefolder", "import"} == set(LOADERS.names())
    with pytest.raises(RegistryError, match="unknown pruning method 'magnitud'; valid methods: .*did you mean 'magnitude'"):
        get_method("magnitud")
    with pytest.raises(RegistryError, match="model.name: unknown model 'digits_cn'; valid models: .*did you mean 'digits_cnn'"):
        build_model(ModelConfig(name="digits_cn"))
    with pytest.raises(RegistryError, match="pruning method 'magnitude' is registered twice"):
        register_method("magnitude")(type("Again", (), {}))
    assert type(get_method("magnitude")).__name__ != "Again"
