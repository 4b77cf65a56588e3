"""Every error the product raises on purpose derives from ``PrunesearchError``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from pipeline.errors import InputError, PrunesearchError

ROOT = Path(__file__).resolve().parents[1]
# raised for a library's protocol, not as prunesearch's own error
PROTOCOL = {"argparse.ArgumentTypeError", "AttributeError", "yaml.constructor.ConstructorError"}


def raised_classes() -> list[tuple[str, str, dict[str, str]]]:
    """(module, dotted name, the file's ``from X import NAME`` anywhere, as NAME -> X) of
    every ``raise NAME(...)`` in pipeline/ and search/."""
    out = []
    for pkg in ("pipeline", "search"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            tree = ast.parse(path.read_text())
            local = {a.asname or a.name: n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
            for node in ast.walk(tree):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                    out.append((module, ast.unparse(node.exc.func), local))
    return out


def resolve(module: str, name: str, local: dict[str, str]) -> object:
    head, *rest = name.split(".")
    mod = importlib.import_module(module)
    obj = getattr(mod, head) if hasattr(mod, head) else getattr(importlib.import_module(local[head]), head)  # imported in a function
    for part in rest:
        obj = getattr(obj, part)
    return obj


def test_every_raised_error_is_a_prunesearch_error():
    found, offenders = 0, []
    for module, name, local in raised_classes():
        if name in PROTOCOL:
            continue
        obj = resolve(module, name, local)
        if not isinstance(obj, type):
            continue  # a helper that builds the error (checked where it is defined)
        found += 1
        if not issubclass(obj, PrunesearchError):
            offenders.append(f"{module}: raise {name}")
    assert found > 150 and offenders == []


def test_input_errors_keep_one_builtin_and_old_catches_work():
    from pipeline.pruning.plan import PlanError
    from pipeline.spec import CandidateSpec
    from search.study.powerlaw import FitError

    assert issubclass(PlanError, KeyError) and issubclass(PlanError, InputError)
    assert str(PlanError("plan refits 'x'")) == "plan refits 'x'"  # not quoted as a KeyError would
    assert issubclass(FitError, ValueError)
    spec = CandidateSpec()
    try:
        spec.knobs["x"] = 1.0  # type: ignore[index]
    except TypeError as e:  # a UsageError, still a TypeError
        assert isinstance(e, PrunesearchError) and not isinstance(e, InputError)
    else:
        raise AssertionError("a spec's knobs changed in place")
