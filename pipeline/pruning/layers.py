"""Which layers of a model are prunable."""

from __future__ import annotations

from typing import cast

from torch import nn

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module, prune_stem: bool = True, prune_head: bool = True) -> dict[str, nn.Conv2d | nn.Linear]:
    """Conv2d and Linear modules whose weights may be pruned, by module name, in model order.

    The stem is the first such module and the head the last; each can be excluded
    because pruning them costs more accuracy per weight than any other layer.
    """
    layers: dict[str, nn.Conv2d | nn.Linear] = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    names = list(layers)
    if names and not prune_stem:
        layers.pop(names[0])
    if len(names) > 1 and not prune_head:
        layers.pop(names[-1])
    return layers


def prunable_weights(model: nn.Module, prune_stem: bool = True, prune_head: bool = True) -> dict[str, nn.Parameter]:
    """Parameter name -> weight of every prunable layer (biases are never pruned)."""
    # torch's stubs type Conv2d/Linear.weight as Tensor; it is the layer's Parameter
    return {f"{n}.weight": cast(nn.Parameter, m.weight) for n, m in prunable_layers(model, prune_stem, prune_head).items()}


def stage_of(name: str) -> str:
    """The stage a module or parameter belongs to: its first dotted component
    (``layer2.0.conv1.weight`` -> ``layer2``), the unit of per-stage allocation."""
    return name.split(".", 1)[0]


def stages(model: nn.Module, prune_stem: bool = True, prune_head: bool = True) -> dict[str, list[str]]:
    """Stage name -> its prunable layers' names, in model order: the keys a per-stage
    allocation accepts."""
    out: dict[str, list[str]] = {}
    for name in prunable_layers(model, prune_stem, prune_head):
        out.setdefault(stage_of(name), []).append(name)
    return out
