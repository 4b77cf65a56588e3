"""The Python API, for notebooks and scripts (re-exported by ``search``).

    import search as ps
    cfg = ps.load_config("configs/digits.yaml", run_dir="runs/nb", budget={"trials": 8})
    res = ps.run(cfg)                 # a real search: Ray actors, MLflow, Optuna
    res.frame                         # every candidate: metrics, knobs, state, feasible
    net = res.rebuild(res.best(top=1).run_id[0])

Everything goes through the product's own code: the driver, the MLflow queries, the
rebuild path of export, ``pipeline.measure`` and ``pipeline.api``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient
from torch import nn

from search.config import ConfigError, SearchConfig, local_store_uri, parse_config
from search.config import load_config as _load_yaml
from search.export.rebuild import ExportError, artifact, rebuild
from search.records import query


def load_config(source: str | Path | dict[str, Any] | SearchConfig | None = None, **overrides: Any) -> SearchConfig:
    """A validated ``SearchConfig`` from a YAML file, a dict (the YAML's structure), or the
    defaults; ``overrides`` replace top-level sections (``budget={"trials": 8}``).

    Raises:
        search.config.ConfigError: naming each bad field.
    """
    if isinstance(source, SearchConfig):
        source = source.model_dump()
    if isinstance(source, (str, Path)):
        return _load_yaml(source, overrides)
    return parse_config(dict(source or {}), overrides)


def run(cfg: SearchConfig, quiet: bool = True) -> "Results":
    """Run (or resume) the search of ``cfg`` until its budget is spent; its results.

    Raises:
        search.config.ConfigError: ``cfg`` is not a ``SearchConfig`` (make one with ``load_config``).
    """
    from search.runner.driver import run_search

    if not isinstance(cfg, SearchConfig):
        raise ConfigError(
            f"run() takes a SearchConfig, got {type(cfg).__name__}; make one with ps.load_config(...) "
            "from a YAML path or a dict of the YAML's sections"
        )

    out = run_search(cfg, quiet=quiet)
    return Results(out.tracking_uri, out.experiment, out.parent_run_id, cfg)


def results(experiment: str, run_dir: str | Path = "runs", tracking_uri: str | None = None) -> "Results":
    """The results of an earlier search of ``experiment`` (its latest parent run) in ``run_dir``'s store."""
    uri = tracking_uri or local_store_uri(run_dir)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    parents = (
        []
        if exp is None
        else client.search_runs([exp.experiment_id], "tags.`prunesearch.role` = 'search'", order_by=["attributes.start_time DESC"], max_results=1)
    )
    if not parents:
        raise query.QueryError(f"no search {experiment!r} in {uri}")
    pid = parents[0].info.run_id
    with tempfile.TemporaryDirectory() as d:
        cfg = SearchConfig.model_validate_json(artifact(client, pid, "config.json", d))
    return Results(uri, experiment, pid, cfg)


@dataclass(frozen=True)
class Results:
    """One search's records. Metric columns use the MLflow metric names (README, "Metrics")."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    cfg: SearchConfig

    @property
    def frame(self) -> pd.DataFrame:
        """Every candidate of this search, one row each, by trial: ``run_id``, ``trial``,
        ``state``, ``method``, ``granularity``, ``scope``, ``knob.NAME``, ``alloc.STAGE``,
        every metric, and ``feasible`` (the recorded metric; for older records the driver's test)."""
        of_parent = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
        rows = query.candidate_rows(self.tracking_uri, self.experiment, finished_only=False, filters=of_parent)
        flat = []
        for r in rows:
            r = dict(r)
            r.update({f"knob.{k}": v for k, v in r.pop("knobs").items()})
            r.update({f"alloc.{k}": v for k, v in r.pop("allocation").items()})
            r["feasible"] = bool(r["feasible"]) if "feasible" in r else self._feasible(r)
            flat.append(r)
        df = pd.DataFrame(flat)
        return df.sort_values("trial", ignore_index=True) if len(df) else df

    @property
    def pareto(self) -> pd.DataFrame:
        """The candidates not dominated in (max accuracy, min effective MACs), by MACs."""
        df = self.frame
        if not len(df):
            return df
        ok = df[df.state == "ok"].to_dict("records")
        ids = [r["run_id"] for r in query.pareto_front(ok)]
        return df.set_index("run_id").loc[ids].reset_index()

    def best(self, top: int = 10, **filters: Any) -> pd.DataFrame:
        """``query.best`` over this experiment, as a DataFrame: its filters (``query.FILTERS``:
        ``max_macs``, ``max_macs_ratio``, ``max_latency_ms``, ``min_accuracy``, ``method``,
        ``granularity``, ``min_sparsity``, ``max_sparsity``) and ``feasible``, ``front``,
        ``sort``; by default the feasible Pareto front, most accurate first."""
        return pd.DataFrame(query.best(self.tracking_uri, self.experiment, top, **filters))

    def rebuild(self, run_id: str, allow_import: bool = False) -> nn.Module:
        """Candidate ``run_id`` rebuilt from its record (the export path), checked against
        its recorded accuracy; eval mode, CPU, normalised (N, C, H, W) input."""
        return rebuild(self.tracking_uri, run_id, allow_import=allow_import).model

    def export(self, run_id: str, output: str | Path | None, **kwargs: Any):
        """``search.export.formats.export`` of candidate ``run_id`` (``onnx``, ``log_model``, ``register``, ...)."""
        from search.export.formats import export

        return export(self.tracking_uri, run_id, output, **kwargs)

    def _feasible(self, row: dict[str, Any]) -> bool:
        """For records without the ``feasible`` metric: the driver's own test on an ok candidate."""
        from search.study.study import is_feasible

        return row["state"] == "ok" and "accuracy" in row and is_feasible(self.cfg, row)


__all__ = ["ExportError", "Results", "load_config", "results", "run"]
