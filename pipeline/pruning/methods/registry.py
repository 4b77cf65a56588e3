"""The one place pruning methods are registered and looked up by name."""

from __future__ import annotations

from typing import Callable, TypeVar

from pipeline.pruning.methods.base import PruningMethod
from pipeline.registry import Registry

METHODS: Registry[type[PruningMethod]] = Registry("pruning method", plural="methods")
M = TypeVar("M", bound=type[PruningMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a ``PruningMethod`` available under ``name``.

    Raises:
        pipeline.registry.RegistryError: if ``name`` is already registered.
    """

    def deco(cls: M) -> M:
        METHODS.add(name, cls)
        cls.name = name
        return cls

    return deco


def get_method(name: str) -> PruningMethod:
    """A fresh instance of the method registered as ``name``.

    Raises:
        pipeline.registry.RegistryError: naming the valid methods and the closest match.
    """
    return METHODS.get(name)()


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return METHODS.names()
