"""The immutable description of one candidate and of its measured outcome.

A ``CandidateSpec`` is everything needed to rebuild a candidate from the base model:
the search records it, and ``pipeline.build.build_candidate`` replays it (the same code
path for the search and for export). A ``CandidateResult`` never changes after the
evaluator returns it.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.errors import InputError, UsageError

Granularity = Literal["unstructured", "channel", "nm"]
Scope = Literal["global", "layerwise"]


class Frozen(BaseModel):
    """Base of every configuration object: immutable, unknown keys rejected, numbers finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RecalSpec(Frozen):
    """How BatchNorm statistics are recomputed after pruning (REFLOW).

    Attributes:
        images: number of calibration images (0 disables recalibration).
        batch_size: images per forward pass.
        mode: ``cumulative`` resets the running statistics and averages over all
            batches (momentum=None); ``ema`` keeps the statistics and updates them
            with ``momentum``.
        momentum: EMA momentum, used only when ``mode == "ema"``.
        augment: per-image random horizontal flips and random crops of the image
            padded by ``pad`` black pixels: the CIFAR training recipe the stored
            statistics came from, black borders included.
        pad: border of the augmentation's crops, pixels (4 is the CIFAR recipe).
        keep_better: after recalibrating, compare with the stored statistics on
            the validation split and keep whichever scores higher.
    """

    images: int = Field(256, ge=0)
    batch_size: int = Field(64, ge=1)
    mode: Literal["cumulative", "ema"] = "cumulative"
    momentum: float = Field(0.1, gt=0, le=1)
    augment: bool = False
    pad: int = Field(4, ge=0)
    keep_better: bool = False


MAX_RIDGE = 10.0  # relative ridge: 10 times the inputs' mean energy is already mostly shrinkage


class ReconSettings(Frozen):
    """How reconstruction refits kept weights (the config's ``reconstruction:`` section).

    Attributes:
        images: calibration images the least-squares fit is accumulated over (the
            first ``images`` of the calibration split, not augmented).
        ridge: regularisation, relative: each layer solves (X^T X + lambda I) W = X^T Y
            with lambda = ``ridge`` times the mean diagonal of X^T X, so one value
            suits every layer whatever its input scale; at most ``MAX_RIDGE`` (beyond
            it the fit shrinks every weight towards zero).
        batch_size: images per forward pass while accumulating X^T X and X^T Y.
        layers: ``all`` (default) refits every conv and linear layer to the dense
            network's output, so layers pruning left alone (a dense classifier, a
            block's producer conv) also correct the errors that reach them from
            upstream; ``pruned`` refits only what pruning changed (masked layers;
            consumers whose input channels were removed). On the shared ResNet-20
            ``all`` scored 75.0 % validation against 58.9 % at 90 % sparsity, 84.7
            against 80.8 % at 2x fewer MACs (benchmarks/results/methods.md).
        keep_better: after the refit, compare with the unrefit weights on the
            validation split (before recalibration) and keep whichever scores higher;
            the metric ``recon_applied`` (1 or 0) records which was kept.
        max_memory_gb: GiB of activations reconstruction holds on the actor's device
            between segments (both networks, all ``images``); beyond it they are
            offloaded (to CPU memory from a GPU, else to temporary files) and read back
            bit for bit, so the refit does not depend on it. None: no limit.
    """

    images: int = Field(256, ge=1)
    ridge: float = Field(1e-3, ge=0, le=MAX_RIDGE)
    batch_size: int = Field(64, ge=1)
    layers: Literal["pruned", "all"] = "all"
    keep_better: bool = True
    max_memory_gb: float | None = Field(4.0, gt=0)

    def with_mode(self, mode: str) -> "ReconSpec":
        """These settings as one candidate's reconstruction; ``mode`` (``none`` or ``lsq``)
        is validated as a ``ReconSpec`` field."""
        return ReconSpec.model_validate({"mode": mode, **{k: getattr(self, k) for k in ReconSettings.model_fields}})


class ReconSpec(ReconSettings):
    """Reconstruction of one candidate: ``mode`` ``none`` (off) or ``lsq`` (sequential
    ridge least squares, layer by layer; ``pipeline.repair.reconstruct``), plus the settings."""

    mode: Literal["none", "lsq"] = "none"


class CandidateSpec(Frozen):
    """One point of the pruning space.

    Attributes:
        method: name in the method registry (``pipeline.pruning.methods.list_methods()``).
        granularity: ``unstructured`` (single weights), ``channel`` (whole output
            channels, physically removed) or ``nm`` (semi-structured: N of every M
            consecutive input weights kept, ``nm``).
        scope: ``global`` ranks all prunable units together; ``layerwise`` prunes each
            layer to the same sparsity.
        target_sparsity: fraction of prunable weights to remove (unstructured), in
            (0, 1); 0.5 when an unstructured spec gives no target. ``None`` for channel
            candidates and for methods whose sparsity is an outcome (hyperflows).
        target_macs_ratio: fraction of dense MACs to keep (channel granularity),
            in (0, 1]; e.g. 0.5 means 2x fewer MACs. A spec has at most one target.
        nm: for ``nm`` granularity, (N, M): every output row of a pruned layer keeps N
            of each M consecutive input weights (the weight's row flattened as
            ``weight.reshape(out, -1)``, i.e. the rows of the im2col matmul); (2, 4)
            when an ``nm`` spec gives none, None for the other granularities.
        knobs: method-specific numeric knobs (``pressure``, ``steps``,
            ``screening_weight``, ...); see each method's ``knobs`` attribute.
            Read-only, like ``allocation``.
        allocation: optional per-stage multipliers on the pruned fraction (a network
            pruning space): ``layer1: 0.5`` prunes that stage's layers half as much,
            relative to the others, as ``scope`` alone would (the global ranking's
            per-layer fractions, or the uniform layerwise one); the fractions are then
            rescaled together so that the target is still met. Keys are stage names
            (first dotted component).
        prune_stem: whether the first conv may be pruned.
        prune_head: whether the classifier may be pruned.
        reconstruct: the reconstruction setting (refit kept weights on calibration
            images before recalibration; off by default).
        recal: the recalibration setting.
        finetune_steps: optimiser steps of fine-tuning after recalibration (0: none).
        finetune_lr: SGD learning rate of that fine-tuning (cosine-decayed to 0).
        seed: seed for every random choice of this candidate.
    """

    method: str = "magnitude"
    granularity: Granularity = "unstructured"
    scope: Scope = "global"
    target_sparsity: float | None = Field(None, gt=0, lt=1)
    target_macs_ratio: float | None = Field(None, gt=0, le=1)
    nm: tuple[int, int] | None = None
    knobs: dict[str, float] = Field(default_factory=dict, validate_default=True)
    allocation: dict[str, float] = Field(default_factory=dict, validate_default=True)
    prune_stem: bool = True
    prune_head: bool = True
    reconstruct: ReconSpec = Field(default_factory=ReconSpec)
    recal: RecalSpec = Field(default_factory=RecalSpec)
    finetune_steps: int = Field(0, ge=0)
    finetune_lr: float = Field(0.01, gt=0)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        gran = data.get("granularity", "unstructured")
        if gran == "nm":
            return _nm_fields(data)
        if data.get("nm") is not None:
            raise InputError(f"nm {data['nm']} is for granularity 'nm'; the candidate's granularity is {gran!r}: drop nm or set granularity: nm")
        if "target_sparsity" not in data and gran == "unstructured" and data.get("target_macs_ratio") is None:
            data["target_sparsity"] = 0.5  # the unstructured default; channel candidates have none
        if data.get("target_sparsity") is not None and data.get("target_macs_ratio") is not None:
            raise InputError(
                "a candidate has one target: target_sparsity (unstructured) or target_macs_ratio (channel), "
                f"got both ({data['target_sparsity']}, {data['target_macs_ratio']})"
            )
        return data

    @field_validator("knobs", "allocation")
    @classmethod
    def _read_only(cls, v: dict[str, float]) -> "ReadOnlyDict":
        return ReadOnlyDict(v)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> "CandidateSpec":
        """A changed copy, validated like a new spec (pydantic's copy skips validation)."""
        return type(self).model_validate({**self.model_dump(), **(update or {})})

    def to_json(self) -> str:
        """Canonical JSON (the form stored in MLflow); ``from_json`` inverts it."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, s: str) -> "CandidateSpec":
        """The spec of a record. Records written before a spec had one target carry the
        old default ``target_sparsity: 0.5`` beside a channel candidate's MACs ratio;
        that value was never used, and is dropped."""
        data = json.loads(s)
        if isinstance(data, dict) and data.get("granularity") == "channel" and data.get("target_macs_ratio") is not None:
            data["target_sparsity"] = None
        return cls.model_validate(data)


def _nm_fields(data: dict[str, Any]) -> dict[str, Any]:
    """An ``nm`` spec's fields: the pattern checked (default 2:4); it has no other target."""
    for key in ("target_sparsity", "target_macs_ratio"):
        if data.get(key) is not None:
            raise InputError(f"granularity 'nm' sets the sparsity by its pattern nm=(N, M); drop {key} ({data[key]})")
    n, m = data.get("nm") or (2, 4)
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m):
        raise InputError(f"nm must be two whole numbers (N, M) with 1 <= N < M, e.g. (2, 4); got {data.get('nm')}")
    return {**data, "nm": (n, m), "target_sparsity": None, "target_macs_ratio": None}


class ReadOnlyDict(dict):
    """A dict that refuses changes in place: a spec, once made, is what was recorded.
    Make another with ``spec.model_copy(update={"knobs": {...}})``."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise UsageError("a CandidateSpec's knobs and allocation are read-only; build a new spec with model_copy(update=...)")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return (ReadOnlyDict, (dict(self),))  # pickles (Ray) without calling __setitem__


@dataclass(frozen=True)
class CandidateResult:
    """What one evaluation measured. Immutable once returned by the evaluator.

    ``metrics`` uses the project's metric names (README, "Metrics"): accuracy values
    are fractions in [0, 1], ``macs`` are multiply-accumulates per image, times are
    seconds, ``latency_ms`` milliseconds per batch. ``plan`` is the Parquet-ready
    description of what was pruned (see ``pipeline.pruning.plan``); ``diagnostics`` (Parquet) and ``diagnostics_png`` are the
    signal-collapse table and plot (``pipeline.repair.collapse``). ``state`` is
    ``"ok"`` or ``"failed"``; a failed result carries ``error``.
    """

    spec: CandidateSpec
    state: Literal["ok", "failed"]
    metrics: Mapping[str, float] = field(default_factory=dict)
    info: Mapping[str, str] = field(default_factory=dict)
    plan: bytes = b""
    diagnostics: bytes = b""
    diagnostics_png: bytes = b""
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A dict for ``json.dumps`` (``from_dict`` inverts it): the spec as its canonical
        JSON object, the byte fields base64-encoded. A NaN or infinite metric stays a float,
        which ``json.dumps`` writes as ``NaN``/``Infinity`` (Python reads it back; strict
        JSON parsers do not)."""
        out: dict[str, Any] = {"spec": json.loads(self.spec.to_json()), "state": self.state, "metrics": dict(self.metrics), "info": dict(self.info)}
        out.update({k: base64.b64encode(getattr(self, k)).decode("ascii") for k in _BYTE_FIELDS})
        out["error"] = self.error
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CandidateResult":
        """The result ``to_dict`` wrote (byte fields it lacks are empty)."""
        return cls(
            spec=CandidateSpec.from_json(json.dumps(data["spec"])),
            state=data["state"],
            metrics={k: math.nan if v is None else float(v) for k, v in data.get("metrics", {}).items()},  # None: a NaN a strict writer nulled
            info={k: str(v) for k, v in data.get("info", {}).items()},
            error=data.get("error", ""),
            **{k: base64.b64decode(data.get(k, "")) for k in _BYTE_FIELDS},
        )


_BYTE_FIELDS = ("plan", "diagnostics", "diagnostics_png")
