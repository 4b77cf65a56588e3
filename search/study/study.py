"""The Optuna study of a search: storage, sampler, objectives, and resume repair."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pipeline.errors import InputError, excerpt
from search.config import ConfigError, SearchConfig
from search.study.baselines import BASELINE_ATTR, enqueue_baselines
from search.study.encoding import upgrade_params

if TYPE_CHECKING:
    from search.records.runs import Recorder

log = logging.getLogger(__name__)
RUN_ID_ATTR = "mlflow_run_id"


def open_study(cfg: SearchConfig) -> optuna.Study:
    """Create the study, or load it when the same run folder is used again (resume).

    A new study gets its baseline trials enqueued first (``search.study.baselines``).

    Storage: ``optuna_storage`` if set (an RDB URL for clusters), else a journal file
    in the run folder written by this driver alone.
    """
    if not cfg.optuna_storage and check_journal(cfg.inside_run_dir("optuna.journal")):
        _storage.cache_clear()  # a storage of this process may have read the dropped line
    directions: list[Literal["maximize", "minimize"]] = ["maximize", "minimize"] if cfg.objective.mode == "pareto" else ["maximize"]
    study = optuna.create_study(study_name=cfg.name, storage=storage_of(cfg), directions=directions, load_if_exists=True)
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(
            f"study {cfg.name!r} in this run folder was created with other objectives "
            f"({[d.name.lower() for d in study.directions]}); use another name or run_dir"
        )
    # reseed by progress so a resumed random/NSGA-II sampler does not replay its first draws
    study.sampler = make_sampler(cfg, offset=len(study.trials))
    enqueue_baselines(study, cfg)  # a new study only
    return study


def storage_of(cfg: SearchConfig) -> BaseStorage:
    """The study's storage object, one per location in this process."""
    if cfg.optuna_storage:
        return _storage("rdb", cfg.optuna_storage)
    path = cfg.inside_run_dir("optuna.journal")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _storage("journal", str(path))


def check_journal(path: Path) -> bool:
    """Drop a last line cut short by a crash mid-append (else every later append extends
    the broken line and every read fails), logging a warning; refuse a journal broken
    elsewhere with an ``InputError`` naming the file and line. True if it was repaired."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    repaired = False
    with path.open("rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: its last line (%d bytes) was cut short by a crash; dropped it", path, len(data) - keep)
            f.truncate(keep)
            data = data[:keep]
            repaired = True
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            json.loads(line)
        except ValueError:
            raise InputError(
                f"the Optuna journal {path} is corrupt on line {number}; restore it from a backup, or move it away to "
                "start the study anew (MLflow records stay, but the new study does not know them)"
            ) from None
    return repaired


@functools.lru_cache(maxsize=8)
def _storage(kind: str, where: str) -> BaseStorage:
    if kind == "journal":
        return JournalStorage(JournalFileBackend(where))
    try:
        return optuna.storages.RDBStorage(where)
    except Exception as e:  # no such driver or database, unreachable server
        raise ConfigError(f"optuna_storage: cannot open {excerpt(where)} ({type(e).__name__}: {str(e)[:200]})") from None


def running_trial(study: optuna.Study, cfg: SearchConfig, number: int) -> optuna.Trial:
    """A handle on trial ``number`` of ``study`` (left RUNNING by an earlier driver),
    through the storage's public API."""
    return optuna.trial.Trial(study, _id_of(study, cfg, number))


def _id_of(study: optuna.Study, cfg: SearchConfig, number: int) -> int:
    storage = storage_of(cfg)
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def _trial_of(study: optuna.Study, cfg: SearchConfig, number: int) -> optuna.trial.FrozenTrial:
    return storage_of(cfg).get_trial(_id_of(study, cfg, number))


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
    """Tell ``trial`` its outcome, exactly once; a trial already finished is left as it is."""
    if _trial_of(study, cfg, trial.number).state.is_finished():
        log.warning("trial %d: already finished; repeated completion ignored", trial.number)
        return
    trial.set_user_attr(RUN_ID_ATTR, run_id)
    if state != "ok":
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return
    if cfg.objective.mode == "constrained":
        for name, value in constraint_values(cfg, metrics).items():
            trial.set_constraint(name, value)
    study.tell(trial, objective_values(cfg, metrics), skip_if_finished=True)


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
            tell(study, cfg, running_trial(study, cfg, t.number), run.info.run_id, run.data.tags.get("state", "failed"), run.data.metrics)
            told += 1
        else:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            # the re-run keeps what chose it (baseline, steered)
            study.enqueue_trial(upgrade_params(t.params), user_attrs={k: v for k, v in t.user_attrs.items() if k in (BASELINE_ATTR, "steered")})
            requeued += 1
    return told, requeued
