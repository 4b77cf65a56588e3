"""The Optuna study of a search: storage, sampler, objectives, and resume repair."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from search.baselines import BASELINE_ATTR, enqueue_baselines
from search.config import SearchConfig

if TYPE_CHECKING:
    from search.records import Recorder

log = logging.getLogger(__name__)
RUN_ID_ATTR = "mlflow_run_id"


def open_study(cfg: SearchConfig) -> optuna.Study:
    """Create the study, or load it when the same run folder is used again (resume).

    A new study gets its baseline trials enqueued first (``search.baselines``).

    Storage: ``optuna_storage`` if set (an RDB URL for clusters), else a journal file
    in the run folder written by this driver alone.
    """
    if cfg.optuna_storage:
        storage: str | JournalStorage = cfg.optuna_storage
    else:
        path = cfg.inside_run_dir("optuna.journal")
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
    directions = ["maximize", "minimize"] if cfg.objective.mode == "pareto" else ["maximize"]
    study = optuna.create_study(study_name=cfg.name, storage=storage, directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise ValueError(
            f"study {cfg.name!r} in this run folder was created with other objectives "
            f"({[d.name.lower() for d in study.directions]}); use another name or run_dir"
        )
    # reseed by progress so a resumed random/NSGA-II sampler does not replay its first draws
    study.sampler = make_sampler(cfg, offset=len(study.trials))
    enqueue_baselines(study, cfg)  # a new study only
    return study


def make_sampler(cfg: SearchConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    s = cfg.sampler
    seed = s.seed + offset
    # constraints reach the samplers through Trial.set_constraint (see ``tell``)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, s.startup_trials))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup_trials, multivariate=True, constant_liar=True)


def objective_values(cfg: SearchConfig, m: dict[str, float]) -> list[float]:
    """Optuna objective values: (accuracy, effective MACs) for pareto, (accuracy,) otherwise."""
    return [m["accuracy"], m["macs"]] if cfg.objective.mode == "pareto" else [m["accuracy"]]


def constraint_values(cfg: SearchConfig, metrics: dict[str, float]) -> dict[str, float]:
    """Optuna constraint values by name (<= 0 is feasible) for constrained mode."""
    o = cfg.objective
    vals = {}
    if o.max_macs_ratio is not None:
        vals["max_macs_ratio"] = metrics["macs_ratio"] - o.max_macs_ratio
    if o.min_sparsity is not None:
        vals["min_sparsity"] = o.min_sparsity - metrics["sparsity"]
    return vals


def is_feasible(cfg: SearchConfig, metrics: dict[str, float]) -> bool:
    """Whether a measured candidate meets the constraints (always, in pareto mode).

    The same test as Optuna's (every constraint value <= 0), so ``best`` and the
    summaries agree with ``study.best_trial``.
    """
    return cfg.objective.mode != "constrained" or all(v <= 0 for v in constraint_values(cfg, metrics).values())


def derived_metrics(cfg: SearchConfig, state: str, metrics: dict[str, float]) -> dict[str, float]:
    """Metrics the driver adds to a candidate's record: ``feasible`` (1 or 0) of an ok one."""
    return {"feasible": float(is_feasible(cfg, metrics))} if state == "ok" else {}


def trial_tags(trial: optuna.Trial) -> dict[str, str]:
    """MLflow tags saying how a trial was chosen: ``baseline`` = "1", ``steered`` = "power-law"."""
    tags = {}
    if trial.user_attrs.get(BASELINE_ATTR):
        tags["baseline"] = "1"
    if trial.user_attrs.get("steered"):
        tags["steered"] = "power-law"
    return tags


def tell(study: optuna.Study, cfg: SearchConfig, trial: optuna.Trial, run_id: str, state: str, metrics: dict[str, float]) -> None:
    """Tell ``trial`` its outcome, exactly once; a repeated completion is logged and ignored."""
    try:
        trial.set_user_attr(RUN_ID_ATTR, run_id)
        if state != "ok":
            study.tell(trial, state=TrialState.FAIL)
            return
        if cfg.objective.mode == "constrained":
            for name, value in constraint_values(cfg, metrics).items():
                trial.set_constraint(name, value)
        study.tell(trial, objective_values(cfg, metrics))
    except RuntimeError as e:  # optuna refuses to tell a finished trial twice
        log.warning("trial %d: repeated completion ignored (%s)", trial.number, e)


def recorded_trials(study: optuna.Study) -> int:
    """Trials with a complete MLflow record: what the trial budget counts."""
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.is_finished() and RUN_ID_ATTR in t.user_attrs)


def repair(study: optuna.Study, cfg: SearchConfig, recorder: "Recorder", parent_id: str) -> tuple[int, int]:
    """Make the study agree with the records after a killed driver.

    A trial left RUNNING whose candidate was recorded is told from its record; one that
    was never recorded is failed and its parameters enqueued again, so the candidate
    is evaluated once more and recorded exactly once. Returns (told, requeued).
    """
    recorder.delete_incomplete(parent_id)
    runs = {int(r.data.tags["trial_number"]): r for r in recorder.children(parent_id) if "trial_number" in r.data.tags}
    told = requeued = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run = runs.get(t.number)
        if run is not None:
            tell(study, cfg, optuna.trial.Trial(study, t._trial_id), run.info.run_id, run.data.tags.get("state", "failed"), run.data.metrics)
            told += 1
        else:
            study.tell(t.number, state=TrialState.FAIL)
            # the re-run keeps what chose it (baseline, steered)
            study.enqueue_trial(t.params, user_attrs={k: v for k, v in t.user_attrs.items() if k in (BASELINE_ATTR, "steered")})
            requeued += 1
    return told, requeued
