"""Reconstruction in bounded memory, the shared normal equations, the batched masked
solve, attention layers and progress (pipeline.repair.walk, lsq, masked, held)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import VisionTransformer

from pipeline.build import apply_plan, plan_candidate
from pipeline.pruning.methods import PruneContext
from pipeline.repair.lsq import LayerFit, NormalEquations
from pipeline.repair.masked import masked_solve
from pipeline.repair.reconstruct import reconstruct
from pipeline.spec import CandidateSpec, ReconSpec

LSQ = ReconSpec(mode="lsq", images=96, ridge=1e-3, batch_size=16, layers="all", max_memory_gb=None)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts the head at zero: every class tied
    return vit


def _images(n: int = 96, channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(1))


def _ctx(x: torch.Tensor, model: nn.Module) -> PruneContext:
    with torch.no_grad():
        y = model(x).argmax(1)
    return PruneContext(calib_x=x, calib_y=y, train_x=x, train_y=y, example_input=x[:1], num_classes=10)


def _budget_run(model: nn.Module, x: torch.Tensor, spec: CandidateSpec) -> None:
    plan = plan_candidate(model, _ctx(x, model), spec)
    free, r_free = reconstruct(model, apply_plan(model, plan), x, LSQ, plan)
    tiny = LSQ.model_copy(update={"max_memory_gb": 2**-20})  # 1 KiB: every held activation goes to a file
    bounded, r_tiny = reconstruct(model, apply_plan(model, plan), x, tiny, plan)
    assert r_free.offloaded_bytes == 0 and r_free.held_peak_bytes > 100 * 2**10
    assert r_tiny.offloaded_bytes >= r_free.held_peak_bytes and r_tiny.held_peak_bytes <= 2**10
    assert r_tiny.layers == r_free.layers and set(bounded) == set(free)
    for k in free:  # values come back bit for bit, in their memory layout: the same sums
        assert torch.equal(bounded[k], free[k]), k


def test_a_budget_far_below_the_activations_gives_the_same_refit_on_a_cnn(digits_model, digits):
    _budget_run(digits_model, digits.calib.x[:96], CandidateSpec(granularity="channel", target_sparsity=None, target_macs_ratio=0.5))


def test_a_budget_far_below_the_activations_gives_the_same_refit_on_a_vit():
    _budget_run(_vit(), _images(), CandidateSpec(target_sparsity=0.6))


def test_normal_equations_treat_tokens_as_positions_and_conv_im2col_as_rows():
    lin = nn.Linear(6, 4)
    x, y = torch.randn(3, 5, 6), torch.randn(3, 5, 4)
    tokens, flat = NormalEquations(lin), NormalEquations(lin)
    tokens.add(x, y)
    flat.add(x.reshape(15, 6), y.reshape(15, 4))
    assert tokens.rows == flat.rows == 15
    assert torch.allclose(tokens.h, flat.h) and torch.allclose(tokens.xty, flat.xty)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
    z = torch.randn(2, 4, 5, 5)
    eq = NormalEquations(conv)
    eq.add(z)  # no target: H alone, as an OBS method needs it
    u = F.unfold(z, 3, padding=1).view(2, 2, 18, 25).permute(1, 2, 0, 3).reshape(2, 18, 50)
    assert eq.xty is None and eq.h.shape == (2, 18, 18)
    assert torch.allclose(eq.h, u @ u.transpose(1, 2), atol=1e-5)


def test_the_batched_masked_solve_is_each_rows_exact_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(400, 30, generator=g, dtype=torch.float64))
    y = x @ torch.randn(30, 7, generator=g, dtype=torch.float64)
    a = (x.T @ x + 1e-3 * torch.eye(30, dtype=torch.float64))[None]
    b = (x.T @ y)[None]
    mask = torch.rand(1, 7, 30, generator=g) > 0.7
    w = masked_solve(a, b, mask, float(y.square().sum()), tol=1e-16)
    assert torch.count_nonzero(w[~mask]) == 0
    for r in range(7):
        k = mask[0, r]
        exact = torch.linalg.solve(a[0][k][:, k], b[0][k, r])
        assert torch.allclose(w[0, r, k], exact, rtol=1e-5, atol=1e-7), r


@torch.no_grad()
def _layer_errors(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Relative squared output error of each Linear and attention against the dense one."""
    outs: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for k, net in enumerate((dense, pruned)):
        for n, m in net.named_modules():
            if isinstance(m, (nn.Linear, nn.MultiheadAttention)) and not n.endswith("out_proj"):
                handles.append(m.register_forward_hook(lambda m, i, o, key=(k, n): outs.__setitem__(key, o[0] if isinstance(o, tuple) else o)))
    dense(x), pruned(x)
    for h in handles:
        h.remove()
    return {n: float((outs[(1, n)] - outs[(0, n)]).square().sum() / outs[(0, n)].square().sum()) for (k, n) in outs if k == 0}


def test_a_vit_prunes_attention_and_refits_through_prune_and_its_export_reproduces_it(tmp_path, capsys):
    from pipeline.api import prune

    model, x = _vit(), _images(160)
    calib, held_out = x[:96], x[96:]
    labels = model(held_out).argmax(1)  # the dense model's predictions: its accuracy is 1
    plain, p0 = prune(model, sparsity=0.6, calib=calib, quiet=True)
    refit, p1 = prune(model, sparsity=0.6, calib=calib, reconstruct=True)
    said = capsys.readouterr().err
    assert "estimated" in said and "reconstruction: 8/8 layers refit" in said, said
    attn = "encoder.layers.encoder_layer_0.self_attention"
    assert f"{attn}.in_proj_weight" in p1.masks and f"{attn}.out_proj.weight" in p1.masks
    assert {f"{attn}.in_proj_weight", f"{attn}.in_proj_bias", f"{attn}.out_proj.weight"} <= set(p1.refit)
    params = dict(refit.named_parameters())
    for name, mask in p1.masks.items():
        assert torch.count_nonzero(params[name][~mask]) == 0, name
    before, after = _layer_errors(model, plain, held_out), _layer_errors(model, refit, held_out)
    assert after[attn] < before[attn] and after["heads.head"] < 0.5 * before["heads.head"], (before, after)
    assert sum(after.values()) < sum(before.values())
    acc = [float((m(held_out).argmax(1) == labels).float().mean()) for m in (plain, refit)]
    assert acc[1] > acc[0]
    again = apply_plan(model, p1)  # the plan alone rebuilds it
    assert torch.allclose(again(held_out), refit(held_out), atol=1e-5)
    program = torch.export.export(refit, (held_out[:2],), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, tmp_path / "vit.pt2")
    loaded = torch.export.load(tmp_path / "vit.pt2").module()
    assert float((loaded(held_out).argmax(1) == labels).float().mean()) == acc[1]


def test_channel_pruning_a_vit_is_refused_naming_the_layer():
    from pipeline.api import prune
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="conv_proj.*unstructured"):
        prune(_vit(), macs_ratio=0.5, calib=_images(8), quiet=True)


def test_progress_counts_layers_and_the_evaluator_reports_the_stage(digits_model, digits):
    from search.runner.progress import describe

    plan = plan_candidate(digits_model, _ctx(digits.calib.x[:64], digits_model), CandidateSpec(target_sparsity=0.8))
    seen: list[tuple[int, int]] = []
    _, report = reconstruct(
        digits_model, apply_plan(digits_model, plan), digits.calib.x[:64], LSQ, plan, on_progress=lambda d, t: seen.append((d, t))
    )
    n = len(report.layers)
    assert seen == [(i, n) for i in range(1, n + 1)]
    line = describe({"ticket": 3, "spec": CandidateSpec(), "elapsed_s": 20.0, "step": 2, "total": 4, "stage": "reconstruct layer"})
    assert "reconstruct layer 2/4" in line


def test_layerfit_refits_a_depthwise_conv_per_channel():
    conv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
    x = torch.randn(8, 6, 7, 7)
    with torch.no_grad():
        target = conv(x)
        conv.weight.mul_(0.3)
    fit = LayerFit(conv, None)
    fit.add(x, target)
    w0 = fit.current()
    w = fit.solve(0.0, None)
    assert w.shape == (6, 1, 10) and fit.error(w) < 1e-6 < 1e-2 < fit.error(w0)
