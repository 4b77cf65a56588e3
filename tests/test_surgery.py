"""``shrink`` with a given channel graph: the same network as tracing, without re-tracing."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluator import Evaluator
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig
from pipeline.models.cifar_resnet import cifar_resnet
from pipeline.models.digits import DigitsCNN
from pipeline.pruning import structure as S
from pipeline.pruning.structure import graph as graph_module
from pipeline.spec import CandidateSpec

torch.set_num_threads(1)
X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def keep_half(graph: S.ChannelGraph) -> dict[str, torch.Tensor]:
    return {g.name: torch.arange(0, g.size, 2) for g in graph.groups}


def test_shrink_with_graph_equals_traced_shrink_and_does_not_trace(monkeypatch):
    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    graph = S.channel_graph(model, X)
    keep = keep_half(graph)
    traced = S.shrink(model, keep)

    def no_trace(_model):
        raise AssertionError("shrink traced the model although a graph was given")

    monkeypatch.setattr(graph_module, "trace_model", no_trace)
    given = S.shrink(model, keep, graph=graph)
    a, b = traced.state_dict(), given.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), given(x))


def test_shrink_with_graph_refuses_groups_the_graph_excludes_and_foreign_graphs():
    model = DigitsCNN(width=4).eval()
    x = torch.randn(1, 1, 8, 8)
    no_stem = S.channel_graph(model, x, prune_stem=False)
    with pytest.raises(ValueError, match="'conv1': it is the stem and prune_stem is False"):
        S.shrink(model, {"conv1": torch.tensor([0, 1])}, graph=no_stem)
    wider = S.channel_graph(DigitsCNN(width=8), x)
    with pytest.raises(ValueError, match="not this model's: its group 'conv2'"):
        S.shrink(model, {"conv2": torch.tensor([0, 1])}, graph=wider)


def test_evaluator_cuts_channel_candidates_with_the_graph_its_method_cached(digits, digits_model, monkeypatch):
    measure_cfg = MeasureConfig(latency_repeats=1, test_accuracy=False, collapse_plot=False)
    ev = Evaluator(ModelConfig(), digits_model.state_dict(), digits, measure_cfg, threads=1)
    spec = CandidateSpec(method="magnitude", granularity="channel", target_sparsity=None, target_macs_ratio=0.6)
    S.cached_graph(ev.base, ev.ctx, spec.prune_stem, spec.prune_head)  # what the method looks up

    def no_trace(_model):
        raise AssertionError("the evaluator traced the model again")

    monkeypatch.setattr(graph_module, "trace_model", no_trace)
    r = ev.evaluate(spec)
    assert r.state == "ok", r.error
    assert r.metrics["macs_ratio"] <= 0.6
