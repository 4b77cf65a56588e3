"""The project's one error tree.

``PrunesearchError`` is the root of every error the product raises on purpose.
``InputError`` is the branch for problems the user fixes (config, data, checkpoint,
model recipe, records, the environment: folders, stores, clusters); the CLI prints
its message and exits with code 2, without a traceback. Anything else that reaches
the CLI is a bug and keeps its traceback.

Each concrete class also derives from (at most) one builtin it used to be
(``ValueError`` through ``InputError``; ``TypeError``, ``LookupError``, ``KeyError``,
``RuntimeError``), so ``except ValueError`` around older call sites keeps working.
"""

from __future__ import annotations


class PrunesearchError(Exception):
    """Root of every error prunesearch raises on purpose."""


class InputError(PrunesearchError, ValueError):
    """Bad input or environment, fixable by the user; the message names the field or
    path and what to do. The CLI maps it to exit code 2 (``search.cli.parser.main``,
    the one place exit codes are chosen)."""


class UsageError(PrunesearchError, TypeError):
    """A call the code does not allow: a read-only value changed, a layer type a routine
    does not handle. A programming error of the caller (the CLI keeps its traceback)."""


def excerpt(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: messages never carry whole inputs
    (a YAML alias bomb expands to gigabytes)."""
    text = _bounded_repr(value, limit, 0)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _bounded_repr(value: object, limit: int, depth: int) -> str:
    # repr of a nested container is built in full before it could be cut: walk it
    # instead, and stop once the excerpt is long enough
    if isinstance(value, (list, tuple, dict, set)):
        if depth > 8:
            return "..."
        items = value.items() if isinstance(value, dict) else value
        open_, close = {dict: ("{", "}"), tuple: ("(", ")"), set: ("{", "}")}.get(type(value), ("[", "]"))
        parts, size = [], 0
        for item in items:
            if isinstance(value, dict):
                s = f"{_bounded_repr(item[0], limit, depth + 1)}: {_bounded_repr(item[1], limit, depth + 1)}"
            else:
                s = _bounded_repr(item, limit, depth + 1)
            parts.append(s)
            size += len(s) + 2
            if size > limit:
                parts.append("...")
                break
        return open_ + ", ".join(parts) + close
    return repr(value)[: limit + 3]
