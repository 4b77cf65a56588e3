"""Hyperflows: pressure, flow and regrowth (docs/methods.md, 4).

Every prunable weight w_i gets a presence parameter m_i ~ U[0.2, 0.5]; the network uses
w_i * 1[m_i >= 0], and m_i receives the straight-through gradient 0.25 * w_i * dL/d(w_i
mask_i) (its *flow*) even while pruned. A pressure gamma * mean(m) pushes all m_i down at
the same rate; weights whose flow opposes it survive or regrow. Density is an outcome of
gamma (knob ``pressure``) and of the step budget, not a target.

Choices left open by the paper (documented here):
- Weights: SGD, momentum 0.9, constant lr 0.01 (a fine-tuning rate for a trained base
  model), no weight decay (it would shrink pruned weights and with them their flow).
- Presence: Adam, no weight decay, lr = knob ``flow_lr`` (paper: 1e-3). Adam moves each
  m_i by about lr per step at most, so ``steps * flow_lr`` bounds how far any m_i can
  fall: with the initial m in [0.2, 0.5] and the paper's 1e-3, fewer than about 200
  steps prune nothing and 300 steps cap sparsity near 24 % even at pressure 1
  (DigitsCNN). Search budgets are far shorter than the paper's epochs, so the default
  is 3e-3, which lets the presence parameters cross zero within 300 steps.
- Regrowth: ``regrowth_steps`` steps with pressure 0 and the presence lr decaying
  linearly from ``flow_lr`` to 0; the weights keep training at lr 0.01.
- The pressure term is a mean over all N presence parameters, so it pushes each by
  gamma / N and the gamma for a given density depends on the model (DigitsCNN, 2000 +
  200 steps, gamma 0.01: 23 % sparsity at width 16, 16 % at width 32).
- Mini-batches of 64 training images, BatchNorm in train mode, all seeded by ``spec.seed``.
- The plan carries the weights trained alongside the mask (``PrunePlan.weights``): they
  matter at high sparsity without fine-tuning (width 16, 96 % sparse: 90-91 %
  validation accuracy with base weights, 97-98 % with trained ones, 97 % with base
  weights fine-tuned for the same number of steps).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call

from pipeline.pruning.methods.base import Knob, PruneContext, TrainingMethod, weights_of
from pipeline.pruning.methods.registry import register_method
from pipeline.pruning.plan import PrunePlan
from pipeline.spec import CandidateSpec
from pipeline.train import batches

WEIGHT_LR, FLOW_LR, BATCH = 0.01, 1e-3, 64


@register_method("hyperflows")
class Hyperflows(TrainingMethod):
    """Learned presence gates under a constant pressure; the kept set is an outcome.

    ``target_sparsity``, ``scope`` and ``allocation`` of the spec do not apply.
    """

    granularities = ("unstructured",)
    target = "outcome"
    knobs = {
        "pressure": Knob(1e-4, 1.0, log=True, default=None, limits=(0.0, math.inf)),
        "steps": Knob(50, 2000, log=True, integer=True, default=300, limits=(1, math.inf)),
        "regrowth_steps": Knob(0, 1000, integer=True, default=100, limits=(0, math.inf)),
        "flow_lr": Knob(1e-4, 3e-2, log=True, default=3e-3, limits=(0.0, math.inf)),
    }
    steered_knob = "pressure"
    # density at a given pressure depends on how long the presence parameters move and how fast
    budget_knobs = ("steps", "regrowth_steps", "flow_lr")
    fast_knobs = {"pressure": 0.3, "steps": 60, "regrowth_steps": 10}
    train_batch = BATCH

    def training_steps(self, spec: CandidateSpec) -> int:
        return int(self.knob(spec, "steps")) + int(self.knob(spec, "regrowth_steps"))

    def plan(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> PrunePlan:
        net, presence = train_presence(
            model,
            ctx,
            spec,
            pressure=self.knob(spec, "pressure"),
            steps=int(self.knob(spec, "steps")),
            regrowth_steps=int(self.knob(spec, "regrowth_steps")),
            flow_lr=self.knob(spec, "flow_lr"),
        )
        weights = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
        return PrunePlan(masks={n: m >= 0 for n, m in presence.items()}, weights=weights)


def train_presence(
    model: nn.Module,
    ctx: PruneContext,
    spec: CandidateSpec,
    pressure: float,
    steps: int,
    regrowth_steps: int,
    flow_lr: float = FLOW_LR,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Train a deep copy of ``model`` jointly with presence parameters.

    Args:
        model: the dense base model; left untouched.
        pressure: gamma, the weight of mean(m) in the loss during the pruning phase.
        steps, regrowth_steps: optimiser steps of the two phases.
        flow_lr: Adam learning rate of the presence parameters.

    Returns:
        The trained copy (eval mode, weights unmasked) and parameter name -> final
        presence tensor of the weight's shape; the mask is ``m >= 0``.
    """
    net = copy.deepcopy(model).train()  # BatchNorm in train mode while training
    weights = weights_of(net, spec)
    g = torch.Generator().manual_seed(spec.seed)
    presence = {n: (0.2 + 0.3 * torch.rand(w.shape, generator=g)).to(w.device).requires_grad_() for n, w in weights.items()}
    count = sum(m.numel() for m in presence.values())
    opt_w = torch.optim.SGD(net.parameters(), lr=WEIGHT_LR, momentum=0.9)
    opt_m = torch.optim.Adam(presence.values(), lr=flow_lr)
    data = batches(ctx.train_x, ctx.train_y, min(BATCH, len(ctx.train_x)), g)
    for step in range(steps + regrowth_steps):
        regrowing = step >= steps
        if regrowing:  # flow lr decays linearly to 0 over the regrowth phase
            opt_m.param_groups[0]["lr"] = flow_lr * (1 - (step - steps) / regrowth_steps)
        xb, yb = next(data)
        gated = {n: weights[n] * _gate(m) for n, m in presence.items()}
        loss = nn.functional.cross_entropy(functional_call(net, gated, (xb,)), yb, label_smoothing=0.1)
        if not regrowing:
            loss = loss + pressure * sum(m.sum() for m in presence.values()) / count
        opt_w.zero_grad(set_to_none=True)
        opt_m.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        opt_m.step()
        ctx.step(step + 1, steps + regrowth_steps)
    return net.eval(), {n: m.detach() for n, m in presence.items()}


def _gate(m: torch.Tensor) -> torch.Tensor:
    """1[m >= 0] in the forward pass; d(w * gate)/dm = 0.25 * w (straight through).

    ``m - m.detach()`` is exactly zero, so the value is the hard mask and only the
    gradient 0.25 flows to ``m``; the weight's gradient is masked as the chain rule says.
    """
    return (m >= 0).to(m.dtype) + 0.25 * (m - m.detach())
