"""Hyperflows: pressure, flow and regrowth (docs/methods.md, 4).

Every prunable weight w_i gets a presence parameter m_i ~ U[0.2, 0.5]; the network uses
w_i * 1[m_i >= 0], and m_i receives the straight-through gradient 0.25 * w_i * dL/d(w_i
mask_i) (its *flow*) even while pruned. A pressure gamma * mean(m) pushes all m_i down at
the same rate; weights whose flow opposes it survive or regrow.

Two pressure schedules (knob ``pressure_schedule``):
- ``constant`` (default): gamma = knob ``pressure`` throughout the pruning phase; density is
  an outcome of gamma and of the budget, which the power-law fits of the search steer.
- ``controller``: the authors' feedback controller (``pipeline.pruning.pressure``) moves
  gamma once per ``controller_every`` steps (per epoch under ``preset: paper``) toward a
  sigmoid density trajectory that ends the pruning phase at (1 - target_sparsity) /
  (1 + ``regrowth_margin``); the candidate then takes ``target_sparsity`` like a one-shot
  method (``sparsity_target_when``). ``pressure`` is the starting gamma (default 0).
  ``regrowth_margin`` is the density regrowth adds back, relative to the pruning phase's
  end, so that the final sparsity lands on the target; its default comes from measured
  runs (benchmarks/README.md, notes: hyperflows' controller).

Two presets (knob ``preset``): ``short`` (default: step budgets ``steps`` /
``regrowth_steps``, the settings below) and ``paper``: ``pruning_epochs`` and
``regrowth_epochs`` in epochs of the training split (len // 64 steps each), weights by SGD
momentum 0.9, weight decay 5e-4, lr 0.1 cosine to 0.1 / 30 over the pruning phase and
reset to 0.1 / 100 (cosine to 0) for regrowth; presence by Adam at lr 1e-3, decaying
linearly to 0 over regrowth. ``short`` is what a CPU search affords; a GPU run asks for
``paper`` explicitly (benchmarks/seeds_gpu.sh): the knob is recorded, so a candidate
rebuilds the same way on any machine.

Choices left open by the paper (documented here; ``short`` preset):
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
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from pipeline.errors import InputError
from pipeline.pruning.methods.base import Knob, PruneContext, TrainingMethod, weights_of
from pipeline.pruning.methods.registry import register_method
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.pressure import PressureController
from pipeline.spec import CandidateSpec
from pipeline.train import batches

WEIGHT_LR, FLOW_LR, BATCH = 0.01, 1e-3, 64
PAPER_LR, PAPER_WD = 0.1, 5e-4


@register_method("hyperflows")
class Hyperflows(TrainingMethod):
    """Learned presence gates under a pressure: constant (the kept set is an outcome) or
    steered by the authors' controller to ``target_sparsity``.

    ``scope`` and ``allocation`` of the spec do not apply; ``target_sparsity`` only with the controller.
    """

    granularities = ("unstructured",)
    target = "outcome"
    sparsity_target_when = ("pressure_schedule", "controller")
    knobs = {
        "pressure": Knob(1e-4, 1.0, log=True, default=None, limits=(0.0, math.inf)),
        "steps": Knob(50, 2000, log=True, integer=True, default=300, limits=(1, math.inf)),
        "regrowth_steps": Knob(0, 1000, integer=True, default=100, limits=(0, math.inf)),
        "flow_lr": Knob(1e-4, 3e-2, log=True, default=3e-3, limits=(0.0, math.inf)),
        "pressure_schedule": Knob.choice_of("constant", "controller", default="constant"),
        "controller_every": Knob(1, 100, integer=True, default=10, limits=(1, math.inf)),
        "regrowth_margin": Knob(0.0, 0.5, default=0.05, limits=(0.0, 10.0)),
        "preset": Knob.choice_of("short", "paper", default="short"),
        "pruning_epochs": Knob(1, 200, integer=True, default=100, limits=(1, math.inf)),
        "regrowth_epochs": Knob(0, 200, integer=True, default=160, limits=(0, math.inf)),
    }
    steered_knob = "pressure"
    # density at a given pressure depends on how long the presence parameters move and how fast
    budget_knobs = ("steps", "regrowth_steps", "flow_lr", "preset", "pruning_epochs", "regrowth_epochs")
    fast_knobs = {"pressure": 0.3, "steps": 60, "regrowth_steps": 10}
    train_batch = BATCH

    def check(self, spec: CandidateSpec) -> None:
        super().check(spec)
        controlled = self.target_for(spec.knobs) == "sparsity"
        self.choice(spec, "preset")
        if controlled and spec.target_sparsity is None:
            raise InputError("hyperflows with pressure_schedule 'controller' needs target_sparsity (fraction of weights to remove)")
        if not controlled and "pressure" not in spec.knobs:
            raise InputError("hyperflows needs knob 'pressure' (constant pressure_schedule); set it in the candidate's knobs")

    def schedule(self, spec: CandidateSpec, train_size: int | None = None) -> "Schedule":
        """The two phases' lengths in steps, the controller period and the optimiser settings of ``spec``."""
        if self.choice(spec, "preset") == "short":
            steps, regrowth = int(self.knob(spec, "steps")), int(self.knob(spec, "regrowth_steps"))
            return Schedule(steps, regrowth, int(self.knob(spec, "controller_every")), self.knob(spec, "flow_lr"), paper=False)
        if train_size is None:
            raise InputError("hyperflows' paper preset counts epochs of the training split: its size is needed")
        per_epoch = max(train_size // BATCH, 1)
        steps, regrowth = (int(self.knob(spec, k)) * per_epoch for k in ("pruning_epochs", "regrowth_epochs"))
        return Schedule(steps, regrowth, per_epoch, FLOW_LR, paper=True)

    def training_steps(self, spec: CandidateSpec, train_size: int | None = None) -> int:
        s = self.schedule(spec, train_size)
        return s.steps + s.regrowth_steps

    def plan(self, model: nn.Module, ctx: PruneContext, spec: CandidateSpec) -> PrunePlan:
        self.check(spec)
        sched = self.schedule(spec, len(ctx.train_x))
        controller = None
        if self.target_for(spec.knobs) == "sparsity":
            assert spec.target_sparsity is not None  # check() raised otherwise
            final = 1.0 - spec.target_sparsity
            periods = max(sched.steps // sched.every, 1)
            controller = PressureController.toward(final / (1.0 + self.knob(spec, "regrowth_margin")), periods, spec.knobs.get("pressure", 0.0))
        out = train_presence(model, ctx, spec, sched, pressure=spec.knobs.get("pressure", 0.0), controller=controller)
        weights = {k: v.detach().clone() for k, v in out.net.state_dict().items() if v.is_floating_point()}
        return PrunePlan(masks={n: m >= 0 for n, m in out.presence.items()}, weights=weights, diagnostics=out.diagnostics())


@dataclass(frozen=True)
class Schedule:
    """Steps of the pruning and regrowth phases, steps per controller period, the presence lr,
    and whether the paper's weight optimiser (lr 0.1 cosine, wd 5e-4, regrowth reset) applies."""

    steps: int
    regrowth_steps: int
    every: int
    flow_lr: float
    paper: bool

    def weight_lr(self, step: int) -> float:
        """The weights' learning rate at ``step`` (0-based)."""
        if not self.paper:
            return WEIGHT_LR
        if step < self.steps:  # cosine from 0.1 to 0.1 / 30 over the pruning phase
            low = PAPER_LR / 30
            return low + (PAPER_LR - low) * 0.5 * (1 + math.cos(math.pi * step / self.steps))
        return PAPER_LR / 100 * 0.5 * (1 + math.cos(math.pi * (step - self.steps) / max(self.regrowth_steps, 1)))


@dataclass
class Presence:
    """What presence training produced.

    Attributes:
        net: the trained copy (eval mode, weights unmasked).
        presence: parameter name -> final presence tensor of the weight's shape; mask ``m >= 0``.
        trajectory: per controller period (or per ``every`` steps under a constant pressure):
            (step, density, expected density (NaN without a controller), gamma used next).
        pruning_density: fraction of weights present at the end of the pruning phase.
        target_pruning_density: where the controller steered that to (NaN without one).
    """

    net: nn.Module
    presence: dict[str, torch.Tensor]
    trajectory: list[tuple[int, float, float, float]]
    pruning_density: float
    target_pruning_density: float

    def diagnostics(self) -> dict[str, float | list[float]]:
        """For ``PrunePlan.diagnostics`` (metrics ``hyperflows_*`` for the scalars; plan.parquet keeps the histories)."""
        cols = list(zip(*self.trajectory)) if self.trajectory else [(), (), (), ()]
        return {
            "pruning_density": self.pruning_density,
            "target_pruning_density": self.target_pruning_density,
            "trajectory_step": [float(v) for v in cols[0]],
            "trajectory_density": list(cols[1]),
            "trajectory_expected": list(cols[2]),
            "trajectory_gamma": list(cols[3]),
        }


def train_presence(
    model: nn.Module,
    ctx: PruneContext,
    spec: CandidateSpec,
    sched: Schedule,
    pressure: float,
    controller: PressureController | None = None,
) -> Presence:
    """Train a deep copy of ``model`` jointly with presence parameters.

    Args:
        model: the dense base model; left untouched.
        sched: the phases and optimiser settings (``Hyperflows.schedule``).
        pressure: gamma, the weight of mean(m) in the loss during the pruning phase
            (the starting gamma when a ``controller`` moves it).
        controller: moves gamma once per ``sched.every`` steps of the pruning phase.
    """
    net = copy.deepcopy(model).train()  # BatchNorm in train mode while training
    weights = weights_of(net, spec)
    g = torch.Generator().manual_seed(spec.seed)
    presence = {n: (0.2 + 0.3 * torch.rand(w.shape, generator=g)).to(w.device).requires_grad_() for n, w in weights.items()}
    count = sum(m.numel() for m in presence.values())
    opt_w = torch.optim.SGD(net.parameters(), lr=sched.weight_lr(0), momentum=0.9, weight_decay=PAPER_WD if sched.paper else 0.0)
    opt_m = torch.optim.Adam(presence.values(), lr=sched.flow_lr)
    data = batches(ctx.train_x, ctx.train_y, min(BATCH, len(ctx.train_x)), g)
    total, trajectory = sched.steps + sched.regrowth_steps, []
    gamma = controller.gamma if controller is not None else pressure
    pruning_density = 1.0
    for step in range(total):
        regrowing = step >= sched.steps
        opt_w.param_groups[0]["lr"] = sched.weight_lr(step)
        if regrowing:  # flow lr decays linearly to 0 over the regrowth phase
            opt_m.param_groups[0]["lr"] = sched.flow_lr * (1 - (step - sched.steps) / sched.regrowth_steps)
        xb, yb = next(data)
        gated = {n: weights[n] * _gate(m) for n, m in presence.items()}
        loss = nn.functional.cross_entropy(functional_call(net, gated, (xb,)), yb, label_smoothing=0.1)
        if not regrowing:
            loss = loss + gamma * sum(m.sum() for m in presence.values()) / count
        opt_w.zero_grad(set_to_none=True)
        opt_m.zero_grad(set_to_none=True)
        loss.backward()
        opt_w.step()
        opt_m.step()
        ctx.step(step + 1, total)
        if not regrowing and (step + 1) % sched.every == 0 or step + 1 == sched.steps:
            density = _density(presence, count)
            expected = math.nan
            if controller is not None and (step + 1) % sched.every == 0:
                gamma = controller.update(density)
                expected = controller.history[-1][2]
            trajectory.append((step + 1, density, expected, gamma))
            pruning_density = density
    target = controller.expected[-1] if controller is not None else math.nan
    return Presence(net.eval(), {n: m.detach() for n, m in presence.items()}, trajectory, pruning_density, target)


@torch.no_grad()
def _density(presence: dict[str, torch.Tensor], count: int) -> float:
    """Fraction of weights present (m >= 0)."""
    return sum(int((m >= 0).sum()) for m in presence.values()) / count


def _gate(m: torch.Tensor) -> torch.Tensor:
    """1[m >= 0] in the forward pass; d(w * gate)/dm = 0.25 * w (straight through).

    ``m - m.detach()`` is exactly zero, so the value is the hard mask and only the
    gradient 0.25 flows to ``m``; the weight's gradient is masked as the chain rule says.
    """
    return (m >= 0).to(m.dtype) + 0.25 * (m - m.detach())
