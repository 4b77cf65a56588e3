"""The smaller sections of a search config: objective, sampler, budget, records, actors, base-model training."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.spec import Frozen
from search.config.file import ConfigError


def seed_field() -> Any:
    # numpy's generators take seeds in [0, 2**32); samplers add the trial count
    return Field(0, ge=0, le=2**31 - 1)


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
    seed: int = seed_field()
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
    seed: int = seed_field()
