"""The ``space:`` section: what the sampler may choose (methods, granularities, targets, knobs, allocation, reconstruction settings)."""

from __future__ import annotations

import difflib
import math
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.errors import excerpt
from pipeline.pruning.methods import get_method
from pipeline.spec import Frozen, Granularity, Scope
from search.config.file import ConfigError

Range = tuple[float, float]


def _check_range(v: Range, what: str, high_inclusive: bool) -> Range:
    """A (low, high) range inside (0, 1), or (0, 1] when ``high_inclusive``."""
    top_ok = v[1] <= 1 if high_inclusive else v[1] < 1
    if v[0] > v[1]:
        raise ConfigError(f"{what} range [{v[0]}, {v[1]}] is reversed; write [{v[1]}, {v[0]}]")
    if not (0 < v[0] <= v[1] and top_ok):
        bound = "<= 1" if high_inclusive else "< 1"
        raise ConfigError(f"{what} range must satisfy 0 < low <= high {bound}")
    return v


class ReconSpace(Frozen):
    """Reconstruction settings searched for trials that pick ``reconstruct: lsq`` (Optuna
    parameters ``recon.images``, ``recon.ridge``, ``recon.layers``). Empty / None: the
    ``reconstruction:`` section's value, not searched; one choice is fixed, not searched.

    Attributes:
        images: calibration image counts to choose from (each at most ``data.calib_size``).
        ridge: range of the relative ridge, searched log-uniformly.
        layers: ``all`` and/or ``pruned``.
    """

    images: list[int] = Field(default_factory=list)
    ridge: Range | None = None
    layers: list[Literal["pruned", "all"]] = Field(default_factory=list)

    @field_validator("images")
    @classmethod
    def _images(cls, v: list[int]) -> list[int]:
        if any(i < 1 for i in v):
            raise ConfigError(f"image counts must be >= 1, got {v}")
        return v

    @field_validator("ridge")
    @classmethod
    def _ridge(cls, v: Range | None) -> Range | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ConfigError(f"range [{v[0]}, {v[1]}] must satisfy 0 < low <= high (searched on a log scale)")
        return v


class SpaceConfig(Frozen):
    """The pruning space: what the sampler may choose.

    Attributes:
        methods: registered method names to choose from.
        granularity: granularities to choose from (intersected with each method's).
        scope: ``global`` and/or ``layerwise`` ranking.
        sparsity: range of target weight sparsity for unstructured one-shot methods.
        macs_ratio: range of the fraction of dense MACs kept for channel pruning.
        knobs: per method, ranges of its knobs to search (others keep defaults),
            e.g. ``{hyperflows: {pressure: [0.001, 0.3]}}``.
        allocation: per stage, range of the multiplier on its pruned fraction
            (a network pruning space), e.g. ``{layer1: [0.5, 1.5]}``. Each trial
            also chooses (parameter ``allocate``) whether to use it at all, so the
            scope's own split stays in the space.
        prune_stem, prune_head: whether the first conv / the classifier are pruned.
        target_sparsity: for methods whose sparsity is an outcome (hyperflows): the
            sparsity the user wants; the fitted power law places pressure there.
        reconstruct: reconstruction modes to choose from (Optuna parameter
            ``reconstruct``): ``none`` and/or ``lsq`` (refit kept weights on calibration
            images; settings in the config's ``reconstruction:`` section).
        recon: reconstruction settings searched as well (``ReconSpace``): worth it when
            candidates are cheap (``fidelity:``).
        nm: N:M patterns ``[N, M]`` for ``granularity: nm`` (Optuna parameter ``nm``,
            values ``"N:M"``), e.g. ``[[2, 4], [4, 8]]``: keep N of every M consecutive
            input weights.
    """

    methods: list[str] = Field(default_factory=lambda: ["magnitude"], min_length=1)
    granularity: list[Granularity] = Field(["unstructured"], min_length=1)  # pydantic copies a list default per instance
    scope: list[Scope] = Field(["global"], min_length=1)
    sparsity: Range = (0.3, 0.97)
    macs_ratio: Range = (0.3, 0.9)
    knobs: dict[str, dict[str, Range]] = Field(default_factory=dict)
    allocation: dict[str, Range] = Field(default_factory=dict)
    prune_stem: bool = True
    prune_head: bool = True
    target_sparsity: float | None = Field(None, gt=0, lt=1)
    reconstruct: list[Literal["none", "lsq"]] = Field(["none"], min_length=1)
    recon: ReconSpace = Field(default_factory=ReconSpace)
    nm: list[tuple[int, int]] = Field([(2, 4)], min_length=1)

    @field_validator("nm")
    @classmethod
    def _nm(cls, v: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for n, m in v:
            if not 1 <= n < m:
                raise ConfigError(f"pattern [{n}, {m}] must keep N of every M weights with 1 <= N < M, e.g. [2, 4]")
        if len(set(v)) < len(v):
            raise ConfigError(f"patterns {[list(p) for p in v]} repeat one; list each once")
        return v

    @field_validator("sparsity", "macs_ratio")
    @classmethod
    def _fraction_ranges(cls, v: Range, info: ValidationInfo) -> Range:
        # a sparsity of 1 would remove every weight; a MACs ratio of 1 is the dense model
        return _check_range(v, str(info.field_name), high_inclusive=info.field_name == "macs_ratio")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for name in v:
            get_method(name)  # raises ValueError listing the valid names
        return v

    @field_validator("knobs")
    @classmethod
    def _knobs(cls, v: dict[str, dict[str, Range]]) -> dict[str, dict[str, Range]]:
        """Knob names and ranges checked against each method's declared knobs."""
        for method_name, ranges in v.items():
            try:
                method = get_method(method_name)
            except ValueError as e:
                raise ConfigError(f"{excerpt(method_name, 60)}: {e}") from None
            for name, (low, high) in ranges.items():
                knob = method.knobs.get(name)
                if knob is None:
                    close = difflib.get_close_matches(name, list(method.knobs), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise ConfigError(
                        f"{method_name}.{name[:60]}: method {method_name!r} has no such knob; its knobs are {sorted(method.knobs)}{hint}"
                    )
                problem = knob.range_problem(low, high)
                if problem:
                    raise ConfigError(f"{method_name}.{name}: {problem}")
        return v

    @field_validator("allocation")
    @classmethod
    def _allocation(cls, v: dict[str, Range]) -> dict[str, Range]:
        # stage names are checked against the model in preflight (search.runner.preflight)
        for stage, (low, high) in v.items():
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
                raise ConfigError(f"{excerpt(stage, 60)}: multiplier range [{low}, {high}] must satisfy 0 <= low <= high, finite")
        return v

    @model_validator(mode="after")
    def _granularities(self) -> "SpaceConfig":
        for name in self.methods:
            supported = get_method(name).granularities
            if not set(supported) & set(self.granularity):
                raise ConfigError(
                    f"space.granularity: method {name!r} supports {list(supported)}, none of {self.granularity}; add one or drop the method"
                )
        return self
