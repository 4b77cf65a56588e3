"""The Pareto front of a search logged as MLflow models (``log_models: true``)."""

from __future__ import annotations

import logging

from search.export.formats import ExportError, export
from search.records.query import candidate_rows, pareto_front

log = logging.getLogger(__name__)


def log_front_models(tracking_uri: str, experiment: str, parent_id: str) -> list[str]:
    """Log every Pareto-front candidate of search ``parent_id`` as an MLflow model in its
    run (``log_models: true``), each rebuilt and checked as ``export`` does. A candidate
    that cannot be rebuilt is logged as a warning; the search's records stay as they are.

    Returns the model URIs logged.
    """
    rows = candidate_rows(tracking_uri, experiment, filters=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    uris = []
    for row in pareto_front([r for r in rows if "accuracy" in r and "macs" in r]):
        try:
            uri = export(tracking_uri, row["run_id"], None, log_model=True).model_uri
        except ExportError as e:
            log.warning("not logged as an MLflow model: %s", e)
            continue
        if uri is None:  # export logs a model when asked to; a record stays a record if it did not
            log.warning("candidate %s: export returned no model URI", row["run_id"])
        else:
            uris.append(uri)
    log.info("logged %d Pareto-front candidates as MLflow models", len(uris))
    return uris
