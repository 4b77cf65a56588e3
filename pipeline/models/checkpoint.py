"""Read state dicts safely and load them into a model, with errors a user can act on.

Every checkpoint is read with ``torch.load(..., weights_only=True)``: tensors and plain
containers only. A file that needs pickled code is refused, never unpickled, because
unpickling runs whatever code the file names.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.errors import InputError

# Keys under which training scripts commonly nest the weights, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model")
# DataParallel / DistributedDataParallel prefix every key with this.
_DP_PREFIX = "module."
# How many missing / unexpected keys an error message lists before "...".
_SHOW = 5

_SAVE_HINT = "save the weights with torch.save(model.state_dict(), path)"


class CheckpointError(InputError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of the checkpoint at ``path``, keyed by parameter / buffer name.

    Accepts a bare state dict or a dict holding one under ``'state_dict'`` or ``'model'``
    (other entries such as ``'epoch'`` are ignored). A ``'module.'`` prefix carried by
    every key (DataParallel) is stripped.

    Raises:
        CheckpointError: the file is missing, corrupt, needs pickled code, or holds no
            state dict; the message names the file and what to do.
    """
    p = Path(path).expanduser()
    return _strip_prefix(_extract(_load(p), p))


def load_into(model: nn.Module, path: str | Path) -> None:
    """Load the checkpoint at ``path`` into ``model`` in place.

    BatchNorm ``num_batches_tracked`` buffers absent from the checkpoint keep the model's
    values (older checkpoints and many public ones lack them); every other key must be
    present on both sides with the same shape.

    Raises:
        CheckpointError: as ``read_state_dict``, or the checkpoint's keys / shapes differ
            from the model's (every shape mismatch is listed with both shapes).
    """
    p = Path(path).expanduser()
    raw = _extract(_load(p), p)
    expected = model.state_dict()
    # Strip the DataParallel prefix unless the model itself has a submodule named
    # "module" (then the prefixed keys are its real names).
    sd = raw if any(k.startswith(_DP_PREFIX) for k in expected) else _strip_prefix(raw)

    mismatched = [f"{k}: checkpoint {_shape(sd[k])} vs model {_shape(v)}" for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    missing = [k for k in expected if k not in sd and k.rsplit(".", 1)[-1] != "num_batches_tracked"]
    unexpected = [k for k in sd if k not in expected]
    if mismatched or missing or unexpected:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} tensor(s) differ in shape:\n  " + "\n  ".join(mismatched))
        if missing:
            parts.append(f"{len(missing)} key(s) of the model are missing from the checkpoint: {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} key(s) of the checkpoint are not in the model: {_first(unexpected)}")
        raise CheckpointError(
            f"checkpoint {p} does not fit the model {type(model).__name__}:\n"
            + "\n".join(parts)
            + "\nCheck that model.name and model.num_classes (and kwargs) describe the network "
            "the checkpoint was saved from."
        )
    try:
        # strict=False only because num_batches_tracked may be absent; everything else
        # was checked above.
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # e.g. a dtype that cannot be copied into the parameter
        raise CheckpointError(f"checkpoint {p}: could not copy its tensors into the model ({e})") from e


def _load(p: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, every failure turned into a CheckpointError."""
    fix = "set model.checkpoint to the path of a saved state dict"
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; {fix}")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} is not a file; {fix}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # A class or function reference (GLOBAL opcode) is code that weights_only will not
        # import; any other refusal ("Unsupported operand", ...) means unreadable bytes.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(
                f"checkpoint {p} contains pickled code ({found.group(1)}), which loading with "
                f"weights_only=True refuses; prunesearch never unpickles arbitrary code from a "
                f"checkpoint. In the script that made it, {_SAVE_HINT} and point model.checkpoint "
                f"at that file"
            ) from e
        reason = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(e))
        raise _corrupt(p, e, reason.group(1) if reason else None) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, KeyError, ... on bad bytes
        raise _corrupt(p, e) from e


def _corrupt(p: Path, e: BaseException, detail: str | None = None) -> CheckpointError:
    if detail is None:
        # First sentence of torch's message: the rest is generic advice.
        detail = str(e).splitlines()[0].split(". ")[0] if str(e) else ""
    return CheckpointError(
        f"checkpoint {p} is corrupt, truncated or not a PyTorch file "
        f"({type(e).__name__}{': ' + detail[:200] if detail else ''}); copy or save it again ({_SAVE_HINT})"
    )


def _extract(obj: Any, p: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint object."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        if obj and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            return dict(obj)
        bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, Tensor)]
        found = f"non-tensor entries {_first(bad)}" if bad else "no tensors"
        raise CheckpointError(
            f"checkpoint {p} holds no state dict: a dict of tensors, or one under "
            f"{' or '.join(repr(k) for k in _WRAPPER_KEYS)}, was expected but it has {found}; {_SAVE_HINT}"
        )
    raise CheckpointError(f"checkpoint {p} holds a {type(obj).__name__}, not a state dict (a dict of tensors); {_SAVE_HINT}")


def _strip_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the DataParallel ``module.`` prefix when every key carries it."""
    if sd and all(k.startswith(_DP_PREFIX) for k in sd):
        return {k[len(_DP_PREFIX) :]: v for k, v in sd.items()}
    return sd


def _shape(t: Tensor) -> str:
    """``(a, b)`` style shape text; ``()`` for a scalar."""
    dims = tuple(t.shape)
    return "(" + ", ".join(str(d) for d in dims) + ")"


def _first(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


__all__ = ["CheckpointError", "load_into", "read_state_dict"]
