"""Activation-aware scores: what a unit carries into the next layer, not its filter's size
(docs/methods.md, 9; the unstructured score is Wanda, Sun et al. 2023).

A filter's norm says little about its channel when a BatchNorm follows: BN divides the
filter's scale out and multiplies its own gamma in. These scores look at the signal.

- ``activation``, channel granularity: channel c of a group scores
  ``s_c = sqrt(sum_k (rms_kc * ||W_k[:, c]||)^2)`` over the group's consumers k (the
  convs / Linears whose input channels shrink with it), where ``rms_kc`` is the RMS of
  consumer k's input channel c over the calibration images and all positions (the
  actual consumer input: after BN, ReLU, any depthwise conv or pooling on the way) and
  ``||W_k[:, c]||`` the L2 norm of k's weights that read channel c. With one consumer
  this is ``rms_c * ||W[:, c]||``; with several, the root of the summed squares is the
  size of c's contribution to all consumers' outputs together.
- ``activation``, unstructured: ``|W_ij| * rms_j``, where ``rms_j`` is the RMS of the
  layer's input channel / feature j over images and positions, broadcast over the kernel
  (Wanda's norm over all N * H * W positions differs by a per-layer constant only).
  Wanda compares weights within one output row, not across layers: in global scope each
  layer loses what global magnitude pruning takes from it, and the score chooses which
  of its weights go. Measured on the shared ResNet-20 at 80 % sparsity (test top-1 after
  recalibration): ranking the raw scores across layers 32.8 %, each tensor's scores
  divided by their mean 72.1 %, the magnitude split 79.5 % (global magnitude 79.4 %).
- ``bn_activation``, channel granularity only, data-free: the RMS of channel c is that of
  ``relu(z)``, ``z ~ N(beta_c, gamma_c^2)`` from the BatchNorm after the producer:
  ``E[relu(z)^2] = (mu^2 + s^2) Phi(mu/s) + mu s phi(mu/s)``. It assumes the ReLU that
  follows BN in the models here (for another activation it is that of a ReLU) and
  ignores depthwise convs on the way. Without a BatchNorm after the producer, z is
  modelled as ``N(bias_c, ||W_producer[c]||^2)``: the producer's output if its inputs
  were white with unit variance. Times the same consumer column norm.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.pruning.capture import input_rms, per_weight_inputs
from pipeline.pruning.methods.base import ImportanceMethod, PruneContext, weights_of
from pipeline.pruning.methods.registry import register_method
from pipeline.spec import CandidateSpec


@register_method("activation")
class Activation(ImportanceMethod):
    """Calibration RMS of each unit as its consumer sees it, times the consumer's weights on it."""

    global_split_by = "magnitude"  # see the module docstring

    def weight_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> dict[str, torch.Tensor]:
        weights = weights_of(model, spec)
        rms = per_weight_inputs(model, weights, lambda layers: cached_rms(model, ctx, layers))
        return {n: (w.detach().abs().double() * rms[n]).float() for n, w in weights.items()}

    def channel_scores(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec, groups: list) -> dict[str, torch.Tensor]:
        modules = dict(model.named_modules())
        ends = {g.name: [c for c in g.consumers if reads_channels(modules[c])] for g in groups}
        rms = self.channel_rms(model, ctx, groups, ends)
        out = {}
        for g in groups:
            energy = sum((rms[g.name, c] * column_norms(modules[c].weight)) ** 2 for c in ends[g.name])
            out[g.name] = torch.as_tensor(energy, dtype=torch.float64).sqrt().float()
        return out

    def channel_rms(self, model: nn.Module, ctx: PruneContext, groups: list, ends: dict[str, list[str]]) -> dict[tuple[str, str], torch.Tensor]:
        """(group, consumer) -> RMS (size,) of the group's channels at that consumer's input."""
        rms = cached_rms(model, ctx, sorted({c for cs in ends.values() for c in cs}))
        return {(g.name, c): rms[c] for g in groups for c in ends[g.name]}


@register_method("bn_activation")
class BNActivation(Activation):
    """``activation``'s channel score with the RMS predicted from BatchNorm's gamma and beta (no data)."""

    granularities = ("channel",)

    def channel_rms(self, model: nn.Module, ctx: PruneContext, groups: list, ends: dict[str, list[str]]) -> dict[tuple[str, str], torch.Tensor]:
        modules = dict(model.named_modules())
        out = {}
        for g in groups:
            if g.norm is not None:
                bn = modules[g.norm]
                mu, s = bn.bias.detach(), bn.weight.detach().abs()
            else:
                conv = modules[g.name]
                mu = conv.bias.detach() if conv.bias is not None else torch.zeros(g.size)
                s = conv.weight.detach().reshape(g.size, -1).norm(dim=1)
            r = relu_rms(mu, s)
            out.update({(g.name, c): r for c in ends[g.name]})
        return out


def reads_channels(m: nn.Module) -> bool:
    """Whether ``m`` is a consumer that mixes its input channels (a dense conv or a Linear),
    as opposed to a BatchNorm or depthwise conv the channels pass through."""
    return isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of the weights reading each input channel / feature: (out, in, ...) -> float64 (in,)."""
    w = weight.detach().double().transpose(0, 1)
    return w.reshape(w.shape[0], -1).norm(dim=1)


def relu_rms(mu: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``sqrt(E[relu(z)^2])`` for ``z ~ N(mu, s^2)`` elementwise, float64 (s = 0: ``relu(mu)``)."""
    mu, s = mu.double(), s.double()
    t = mu / s.clamp_min(1e-300)
    pdf = torch.exp(-0.5 * t * t) / (2 * torch.pi) ** 0.5
    second = (mu * mu + s * s) * torch.special.ndtr(t) + mu * s * pdf
    return torch.where(s > 0, second.clamp_min(0), mu.clamp_min(0) ** 2).sqrt()


def cached_rms(model: nn.Module, ctx: PruneContext, names: list[str]) -> dict[str, torch.Tensor]:
    """``activations.input_rms`` through ``ctx.cache``: one calibration pass per actor and set of layers."""
    key = ("activation:rms", id(model), tuple(names))
    if key not in ctx.cache:
        ctx.cache[key] = input_rms(model, ctx.calib_x, names)
    return ctx.cache[key]
