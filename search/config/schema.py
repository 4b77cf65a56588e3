"""The search configuration: one YAML file validated into typed objects.

Unknown keys and wrong types are refused before any work starts, with the YAML path
of the offending field (``ConfigError``). Relative paths resolve against the run
folder's parent (the working directory), and run-folder paths may not escape it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.data.splits import DataConfig
from pipeline.errors import excerpt
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig
from pipeline.spec import Frozen, RecalSpec, ReconSettings
from search.config.file import ConfigError, read_config_file
from search.config.paths import inside_folder, local_store_uri
from search.config.sections import ActorsConfig, BaseTrainingConfig, BudgetConfig, ObjectiveConfig, RecordsConfig, SamplerConfig, seed_field
from search.config.space import SpaceConfig
from search.study.rungs import FidelityConfig


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
    seed: int = seed_field()

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
    """Read (bounded, see ``search.config.file``) and validate a YAML config file."""
    return parse_config(read_config_file(path), overrides, check_paths)
