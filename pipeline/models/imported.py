"""``name: import``: a user's own ``nn.Module`` class, named as ``package.module:Class``.

The path comes from the user's configuration, never from a stored record or a
checkpoint: importing it runs that module's code, which the user chose to run.
"""

from __future__ import annotations

import importlib
import re

from torch import nn

from pipeline.errors import InputError
from pipeline.models.registry import ModelConfig, register_model

# "pkg.mod:Class" or "pkg.mod:Outer.Inner": dotted identifiers either side of one colon.
_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def import_object(path: str | None) -> object:
    """The object named by ``"package.module:Name"`` (``Name`` may be dotted).

    Raises:
        ValueError: ``path`` is missing or malformed, or the module / attribute does not exist.
    """
    if not path:
        raise InputError('model.import_path: name: import needs import_path, e.g. "mypkg.nets:MyNet"')
    if not _PATH.match(path):
        raise InputError(
            f"model.import_path: {path!r} is not of the form 'package.module:ClassName' "
            '(one colon between the module and the class, e.g. "torchvision.models:AlexNet")'
        )
    mod_name, attr = path.split(":")
    try:
        obj: object = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        # e.name tells the requested module apart from a dependency it imports.
        requested = bool(e.name) and (mod_name == e.name or mod_name.startswith(f"{e.name}."))
        what = f"module {mod_name!r} was not found" if requested else f"importing module {mod_name!r} failed: {e}"
        raise InputError(f"model.import_path: {path!r}: {what}; check the spelling and that it is on PYTHONPATH") from e
    except Exception as e:  # noqa: BLE001 - any error raised by the user's module code
        raise InputError(f"model.import_path: {path!r}: importing {mod_name!r} raised {type(e).__name__}: {e}") from e
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = mod_name + ("." + ".".join(attr.split(".")[:i]) if i else "")
            raise InputError(f"model.import_path: {path!r}: {where!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


@register_model("import")
def imported(cfg: ModelConfig) -> nn.Module:
    """``cls(**cfg.kwargs)`` for the class at ``cfg.import_path``.

    ``cfg.num_classes`` is not passed on: put it in ``kwargs`` under whatever name the
    class uses.
    """
    cls = import_object(cfg.import_path)
    if not callable(cls):
        raise InputError(f"model.import_path: {cfg.import_path!r} is a {type(cls).__name__}, not a class")
    try:
        model = cls(**cfg.kwargs)
    except TypeError as e:
        raise InputError(f"model.kwargs: {cfg.import_path}(**{cfg.kwargs!r}) failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise InputError(f"model.import_path: {cfg.import_path!r} built a {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["import_object"]
