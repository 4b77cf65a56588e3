"""What a candidate prunes, as plain data: weight masks and kept channels.

A ``PrunePlan`` is the only thing a pruning method returns. It round-trips through
Parquet bytes (the MLflow artifact ``plan.parquet``), so a recorded candidate is
rebuilt from the base checkpoint plus this table; no code is ever unpickled.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn

from pipeline.errors import InputError

_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # "mask", "channels" (kept output channels), "weight" (trained tensor) or "refit"
        ("name", pa.string()),  # parameter name (mask) or module name (channels)
        ("shape", pa.list_(pa.int64())),
        ("data", pa.binary()),  # np.packbits of the flat mask, int64 indices, or float32 values
    ]
)
_DIAGNOSTICS = b"prunesearch.diagnostics"  # Parquet metadata key of PrunePlan.diagnostics (JSON)
# Float rows are stored as byte planes (all first bytes, then all second bytes, ...): the
# exponent bytes of a layer's weights are alike, so zstd shrinks them well (ResNet-20's
# conv weights: 0.85 of float32 with planes, 0.93 without). Plans without the key are plain.
_FLOATS = b"prunesearch.floats"
_PLANES = b"byte-planes"


class PlanError(InputError, KeyError):
    """A plan that does not fit the model (names or shapes it lacks): a tampered or
    foreign record. Still a ``KeyError`` for older callers; its message is not quoted."""

    __str__ = Exception.__str__


@dataclass
class PrunePlan:
    """Masks and kept channels of one candidate.

    Attributes:
        masks: parameter name -> bool tensor of the parameter's shape (True = kept),
            names as in the model *after* channels are removed.
        channels: module name of a conv/linear layer -> sorted int64 tensor of the
            output channels it keeps (structured pruning; applied first).
        weights: state-dict entries (dense shapes, float32) that replace the base
            model's before channels and masks are applied: what methods that train
            (hyperflows, ocs) learned, or the compensating update of a method that
            changes the weights it keeps (obs). Empty for the other one-shot methods.
        diagnostics: what the method reports about how it got there (OCS: its stable
            epoch and stability history), plain numbers or lists of numbers; stored as
            JSON in the Parquet metadata, scalars surface as metrics ``<method>_<key>``.
        refit: state-dict entries of the *pruned* network (shapes after channels are
            removed) that reconstruction fitted; applied last, over everything else.
            Non-empty means the candidate is reconstructed: a rebuild loads them and
            never re-runs reconstruction.
    """

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, float | list[float]] = field(default_factory=dict)
    refit: dict[str, torch.Tensor] = field(default_factory=dict)

    def scalar_diagnostics(self, prefix: str) -> dict[str, float]:
        """The scalar ``diagnostics`` as metrics named ``prefix + key``."""
        return {prefix + k: float(v) for k, v in self.diagnostics.items() if not isinstance(v, list)}

    def to_parquet(self) -> bytes:
        rows: dict[str, list] = {"kind": [], "name": [], "shape": [], "data": []}
        for name, idx in sorted(self.channels.items()):
            arr = idx.to(torch.int64).cpu().numpy()
            _append(rows, "channels", name, [arr.size], arr.tobytes())
        for name, w in sorted(self.weights.items()):
            _append(rows, "weight", name, list(w.shape), _float_planes(w))
        for name, w in sorted(self.refit.items()):
            _append(rows, "refit", name, list(w.shape), _float_planes(w))
        for name, mask in sorted(self.masks.items()):
            bits = np.packbits(mask.cpu().numpy().astype(bool).ravel())
            _append(rows, "mask", name, list(mask.shape), bits.tobytes())
        buf = io.BytesIO()
        meta = {_FLOATS: _PLANES, **({_DIAGNOSTICS: json.dumps(self.diagnostics).encode()} if self.diagnostics else {})}
        pq.write_table(pa.table(rows, schema=_SCHEMA.with_metadata(meta)), buf, compression="zstd")
        return buf.getvalue()

    def histories(self, prefix: str) -> dict[str, list[tuple[int, float]]]:
        """The per-step histories of ``diagnostics`` as metric histories named ``prefix + key``:
        every list that ``trajectory_step`` (the steps, also a list) lines up with; {} without one."""
        steps = self.diagnostics.get("trajectory_step")
        if not isinstance(steps, list):
            return {}
        return {
            prefix + k: [(int(s), float(v)) for s, v in zip(steps, vals)]
            for k, vals in self.diagnostics.items()
            if isinstance(vals, list) and k != "trajectory_step" and len(vals) == len(steps)
        }

    @staticmethod
    def diagnostics_of(data: bytes) -> dict[str, float | list[float]]:
        """The ``diagnostics`` of a plan's Parquet bytes, read from the footer alone (no masks or weights decoded)."""
        meta = pq.read_schema(io.BytesIO(data)).metadata or {}
        return json.loads(meta[_DIAGNOSTICS]) if _DIAGNOSTICS in meta else {}

    @classmethod
    def from_parquet(cls, data: bytes) -> "PrunePlan":
        read = pq.read_table(io.BytesIO(data))
        table = read.to_pylist()
        meta = read.schema.metadata or {}  # plans recorded before diagnostics existed have none
        plan = cls(diagnostics=json.loads(meta[_DIAGNOSTICS]) if _DIAGNOSTICS in meta else {})
        for row in table:
            shape = tuple(row["shape"])
            if row["kind"] == "channels":
                arr = np.frombuffer(row["data"], dtype=np.int64).copy()
                plan.channels[row["name"]] = torch.from_numpy(arr)
            elif row["kind"] in ("weight", "refit"):
                arr = _floats(row["data"], meta.get(_FLOATS) == _PLANES).reshape(shape)
                (plan.weights if row["kind"] == "weight" else plan.refit)[row["name"]] = torch.from_numpy(arr)
            elif row["kind"] == "mask":
                n = int(np.prod(shape))
                bits = np.unpackbits(np.frombuffer(row["data"], dtype=np.uint8))[:n]
                plan.masks[row["name"]] = torch.from_numpy(bits.astype(bool)).reshape(shape)
            else:
                raise InputError(f"plan row has unknown kind {row['kind']!r}; expected 'mask', 'channels', 'weight' or 'refit'")
        return plan


def _float_planes(w: torch.Tensor) -> bytes:
    """float32 bytes of ``w`` as byte planes (see ``_FLOATS``)."""
    arr = np.ascontiguousarray(w.detach().to(torch.float32).cpu().numpy()).ravel()
    return arr.view(np.uint8).reshape(-1, 4).T.tobytes()


def _floats(data: bytes, planes: bool) -> np.ndarray:
    """The flat float32 array stored in ``data`` (byte planes, or plain for older plans)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if planes:
        raw = raw.reshape(4, -1).T
    return np.ascontiguousarray(raw).view(np.float32).ravel().copy()


def _append(rows: dict[str, list], kind: str, name: str, shape: list[int], data: bytes) -> None:
    rows["kind"].append(kind)
    rows["name"].append(name)
    rows["shape"].append(shape)
    rows["data"].append(data)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked-out weights of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise PlanError(f"plan masks parameter {name!r}, which the model does not have")
        p = params[name]
        if tuple(p.shape) != tuple(mask.shape):
            raise InputError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(p.shape)}")
        p.mul_(mask.to(p.device, p.dtype))
