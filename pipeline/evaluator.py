"""The evaluator: one long-lived worker that prunes, reconstructs, recalibrates and measures candidates.

``Evaluator`` is a plain class (unit-testable without Ray); ``evaluator_actor`` wraps it
as a Ray actor. Contract:
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
import os
import platform
import resource
import time
import traceback
from typing import Any

import torch
from torch import nn

from pipeline import measure
from pipeline.build import apply_plan, plan_candidate
from pipeline.data.splits import Splits
from pipeline.devices import GpuLock, actor_device, device_name
from pipeline.measure import MeasureConfig
from pipeline.models import ModelConfig, load_base
from pipeline.pruning.methods import PruneContext
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.structure import cached_graph, check_forward
from pipeline.repair.collapse import bn_output_variance, variance_plot, variance_table
from pipeline.repair.recalibrate import recalibrate
from pipeline.repair.reconstruct import reconstruct
from pipeline.spec import CandidateResult, CandidateSpec
from pipeline.train import train_classifier

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
        self.ctx = PruneContext.from_splits(splits)
        self.dense_macs, _ = measure.macs(self.base, self.ctx.example_input)
        self.dense_accuracy = self._val_accuracy(self.base)
        self.ctx.on_step = self._on_step
        self._running: dict[str, Any] | None = None  # the candidate in progress, for ``status``
        self._probe = splits.calib.batch(0, _PROBE_IMAGES)
        self._dense_var = bn_output_variance(self.base, self._probe)

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

    def rebuild(self, spec: CandidateSpec, plan: PrunePlan) -> tuple[nn.Module, CandidateResult]:
        """Replay a recorded candidate from its spec and plan (no method is re-run).

        The same code path as ``evaluate``, with the plan given instead of computed:
        returns the recalibrated network and its fresh measurements. Reconstruction is
        not re-run: its weights are in ``plan.refit``. Raises on failure.
        """
        result, model = self._evaluate(spec, plan)
        return model, result

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
        m: dict[str, float] = {}
        model, _ = self._pruned(spec, None, m)
        m["accuracy_before_recal"] = self._val_accuracy(model)
        self._recalibrate(model, spec, m)
        return m["accuracy"]

    def _val_accuracy(self, model: nn.Module) -> float:
        return measure.accuracy(model, self.splits.val, self.splits.val.y, self.cfg.eval_batch, self.cfg.precision)

    def _work(self) -> contextlib.AbstractContextManager:
        """Held while a candidate computes on a shared GPU (a latency measurement waits for it)."""
        return self._gpu.shared() if self._gpu is not None else contextlib.nullcontext()

    def _pruned(self, spec: CandidateSpec, plan: PrunePlan | None, m: dict[str, float]) -> tuple[nn.Module, PrunePlan]:
        """The pruned (and, for a new plan, reconstructed) network of ``spec`` and its plan."""
        t0 = time.perf_counter()
        planning = plan is None
        if plan is None:
            plan = plan_candidate(self.base, self.ctx, spec)
        graph = cached_graph(self.base, self.ctx, spec.prune_stem, spec.prune_head) if plan.channels else None
        model = apply_plan(self.base, plan, graph)  # the graph the method used: no re-trace per candidate
        if plan.channels:
            check_forward(model, self.ctx.example_input, (1, self.ctx.num_classes))
        m["prune_s"] = time.perf_counter() - t0
        m.update(plan.scalar_diagnostics(f"{spec.method}_"))  # e.g. ocs_stable_epoch
        if planning and spec.reconstruct.mode == "lsq":  # a rebuild finds the refit weights in the plan
            plan = self._reconstruct(model, plan, spec, m)
        return model, plan

    def _recalibrate(self, model: nn.Module, spec: CandidateSpec, m: dict[str, float]) -> None:
        """Recalibrate ``model`` in place with ``spec.recal``; with ``keep_better``, keep the
        stored statistics when they score higher on validation than ``m["accuracy_before_recal"]``.
        Sets ``m["accuracy"]`` and ``m["recal_applied"]``."""
        stored = {k: v.clone() for k, v in model.state_dict().items()} if spec.recal.keep_better else None
        with measure.autocast(self.device, self.cfg.precision):
            recalibrated = recalibrate(model, self.ctx.calib_x, spec.recal, seed=spec.seed, black=self.splits.black)
        m["accuracy"] = self._val_accuracy(model) if recalibrated else m["accuracy_before_recal"]
        if recalibrated and stored is not None and m["accuracy"] < m["accuracy_before_recal"]:
            model.load_state_dict(stored)  # the stored statistics scored higher: keep them
            m["accuracy"] = m["accuracy_before_recal"]
            recalibrated = False
        m["recal_applied"] = float(recalibrated)

    def _evaluate(self, spec: CandidateSpec, plan: PrunePlan | None = None) -> tuple[CandidateResult, nn.Module]:
        m: dict[str, float] = {}
        with self._work():
            model, plan, table = self._measured(spec, plan, m)
        t0 = time.perf_counter()
        lock = self._gpu.exclusive() if self._gpu is not None else contextlib.nullcontext()
        with lock:  # nothing else runs on this GPU while it is timed
            m["latency_ms"] = measure.latency_ms(model, self.splits.input_shape, self.cfg.latency_batch, self.cfg.latency_repeats, self.cfg.precision)
        m["eval_s"] += time.perf_counter() - t0
        info = {
            **self._info(),
            "latency_batch": str(self.cfg.latency_batch),
            "latency_device": f"{self.device.type} {device_name(self.device)}",
            "latency_precision": self.cfg.precision,
            "latency_threads": str(self.threads),
        }
        result = CandidateResult(
            spec=spec,
            state="ok",
            metrics=m,
            info=info,
            plan=plan.to_parquet(),
            diagnostics=table,
            diagnostics_png=variance_plot(table) if self.cfg.collapse_plot else b"",
        )
        return result, model

    def _measured(self, spec: CandidateSpec, plan: PrunePlan | None, m: dict[str, float]):
        """Everything of ``_evaluate`` but the latency: (model, plan, signal-collapse table)."""
        model, plan = self._pruned(spec, plan, m)
        if self.device.type == "cuda" and self.cfg.precision != "fp32":
            model = model.to(memory_format=torch.channels_last)

        t0 = time.perf_counter()
        m["accuracy_before_recal"] = self._val_accuracy(model)
        var_before = bn_output_variance(model, self._probe)
        self._recalibrate(model, spec, m)
        var_after = bn_output_variance(model, self._probe)
        m["recal_s"] = time.perf_counter() - t0

        if spec.finetune_steps:
            t0 = time.perf_counter()
            m["accuracy_before_finetune"] = m["accuracy"]
            train_classifier(
                model,
                self.ctx.train_x,
                self.ctx.train_y,
                spec.finetune_steps,
                lr=spec.finetune_lr,
                seed=spec.seed,
                masks=plan.masks or None,
                on_step=self._on_step,
            )
            m["accuracy"] = self._val_accuracy(model)
            m["finetune_s"] = time.perf_counter() - t0
        m["finetune_steps"] = float(spec.finetune_steps)

        t0 = time.perf_counter()
        m.update(self._size_metrics(model, spec))
        m["dense_accuracy"] = self.dense_accuracy  # the same for every candidate: the drop at a glance
        if self.cfg.test_accuracy:
            m["test_accuracy"] = measure.accuracy(model, self.splits.test, self.splits.test.y, self.cfg.eval_batch, self.cfg.precision)
        m["eval_s"] = time.perf_counter() - t0
        return model, plan, variance_table(self._dense_var, var_before, var_after)

    def _reconstruct(self, model: nn.Module, plan: PrunePlan, spec: CandidateSpec, m: dict[str, float]) -> PrunePlan:
        """Refit ``model`` in place; the plan returned carries the refit weights."""
        m["accuracy_before_recon"] = self._val_accuracy(model)
        t0 = time.perf_counter()
        refit, report = reconstruct(self.base, model, self.ctx.calib_x[: spec.reconstruct.images], spec.reconstruct, plan)
        m["recon_s"] = time.perf_counter() - t0
        m["recon_layers"] = float(len(report.layers))
        m["recon_error_before"] = report.mean(report.error_before)
        m["recon_error"] = report.mean(report.error_after)
        return dataclasses.replace(plan, refit=refit)

    def _size_metrics(self, model: nn.Module, spec: CandidateSpec) -> dict[str, float]:
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


def evaluator_actor(
    num_cpus: float = 1, num_gpus: float = 0, resources: dict[str, float] | None = None, max_restarts: int = 3, cls: type = Evaluator
):
    """``cls`` (an ``Evaluator``) as a Ray actor class with the given resource request.

    A restarted actor re-runs ``__init__`` (reloading the model and data from the
    object store); in-flight calls are not retried by Ray: the driver resubmits them.
    Candidates run one at a time; ``status`` is answered from its own concurrency group
    (call it with ``.options(concurrency_group="status")``) while one runs.
    """
    import ray

    # type-ignored: ray's overloads of remote() leave out concurrency_groups, an actor option
    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None, max_restarts=max_restarts, concurrency_groups={"status": 1})(  # type: ignore[call-overload]
        cls
    )
