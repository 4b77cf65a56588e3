"""Tests of physical channel pruning (pipeline.pruning.structure) on real models, no mocks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pipeline.models.cifar_resnet import PadShortcut
from pipeline.models.digits import DigitsCNN
from pipeline.pruning import structure as S
from pipeline.pruning.methods.base import PruneContext

torch.set_num_threads(1)

DIGITS_X = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
CIFAR_X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """MACs of one forward, counted by hooks: conv out_h*out_w*weight.numel(), linear weight.numel()."""
    total = 0

    def count(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        n = mod.weight.numel()
        total += n * out.shape[-1] * out.shape[-2] if isinstance(mod, nn.Conv2d) else n

    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def l1_scores(model: nn.Module, graph: S.ChannelGraph) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {g.name: modules[g.name].weight.detach().abs().sum((1, 2, 3)) for g in graph.groups}


def randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrong index changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen))
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def random_keep(graph: S.ChannelGraph, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for g in graph.groups:
        k = int(torch.randint(1, g.size + 1, (1,), generator=gen))
        out[g.name] = torch.sort(torch.randperm(g.size, generator=gen)[:k]).values
    return out


# ---------------------------------------------------------------- models defined here


class TinyOptionA(nn.Module):
    """Stem 3->16, one BasicBlock 16->32 (stride 2) with a padding shortcut, GAP, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.block = nn.Module()
        self.block.conv1 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.block.bn1 = nn.BatchNorm2d(32)
        self.block.conv2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.block.bn2 = nn.BatchNorm2d(32)
        self.block.shortcut = PadShortcut(32)
        self.linear = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        b = self.block
        out = b.bn2(b.conv2(F.relu(b.bn1(b.conv1(x)))))
        out = F.relu(out + b.shortcut(x))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class CatNet(nn.Module):
    """conv0 feeds two convs whose outputs are concatenated, then conv_c, GAP, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 6, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 6, 1)
        self.conv_c = nn.Conv2d(12, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.conv0(x)))
        x = torch.cat([self.conv_a(x), self.conv_b(x)], dim=1)
        x = F.relu(self.conv_c(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return x
        return -x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.gate = Gate()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.gate(self.conv(x)), 1).flatten(1))


class OnlyResidual(nn.Module):
    """Every conv output reaches an add: nothing can be channel-pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.conv1(x)
        return y + self.conv2(y)


# ---------------------------------------------------------------- DigitsCNN


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, S.ChannelGraph]:
    torch.manual_seed(0)
    model = randomise_bn(DigitsCNN(), seed=1)
    return model, S.channel_graph(model, DIGITS_X)


def test_digits_groups(digits):
    model, graph = digits
    w = model.conv1.out_channels
    assert [g.name for g in graph.groups] == ["conv1", "conv2", "conv3"]
    assert [g.norm for g in graph.groups] == ["bn1", "bn2", "bn3"]
    assert [g.consumers for g in graph.groups] == [("conv2",), ("conv3",), ("fc",)]
    assert [g.size for g in graph.groups] == [w, 2 * w, 4 * w]
    assert graph.groups[0].stage == "conv1"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_shrink_equals_masked_dense(digits, seed):
    model, graph = digits
    before = copy.deepcopy(model.state_dict())
    keep = random_keep(graph, seed)
    small = S.shrink(model, keep)

    masked = copy.deepcopy(model)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for g in graph.groups:
            drop = torch.ones(g.size, dtype=torch.bool)
            drop[keep[g.name]] = False
            modules[g.name].weight[drop] = 0
            modules[g.norm].weight[drop] = 0
            modules[g.norm].bias[drop] = 0

    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y_small, y_masked = small.eval()(x), masked.eval()(x)
    assert y_small.shape == (5, 10)
    torch.testing.assert_close(y_small, y_masked, atol=1e-5, rtol=1e-5)
    assert small.conv2.weight.shape == (len(keep["conv2"]), len(keep["conv1"]), 3, 3)
    assert small.bn3.running_var.shape == (len(keep["conv3"]),)
    assert small.fc.weight.shape == (10, len(keep["conv3"]))
    assert n_params(small) < n_params(model)
    # the dense model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_macs_equal_hook_count(digits):
    model, graph = digits
    assert graph.dense_macs == hook_macs(model, DIGITS_X)
    for seed in range(4):
        keep = random_keep(graph, seed)
        small = S.shrink(model, keep)
        assert graph.macs({k: len(v) for k, v in keep.items()}) == hook_macs(small, DIGITS_X)


def test_stem_and_head_flags(digits):
    model, _ = digits
    assert [g.name for g in S.channel_graph(model, DIGITS_X, prune_stem=False).groups] == ["conv2", "conv3"]
    assert [g.name for g in S.channel_graph(model, DIGITS_X, prune_head=False).groups] == ["conv1", "conv2"]


def test_shrink_rejects_unknown_group_and_bad_indices(digits):
    model, _ = digits
    with pytest.raises(ValueError, match="fc"):
        S.shrink(model, {"fc": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="conv1"):
        S.shrink(model, {"conv1": torch.tensor([0, model.conv1.out_channels])})
    with pytest.raises(ValueError, match="distinct"):
        S.shrink(model, {"conv1": torch.tensor([2, 2])})


def test_check_forward(digits):
    model, graph = digits
    small = S.shrink(model, random_keep(graph, 0))
    S.check_forward(small, DIGITS_X, (1, 10))
    with pytest.raises(S.UnsupportedModelError, match=r"\(1, 10\)"):
        S.check_forward(small, DIGITS_X, (1, 11))
    broken = copy.deepcopy(small)
    broken.fc = nn.Linear(3, 10)  # wrong input width
    with pytest.raises(S.UnsupportedModelError, match="fails"):
        S.check_forward(broken, DIGITS_X, (1, 10))


def test_cached_graph_is_memoised(digits):
    model, _ = digits
    ctx = PruneContext(
        calib_x=DIGITS_X, calib_y=torch.zeros(1, dtype=torch.int64), train_x=DIGITS_X,
        train_y=torch.zeros(1, dtype=torch.int64), example_input=DIGITS_X, num_classes=10,
    )  # fmt: skip
    first = S.cached_graph(model, ctx, True, False)
    assert S.cached_graph(model, ctx, True, False) is first
    assert ctx.cache[("channel_graph", id(model), True, False)] is first
    assert S.cached_graph(model, ctx, True, True) is not first


# ---------------------------------------------------------------- selection


def test_select_respects_max_prune_fraction_and_unreachable_target(digits):
    model, graph = digits
    scores = l1_scores(model, graph)
    for scope in ("global", "layerwise"):
        kept = S.select_channels(graph, scores, 0.3, scope=scope, max_prune_fraction=0.75)
        for g in graph.groups:
            assert len(kept[g.name]) >= math.ceil(0.25 * g.size)
            assert kept[g.name].dtype == torch.int64
            assert torch.equal(kept[g.name], torch.sort(kept[g.name]).values)
        assert graph.macs({k: len(v) for k, v in kept.items()}) <= 0.3 * graph.dense_macs
    lowest = graph.macs({g.name: g.size - int(0.75 * g.size) for g in graph.groups}) / graph.dense_macs
    assert S.lowest_macs_ratio(graph, 0.75) == pytest.approx(lowest)
    assert S.lowest_macs_ratio(graph, 0.5) > lowest
    with pytest.raises(ValueError, match=r"max_prune_fraction must be in \[0, 1\)"):
        S.lowest_macs_ratio(graph, 1.0)
    with pytest.raises(ValueError, match=f"lowest MACs ratio reachable is {lowest:.4f}"):
        S.select_channels(graph, scores, 0.01)
    with pytest.raises(ValueError):
        S.select_channels(graph, scores, lowest * 0.99, max_prune_fraction=0.75)


def test_select_keeps_highest_scores_and_is_scale_invariant(digits):
    _, graph = digits
    gen = torch.Generator().manual_seed(3)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in graph.groups}
    kept = S.select_channels(graph, scores, 0.5)
    for name, idx in kept.items():
        dropped = torch.ones(len(scores[name]), dtype=torch.bool)
        dropped[idx] = False
        if dropped.any():
            assert scores[name][idx].min() >= scores[name][dropped].max()
    # per-group normalisation: scaling one group's scores leaves the selection unchanged
    scaled = {**scores, "conv2": scores["conv2"] * 1000}
    rescaled = S.select_channels(graph, scaled, 0.5)
    assert all(torch.equal(kept[n], rescaled[n]) for n in kept)
    with pytest.raises(ValueError, match="shape"):
        S.select_channels(graph, {"conv1": torch.rand(3)}, 0.5)


# ---------------------------------------------------------------- residual nets, torchvision


def test_option_a_block_internal_channels_only():
    torch.manual_seed(0)
    model = randomise_bn(TinyOptionA(), seed=2)
    graph = S.channel_graph(model, CIFAR_X)
    assert [g.name for g in graph.groups] == ["block.conv1"]
    assert graph.groups[0].consumers == ("block.conv2",)
    with pytest.raises(ValueError, match="add"):
        S.shrink(model, {"block.conv2": torch.arange(16)})
    with pytest.raises(ValueError, match="getitem"):  # the stem feeds the padding shortcut
        S.shrink(model, {"conv1": torch.arange(8)})
    keep = {"block.conv1": torch.tensor([0, 3, 4, 9, 20, 31])}
    small = S.shrink(model, keep)
    S.check_forward(small, CIFAR_X, (1, 10))
    assert small.block.conv2.weight.shape == (32, 6, 3, 3)
    assert graph.macs({"block.conv1": 6}) == hook_macs(small, CIFAR_X)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_cifar_resnet20_halves_macs(scope):
    from pipeline.models.cifar_resnet import cifar_resnet

    torch.manual_seed(0)
    model = cifar_resnet(20).eval()
    graph = S.channel_graph(model, CIFAR_X)
    assert len(graph.groups) == 9 and all(g.name.endswith(".conv1") for g in graph.groups)
    assert graph.dense_macs == hook_macs(model, CIFAR_X)
    small = S.shrink(model, S.select_channels(graph, l1_scores(model, graph), 0.5, scope=scope))
    S.check_forward(small, CIFAR_X, (1, 10))
    assert hook_macs(small, CIFAR_X) / graph.dense_macs == pytest.approx(0.5, rel=0.02)
    assert hook_macs(small, CIFAR_X) <= 0.5 * graph.dense_macs


def test_global_selection_is_exact_to_one_channel():
    torch.manual_seed(0)
    model = TinyOptionA().eval()
    graph = S.channel_graph(model, CIFAR_X)
    scores = l1_scores(model, graph)
    for target in (0.6, 0.7, 0.8):
        kept = S.select_channels(graph, scores, target)
        keep = {k: len(v) for k, v in kept.items()}
        achieved = graph.macs(keep)
        one_more = graph.macs({"block.conv1": keep["block.conv1"] + 1})
        assert achieved <= target * graph.dense_macs < one_more


def test_layerwise_allocation_ratios():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    graph = S.channel_graph(model, CIFAR_X)
    scores = l1_scores(model, graph)
    kept = S.select_channels(graph, scores, 0.6, scope="layerwise")
    fractions = {len(kept[g.name]) / g.size for g in graph.groups}
    assert max(fractions) - min(fractions) < 0.02  # same fraction up to rounding
    alloc = S.select_channels(graph, scores, 0.6, ratios={"layer1": 0.0, "layer4": 2.0})
    for g in graph.groups:
        if g.stage == "layer1":
            assert len(alloc[g.name]) == g.size
    l3 = [g for g in graph.groups if g.stage == "layer3"]
    l4 = [g for g in graph.groups if g.stage == "layer4"]
    assert len(alloc[l4[0].name]) / l4[0].size < len(alloc[l3[0].name]) / l3[0].size
    assert graph.macs({k: len(v) for k, v in alloc.items()}) <= 0.6 * graph.dense_macs
    # global scope with unit ratios keeps the global ranking's split
    glob = S.select_channels(graph, scores, 0.6)
    unit = S.select_channels(graph, scores, 0.6, ratios={"layer1": 1.0})
    assert sum(abs(len(unit[g]) - len(glob[g])) for g in glob) <= len(glob)
    assert graph.macs({k: len(v) for k, v in unit.items()}) <= 0.6 * graph.dense_macs


def test_per_group_ratios(digits):
    model, graph = digits
    scores = l1_scores(model, graph)
    a, b, c = [g.name for g in graph.groups]
    # layerwise: each group loses round(f * ratio * size) channels for one common f
    kept = S.select_channels(graph, scores, 0.6, scope="layerwise", group_ratios={a: 0.0, b: 2.0})
    sizes = {g.name: g.size for g in graph.groups}
    lost = {n: 1 - len(kept[n]) / sizes[n] for n in sizes}
    assert lost[a] == 0.0 and lost[c] > 0.1
    assert lost[b] == pytest.approx(2 * lost[c], abs=2 / sizes[b])
    assert graph.macs({k: len(v) for k, v in kept.items()}) <= 0.6 * graph.dense_macs
    with pytest.raises(ValueError, match="not scored channel groups"):
        S.select_channels(graph, scores, 0.6, group_ratios={"nope": 1.0})


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_half_macs(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    graph = S.channel_graph(model, CIFAR_X)
    assert graph.groups
    assert graph.dense_macs == hook_macs(model, CIFAR_X)
    small = S.shrink(model, S.select_channels(graph, l1_scores(model, graph), 0.5))
    S.check_forward(small, CIFAR_X, (1, 10))
    assert hook_macs(small, CIFAR_X) / graph.dense_macs == pytest.approx(0.5, rel=0.02)
    assert n_params(small) < n_params(model)
    if arch == "resnet18":  # residual stream untouched: only each block's conv1
        assert all(g.name.endswith(".conv1") and g.name.startswith("layer") for g in graph.groups)
    else:  # the depthwise conv and its BN follow the expansion conv
        g = next(g for g in graph.groups if g.name == "features.2.conv.0.0")
        assert g.consumers == ("features.2.conv.1.0", "features.2.conv.1.1", "features.2.conv.2")
        dw = small.features[2].conv[1][0]
        assert dw.groups == dw.in_channels == dw.out_channels < 96


# ---------------------------------------------------------------- what is left alone


def test_concat_producers_are_excluded():
    model = CatNet().eval()
    graph = S.channel_graph(model, CIFAR_X)
    by_name = {g.name: g for g in graph.groups}
    assert set(by_name) == {"conv0", "conv_c"}
    assert by_name["conv0"].consumers == ("conv_a", "conv_b")
    assert by_name["conv_c"].norm is None and by_name["conv_c"].consumers == ("fc",)
    keep = {"conv0": torch.tensor([1, 2, 5]), "conv_c": torch.arange(0, 16, 2)}
    small = S.shrink(model, keep)
    S.check_forward(small, CIFAR_X, (1, 10))
    assert graph.macs({"conv0": 3, "conv_c": 8}) == hook_macs(small, CIFAR_X)


@pytest.mark.parametrize("pool", [1, 2])
def test_flatten_only_after_global_pooling(pool):
    # After a 2x2 pool the Linear sees 4 features per channel, not one: conv "2" is then
    # left alone, while conv "0" (feeding only conv "2") is a group either way.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
        nn.Linear(4 * pool * pool, 10),
    ).eval()  # fmt: skip
    graph = S.channel_graph(model, CIFAR_X)
    if pool == 1:
        assert [(g.name, g.consumers) for g in graph.groups] == [("0", ("2",)), ("2", ("5",))]
        small = S.shrink(model, {"0": torch.arange(3), "2": torch.tensor([1, 3])})
        S.check_forward(small, CIFAR_X, (1, 10))
        assert graph.macs({"0": 3, "2": 2}) == hook_macs(small, CIFAR_X)
    else:
        assert [(g.name, g.consumers) for g in graph.groups] == [("0", ("2",))]
        with pytest.raises(ValueError, match="Flatten"):
            S.shrink(model, {"2": torch.arange(2)})


def test_channel_graph_leaves_train_mode_and_statistics_alone():
    model = randomise_bn(DigitsCNN(), seed=4).train()
    before = copy.deepcopy(model.state_dict())
    S.channel_graph(model, torch.randn(8, 1, 8, 8))
    assert model.training and model.bn1.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_untraceable_model_names_the_module():
    with pytest.raises(S.UnsupportedModelError, match=r"'gate' \(Gate\).*unstructured"):
        S.channel_graph(Untraceable(), CIFAR_X)


def test_model_without_groups_is_unsupported():
    with pytest.raises(S.UnsupportedModelError, match="no prunable channel group.*conv1.*add"):
        S.channel_graph(OnlyResidual(), CIFAR_X)
