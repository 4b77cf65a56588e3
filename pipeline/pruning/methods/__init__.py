"""Pruning methods behind one interface. Adding a method: one file, one import line below."""

from pipeline.pruning.methods import activation as _activation  # noqa: E402,F401
from pipeline.pruning.methods import hyperflows as _hyperflows  # noqa: E402,F401

# Built-in methods register themselves on import, one line each.
from pipeline.pruning.methods import magnitude as _magnitude  # noqa: E402,F401
from pipeline.pruning.methods import obs as _obs  # noqa: E402,F401
from pipeline.pruning.methods import ocs as _ocs  # noqa: E402,F401
from pipeline.pruning.methods import random as _random  # noqa: E402,F401
from pipeline.pruning.methods import screening as _screening  # noqa: E402,F401
from pipeline.pruning.methods.base import ImportanceMethod, Knob, PruneContext, PruningMethod, TrainingMethod
from pipeline.pruning.methods.registry import get_method, list_methods, register_method

__all__ = ["ImportanceMethod", "Knob", "PruneContext", "PruningMethod", "TrainingMethod", "get_method", "list_methods", "register_method"]
