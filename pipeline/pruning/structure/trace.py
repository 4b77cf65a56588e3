"""Tracing a model with ``torch.fx``, and saying which of its modules could not be traced."""

from __future__ import annotations

import traceback

from torch import fx, nn

from pipeline.errors import InputError

__all__ = ["UnsupportedModelError", "trace_model"]


class UnsupportedModelError(InputError):
    """The model cannot be channel-pruned; the message names the layer, why, and what to do."""


def trace_model(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``; an ``UnsupportedModelError`` naming the module that failed."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:
        raise UnsupportedModelError(
            f"torch.fx cannot trace {_failing_module(model, exc)}: {type(exc).__name__}: {exc}. "
            "Channel pruning needs a traceable graph to know which layers share channels; "
            "use granularity 'unstructured' for this model, or remove data-dependent control flow from that forward."
        ) from exc


def _failing_module(model: nn.Module, exc: BaseException) -> str:
    """The innermost submodule whose forward was running when tracing failed."""
    names = {id(m): n for n, m in model.named_modules()}
    where = model
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        obj = frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and id(obj) in names:
            where = obj
    name = names[id(where)]
    return f"module {name!r} ({type(where).__name__})" if name else f"the model ({type(where).__name__})"
