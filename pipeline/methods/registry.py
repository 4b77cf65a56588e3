"""The one place pruning methods are registered and looked up by name."""

from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from pipeline.methods.base import PruningMethod

_METHODS: dict[str, type[PruningMethod]] = {}
M = TypeVar("M", bound=type[PruningMethod])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a ``PruningMethod`` available under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def deco(cls: M) -> M:
        if name in _METHODS:
            raise ValueError(f"pruning method {name!r} is registered twice ({_METHODS[name].__qualname__} and {cls.__qualname__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> PruningMethod:
    """A fresh instance of the method registered as ``name``.

    Raises:
        ValueError: naming the valid methods and the closest match.
    """
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown pruning method {name!r}; valid methods: {list_methods()}{hint}")
    return _METHODS[name]()


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_METHODS)
