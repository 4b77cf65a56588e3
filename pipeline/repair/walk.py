"""The segment walk of reconstruction: both networks' fx graphs, segment by segment.

The graph is cut just before each refit layer. A segment (the nodes between two cuts)
runs batch by batch for both networks: a batch's intermediate values live only while
the batch is in the segment; the values that cross the next cut (the refit layer's
input, a residual branch) are held for every batch in ``HeldValues``, within the
memory budget (offloaded beyond it). At the cut the layer's normal equations are
accumulated batch by batch from the held inputs (pruned network) and the dense layer
run on the dense network's held inputs, the layer is solved and rewritten, and the
next segment starts with the layer itself, so what follows sees the refit weights.
Each node runs once per network and batch (a refit layer twice in the dense network);
what is held at once is the live values at one cut, not every activation.

As in SparseGPT/GPTQ sequential pipelines (llm-compressor's ``SequentialPipeline``
runs the model subgraph by subgraph on cached, offloadable subgraph inputs), except
that a segment ends at every refit layer, so each layer is fit on inputs from the
already refit layers before it (sequential reconstruction, methods.md section 8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from pipeline.repair.held import HeldValues
from pipeline.repair.lsq import LayerFit, LinearView

DENSE, PRUNED = 0, 1


@dataclass
class Cut:
    """A refit point: node ``index`` of the graph runs layer ``name``; ``attention``
    when it is an ``nn.MultiheadAttention`` (in_proj, then out_proj)."""

    index: int
    name: str
    out_idx: torch.Tensor | None
    attention: bool = False


#: ``solve(fit, name, mask_key)``: solve the accumulated fit, write it, report it
Solve = Callable[[LayerFit, str, str], None]


class SegmentWalk:
    """Both networks' graphs (node for node the same) over ``images`` in batches."""

    def __init__(self, dense: nn.Module, pruned: nn.Module, gd: fx.Graph, gp: fx.Graph, images: torch.Tensor, batch: int, held: HeldValues):
        self.models = (dense, pruned)
        self.nodes = (list(gd.nodes), list(gp.nodes))
        self.index = {n: i for i, n in enumerate(self.nodes[PRUNED])} | {n: i for i, n in enumerate(self.nodes[DENSE])}
        self.last_use = {self.index[a]: i for i, n in enumerate(self.nodes[PRUNED]) for a in n.all_input_nodes}
        self.batches = [images[i : i + batch] for i in range(0, len(images), batch)]
        self.held = held
        self.start = 0

    def run_to(self, stop: int) -> None:
        """Run nodes ``start .. stop - 1`` of both networks for every batch, holding the
        values used at ``stop`` or later; values dead before ``stop`` are dropped."""
        for b in range(len(self.batches)):
            for net in (DENSE, PRUNED):
                local: dict[int, Any] = {}
                for i in range(self.start, stop):
                    node = self.nodes[net][i]
                    if node.op == "output":
                        break
                    local[i] = self._eval(net, node, b, local)
                    for a in node.all_input_nodes:  # one batch's working set: free what is dead
                        if self.last_use[self.index[a]] == i:
                            local.pop(self.index[a], None)
                    if self.last_use.get(i, -1) >= stop and node.op != "get_attr":
                        self.held.put((net, i, b), local[i])
        for key in self.held.keys():
            if self.last_use.get(key[1], -1) < stop:
                self.held.drop(key)
        self.start = stop

    def value(self, net: int, arg: Any, b: int) -> Any:
        """An argument of the cut node for batch ``b`` (held values mapped in)."""
        return fx.node.map_arg(arg, lambda a: self._lookup(net, a, b, {}))

    def _lookup(self, net: int, a: fx.Node, b: int, local: dict[int, Any]) -> Any:
        i = self.index[a]
        if i not in local:
            # a parameter is read from the model each time: it may have just been refit
            local[i] = self._eval(net, self.nodes[net][i], b, local) if a.op == "get_attr" else self.held.get((net, i, b))
        return local[i]

    def fit_layer(self, cut: Cut, layer: nn.Module, mask_key: str, solve: Solve) -> None:
        """Accumulate and solve a Conv2d/Linear at ``cut`` (inputs held by ``run_to``)."""
        nd = self.nodes[DENSE][cut.index]
        dense_layer = self.models[DENSE].get_submodule(cut.name)
        assert isinstance(layer, (nn.Conv2d, nn.Linear))
        fit = LayerFit(layer, cut.out_idx)
        for b in range(len(self.batches)):
            y = dense_layer(*self.value(DENSE, nd.args, b), **self.value(DENSE, nd.kwargs, b))
            fit.add(self.value(PRUNED, nd.args[0], b), y)
        solve(fit, cut.name, mask_key)

    def fit_attention(self, cut: Cut, solve: Solve) -> None:
        """Refit an ``nn.MultiheadAttention`` (self-attention): its in_proj on the pruned
        input against the dense q, k, v projections, then its out_proj on the pruned
        attention output (with the refit in_proj) against the dense out_proj's output."""
        nd = self.nodes[DENSE][cut.index]
        dense_mha = self.models[DENSE].get_submodule(cut.name)
        mha = self.models[PRUNED].get_submodule(cut.name)
        assert isinstance(dense_mha, nn.MultiheadAttention) and isinstance(mha, nn.MultiheadAttention)
        assert isinstance(mha.out_proj, nn.Linear)
        fit = LayerFit(LinearView(mha.in_proj_weight, mha.in_proj_bias))
        for b in range(len(self.batches)):
            x = self.value(DENSE, nd.args[0], b)
            fit.add(self.value(PRUNED, nd.args[0], b), F.linear(x, dense_mha.in_proj_weight, dense_mha.in_proj_bias))
        solve(fit, cut.name, f"{cut.name}.in_proj_weight")
        fit = LayerFit(mha.out_proj)  # a Linear (NonDynamicallyQuantizableLinear)
        for b in range(len(self.batches)):
            y = dense_mha.out_proj(attention_context(dense_mha, self.value(DENSE, nd.args[0], b)))
            fit.add(attention_context(mha, self.value(PRUNED, nd.args[0], b)), y)
        solve(fit, f"{cut.name}.out_proj", f"{cut.name}.out_proj.weight")

    def _eval(self, net: int, node: fx.Node, b: int, local: dict[int, Any]) -> Any:
        def arg(a: fx.Node) -> Any:
            return self._lookup(net, a, b, local)

        model = self.models[net]
        if node.op == "placeholder":
            return self.batches[b]
        if node.op == "get_attr":
            assert isinstance(node.target, str)
            value: Any = model
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        args, kwargs = fx.node.map_arg(node.args, arg), fx.node.map_arg(node.kwargs, arg)
        if node.op == "call_module":
            assert isinstance(node.target, str)
            return model.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_method":
            assert isinstance(node.target, str)
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        assert callable(node.target)
        return node.target(*args, **kwargs)


def attention_context(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """The self-attention of ``x`` (B, T, E) before ``mha.out_proj``: what the out_proj
    sees when ``mha(x, x, x)`` runs in eval mode without masks (batch_first)."""
    b, t, e = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, t, h, e // h).transpose(1, 2) for z in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, e)


def attention_unsupported(mha: nn.MultiheadAttention, node: fx.Node) -> str:
    """Why the walk cannot refit this attention call; empty when it can."""
    if not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        return "nn.MultiheadAttention is refit only batch_first, with one in_proj_weight, no bias_k/bias_v and no zero attention"
    if not (len(node.args) >= 3 and node.args[0] is node.args[1] is node.args[2]) or set(node.kwargs) - {"need_weights"}:
        return "nn.MultiheadAttention is refit only as self-attention (query, key and value the same tensor) without masks"
    return ""
