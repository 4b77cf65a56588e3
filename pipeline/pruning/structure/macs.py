"""The analytic MACs model of a channel graph: exact MACs as a function of group widths.

Bisection over channel counts asks for the MACs of many widths; tracing or running the
model for each would be slow, so every conv / linear call becomes one ``MacTerm`` whose
channel counts are either fixed or set by a channel group. MACs are multiply-accumulates
of one forward pass of one image (conv: out_h * out_w * kernel_h * kernel_w * in/groups
per output channel; linear: in * out). Bias additions, BatchNorm, activations and
pooling are not MACs and are left out, as in ``pipeline.measure.macs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from torch import fx, nn

__all__ = ["MacTerm", "count_macs", "mac_terms"]


class MacTerm(NamedTuple):
    """MACs of one conv/linear call: ``coef * out * inp``, where ``out``/``inp`` are a
    fixed channel count or the name of the group that sets it."""

    coef: int
    out: int | str
    inp: int | str


def mac_terms(layers: list[fx.Node], modules: Mapping[str, nn.Module], consumed_by: Mapping[str, str], producers: set[str]) -> list[MacTerm]:
    """One ``MacTerm`` per conv/linear call node in ``layers``.

    Args:
        layers: ``call_module`` nodes of Conv2d / Linear, after ``ShapeProp`` (convs
            need ``meta["tensor_meta"]``, the output shape (N, C, H, W)).
        modules: module name -> module of the traced model.
        consumed_by: module name -> the group whose channels its input (or, for a
            depthwise conv, its channels) follows.
        producers: the groups' producer conv names, whose output width is the group's.
    """
    terms = []
    for node in layers:
        name = node.target
        assert isinstance(name, str), f"{node.op} node {node.name!r} is not a module call"
        m = modules[name]
        group = consumed_by.get(name)
        if isinstance(m, nn.Linear):
            terms.append(MacTerm(1, m.out_features, group or m.in_features))
            continue
        assert isinstance(m, nn.Conv2d), f"{name!r} is neither Conv2d nor Linear"
        shape = node.meta["tensor_meta"].shape
        coef = shape[-1] * shape[-2] * m.kernel_size[0] * m.kernel_size[1]
        if m.groups > 1:  # depthwise in a group: one input per output channel
            terms.append(MacTerm(coef, group or m.out_channels, m.in_channels // m.groups))
        else:
            terms.append(MacTerm(coef, name if name in producers else m.out_channels, group or m.in_channels))
    return terms


def count_macs(terms: list[MacTerm], width: Mapping[str, int]) -> int:
    """MACs (one image) of ``terms`` when group ``g`` has ``width[g]`` channels (every
    group named in a term must be in ``width``)."""

    def val(x: int | str) -> int:
        return width[x] if isinstance(x, str) else x

    return sum(t.coef * val(t.out) * val(t.inp) for t in terms)
