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

import contextlib
import dataclasses
import hashlib
import os
import platform
import resource
import time
import traceback
from typing import Any

import torch
from torch import nn

from pipeline import measure
from pipeline.build import BuildContext, build_candidate
from pipeline.data.splits import Splits
from pipeline.devices import GpuLock, actor_device, device_name
from pipeline.fidelity import Rung, RungCache, run_rung
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig, load_base
from pipeline.pruning.plan import PrunePlan
from pipeline.repair.collapse import bn_output_variance, plot_title, variance_plot, variance_table
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
        keep_refit: whether results carry reconstruction's refit weights in their plan
            (``records.refit_weights: replay`` records none: a rebuild replays the fit).
        num_gpus: the GPUs the actor asked Ray for (``pipeline.devices.pick_device``):
            0 is the CPU, whatever is visible; > 0 the GPU Ray assigned. None outside Ray.
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
        num_gpus: float | None = None,
    ) -> None:
        torch.set_num_threads(threads)
        self.device, gpu_key = actor_device(device, num_gpus)
        self._gpu = GpuLock(gpu_key) if gpu_key else None
        self.base = load_base(model_cfg, base_state).to(self.device)
        splits = splits.to(self.device)  # raw pixels stay shared (CPU) or move once as uint8 (GPU)
        self.splits = splits
        self.cfg = measure_cfg
        self.threads = threads
        self.keep_refit = keep_refit
        self._calib_sha: str | None = None
        self.ctx = BuildContext.from_splits(splits, measure_cfg.eval_batch, measure_cfg.precision)
        self.dense_macs, _ = measure.macs(self.base, self.ctx.example_input)
        self.dense_accuracy = self._val_accuracy(self.base)
        self.ctx.on_step = self._on_step
        self.ctx.on_layer = self._on_layer
        self._running: dict[str, Any] | None = None  # the candidate in progress, for ``status``
        self._probe = splits.calib.batch(0, _PROBE_IMAGES)
        self._dense_var = bn_output_variance(self.base, self._probe)
        self._rungs = RungCache()  # candidates' work between fidelity rungs (``pipeline.fidelity``)

    def node(self) -> dict[str, Any]:
        """Where this evaluator runs: Ray node id (when in Ray), host, process id, device
        (``cuda:0``), its type and name, torch threads, precision, and the process's peak
        resident memory so far (``peak_rss_mb``, MiB)."""
        return {
            "node_id": _ray_node_id(),
            "host": platform.node(),
            "pid": os.getpid(),
            "device": str(self.device),
            "device_type": self.device.type,
            "device_name": device_name(self.device),
            "threads": self.threads,
            "precision": self.cfg.precision,
            "peak_rss_mb": f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}",
        }

    def status(self) -> dict[str, Any] | None:
        """The candidate being evaluated now: ``spec``, ``elapsed_s`` (wall seconds), and
        ``step`` / ``total`` training steps reported by a method that trains, or layers
        refit by reconstruction (0 / 0 if none), and ``stage`` saying which (``step``,
        ``reconstruct layer``); None when idle."""
        run = self._running
        return None if run is None else {**run, "elapsed_s": time.monotonic() - run["t0"]}

    def _on_step(self, done: int, total: int, stage: str = "step") -> None:
        if self._running is not None:
            self._running = {**self._running, "step": done, "total": total, "stage": stage}

    def _on_layer(self, done: int, total: int) -> None:
        self._on_step(done, total, "reconstruct layer")

    def evaluate(self, spec: CandidateSpec, rung: Rung | None = None, trial: int | None = None) -> CandidateResult:
        """Prune, (reconstruct,) recalibrate, (fine-tune,) and measure one candidate; at a
        fidelity ``rung`` (``pipeline.fidelity.run_rung``), with that rung's settings,
        reusing the work of the candidate's lower rungs done here (``trial``: its number in
        the search, named on its plot)."""
        self._running = {"spec": spec, "t0": time.monotonic(), "step": 0, "total": 0}
        try:
            return self._evaluate(spec, trial=trial)[0] if rung is None else run_rung(self, spec, rung, self._rungs)
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

    def _val_accuracy(self, model: nn.Module) -> float:
        return measure.accuracy(model, self.splits.val, self.splits.val.y, self.cfg.eval_batch, self.cfg.precision)

    def _work(self) -> contextlib.AbstractContextManager:
        """Held while a candidate computes on a shared GPU (a latency measurement waits for it)."""
        return self._gpu.shared() if self._gpu is not None else contextlib.nullcontext()

    def _evaluate(self, spec: CandidateSpec, plan: PrunePlan | None = None, trial: int | None = None) -> tuple[CandidateResult, nn.Module]:
        variance: dict[str, Any] = {}  # BN output variance before and after recalibration

        def observe(stage: str, model: nn.Module) -> None:
            variance[stage] = bn_output_variance(model, self._probe)

        with self._work():
            built = build_candidate(self.base, self.ctx, spec, plan, observe=observe)
            model, plan, m = built.model, built.plan, built.metrics
            t0 = time.perf_counter()
            m.update(self._size_metrics(model, spec))
            m["dense_accuracy"] = self.dense_accuracy  # the same for every candidate: the drop at a glance
            if self.cfg.test_accuracy:
                m["test_accuracy"] = measure.accuracy(model, self.splits.test, self.splits.test.y, self.cfg.eval_batch, self.cfg.precision)
        if self.device.type == "cuda" and self.cfg.precision != "fp32":
            model = model.to(memory_format=torch.channels_last)
        lock = self._gpu.exclusive() if self._gpu is not None else contextlib.nullcontext()
        with lock:  # nothing else runs on this GPU while it is timed
            m["latency_ms"] = measure.latency_ms(
                model,
                self.splits.input_shape,
                self.cfg.latency_batch,
                self.cfg.latency_repeats,
                self.cfg.precision,
                budget_s=self.cfg.latency_budget_s,
            )
        m["eval_s"] = time.perf_counter() - t0
        info = {
            **self._info(),
            "latency_batch": str(self.cfg.latency_batch),
            "latency_device": f"{self.device.type} {device_name(self.device)}",
            "latency_precision": self.cfg.precision,
            "latency_threads": str(self.threads),
        }
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
            diagnostics_png=variance_plot(table, title=plot_title(spec, trial)) if self.cfg.collapse_plot else b"",
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
