"""The search configuration: one YAML file validated into typed objects.

Unknown keys and wrong types are refused before any work starts, with the YAML path
of the offending field (``ConfigError``). Relative paths resolve against the run
folder's parent (the working directory), and run-folder paths may not escape it.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.data.splits import DataConfig
from pipeline.errors import excerpt
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig
from pipeline.pruning.methods import get_method
from pipeline.spec import Frozen, Granularity, RecalSpec, ReconSettings, Scope
from search.configfile import ConfigError, read_config_file
from search.study.rungs import FidelityConfig

Range = tuple[float, float]
STORE_FILE = "mlflow.db"  # the run folder's default MLflow store


def local_store(run_dir: str | Path) -> Path:
    """The SQLite MLflow store of the run folder ``run_dir`` (the default tracking store)."""
    return Path(run_dir).expanduser().resolve() / STORE_FILE


def local_store_uri(run_dir: str | Path) -> str:
    """The tracking URI of ``local_store(run_dir)``."""
    return f"sqlite:///{local_store(run_dir)}"


def inside_folder(root: Path, path: str | Path, what: str) -> Path:
    """``path`` resolved: a relative one inside ``root`` (the run folder; refused when it
    escapes it), an absolute one as given (taken as deliberate). ``what`` names it in the
    message (a field, a flag)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    full = (root / p).resolve()
    if not full.is_relative_to(root):
        raise ConfigError(
            f"{what} {str(path)!r} escapes the run folder {root}: a relative path stays inside the run folder; "
            "give an absolute path to write elsewhere on purpose"
        )
    return full


def _seed() -> Any:
    # numpy's generators take seeds in [0, 2**32); samplers add the trial count
    return Field(0, ge=0, le=2**31 - 1)


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


class ObjectiveConfig(Frozen):
    """What "best" means.

    ``pareto``: maximise accuracy and minimise effective MACs together (the front).
    ``constrained``: maximise accuracy subject to ``max_macs_ratio`` (fraction of
    the dense model's MACs) and/or ``min_sparsity``.
    """

    mode: Literal["pareto", "constrained"] = "pareto"
    max_macs_ratio: float | None = Field(None, gt=0, le=1)
    min_sparsity: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _constraint(self) -> "ObjectiveConfig":
        if self.mode == "constrained" and self.max_macs_ratio is None and self.min_sparsity is None:
            raise ConfigError("constrained mode needs max_macs_ratio or min_sparsity")
        return self


class SamplerConfig(Frozen):
    """Optuna sampler: ``tpe``, ``nsga2`` or ``random`` (the EagleEye-style baseline)."""

    name: Literal["tpe", "nsga2", "random"] = "tpe"
    seed: int = _seed()
    startup_trials: int = Field(8, ge=1)


class BudgetConfig(Frozen):
    """When to stop: after ``trials`` candidates in the study (resumes count), or ``wall_time_s``."""

    trials: int = Field(24, ge=1)
    wall_time_s: float | None = Field(None, gt=0)


class RecordsConfig(Frozen):
    """What a candidate's record keeps besides its metrics, masks and kept channels.

    ``refit_weights``: reconstruction's refit weights (float32, the largest artifact by
    far) stored for ``all`` candidates (a rebuild loads them), for the ``front`` only
    (candidates on the Pareto front of feasible candidates when recorded, a superset of
    the final front), or for none (``replay``); a record without them is rebuilt by
    replaying the fit on the recorded calibration images (checked by fingerprint).
    """

    refit_weights: Literal["all", "front", "replay"] = "all"


class ActorsConfig(Frozen):
    """Evaluator actors and what each requests from Ray.

    ``count`` defaults to one per CPU of the cluster; ``queue`` candidates are kept
    in flight per actor so none waits for the driver; ``max_retries`` bounds how
    often a candidate whose actor died is resubmitted before it is recorded as failed.
    """

    count: int | None = Field(None, ge=1)
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    threads: int = Field(1, ge=1)
    queue: int = Field(2, ge=1)
    max_retries: int = Field(2, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU Ray assigned when num_gpus > 0, else the CPU

    @model_validator(mode="after")
    def _gpu_given(self) -> "ActorsConfig":
        if self.device == "cuda" and self.num_gpus == 0:
            raise ConfigError("device: cuda needs num_gpus > 0 (an actor computes only on a GPU Ray gave it); set actors.num_gpus, e.g. 1 or 0.25")
        return self


class BaseTrainingConfig(Frozen):
    """Training of the base model when it has no checkpoint (the digits default).

    The trained weights are cached under the run folder and reused by later runs.
    """

    steps: int = Field(400, ge=0)
    lr: float = Field(0.05, gt=0)
    seed: int = _seed()


class SearchConfig(Frozen):
    """Everything one search needs. See ``configs/*.yaml`` for annotated examples."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    run_dir: str = "runs"
    model: ModelConfig = Field(default_factory=ModelConfig)  # the dense network: registry name or import path, checkpoint
    data: DataConfig = Field(default_factory=DataConfig)  # where images come from, and the calibration/validation split
    base_training: BaseTrainingConfig = Field(default_factory=BaseTrainingConfig)  # only when model.checkpoint is unset
    space: SpaceConfig = Field(default_factory=SpaceConfig)  # what the sampler may choose
    recalibration: RecalSpec = Field(default_factory=RecalSpec)  # BatchNorm re-estimation after pruning (REFLOW)
    reconstruction: ReconSettings = Field(default_factory=ReconSettings)  # least-squares refit, when the space picks lsq
    finetune_steps: int = Field(0, ge=0)
    finetune_lr: float = Field(0.01, gt=0)  # SGD learning rate of that fine-tuning
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)  # what 'best' means: a constrained optimum or the Pareto front
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)  # Optuna's sampler and its seed
    budget: BudgetConfig = Field(default_factory=BudgetConfig)  # when to stop: candidates or wall time
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)  # cheap rungs first, promoted by Optuna's trial pruner
    actors: ActorsConfig = Field(default_factory=ActorsConfig)  # Ray actors: count and resources of each
    measure: MeasureConfig = Field(default_factory=MeasureConfig)  # how accuracy and latency are measured
    ray_address: str | None = None
    tracking_uri: str | None = None
    optuna_storage: str | None = None
    records: RecordsConfig = Field(default_factory=RecordsConfig)  # how much of each candidate its record keeps
    log_models: bool = False  # at the end, log the Pareto front's networks as MLflow models (runs:/RUN/model)
    seed: int = _seed()

    @field_validator("optuna_storage")
    @classmethod
    def _storage_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(v)
        except ArgumentError:
            raise ConfigError(
                f"{excerpt(v)} is not a database URL; use e.g. sqlite:////abs/path/optuna.db or postgresql://host/db, or leave it unset for a journal file in run_dir"
            ) from None
        return v

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> "SearchConfig":
        from pipeline.models import list_models

        if self.model.name not in list_models():
            raise ConfigError(f"model.name: unknown model {self.model.name!r}; valid models: {list_models()}")
        from pipeline.data.sources import LOADERS

        LOADERS.get(self.data.name)  # "data.name: unknown data set ...; did you mean ...?" (an InputError)
        check_paths = (info.context or {}).get("check_paths", True)
        for field, path in (("model.checkpoint", self.model.checkpoint), ("data.path", self.data.path), ("data.test_path", self.data.test_path)):
            if check_paths and path and not Path(path).expanduser().exists():
                raise ConfigError(f"{field}: {path} does not exist (relative paths are read from {Path.cwd()})")
        if self.fidelity.enabled and self.objective.mode != "constrained":
            raise ConfigError(
                "fidelity.enabled needs objective.mode: constrained (Optuna's trial pruners work for single-objective studies "
                "only); set the constraint (max_macs_ratio / min_sparsity) or turn fidelity off for a pareto search"
            )
        calib_users = {"recalibration": self.recalibration.images}
        if "lsq" in self.space.reconstruct:
            calib_users["reconstruction"] = max([self.reconstruction.images, *self.space.recon.images])
        for section, images in calib_users.items():
            if images > self.data.calib_size:
                raise ConfigError(
                    f"{section}.images: {images} calibration images requested but "
                    f"data.calib_size is {self.data.calib_size}; raise calib_size or lower images"
                )
        return self

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, v: str) -> str:
        p = Path(v).expanduser().resolve()
        if p == Path(p.anchor) or p == Path.home().resolve():
            raise ConfigError(
                f"{v!r} is {'the file system root' if p == Path(p.anchor) else 'your home folder'}; give the search a folder of its own, e.g. runs"
            )
        return v

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir).expanduser().resolve()

    @property
    def experiment(self) -> str:
        return self.name

    def resolved_tracking_uri(self) -> str:
        """The MLflow tracking URI: as configured, else a SQLite file in the run folder."""
        return self.tracking_uri or local_store_uri(self.run_path)

    def inside_run_dir(self, relative: str) -> Path:
        """A path inside the run folder (``inside_folder``)."""
        return inside_folder(self.run_path, relative, "path")


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        msg = msg if len(msg) <= 400 else msg[:400] + " ..."
        got = f" (got {excerpt(e['input'])})" if e["type"] not in ("missing",) and not isinstance(e.get("input"), dict) else ""
        lines.append(f"{loc}: {msg}{got}" if loc else msg)  # model-level checks name their fields themselves
    return "invalid configuration:\n  " + "\n  ".join(lines)


def parse_config(data: dict, overrides: dict | None = None, check_paths: bool = True) -> SearchConfig:
    """Validate a mapping into a ``SearchConfig``; raises ``ConfigError`` naming each bad field.

    ``check_paths=False`` skips the existence of input files (a config validated here
    but run on a cluster, where its paths live).
    """
    merged = merge_sections(data or {}, overrides or {})
    try:
        return SearchConfig.model_validate(merged, context={"check_paths": check_paths})
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def merge_sections(base: dict, over: dict) -> dict:
    """``over`` laid onto ``base``, section by section (``{"budget": {"trials": 3}}``
    changes one field and keeps the rest of the section)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge_sections(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path, overrides: dict | None = None, check_paths: bool = True) -> SearchConfig:
    """Read (bounded, see ``search.configfile``) and validate a YAML config file."""
    return parse_config(read_config_file(path), overrides, check_paths)
