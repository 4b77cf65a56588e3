"""Model registry builders: CIFAR ResNets (with the real pretrained ResNet-20),
torchvision classifiers and user-imported classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.fx
from torch import nn

from pipeline.models import ModelConfig, build_model, list_models, load_base
from pipeline.models.cifar_resnet import DEPTHS, PadShortcut

torch.set_num_threads(1)  # two shared cores

# CI clones the repository with shared/ beside it (../shared from the repo root).
SHARED = Path(__file__).resolve().parents[2] / "shared"
RESNET20 = SHARED / "models" / "cifar10_resnet20.th"
CIFAR = SHARED / "data" / "cifar10"
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)

# Parameters of upstream pytorch_resnet_cifar10 (paper: 0.27 / 0.46 / 0.66 / 0.85 / 1.7 M).
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


def test_pretrained_resnet20_accuracy_on_exact_cifar10_test_images() -> None:
    from pipeline.data.splits import DataConfig, load_data

    splits = load_data(
        DataConfig(
            name="npz",
            path=str(CIFAR / "train_exact.npz"),
            test_path=str(CIFAR / "test_exact.npz"),
            mean=CIFAR_MEAN,
            std=CIFAR_STD,
        )
    )
    assert len(splits.test) == 1017
    model = build_model(ModelConfig(name="cifar_resnet20", checkpoint=str(RESNET20)))
    assert not model.training
    with torch.no_grad():
        pred = torch.cat([model(splits.test.x[i : i + 256]).argmax(1) for i in range(0, len(splits.test), 256)])
    acc = 100.0 * (pred == splits.test.y).double().mean().item()
    # 91.64 % measured by the data README on these 1,017 images.
    assert acc == pytest.approx(91.6, abs=0.5)


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_cifar_resnet_depths_parameters_and_fx_trace(depth: int) -> None:
    model = build_model(ModelConfig(name=f"cifar_resnet{depth}", num_classes=10))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    n = (depth - 2) // 6
    assert len(convs) == 6 * n + 1 and len(linears) == 1  # depth = weighted layers
    assert sum(p.numel() for p in model.parameters()) == PARAMS[depth]
    # Option A: exactly the two stage-entry blocks pad, and no shortcut has parameters.
    pads = [m for m in model.modules() if isinstance(m, PadShortcut)]
    assert [p.planes for p in pads] == [32, 64]
    assert not any(name.endswith("shortcut") and list(m.parameters()) for name, m in model.named_modules())

    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)
        assert model(x).shape == (2, 10)


def test_cifar_resnet_num_classes_and_pad_shortcut_shape() -> None:
    model = build_model(ModelConfig(name="cifar_resnet20", num_classes=100))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    out = PadShortcut(32)(torch.randn(2, 16, 32, 32))
    assert out.shape == (2, 32, 16, 16)
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0  # zero channels either side
    with pytest.raises(ValueError, match="takes no kwargs"):
        build_model(ModelConfig(name="cifar_resnet20", kwargs={"width": 2}))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2", "vgg11_bn"])
def test_torchvision_models_build_and_run(arch: str) -> None:
    name = f"torchvision:{arch}"
    assert name in list_models()
    model = build_model(ModelConfig(name=name, num_classes=10))
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_rejects_weights_kwarg() -> None:
    with pytest.raises(ValueError, match="never downloaded"):
        build_model(ModelConfig(name="torchvision:resnet18", kwargs={"weights": "DEFAULT"}))


def test_import_builds_class_with_kwargs() -> None:
    cfg = ModelConfig(name="import", import_path="torch.nn:Linear", kwargs={"in_features": 4, "out_features": 3})
    model = build_model(cfg)
    assert isinstance(model, nn.Linear) and model.weight.shape == (3, 4)
    # Dotted attribute after the colon.
    cfg = ModelConfig(name="import", import_path="torch:nn.Linear", kwargs={"in_features": 2, "out_features": 2})
    model = build_model(cfg)
    assert isinstance(model, nn.Linear)


@pytest.mark.parametrize(
    ("import_path", "kwargs", "message"),
    [
        (None, {}, "needs import_path"),
        ("torch.nn.Linear", {}, "not of the form 'package.module:ClassName'"),
        ("torch.nn:Lin ear", {}, "not of the form"),
        ("a:b:c", {}, "not of the form"),
        ("no_such_pkg_xyz.nets:Net", {}, "module 'no_such_pkg_xyz.nets' was not found"),
        ("torch.nn:NoSuchLayer", {}, "'torch.nn' has no attribute 'NoSuchLayer'"),
        ("torch:nn.NoSuchLayer", {}, "'torch.nn' has no attribute 'NoSuchLayer'"),
        ("torch:zeros", {"size": (2,)}, "built a Tensor, not a torch.nn.Module"),
        ("math:pi", {}, "is a float, not a class"),
        ("torch.nn:Linear", {"bogus": 1}, "model.kwargs"),
    ],
)
def test_import_rejects_bad_paths(import_path: str | None, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        build_model(ModelConfig(name="import", import_path=import_path, kwargs=kwargs))
    assert "model." in str(err.value)


def test_import_user_module_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "prunesearch_user_nets.py").write_text(
        "from torch import nn\n"
        "class TinyNet(nn.Module):\n"
        "    def __init__(self, classes=10):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(3 * 32 * 32, classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n"
    )
    (tmp_path / "prunesearch_broken_nets.py").write_text("import prunesearch_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelConfig(name="import", import_path="prunesearch_user_nets:TinyNet", kwargs={"classes": 4}))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    # A missing dependency of the user's module is reported as such, not as a typo.
    with pytest.raises(ValueError, match="importing module 'prunesearch_broken_nets' failed.*prunesearch_missing"):
        build_model(ModelConfig(name="import", import_path="prunesearch_broken_nets:Net"))


def test_load_base_builds_the_architecture_and_loads_a_state(tmp_path: Path) -> None:
    cfg = ModelConfig(name="digits_cnn", checkpoint=str(tmp_path / "never-read.pt"))  # the checkpoint is not read
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in build_model(cfg.model_copy(update={"checkpoint": None})).state_dict().items()
    }
    model = load_base(cfg, state)
    assert not model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    narrow = {**state, "fc.weight": state["fc.weight"][:4], "fc.bias": state["fc.bias"][:4]}

    def four_outputs(m: nn.Module) -> nn.Module:
        m.fc = nn.Linear(m.fc.in_features, 4)
        return m

    assert load_base(cfg, narrow, reshape=four_outputs).fc.weight.shape[0] == 4
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_base(cfg, narrow)
