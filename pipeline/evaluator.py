"""The evaluator: one long-lived worker that prunes, reconstructs, recalibrates and measures candidates.

``Evaluator`` is a plain class (unit-testable without Ray); ``search.cluster.pool``
wraps it as a Ray actor (the only place that does). Contract:
- The base model, the data and per-method importance scores are loaded once per
  evaluator and shared by all its candidates; each candidate gets a fresh pruned copy,
  so two candidates never affect each other.
- ``evaluate`` is safe to call twice with the same spec (same result, nothing else
  changes) and never raises for a candidate's own failure: it returns a
  ``CandidateResult`` with ``state == "failed"`` and the reason.
- The evaluator never writes to MLflow or Optuna: the driver is the only writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import time
import traceback
from typing import Any

import torch
from torch import nn

from pipeline import measure
from pipeline.build import BuildContext, build_candidate
from pipeline.data.splits import Splits
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig, load_base
from pipeline.pruning.plan import PrunePlan
from pipeline.repair.collapse import bn_output_variance, variance_plot, variance_table
from pipeline.spec import CandidateResult, CandidateSpec

_PROBE_IMAGES = 64  # fixed batch for the signal-collapse diagnostic


class Evaluator:
    """Evaluates candidates of one base model on one data set.

    Args:
        model_cfg: the architecture (its checkpoint is *not* read here).
        base_state: the base model's state dict (tensors), sent once by the driver.
        splits: the data, sent once through the object store.
        measure_cfg: what and how to measure.
        threads: torch intra-op threads of this evaluator (1 per actor on shared CPUs).
        device: ``cpu``, ``cuda`` or ``auto``.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        base_state: dict[str, torch.Tensor],
        splits: Splits,
        measure_cfg: MeasureConfig,
        threads: int = 1,
        device: str = "auto",
        keep_refit: bool = True,
    ) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        self.base = load_base(model_cfg, base_state).to(self.device)
        splits = splits.to(self.device)  # once per actor: every candidate runs on the device
        self.splits = splits
        self.cfg = measure_cfg
        self.threads = threads
        self.keep_refit = keep_refit
        self._calib_sha: str | None = None
        self.ctx = BuildContext.from_splits(splits, measure_cfg.eval_batch)
        self.dense_macs, _ = measure.macs(self.base, self.ctx.example_input)
        self.dense_accuracy = measure.accuracy(self.base, splits.val.x, splits.val.y, measure_cfg.eval_batch)
        self.ctx.on_step = self._on_step
        self._running: dict[str, Any] | None = None  # the candidate in progress, for ``status``
        self._probe = splits.calib.x[:_PROBE_IMAGES]
        self._dense_var = bn_output_variance(self.base, self._probe)

    def node(self) -> dict[str, Any]:
        """Where this evaluator runs: Ray node id (when in Ray), host, process id, device, torch threads."""
        return {"node_id": _ray_node_id(), "host": platform.node(), "pid": os.getpid(), "device": str(self.device), "threads": self.threads}

    def status(self) -> dict[str, Any] | None:
        """The candidate being evaluated now: ``spec``, ``elapsed_s`` (wall seconds), and
        ``step`` / ``total`` training steps reported by a method that trains (0 / 0 if none);
        None when idle."""
        run = self._running
        return None if run is None else {**run, "elapsed_s": time.monotonic() - run["t0"]}

    def _on_step(self, done: int, total: int) -> None:
        if self._running is not None:
            self._running = {**self._running, "step": done, "total": total}

    def evaluate(self, spec: CandidateSpec) -> CandidateResult:
        """Prune, (reconstruct,) recalibrate, (fine-tune,) and measure one candidate."""
        self._running = {"spec": spec, "t0": time.monotonic(), "step": 0, "total": 0}
        try:
            return self._evaluate(spec)[0]
        except Exception as e:  # a candidate's failure is a result, not a crash of the actor
            return CandidateResult(
                spec=spec,
                state="failed",
                error=f"{type(e).__name__}: {e}",
                info={"traceback": traceback.format_exc()[-4000:], **self._info()},
            )
        finally:
            self._running = None

    def build(self, spec: CandidateSpec) -> tuple[nn.Module, CandidateResult]:
        """``evaluate``, returning the candidate's network too; raises on failure."""
        result, model = self._evaluate(spec)
        return model, result

    def rebuild(self, spec: CandidateSpec, plan: PrunePlan) -> tuple[nn.Module, CandidateResult]:
        """Replay a recorded candidate from its spec and plan (no method is re-run).

        The same code path as ``evaluate``, with the plan given instead of computed:
        returns the recalibrated network and its fresh measurements. Reconstruction is
        not re-run when its weights are in ``plan.refit``; a plan recorded without them
        (``records.refit_weights``) replays the fit on the calibration images. Raises on failure.
        """
        result, model = self._evaluate(spec, plan)
        return model, result

    def calibration_fingerprint(self) -> str:
        """SHA-256 of the calibration images (their float32 bytes as the stages see them):
        a replayed fit is only the recorded one on the same images."""
        if self._calib_sha is None:
            self._calib_sha = hashlib.sha256(self.ctx.calib_x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        return self._calib_sha

    def _info(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.node().items()}

    def validation_accuracy(self, spec: CandidateSpec) -> float:
        """Validation top-1 of ``spec`` (a fraction in [0, 1]) after pruning, reconstruction
        and recalibration with the keep-better rule: the ``accuracy`` metric of ``evaluate``
        for a candidate without fine-tuning, at a fraction of its cost (no size, test,
        latency or signal-collapse measurements). For choosing among settings on validation.

        Raises: whatever the candidate's pruning raises (``evaluate`` would return it as a
        failed result).
        """
        unturned = spec.model_copy(update={"finetune_steps": 0}) if spec.finetune_steps else spec
        return build_candidate(self.base, self.ctx, unturned).metrics["accuracy"]

    def _evaluate(self, spec: CandidateSpec, plan: PrunePlan | None = None) -> tuple[CandidateResult, nn.Module]:
        variance: dict[str, Any] = {}  # BN output variance before and after recalibration

        def observe(stage: str, model: nn.Module) -> None:
            variance[stage] = bn_output_variance(model, self._probe)

        built = build_candidate(self.base, self.ctx, spec, plan, observe=observe)
        model, plan, m = built.model, built.plan, built.metrics

        t0 = time.perf_counter()
        m.update(self._size_metrics(model, spec))
        m["dense_accuracy"] = self.dense_accuracy  # the same for every candidate: the drop at a glance
        if self.cfg.test_accuracy:
            m["test_accuracy"] = measure.accuracy(model, self.splits.test.x, self.splits.test.y, self.cfg.eval_batch)
        m["latency_ms"] = measure.latency_ms(model, self.splits.input_shape, self.cfg.latency_batch, self.cfg.latency_repeats)
        m["eval_s"] = time.perf_counter() - t0
        info = {**self._info(), "latency_batch": str(self.cfg.latency_batch)}
        if spec.reconstruct.mode == "lsq":
            info["calib_sha256"] = self.calibration_fingerprint()
        table = variance_table(self._dense_var, variance["before_recal"], variance["after_recal"])
        result = CandidateResult(
            spec=spec,
            state="ok",
            metrics=m,
            info=info,
            plan=(plan if self.keep_refit else dataclasses.replace(plan, refit={})).to_parquet(),
            diagnostics=table,
            diagnostics_png=variance_plot(table) if self.cfg.collapse_plot else b"",
        )
        return result, model

    def _size_metrics(self, model: nn.Module, spec: CandidateSpec) -> dict[str, float]:
        """The measured size of ``model`` (per image): ``macs`` (effective: non-zero weights
        only), ``macs_dense`` (the candidate's own tensors counting every weight, zeros too),
        ``macs_ratio`` = ``macs`` / ``base_macs`` (the dense *base* model's MACs; the measured
        counterpart of the target ``target_macs_ratio``), ``sparsity`` (of the base model's
        prunable weights) and ``params`` (non-zero)."""
        macs_dense, macs_eff = measure.macs(model, self.ctx.example_input)
        return {
            "sparsity": measure.pruned_fraction(model, self.base, spec.prune_stem, spec.prune_head),
            "macs": float(macs_eff),
            "macs_dense": float(macs_dense),
            "macs_ratio": macs_eff / self.dense_macs,
            "base_macs": float(self.dense_macs),
            "params": float(measure.nonzero_params(model)),
        }


def _ray_node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # outside Ray there is no node; the host name says where it ran
        return ""
