"""What a model's modules see on calibration images: one eval pass with forward hooks.

Shared by the methods that score units from data (screening, activation). The model is
run in eval mode without gradients and its train/eval flags are restored afterwards:
a method never mutates the base model it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from pipeline.modes import eval_mode

BATCH = 256  # calibration images per forward pass

#: ``fn(name, module, activation, rows)``: ``activation`` is the module's first input
#: (``inputs=True``) or its output, for the calibration images ``rows`` (a slice of x)
Hook = Callable[[str, nn.Module, torch.Tensor, slice], None]


class _Done(Exception):
    """Raised by a hook of ``hooked_pass(stop=True)``: the rest of the forward is not needed."""


@torch.no_grad()
def hooked_pass(model: nn.Module, x: torch.Tensor, names: list[str], fn: Hook, inputs: bool, batch: int = BATCH, stop: bool = False) -> None:
    """Run ``model`` over ``x`` (N, C, H, W) in batches, calling ``fn`` at every call of
    each module in ``names`` (a module called twice per forward reports twice). With
    ``stop``, each forward ends once every module of ``names`` has been called once (what
    comes after them is not run: a forward that needs it must not use ``stop``)."""
    modules = dict(model.named_modules())
    rows = {"now": slice(0, 0)}
    seen: set[str] = set()
    want = set(names)

    def hook(name: str):
        def run(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            fn(name, mod, (args[0] if inputs else out).detach(), rows["now"])
            seen.add(name)
            if stop and seen >= want:
                raise _Done

        return run

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with eval_mode(model):
            for i in range(0, len(x), batch):
                rows["now"] = slice(i, min(i + batch, len(x)))
                seen.clear()
                try:
                    model(x[rows["now"]])
                except _Done:
                    pass
    finally:
        for h in handles:
            h.remove()


def unit_dim(a: torch.Tensor, module: nn.Module) -> int:
    """The dimension of ``a`` that holds ``module``'s units: a Linear's or an attention's
    (batch_first) last, a conv's/BN's 1."""
    return a.dim() - 1 if isinstance(module, (nn.Linear, nn.MultiheadAttention)) else 1


def input_rms(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Root mean square of each input channel (conv) or feature (Linear) of the modules
    ``names``, over the images ``x`` and all spatial positions: name -> float64 (C_in,)."""
    ss: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}

    def add(name: str, mod: nn.Module, a: torch.Tensor, rows: slice) -> None:
        a = a.double().movedim(unit_dim(a, mod), -1)
        a = a.reshape(-1, a.shape[-1])
        ss[name] = ss.get(name, 0) + (a * a).sum(0)
        count[name] = count.get(name, 0) + a.shape[0]

    hooked_pass(model, x, names, add, inputs=True)
    return {n: (ss[n] / count[n]).sqrt() for n in names}


def per_weight(unit: torch.Tensor, w: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The value ``unit`` (C_in,) of each weight's input unit, shaped like ``w`` (grouped
    convs included: a filter of group g sees only that group's input channels)."""
    out, per = w.shape[0], w.shape[1]
    groups = getattr(module, "groups", 1)
    first = (torch.arange(out) // (out // groups)) * per  # first input channel of each filter's group
    v = unit[first[:, None] + torch.arange(per)]  # (out, per)
    return v.reshape(v.shape + (1,) * (w.dim() - 2)).expand(w.shape)


def per_weight_inputs(
    model: nn.Module, weights: Mapping[str, torch.Tensor], stat: Callable[[list[str]], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Each weight's input-unit value of a per-layer statistic, shaped like the weight.

    ``weights`` are ``layer.weight`` parameters by name; ``stat(layers)`` returns, for the
    sorted layer names, layer -> value per input unit (C_in,), broadcast by :func:`per_weight`.
    """
    modules = dict(model.named_modules())
    layer = {n: n.rsplit(".", 1)[0] for n in weights}  # "conv1.weight" -> "conv1"
    unit = stat(sorted(set(layer.values())))
    return {n: per_weight(unit[layer[n]], w, modules[layer[n]]) for n, w in weights.items()}
