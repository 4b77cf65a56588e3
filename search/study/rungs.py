"""The ``fidelity:`` config section: the cheap rungs of a multi-fidelity search and the
Optuna trial pruner that promotes candidates through them (``search.study.fidelity``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.fidelity import Rung, RungSettings
from pipeline.spec import Frozen


class FidelityConfig(Frozen):
    """Multi-fidelity candidates promoted by Optuna's trial pruner (off unless ``enabled``).

    Each candidate runs the cheap ``rungs`` in order, then its full settings (the last
    rung, index ``len(rungs)``); after each cheap rung its accuracy is reported to Optuna
    (step ``reduction_factor ** rung``) and the ``pruner`` (``successive_halving`` or
    ``hyperband``) decides whether it goes on. Needs ``objective.mode: constrained``:
    Optuna's trial pruners work for single-objective studies only.
    """

    enabled: bool = False
    pruner: Literal["successive_halving", "hyperband"] = "successive_halving"
    reduction_factor: int = Field(3, ge=2)
    rungs: list[RungSettings] = Field(
        default_factory=lambda: [
            RungSettings(recal_images=128, recon_images=0, val_images=256),
            RungSettings(recal_images=128, recon_images=256, val_images=1000),
        ],
        min_length=1,
    )

    @property
    def full(self) -> int:
        """Index of the full-settings rung."""
        return len(self.rungs)

    def rung(self, index: int) -> Rung:
        """Rung ``index`` as sent to an evaluator (``full``: the candidate's own settings)."""
        if index >= self.full:
            return Rung(index=self.full, final=True)
        return Rung(index=index, **self.rungs[index].model_dump())
