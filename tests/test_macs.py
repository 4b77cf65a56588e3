"""The analytic MACs model against PyTorch's own FLOP counter (MACs = FLOPs / 2 for the
conv and linear ops it counts), dense and channel-pruned, on real models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline import measure
from pipeline.models.cifar_resnet import cifar_resnet
from pipeline.models.digits import DigitsCNN
from pipeline.pruning import structure as S

torch.set_num_threads(1)


def torch_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Half the FLOPs ``FlopCounterMode`` counts for one eval forward of ``x[:1]``."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x[:1])
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


def l1(model: nn.Module, graph: S.ChannelGraph) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {g.name: modules[g.name].weight.detach().abs().sum((1, 2, 3)) for g in graph.groups}


CASES = {
    "digits_cnn": (lambda: DigitsCNN(), (1, 1, 8, 8), 0.5),
    "resnet20_dense": (lambda: cifar_resnet(20), (1, 3, 32, 32), None),
    "resnet20_pruned": (lambda: cifar_resnet(20), (1, 3, 32, 32), 0.4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_macs_equal_flop_counter_and_measure(case):
    build, shape, ratio = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(shape)
    graph = S.channel_graph(model, x)
    if ratio is None:
        net, analytic = model, graph.dense_macs
    else:
        kept = S.select_channels(graph, l1(model, graph), ratio)
        net = S.shrink(model, kept, graph=graph)
        analytic = graph.macs({g: len(idx) for g, idx in kept.items()})
        assert analytic < graph.dense_macs
    counted = torch_macs(net, x)
    assert analytic == counted
    assert measure.macs(net, x)[0] == counted
