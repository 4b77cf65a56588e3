"""Name -> object registries (methods, models, data loaders): one implementation.

A registry maps a name from a config to what implements it. Registering a name twice is
a programming error; looking up a name that is not there is the user's typo, answered
with every valid name and the closest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from pipeline.errors import InputError, excerpt

T = TypeVar("T")


class RegistryError(InputError):
    """A name registered twice, or looked up but never registered."""


class Registry(Generic[T]):
    """Entries of one kind by name.

    Args:
        kind: what an entry is, for messages (``pruning method``, ``model``).
        field: config field the name comes from, prefixed to lookup errors (``model.name``);
            empty for none.
        plural: how messages say several entries (default ``kind`` + "s").
    """

    def __init__(self, kind: str, field: str = "", plural: str = "") -> None:
        self.kind = kind
        self.field = field
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name``.

        Raises:
            RegistryError: ``name`` is already registered.
        """

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name`` (``RegistryError`` if taken)."""
        if name in self._entries:
            raise RegistryError(f"{self.kind} {name!r} is registered twice ({_label(self._entries[name])} and {_label(obj)})")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """The entry registered as ``name``.

        Raises:
            RegistryError: naming the valid names and the closest match.
        """
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            prefix = f"{self.field}: " if self.field else ""
            raise RegistryError(f"{prefix}unknown {self.kind} {excerpt(name, 60)}; valid {self.plural}: {self.names()}{hint}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _label(obj: object) -> str:
    return getattr(obj, "__qualname__", type(obj).__qualname__)
