"""Activation-aware scores (methods.md, 9): a planted channel, the BN closed form, Wanda."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.build import plan_candidate
from pipeline.pruning.methods import PruneContext, get_method
from pipeline.pruning.methods.activation import relu_rms
from pipeline.pruning.structure import channel_graph
from pipeline.spec import CandidateSpec

torch.set_num_threads(1)


class Tiny(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> pool -> fc: two channel groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _planted() -> tuple[Tiny, PruneContext]:
    """Channel 0 of conv1 has a filter 100x smaller than the others; its BatchNorm, whose
    statistics come from the data (as after training or recalibration), divides that out
    and multiplies a gamma of 3 in: it carries the largest signal to conv2."""
    torch.manual_seed(0)
    model = Tiny()
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        model.conv1.weight[0] *= 0.01
        for bn in (model.bn1, model.bn2):
            bn.momentum = None  # cumulative average: the exact statistics of x
        model.train()
        model(x)
        model.bn1.weight.fill_(1.0)
        model.bn1.weight[0] = 3.0
    model.eval()
    return model, PruneContext(
        calib_x=x,
        calib_y=torch.zeros(64, dtype=torch.int64),
        train_x=x,
        train_y=torch.zeros(64, dtype=torch.int64),
        example_input=x[:1],
        num_classes=4,
    )


def test_planted_channel_that_bn_scales_up_ranks_first_and_magnitude_ranks_it_last():
    model, ctx = _planted()
    groups = channel_graph(model, ctx.example_input).groups
    assert [g.name for g in groups] == ["conv1", "conv2"]
    spec = CandidateSpec(method="activation", granularity="channel", target_sparsity=None, target_macs_ratio=0.5)
    for name in ("activation", "bn_activation"):
        s = get_method(name).channel_scores(model, ctx, spec.model_copy(update={"method": name}), groups)["conv1"]
        assert int(s.argmax()) == 0, f"{name}: {s}"
    mag = get_method("magnitude").channel_scores(model, ctx, spec.model_copy(update={"method": "magnitude"}), groups)["conv1"]
    assert int(mag.argmin()) == 0
    kept = plan_candidate(model, ctx, spec).channels["conv1"]
    assert 0 in kept.tolist()


def test_activation_score_is_input_rms_times_consumer_column_norm():
    model, ctx = _planted()
    groups = channel_graph(model, ctx.example_input).groups
    spec = CandidateSpec(method="activation", granularity="channel", target_sparsity=None, target_macs_ratio=0.5)
    s = get_method("activation").channel_scores(model, ctx, spec, groups)
    with torch.no_grad():
        a = torch.relu(model.bn1(model.conv1(ctx.calib_x)))
    rms = a.double().pow(2).mean((0, 2, 3)).sqrt()
    col = model.conv2.weight.detach().double().pow(2).sum((0, 2, 3)).sqrt()
    torch.testing.assert_close(s["conv1"].double(), rms * col, rtol=1e-5, atol=0)
    # bn_activation predicts the RMS from gamma and beta, as if the pre-ReLU signal were Gaussian
    # (skewed here by the zero padding: 18 % off for channel 0)
    b = get_method("bn_activation").channel_scores(model, ctx, spec.model_copy(update={"method": "bn_activation"}), groups)
    torch.testing.assert_close(b["conv1"].double(), rms * col, rtol=0.25, atol=0)


def test_relu_rms_closed_form_matches_sampling():
    mu = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0, 1.0, -1.0])
    s = torch.tensor([1.0, 2.0, 1.5, 0.3, 1.0, 0.0, 0.0])
    z = mu[:, None].double() + s[:, None].double() * torch.randn(7, 400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampled = z.clamp_min(0).pow(2).mean(1).sqrt()
    torch.testing.assert_close(relu_rms(mu, s), sampled, rtol=0.01, atol=1e-3)
    assert relu_rms(mu, s)[5] == 1.0 and relu_rms(mu, s)[6] == 0.0


def test_unstructured_score_is_weight_times_input_rms_broadcast_over_the_kernel():
    model, ctx = _planted()
    spec = CandidateSpec(method="activation", target_sparsity=0.5)
    scores = get_method("activation").weight_scores(model, ctx, spec)
    with torch.no_grad():
        a = torch.relu(model.bn1(model.conv1(ctx.calib_x)))
    rms = a.pow(2).mean((0, 2, 3)).sqrt()
    expected = model.conv2.weight.detach().abs() * rms[None, :, None, None]
    torch.testing.assert_close(scores["conv2.weight"], expected, rtol=1e-5, atol=1e-7)
    # the stem's input is the image: channel j's RMS over images and positions
    img = ctx.calib_x.pow(2).mean((0, 2, 3)).sqrt()
    torch.testing.assert_close(scores["conv1.weight"], model.conv1.weight.detach().abs() * img[None, :, None, None], rtol=1e-5, atol=1e-7)


def test_scores_do_not_depend_on_seed_or_cache():
    model, ctx = _planted()
    for g in ("unstructured", "channel"):
        kw = {"target_sparsity": 0.6} if g == "unstructured" else {"target_sparsity": None, "target_macs_ratio": 0.6}
        a = plan_candidate(model, ctx, CandidateSpec(method="activation", granularity=g, seed=1, **kw))
        _, fresh = _planted()  # no cached scores
        b = plan_candidate(model, fresh, CandidateSpec(method="activation", granularity=g, seed=2, **kw))
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks) and a.masks.keys() == b.masks.keys()
        assert all(torch.equal(a.channels[k], b.channels[k]) for k in a.channels) and a.channels.keys() == b.channels.keys()


def test_unstructured_global_scope_splits_sparsity_between_layers_as_magnitude_does():
    model, ctx = _planted()
    spec = CandidateSpec(method="activation", target_sparsity=0.7)
    act = plan_candidate(model, ctx, spec).masks
    mag = plan_candidate(model, ctx, spec.model_copy(update={"method": "magnitude"})).masks
    assert act.keys() == mag.keys()
    assert {n: int(m.sum()) for n, m in act.items()} == {n: int(m.sum()) for n, m in mag.items()}
    assert any(not torch.equal(act[n], mag[n]) for n in act)  # the activations choose other weights


def test_bn_activation_without_batchnorm_models_the_conv_output_from_its_filter_and_bias():
    model, ctx = _planted()
    model.bn1 = nn.Identity()
    model.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=True)
    groups = channel_graph(model, ctx.example_input).groups
    assert groups[0].name == "conv1" and groups[0].norm is None
    spec = CandidateSpec(method="bn_activation", granularity="channel", target_sparsity=None, target_macs_ratio=0.5)
    s = get_method("bn_activation").channel_scores(model, ctx, spec, groups)["conv1"]
    w = model.conv1.weight.detach()
    col = model.conv2.weight.detach().double().pow(2).sum((0, 2, 3)).sqrt()
    expected = relu_rms(model.conv1.bias.detach(), w.reshape(8, -1).norm(dim=1)) * col
    torch.testing.assert_close(s.double(), expected, rtol=1e-6, atol=0)
