"""A rebuilt candidate as an MLflow model, logged into the candidate's own run.

The model is saved in MLflow's ``pt2`` serialization (``torch.export``): a graph plus
tensors, no pickled Python objects. ``mlflow.pytorch.load_model("runs:/RUN/model")``
checks that every record of the archive is plain tensors or JSON before it loads it
(unless ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set) and returns an ``nn.Module``
that needs no prunesearch code. Its input is the normalised float32 (N, C, H, W)
batch; the preprocessing that produces it is the model's ``metadata``.
"""

from __future__ import annotations

import contextlib
import logging

import mlflow
import numpy as np
import torch
from torch import nn

from pipeline.data.preprocess import Preprocessing
from search.export.formats import quiet_loggers

ARTIFACT = "model"
log = logging.getLogger(__name__)


def log_candidate_model(
    tracking_uri: str, run_id: str, model: nn.Module, example: torch.Tensor, pre: Preprocessing, register: str | None = None
) -> tuple[str, str | None]:
    """Log ``model`` as ``runs:/RUN_ID/model`` with a signature and ``example`` (a normalised
    batch of at least 2 images, so the batch dimension stays dynamic) as input example;
    with ``register``, also as a new version of registered model ``register``.

    Returns (model URI, registered version or None).
    """
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    c, h, w = pre.input_shape
    signature = ModelSignature(
        # unnamed tensors: pyfunc then passes a plain array, not a dict, to the model
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, c, h, w))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, pre.num_classes))]),
    )
    with _tracking(tracking_uri), mlflow.start_run(run_id=run_id), quiet_loggers("mlflow"):  # INFO per saved model
        info = mlflow.pytorch.log_model(
            model.eval(),
            name=ARTIFACT,
            serialization_format="pt2",
            signature=signature,
            input_example=example.cpu().numpy(),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # no requirement inference: it imports and runs the model
            metadata={"preprocessing": pre.to_dict(), "prunesearch_run_id": run_id},
            registered_model_name=register,
            await_registration_for=0,
        )
    version = str(info.registered_model_version) if register and info.registered_model_version is not None else None
    return f"runs:/{run_id}/{ARTIFACT}", version


@contextlib.contextmanager
def _tracking(uri: str):
    old = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)  # type: ignore[arg-type]  # None unsets it; mlflow's hint leaves None out


def log_front_models(tracking_uri: str, experiment: str, parent_id: str) -> list[str]:
    """Log every Pareto-front candidate of search ``parent_id`` as an MLflow model in its
    run (``log_models: true``), each rebuilt and checked as ``export`` does. A candidate
    that cannot be rebuilt is logged as a warning; the search's records stay as they are.

    Returns the model URIs logged.
    """
    from search.export.formats import ExportError, export
    from search.records.query import candidate_rows, pareto_front

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
