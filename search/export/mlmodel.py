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


@contextlib.contextmanager
def quiet_loggers(*names: str):
    """Raise the named loggers to WARNING for the block (libraries that log INFO per step)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
