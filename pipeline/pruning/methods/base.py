"""The interface every pruning method implements.

A method turns (model, data, spec) into a ``PrunePlan``. It never mutates the model it
is given and never keeps per-candidate state: the evaluator builds a fresh pruned copy
for each candidate. Capabilities are class attributes that the search reads; nothing
outside a method's file checks for a particular method class.

Two shapes of method exist:
- ``ImportanceMethod``: score every unit once, then select for any target. Scores are
  cached in ``PruneContext.cache`` under ``cache_key(spec)``, so one actor scores a
  method once and reuses the scores for every sparsity it is asked for.
- ``TrainingMethod``: methods whose outcome depends on training (hyperflows, ocs)
  implement ``plan`` themselves.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Hashable, Literal

import torch
from torch import nn

from pipeline.errors import InputError
from pipeline.pruning import structure
from pipeline.pruning.layers import prunable_weights, stage_of
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.thresholds import global_masks, layerwise_masks, nm_masks

if TYPE_CHECKING:
    from pipeline.data.splits import Splits
    from pipeline.spec import CandidateSpec


@dataclass(frozen=True)
class Knob:
    """A searchable numeric knob of a method: its range and prior.

    ``low``/``high`` are the default search range; ``limits`` the values that make
    sense at all (a config may search beyond the default range, never beyond these).
    ``choices``: a knob that picks one of named alternatives holds the index of its
    choice (0, 1, ...; integer, limits 0 to len - 1); ``PruningMethod.choice`` names it.
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False
    default: float | None = None
    limits: tuple[float, float] = (-math.inf, math.inf)
    choices: tuple[str, ...] = ()

    @classmethod
    def choice_of(cls, *choices: str, default: str) -> "Knob":
        """A knob choosing among ``choices`` (stored as the index), ``default`` unless set."""
        n = len(choices) - 1
        return cls(0, n, integer=True, default=float(choices.index(default)), limits=(0, n), choices=choices)

    def range_problem(self, low: float, high: float) -> str | None:
        """Why ``[low, high]`` is not a valid search range of this knob, or None."""
        if not (math.isfinite(low) and math.isfinite(high)):
            return f"range [{low}, {high}] must be finite"
        if low > high:
            return f"range [{low}, {high}] is reversed; write [{high}, {low}]"
        lo, hi = self.limits
        if low < lo or high > hi:
            return f"range [{low}, {high}] leaves the knob's valid values [{lo}, {hi}]"
        if self.log and low <= 0:
            return f"range [{low}, {high}] must be > 0 (the knob is searched on a log scale)"
        if self.integer and (low != int(low) or high != int(high)):
            return f"range [{low}, {high}] must hold whole numbers"
        return None


@dataclass(kw_only=True)
class PruneContext:
    """What a method may use, built once per actor (``from_splits``, or by keyword).

    Attributes:
        calib_x: calibration images, float32 (N, C, H, W), normalised.
        calib_y: their labels, int64 (N,).
        train_x, train_y: training images and labels, for methods that train: tensors,
            or a data split (``pipeline.data.store.Split`` / ``StreamSplit``) that
            ``pipeline.train.batches`` normalises batch by batch (``train_y`` then unused).
        example_input: one image batch (1, C, H, W) for tracing and MACs.
        num_classes: number of classes.
        cache: per-actor cache shared across candidates (importance scores, graphs),
            bounded: the least recently used entries go first.
        on_step: called by methods that train as ``on_step(done, total)`` (optimiser
            steps), so a long candidate can report progress; None: nobody listens.
    """

    calib_x: torch.Tensor
    calib_y: torch.Tensor
    train_x: Any
    train_y: torch.Tensor
    example_input: torch.Tensor
    num_classes: int
    cache: "BoundedCache" = field(default_factory=lambda: BoundedCache(32))
    on_step: Callable[[int, int], None] | None = None

    def step(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` training steps to ``on_step`` (if any)."""
        if self.on_step is not None:
            self.on_step(done, total)

    @classmethod
    def from_splits(cls, splits: "Splits") -> "PruneContext":
        """The context of a data set: the calibration split normalised (float32, on its
        device), the training split as a split (streamed; empty when it was not loaded),
        the first validation image as example input."""
        none = torch.empty(0, dtype=torch.int64)
        return cls(
            calib_x=splits.calib.x,
            calib_y=splits.calib.y,
            train_x=splits.train if splits.train is not None else torch.empty(0),
            train_y=splits.train.y if splits.train is not None else none,
            example_input=splits.val.batch(0, 1),
            num_classes=splits.num_classes,
        )


class BoundedCache(OrderedDict):
    """A dict that keeps its ``maxsize`` most recently used entries (an actor lives for
    hundreds of candidates; seeded or knob-dependent scores must not pile up)."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def __getitem__(self, key: Hashable) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


class PruningMethod(ABC):
    """Base of all methods. Subclasses register with ``@register_method(name)``."""

    name: ClassVar[str] = ""
    granularities: ClassVar[tuple[str, ...]] = ("unstructured",)
    #: rankings the method supports (``global``: all units together; ``layerwise``)
    scopes: ClassVar[tuple[str, ...]] = ("global", "layerwise")
    #: whether per-stage allocation ratios (``CandidateSpec.allocation``) apply
    allocates: ClassVar[bool] = False
    #: what the candidate's size is set by: a target sparsity, a MACs ratio, or an
    #: outcome of training (the knobs steer it).
    target: ClassVar[Literal["sparsity", "outcome"]] = "sparsity"
    #: for ``target == "outcome"``: (knob, choice) under which the method takes a target
    #: sparsity after all (hyperflows' ``pressure_schedule: controller``), or None
    sparsity_target_when: ClassVar[tuple[str, str] | None] = None
    needs_labels: ClassVar[bool] = False
    trains: ClassVar[bool] = False
    knobs: ClassVar[dict[str, Knob]] = {}
    #: for ``target == "outcome"``: the knob that steers the outcome (power-law steering
    #: fits density against it), or None
    steered_knob: ClassVar[str | None] = None
    #: knobs that set how far the steered knob gets (a training budget): steering fits
    #: one curve per combination of their values
    budget_knobs: ClassVar[tuple[str, ...]] = ()
    #: knobs that make a candidate quick (small training budgets, a steered knob's value):
    #: the method contract test runs every method with them
    fast_knobs: ClassVar[dict[str, float]] = {}
    #: images per optimiser step, for a method that trains
    train_batch: ClassVar[int] = 0

    def check(self, spec: "CandidateSpec") -> None:
        """Raise ``ValueError`` naming the field if ``spec`` asks for something unsupported."""
        if spec.granularity not in self.granularities:
            raise InputError(f"method {self.name!r} supports granularity {list(self.granularities)}, but the candidate asks for {spec.granularity!r}")
        if spec.scope not in self.scopes:
            raise InputError(f"method {self.name!r} supports scope {list(self.scopes)}, but the candidate asks for {spec.scope!r}")
        if spec.allocation and spec.granularity == "nm":
            raise InputError("granularity 'nm' prunes every layer to its N:M pattern; remove the per-stage allocation from the candidate")
        if spec.allocation and not self.allocates:
            raise InputError(f"method {self.name!r} takes no per-stage allocation; remove it from the candidate")
        unknown = set(spec.knobs) - set(self.knobs)
        if unknown:
            raise InputError(f"method {self.name!r} has no knob {sorted(unknown)}; its knobs are {sorted(self.knobs)}")

    def knob(self, spec: "CandidateSpec", name: str) -> float:
        """The value of knob ``name`` for ``spec``, or its default."""
        return self.knob_of(spec.knobs, name)

    def knob_of(self, knobs: Mapping[str, float], name: str) -> float:
        """``knobs[name]``, or the knob's default (a ``ValueError`` when it has none)."""
        if name in knobs:
            return knobs[name]
        default = self.knobs[name].default
        if default is None:
            raise InputError(f"method {self.name!r} needs knob {name!r}; set it in the candidate's knobs")
        return default

    def choice(self, spec: "CandidateSpec", name: str) -> str:
        """The named choice of a ``choices`` knob for ``spec`` (a ``ValueError`` for an index out of range)."""
        return self.choice_of(spec.knobs, name)

    def choice_of(self, knobs: Mapping[str, float], name: str) -> str:
        """The named choice of knob ``name`` in ``knobs`` (or its default)."""
        choices, value = self.knobs[name].choices, self.knob_of(knobs, name)
        if value != int(value) or not 0 <= value < len(choices):
            raise InputError(f"method {self.name!r}: knob {name!r} is {value:g}, the index of one of {list(choices)} (0 to {len(choices) - 1})")
        return choices[int(value)]

    def target_for(self, knobs: Mapping[str, float]) -> Literal["sparsity", "outcome"]:
        """What sets the size of a candidate with ``knobs``: ``target``, or ``sparsity`` when
        ``sparsity_target_when`` names a choice these knobs make."""
        if self.sparsity_target_when is not None:
            knob, wanted = self.sparsity_target_when
            if self.choice_of(knobs, knob) == wanted:
                return "sparsity"
        return self.target

    def knob_values(self, spec: "CandidateSpec") -> dict[str, float]:
        """Every knob that has a value for ``spec``: the spec's own, else the default."""
        return {k: self.knob(spec, k) for k, kb in self.knobs.items() if k in spec.knobs or kb.default is not None}

    def training_steps(self, spec: "CandidateSpec", train_size: int | None = None) -> int:
        """Optimiser steps the method takes for ``spec`` (0: it does not train). ``train_size``:
        images in the training split, for budgets given in epochs of it."""
        return 0

    def training_budget(self, spec: "CandidateSpec", train_size: int | None = None) -> dict[str, int]:
        """What training costs for ``spec``: ``optimizer_steps``, ``batch`` (images per step;
        a training split smaller than that is one batch) and ``images_seen`` (their product); zeros
        for a method that does not train."""
        steps = self.training_steps(spec, train_size)
        return {"optimizer_steps": steps, "batch": self.train_batch, "images_seen": steps * self.train_batch}

    @abstractmethod
    def plan(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec") -> PrunePlan:
        """What to prune for ``spec``. ``model`` is the dense base model; do not mutate it."""


class ImportanceMethod(PruningMethod):
    """A one-shot method: importance scores once, selection for any target.

    It prunes weights (``weight_scores``) and channels (``channel_scores``); a method that
    scores only one of them narrows ``granularities``. A method that adds ``nm`` to its
    granularities gets N:M masks from its weight scores (``thresholds.nm_masks``).
    """

    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "channel")
    allocates = True
    #: knobs that change the scores (others only change selection)
    score_knobs: ClassVar[tuple[str, ...]] = ()
    #: whether the scores depend on the candidate's seed (random scores do)
    seeded: ClassVar[bool] = False
    #: what unstructured global scope ranks across tensors to split the sparsity between
    #: them: the method's ``scores``, or ``magnitude`` (|w|) when they only compare within a
    #: tensor; the scores then choose which weights of each tensor go
    global_split_by: ClassVar[Literal["scores", "magnitude"]] = "scores"

    def cache_key(self, spec: "CandidateSpec") -> Hashable:
        """Candidates with equal keys share scores: every candidate's own seed in the key
        would defeat the cache (and grow it by one set of scores per candidate)."""
        knobs = tuple((k, self.knob(spec, k)) for k in self.score_knobs)
        seed = spec.seed if self.seeded else None
        return (self.name, spec.granularity, spec.prune_stem, spec.prune_head, knobs, seed)

    def weight_scores(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec") -> dict[str, torch.Tensor]:
        """Parameter name -> score of each weight (higher = more important)."""
        raise InputError(f"method {self.name!r} has no unstructured scores")

    def channel_scores(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec", groups: list) -> dict[str, torch.Tensor]:
        """Channel group name -> score of each output channel (higher = more important)."""
        raise InputError(f"method {self.name!r} has no channel scores")

    def plan(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec") -> PrunePlan:
        if spec.granularity == "channel":
            return self._channel_plan(model, ctx, spec)
        if spec.granularity == "nm":
            assert spec.nm is not None  # CandidateSpec fills it in for nm
            return PrunePlan(masks=nm_masks(self._cached_scores(model, ctx, spec), *spec.nm))
        if spec.target_sparsity is None:
            raise InputError(f"method {self.name!r} needs target_sparsity for unstructured pruning")
        scores = self._cached_scores(model, ctx, spec)
        base = self.global_split(model, ctx, spec, scores) if spec.scope == "global" else None
        ratios = {n: spec.allocation.get(stage_of(n), 1.0) for n in scores} if spec.allocation else None
        return PrunePlan(masks=layerwise_masks(scores, spec.target_sparsity, ratios, base))

    def _cached_scores(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec") -> dict[str, torch.Tensor]:
        key = self.cache_key(spec)
        if key not in ctx.cache:
            ctx.cache[key] = self.weight_scores(model, ctx, spec)
        return ctx.cache[key]

    def global_split(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec", scores: dict[str, torch.Tensor]) -> dict[str, float]:
        """Parameter name -> fraction of it that global scope removes at ``spec.target_sparsity``.

        Ranks ``scores`` (or |w|, per ``global_split_by``) across all tensors; methods
        with another rule override it. Allocation ratios then reshape this split.
        """
        if self.global_split_by == "magnitude":
            scores = {n: w.detach().abs() for n, w in weights_of(model, spec).items()}
        assert spec.target_sparsity is not None  # plan() raised otherwise
        masks = global_masks(scores, spec.target_sparsity)
        return {n: int((~m).sum()) / m.numel() for n, m in masks.items()}

    def _channel_plan(self, model: nn.Module, ctx: PruneContext, spec: "CandidateSpec") -> PrunePlan:
        if spec.target_macs_ratio is None:
            raise InputError(f"method {self.name!r} needs target_macs_ratio for channel pruning")
        graph = structure.cached_graph(model, ctx, spec.prune_stem, spec.prune_head)
        key = self.cache_key(spec)
        if key not in ctx.cache:
            ctx.cache[key] = self.channel_scores(model, ctx, spec, graph.groups)
        kept = structure.select_channels(graph, ctx.cache[key], spec.target_macs_ratio, scope=spec.scope, ratios=dict(spec.allocation))
        return PrunePlan(channels=kept)


class TrainingMethod(PruningMethod):
    """A method whose kept set comes out of training (hyperflows, ocs): it implements
    ``plan`` and ``training_steps`` itself and ranks all units together."""

    scopes = ("global",)
    trains = True


def weights_of(model: nn.Module, spec: "CandidateSpec") -> dict[str, nn.Parameter]:
    """The prunable weights of ``model`` under ``spec``'s stem/head choice."""
    return prunable_weights(model, spec.prune_stem, spec.prune_head)
