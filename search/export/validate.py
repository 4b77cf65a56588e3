"""A candidate's record checked before anything is rebuilt from it.

The record's artifacts are files anyone can edit. Each problem is one line naming the
artifact and what is wrong (an ``ExportError``, exit 2), never a reader's traceback:
- ``config.json`` (parent run) and ``spec.json``: JSON, then the typed config / spec
  (out-of-range and unknown fields);
- ``spec.json`` against the run's recorded params (its ``spec`` param, written with
  the record): a spec edited after the search (``finetune_steps: 100000``, an unknown
  method) is refused before it runs;
- ``plan.parquet``: readable as a plan (columns, row kinds), kept-channel indices valid
  for the model's layers, and every mask, trained weight and refit tensor of the shape
  of the tensor it replaces.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from pydantic import ValidationError

from pipeline.errors import InputError, excerpt
from pipeline.models import ModelConfig, build_model
from pipeline.pruning.methods import get_method
from pipeline.pruning.plan import PrunePlan
from pipeline.pruning.structure import shrink
from pipeline.spec import CandidateSpec
from search.config import SearchConfig


class ExportError(InputError):
    """The record cannot be rebuilt, or the rebuilt candidate does not reproduce it."""


def _error(message: str) -> Exception:
    return ExportError(message)


def _one_line(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = "" if isinstance(e.get("input"), dict) else f" (got {excerpt(e.get('input'), 60)})"
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(parts)


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise _error(f"{where} is not JSON ({str(e)[:120]}); the record was edited or damaged") from None


def read_config(data: bytes, where: str) -> SearchConfig:
    """The search config of ``config.json`` (``where`` names it in messages)."""
    raw = _json(data, where)
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as e:
        raise _error(f"{where} is not a valid search config: {_one_line(e)}") from None


def read_spec(data: bytes, where: str, recorded: str | None) -> CandidateSpec:
    """The candidate spec of ``spec.json``, checked against ``recorded`` (the run's ``spec``
    param; None for a record without one)."""
    raw = _json(data, where)
    try:
        spec = CandidateSpec.from_json(json.dumps(raw))
    except ValidationError as e:
        raise _error(f"{where} is not a valid candidate spec: {_one_line(e)}") from None
    except ValueError as e:  # a method-level check (e.g. two targets)
        raise _error(f"{where} is not a valid candidate spec: {str(e)[:200]}") from None
    try:
        get_method(spec.method)
    except ValueError as e:
        raise _error(f"{where}: {str(e)[:200]}") from None
    if recorded is not None:
        try:
            want = json.loads(CandidateSpec.from_json(recorded).to_json())
        except (ValueError, ValidationError):
            raise _error(f"{where}: the run's recorded 'spec' param is not a valid spec; the record was edited or damaged") from None
        got = json.loads(spec.to_json())
        diff = [
            f"{k}: {excerpt(got.get(k), 40)} (recorded {excerpt(want.get(k), 40)})"
            for k in sorted(want.keys() | got.keys())
            if want.get(k) != got.get(k)
        ]
        if diff:
            raise _error(f"{where} disagrees with the run's recorded params: {'; '.join(diff[:5])}; the artifact was edited after the search")
    return spec


def read_plan(data: bytes, where: str, model_cfg: ModelConfig) -> PrunePlan:
    """The plan of ``plan.parquet``, checked against ``model_cfg``'s architecture (built
    without its checkpoint: only shapes are compared)."""
    if not data:
        raise _error(f"{where} is empty (0 bytes); the record was damaged")
    try:
        plan = PrunePlan.from_parquet(data)
    except KeyError as e:
        raise _error(f"{where} lacks the column {e}; it is not a prunesearch plan, or was edited") from None
    except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid, OSError, ValueError on bad bytes
        raise _error(f"{where} cannot be read as a plan ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    check_plan(plan, model_cfg, where)
    return plan


def check_plan(plan: PrunePlan, model_cfg: ModelConfig, where: str) -> None:
    """Refuse a plan that does not fit ``model_cfg``'s architecture, naming the tensor."""
    dense = build_model(model_cfg.model_copy(update={"checkpoint": None}))
    _shapes(plan.weights, dense.state_dict(), where, "trained weight")
    try:
        pruned = shrink(dense, plan.channels) if plan.channels else dense
    except ValueError as e:
        raise _error(f"{where}: {str(e)[:300]}") from None
    _shapes(plan.masks, dict(pruned.named_parameters()), where, "mask")
    _shapes(plan.refit, pruned.state_dict(), where, "refit weight")


def _shapes(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], where: str, what: str) -> None:
    for name, t in got.items():
        if name not in want:
            raise _error(f"{where}: {what} {excerpt(name, 80)} names no tensor of the model")
        if tuple(t.shape) != tuple(want[name].shape):
            raise _error(f"{where}: {what} {name} has shape {tuple(t.shape)}, the model's tensor has {tuple(want[name].shape)}")
