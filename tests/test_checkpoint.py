"""Checkpoint reading with weights_only=True: every failure has a clear CheckpointError,
and the accepted layouts load. All files are real, written in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.models.checkpoint import CheckpointError, load_into, read_state_dict
from pipeline.models.cifar_resnet import cifar_resnet

torch.set_num_threads(1)


class NotWeights:
    """A custom class: pickling it stores a reference to code, which weights_only refuses."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bare_state_dict_loads(tmp_path: Path) -> None:
    src, dst = _net(), _net()
    path = tmp_path / "bare.pt"
    torch.save(src.state_dict(), path)
    load_into(dst, path)
    _assert_same(src, dst)
    assert set(read_state_dict(path)) == set(src.state_dict())


def test_wrapped_dataparallel_state_dict_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    # The layout of the public CIFAR ResNet checkpoints: extra entries beside
    # 'state_dict', 'module.' prefixes, no num_batches_tracked.
    src, dst = cifar_resnet(20), cifar_resnet(20)
    with torch.no_grad():
        for b in src.buffers():
            b.add_(1)  # make running stats differ from a fresh model's
    sd = {f"module.{k}": v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "wrapped.th"
    torch.save({"best_prec1": 91.0, "epoch": 3, "state_dict": sd}, path)
    load_into(dst, path)
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(dst.state_dict()[k], v), k
    assert all(not k.startswith("module.") for k in read_state_dict(path))


def test_model_wrapper_key_loads(tmp_path: Path) -> None:
    src, dst = _net(), _net()
    path = tmp_path / "model_key.pt"
    torch.save({"model": src.state_dict(), "optimizer": {"lr": 0.1}}, path)
    load_into(dst, path)
    _assert_same(src, dst)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_into(_net(), path)
    assert str(path) in str(err.value) and "model.checkpoint" in str(err.value)


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint at all\n" * 20, bytes(range(256)) * 4])
def test_corrupt_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a PyTorch file") as err:
        load_into(_net(), path)
    assert str(path) in str(err.value) and "save it again" in str(err.value)


def test_random_bytes_and_damaged_files_only_raise_checkpoint_error(tmp_path: Path) -> None:
    # torch.load fails in many ways on bad bytes (RuntimeError, EOFError, KeyError,
    # UnpicklingError, UnicodeDecodeError, ...): all must surface as CheckpointError.
    rng = np.random.default_rng(0)
    good = tmp_path / "good.pt"
    torch.save(_net().state_dict(), good)
    data = np.frombuffer(good.read_bytes(), dtype=np.uint8)
    path = tmp_path / "bad.pt"
    refused = []
    for i in range(60):
        if i < 30:
            blob = rng.integers(0, 256, size=int(rng.integers(1, 400)), dtype=np.uint8)
        else:  # the real file with a burst of damaged bytes somewhere
            blob = data.copy()
            at = int(rng.integers(0, len(blob) - 16))
            blob[at : at + 16] = rng.integers(0, 256, size=16, dtype=np.uint8)
        path.write_bytes(blob.tobytes())
        try:
            read_state_dict(path)
        except CheckpointError as e:
            assert str(path) in str(e)
            refused.append(i)
    # random bytes are never a checkpoint: every one of them is refused (a damaged real
    # file may still load when the burst hits padding, so those are not all refused)
    assert set(range(30)) <= set(refused), sorted(set(range(30)) - set(refused))
    assert any(i >= 30 for i in refused)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_real_checkpoint(tmp_path: Path, legacy: bool) -> None:
    good = tmp_path / "good.pt"
    torch.save(cifar_resnet(20).state_dict(), good, _use_new_zipfile_serialization=not legacy)
    data = good.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated") as err:
        read_state_dict(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("obj", [NotWeights(), nn.Linear(2, 2)], ids=["custom_class", "whole_module"])
def test_pickled_code_is_refused_not_unpickled(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as err:
        load_into(_net(), path)
    msg = str(err.value)
    assert str(path) in msg
    assert "weights_only=True refuses" in msg and "never unpickles arbitrary code" in msg
    assert "model.state_dict()" in msg
    assert type(obj).__name__ in msg  # names the class it would have had to import


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([torch.zeros(2)], "holds a list, not a state dict"),
        ({"epoch": 3, "lr": 0.1}, "non-tensor entries 'epoch' \\(int\\)"),
        ({"state_dict": {"w": torch.zeros(1), "step": 5}}, "non-tensor entries 'step'"),
        ({}, "no tensors"),
    ],
)
def test_not_a_state_dict(tmp_path: Path, obj: object, message: str) -> None:
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=message) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "model.state_dict()" in str(err.value)


def test_architecture_mismatch_lists_shapes_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet20_100.pt"
    torch.save(cifar_resnet(20, num_classes=100).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_into(cifar_resnet(20, num_classes=10), path)
    msg = str(err.value)
    assert str(path) in msg and "num_classes" in msg
    assert "linear.weight: checkpoint (100, 64) vs model (10, 64)" in msg
    assert "linear.bias: checkpoint (100) vs model (10)" in msg
    assert "2 tensor(s) differ in shape" in msg

    # A deeper network: missing keys, counted, first few listed.
    with pytest.raises(CheckpointError) as err:
        load_into(cifar_resnet(32), path)
    msg = str(err.value)
    assert "key(s) of the model are missing from the checkpoint: layer1.3." in msg
    assert "more)" in msg


def test_unexpected_keys_and_other_architecture(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save(_net().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_into(cifar_resnet(20), path)
    msg = str(err.value)
    assert "key(s) of the checkpoint are not in the model: 0.weight" in msg
    assert "key(s) of the model are missing from the checkpoint: conv1.weight" in msg


def test_build_model_surfaces_checkpoint_error(tmp_path: Path) -> None:
    from pipeline.models import ModelConfig, build_model

    path = tmp_path / "small.pt"
    torch.save(cifar_resnet(20, num_classes=5).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"linear.bias: checkpoint \(5\) vs model \(10\)"):
        build_model(ModelConfig(name="cifar_resnet20", checkpoint=str(path)))
    # CheckpointError is a ValueError: config-error handlers catch it too.
    assert issubclass(CheckpointError, ValueError)
