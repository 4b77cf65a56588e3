"""The search driver: asks Optuna for candidates, evaluates them on Ray actors, records
every one in MLflow, then tells Optuna. The driver is the only writer of both stores.

Order per candidate: evaluate -> record (MLflow child run, complete) -> tell (Optuna).
With ``fidelity`` on, a candidate runs its rungs first (``search.study.fidelity``): after
each cheap rung the driver reports its accuracy to Optuna and asks the trial pruner;
a stopped candidate is recorded once (tag ``state`` = ``pruned``, metric ``fidelity``),
a promoted one goes back, ahead of new candidates, to the actor holding its work.
Only the last rung it reaches is recorded; one cut short by a killed driver re-runs
from rung 0 on resume.
A driver killed anywhere in between is repaired on the next run with the same run
folder (``search.study.study.repair``): no candidate is lost or recorded twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from optuna.trial import TrialState

from pipeline.data.splits import load_data
from pipeline.errors import InputError
from pipeline.spec import CandidateResult, CandidateSpec
from search.cluster.connect import actor_count, check_ray_address, connect_ray, stop_local_ray
from search.cluster.pool import EvaluatorPool
from search.config import SearchConfig
from search.export.front import log_front_models
from search.records.query import candidate_rows
from search.records.refit import RefitPolicy
from search.records.report import finish_report
from search.records.runs import Recorder, flat_params
from search.records.store import create_store
from search.runner.basemodel import base_state, needs_train
from search.runner.lock import RunFolderLock, StudyHeartbeat, refuse_symlink
from search.runner.preflight import check_allocation, check_base_model, check_constraint, check_labels, check_model_fits
from search.runner.progress import STATUS_EVERY_S, Progress
from search.study.fidelity import PRUNED, stop_at_rung
from search.study.resume import check_resume, inputs_json, record_config
from search.study.space import suggest
from search.study.steering import PressureSteering
from search.study.study import derived_metrics, open_study, recorded_trials, repair, tell, trial_tags

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchOutcome:
    """What one invocation of ``run_search`` did."""

    parent_run_id: str
    tracking_uri: str
    experiment: str
    evaluated: int  # candidates evaluated by this invocation
    failed: int
    recorded_total: int  # candidates recorded in the study so far (all invocations)
    interrupted: bool
    loop_s: float = 0.0  # wall seconds from the first candidate submitted to the last recorded (actors ready)
    data_s: float = 0.0  # wall seconds reading and decoding the data subsets (start-up)


def actor_prefix(name: str, parent_id: str) -> str:
    """Ray name prefix of a search's evaluator actors: ``prunesearch-NAME-PARENT8-i``."""
    return f"prunesearch-{name}-{parent_id[:8]}"


def run_search(cfg: SearchConfig, quiet: bool = False) -> SearchOutcome:
    """Run (or resume) the search of ``cfg`` until its budget is spent.

    Raises:
        InputError (ConfigError, DataError, CheckpointError, RecordError,
            SearchRunningError, ...): before any candidate is evaluated, for bad input
            or environment; nothing recorded is touched.
    """
    with contextlib.ExitStack() as held:
        held.enter_context(RunFolderLock(writable_run_folder(cfg), cfg.name))
        return _run_locked(cfg, quiet, held)


def _run_locked(cfg: SearchConfig, quiet: bool, held: contextlib.ExitStack) -> SearchOutcome:
    check_resume(cfg)
    check_ray_address(cfg)
    db = None if cfg.tracking_uri else cfg.run_path / "mlflow.db"
    if db is not None:
        refuse_symlink(db, "the MLflow store")
    # a store that exists is opened now (fail fast); a new one is created only once the config passed preflight
    recorder = _recorder(cfg) if db is None or db.exists() else None
    finished = _resume_finished(cfg, recorder) if recorder is not None else None
    if finished is not None:
        return finished
    # only the subsets (raw uint8), at the positions recorded for this run; train only if read
    t_data = time.monotonic()
    splits = load_data(cfg.data, train=needs_train(cfg), record=cfg.inside_run_dir(f"data/{cfg.name}-subsets.npz"))
    data_s = time.monotonic() - t_data
    check_labels(cfg, splits)
    check_allocation(cfg)
    check_model_fits(cfg, splits)
    state = base_state(cfg, splits)
    check_base_model(cfg, splits, state)
    check_constraint(cfg, splits, state)
    if recorder is None:
        recorder = _recorder(cfg)
    record_config(cfg)
    previous = _term_is_interrupt()  # SIGTERM (timeout, a stopped job) ends the search as Ctrl-C does
    parent: list[str] = []  # the parent run's id as soon as it exists, for the handlers below
    try:
        study, parent_id = _open_study_and_parent(cfg, recorder, held, parent)
        evaluated, failed, interrupted, loop_s = _evaluate(cfg, study, recorder, parent_id, state, splits, quiet)
        finish_report(cfg, recorder, parent_id, study)
        recorder.finish_parent(parent_id, "KILLED" if interrupted else "FINISHED")
    except BaseException as e:
        # KILLED: a second Ctrl-C, or a signal outside the loop (in-flight candidates re-run on
        # resume); Ray's own SIGTERM handler, active while ray.init runs, exits with the signal's
        # number. FAILED: anything else (the store itself may be what failed).
        killed = isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and e.code == signal.SIGTERM)
        for pid in parent:
            _try(recorder.finish_parent, pid, "KILLED" if killed else "FAILED")
        if killed and not isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if cfg.log_models and not interrupted:
        log_front_models(recorder.uri, cfg.experiment, parent_id)
    return SearchOutcome(parent_id, recorder.uri, cfg.experiment, evaluated, failed, recorded_trials(study), interrupted, loop_s, data_s)


def _recorder(cfg: SearchConfig) -> Recorder:
    """The search's recorder; a local store is created (atomically) or checked first."""
    if cfg.tracking_uri:
        return Recorder(cfg.tracking_uri, cfg.experiment)  # fails fast when unreachable
    create_store(cfg.run_path / "mlflow.db")
    return Recorder(cfg.resolved_tracking_uri(), cfg.experiment, artifact_location=cfg.inside_run_dir("artifacts").as_uri())


def _evaluate(cfg: SearchConfig, study, recorder: Recorder, parent_id: str, state, splits, quiet: bool) -> tuple[int, int, bool, float]:
    """Start the actors and run the loop; returns (evaluated, failed, interrupted, loop seconds)."""
    started_ray = connect_ray(cfg)
    _term_is_interrupt()  # ray.init installed its own SIGTERM handler (sys.exit)
    # a cluster may add nodes; the local Ray (started here or by the caller) holds what it has
    count = actor_count(cfg, ray.cluster_resources(), can_grow=bool(cfg.ray_address or os.environ.get("RAY_ADDRESS")))
    keep_refit = cfg.records.refit_weights != "replay"  # replay: the actors send none
    # numpy pixels in the object store: the actors of a node map one copy (zero-copy)
    init = (cfg.model, ray.put(state), ray.put(splits), cfg.measure, cfg.actors.threads, cfg.actors.device, keep_refit, cfg.actors.num_gpus)
    a = cfg.actors
    pool = EvaluatorPool(count, init, a.num_cpus, a.num_gpus, a.resources, a.queue, a.max_retries, name=actor_prefix(cfg.name, parent_id))
    try:
        ready = pool.wait_ready()
        if ready < count:
            log.warning("%d of %d actors ready after 300 s; starting with those (the rest join when placed)", ready, count)
        t0 = time.monotonic()
        evaluated, failed, interrupted = _loop(cfg, study, recorder, parent_id, pool, quiet)
        return evaluated, failed, interrupted, time.monotonic() - t0
    finally:
        pool.shutdown()
        if started_ray:
            stop_local_ray()


def _term_is_interrupt():
    """Make SIGTERM raise KeyboardInterrupt in the main thread; returns the previous handler (None elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, signal.default_int_handler)


def _resume_finished(cfg: SearchConfig, recorder: Recorder) -> SearchOutcome | None:
    """A study whose trial budget is already spent: refresh its report and return at once,
    without loading data or starting Ray. None when there is work (or repair) to do."""
    if not cfg.optuna_storage and not cfg.inside_run_dir("optuna.journal").exists():
        return None
    study = open_study(cfg)
    parent_id = study.user_attrs.get("parent_run_id")
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if parent_id is None or running or recorded_trials(study) < cfg.budget.trials:
        return None
    log.info(
        "study %r already holds %d of %d candidates: nothing to evaluate (raise budget.trials or --trials to go on)",
        cfg.name,
        recorded_trials(study),
        cfg.budget.trials,
    )
    recorder.start_parent(parent_id, cfg.name, {})
    finish_report(cfg, recorder, parent_id, study)
    recorder.finish_parent(parent_id, "FINISHED")
    return SearchOutcome(parent_id, recorder.uri, cfg.experiment, 0, 0, recorded_trials(study), False)


def writable_run_folder(cfg: SearchConfig) -> Path:
    """The run folder, created; an ``InputError`` naming ``run_dir`` when it cannot be
    written (read-only file system, permissions, a full disk) -- in seconds, not after
    minutes of MLflow retries."""
    path = cfg.run_path
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise InputError(f"run_dir: cannot write to {path} ({e.strerror or e}); choose a writable folder with free space") from None
    return path


def _open_study_and_parent(cfg: SearchConfig, recorder: Recorder, held: contextlib.ExitStack, opened: list[str]):
    """The study and its MLflow parent run, created or reopened, and repaired after a killed driver.
    A study shared beyond the run folder is claimed first (``held`` releases the claim); the
    parent's id is appended to ``opened`` as soon as the run exists."""
    study = open_study(cfg)
    if cfg.optuna_storage:
        held.enter_context(StudyHeartbeat(study))
    parent_id = study.user_attrs.get("parent_run_id")
    if parent_id is None:
        params = {**flat_params(cfg.model_dump(mode="json")), "run_path": str(cfg.run_path), "sampler": cfg.sampler.name}
        parent_id = recorder.start_parent(None, cfg.name, params, opened)
        # the exact config, as data: export rebuilds candidates from it
        recorder.log_parent_artifact(parent_id, "config.json", cfg.model_dump_json(indent=2).encode())
        recorder.log_parent_artifact(parent_id, "inputs.json", inputs_json(cfg).encode())  # what the candidates were scored on
        study.set_user_attr("parent_run_id", parent_id)
    else:
        recorder.start_parent(parent_id, cfg.name, {})
        opened.append(parent_id)
    told, requeued = repair(study, cfg, recorder, parent_id)
    if told or requeued:
        log.warning("resume: %d trials told from their records, %d re-queued", told, requeued)
    return study, parent_id


def _try(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as e:  # best effort while already failing
        log.debug("%s failed: %s", getattr(fn, "__name__", fn), e)


def _loop(cfg: SearchConfig, study, recorder: Recorder, parent_id: str, pool: EvaluatorPool, quiet: bool) -> tuple[int, int, bool]:
    remaining = cfg.budget.trials - recorded_trials(study)
    mine = f"tags.`mlflow.parentRunId` = '{parent_id}'"
    steering = PressureSteering(cfg)
    if steering.active:
        for row in candidate_rows(recorder.uri, cfg.experiment, filters=mine):
            steering.observe(row["method"], row["knobs"], row["state"], row.get("sparsity"))
    refit = RefitPolicy(
        cfg.records.refit_weights, candidate_rows(recorder.uri, cfg.experiment, filters=mine) if cfg.records.refit_weights == "front" else ()
    )
    deadline = time.monotonic() + cfg.budget.wall_time_s if cfg.budget.wall_time_s else float("inf")
    progress = Progress(total=max(remaining, 0), quiet=quiet, parallel=len(pool.actors))
    last_status = time.monotonic()
    trials = {}
    fid = cfg.fidelity
    specs: dict[int, CandidateSpec] = {}  # with fidelity on: each candidate in flight and its rung
    rungs: dict[int, int] = {}
    evaluated = failed = 0
    with _GracefulInterrupt() as interrupt:
        try:
            while True:
                while not interrupt.requested and remaining > 0 and pool.capacity > 0 and time.monotonic() < deadline:
                    steer = steering.propose()
                    if steer is not None:
                        study.enqueue_trial(steer, user_attrs={"steered": True})
                    trial = study.ask()
                    trials[trial.number] = trial
                    spec = suggest(trial, cfg)
                    if fid.enabled:
                        specs[trial.number], rungs[trial.number] = spec, 0
                        pool.submit(trial.number, spec, fid.rung(0))
                    else:
                        pool.submit(trial.number, spec)
                    remaining -= 1
                if not pool.busy and (interrupt.requested or remaining <= 0 or time.monotonic() >= deadline):
                    break
                if not pool.busy and not pool.ready:
                    _warn_every(60, "no evaluator actor is ready yet (%d pending placement); waiting", len(pool.actors))
                for number, result in pool.wait(timeout=1.0):
                    state = _rung_done(cfg, pool, trials[number], specs, rungs, result)
                    if state is None:
                        continue  # promoted to its next rung
                    trial = trials.pop(number)
                    # a RecordError here stops the search: unrecorded trials stay RUNNING and resume re-queues them
                    extra = derived_metrics(cfg, result.state, dict(result.metrics))
                    result = refit.apply(result, extra)
                    tags = {**trial_tags(trial), **({"state": PRUNED} if state == PRUNED else {})}
                    run_id = recorder.record(parent_id, number, result, tags, extra)
                    tell(study, cfg, trial, run_id, state, dict(result.metrics))
                    steering.observe_result(result)
                    evaluated += 1
                    failed += result.state != "ok"
                    progress.update(result, stopped=state == PRUNED)
                if pool.busy and time.monotonic() - last_status >= STATUS_EVERY_S:
                    progress.update_running(pool.running())
                    last_status = time.monotonic()
        finally:
            progress.close()
    return evaluated, failed, interrupt.requested


def _rung_done(cfg: SearchConfig, pool: EvaluatorPool, trial, specs: dict, rungs: dict, result: CandidateResult) -> str | None:
    """A candidate's rung came back: None when the trial pruner promotes it (it is sent on),
    else the state to record (``pruned``: stopped below the full rung; ``ok``, ``failed``)."""
    number = trial.number
    if number not in rungs:
        return result.state
    rung = rungs.pop(number)
    spec = specs.pop(number)
    if result.state != "ok" or rung >= cfg.fidelity.full:
        return result.state
    if result.info.get("rung_cache") == "miss" and rung > 0:
        log.warning("candidate %d: rung %d redid the lower rungs' work (its actor restarted or was gone)", number, rung)
    if stop_at_rung(trial, cfg, rung, dict(result.metrics)):
        log.info("candidate %d: stopped at rung %d by the trial pruner (accuracy %.4f)", number, rung, result.metrics["accuracy"])
        pool.forget(number)
        return PRUNED
    specs[number], rungs[number] = spec, rung + 1
    pool.submit(number, spec, cfg.fidelity.rung(rung + 1), first=True)
    return None


_last_warning = [0.0]


def _warn_every(seconds: float, msg: str, *args) -> None:
    if time.monotonic() - _last_warning[0] >= seconds:
        _last_warning[0] = time.monotonic()
        log.warning(msg, *args)


class _GracefulInterrupt:
    """First Ctrl-C (SIGINT/SIGTERM): ask for nothing more, finish and record what is in
    flight. A second one raises KeyboardInterrupt (in-flight candidates are then re-run
    on resume)."""

    def __enter__(self) -> "_GracefulInterrupt":
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupted: finishing the candidates in flight (interrupt again to abandon them)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
