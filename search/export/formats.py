"""Export: write a rebuilt candidate in formats that run without prunesearch.

``export`` rebuilds a record (``search.export.rebuild``) and writes, beside each other:
- ``FILE.pt``: state dict plus recipe (architecture, kept channels, preprocessing),
  plain data loadable with ``torch.load(path, weights_only=True)``; ``load_exported``
  turns it into a module and a transform;
- ``FILE.pt2``: a ``torch.export`` program (``torch.export.load(path).module()``), the
  network as a graph: needs torch only, no model code; its preprocessing in the extra
  file ``prunesearch.json`` (``PT2_EXTRA``);
- ``FILE.json``: the preprocessing (mean, std, input shape, channel order, classes);
- ``FILE.onnx`` (``onnx=True``): the dynamo ONNX exporter's graph, input ``images``
  (batch, C, H, W) float32, output ``logits`` (batch, classes), the preprocessing in
  its ``metadata_props`` (``embedded_metadata``).
Each graph format is checked against the PyTorch outputs on validation images.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pipeline.data.preprocess import Preprocessing
from pipeline.data.splits import preprocessing
from pipeline.errors import excerpt
from pipeline.models import ModelConfig, load_base
from pipeline.pruning.structure import shrink
from search.export.mlmodel import log_candidate_model, quiet_loggers
from search.export.rebuild import ExportError, Rebuilt, rebuild, refuse_imports

log = logging.getLogger(__name__)

FORMAT = "prunesearch-export/2"
_CHECK_IMAGES = 64  # validation images on which every format must give the PyTorch logits
_ATOL = 1e-4

__all__ = ["ExportError", "Exported", "Loaded", "export", "load_exported"]


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote and checked.

    ``max_abs_diff``: per graph format, the largest absolute logit difference from the
    PyTorch module on validation images (ONNX only where onnxruntime is installed).
    """

    path: Path | None
    program: Path | None
    preprocessing: Path | None
    onnx: Path | None
    recorded_accuracy: float
    rebuilt_accuracy: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    registered_version: str | None = None


class Loaded(NamedTuple):
    """``load_exported``'s answer: ``logits = model(transform(images))``."""

    model: nn.Module
    transform: Preprocessing


def export(
    tracking_uri: str,
    run_id: str,
    output: str | Path | None,
    tolerance: float = 1e-6,
    allow_import: bool = False,
    onnx: bool = False,
    log_model: bool = False,
    register: str | None = None,
    force: bool = False,
) -> Exported:
    """Rebuild candidate ``run_id`` and write ``output`` (.pt) with .pt2, .json (and .onnx) beside it;
    with ``log_model`` (or ``register``) also log it as an MLflow model into its run.

    Raises:
        ExportError: see ``search.export.rebuild.rebuild``; also a graph format whose outputs
            differ from the PyTorch module's by more than 1e-4; before any work, files that
            exist (unless ``force``), an output folder that is a file, a bad ``register`` name.
    """
    if output is None and not (log_model or register):
        raise ExportError("nothing to do: give an output file (-o FILE.pt) or --log-model / --register NAME")
    if register is not None:
        check_model_name(register)
    if output is not None:
        check_output(Path(output), onnx, force)
    rb = rebuild(tracking_uri, run_id, tolerance, allow_import)
    pre = preprocessing(rb.cfg.data, rb.splits)
    check = rb.splits.val.batch(0, _CHECK_IMAGES)
    paths: dict[str, Path | None] = {"pt": None, "pt2": None, "json": None, "onnx": None}
    diffs: dict[str, float] = {}
    if output is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        pt2, json_path = out.with_suffix(".pt2"), out.with_suffix(".json")
        paths.update(pt=out, pt2=pt2, json=json_path)
        _write_pt(rb, pre, out)
        meta = embedded_metadata(pre, run_id)
        diffs["pt2"] = _write_program(rb.model, check, pt2, meta)
        if onnx:
            paths["onnx"] = onnx_path = out.with_suffix(".onnx")
            d = _write_onnx(rb.model, check, onnx_path, meta)
            if d is not None:
                diffs["onnx"] = d
        sidecar = {
            "format": FORMAT,
            "run_id": run_id,
            "recorded_accuracy": rb.recorded_accuracy,
            "preprocessing": pre.to_dict(),
            "input": "images (N, C, H, W) float32, normalised",
            "output": "logits (N, num_classes)",
        }
        json_path.write_text(json.dumps(sidecar, indent=2))
    uri = version = None
    if log_model or register:
        uri, version = log_candidate_model(tracking_uri, run_id, rb.model, check[:2], pre, register)
    return Exported(paths["pt"], paths["pt2"], paths["json"], paths["onnx"], rb.recorded_accuracy, rb.rebuilt_accuracy, diffs, uri, version)


_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\- ]{0,199}")


def check_model_name(name: str) -> None:
    """Refuse a registered-model name MLflow would refuse or that reads as a path."""
    if not _MODEL_NAME.fullmatch(name) or name.strip() != name:
        raise ExportError(
            f"--register {excerpt(name, 60)}: a model name is 1 to 200 letters, digits, '_', '-', '.' and inner spaces, "
            "not starting with '.' or '-' (no '/' or ':'); e.g. --register digits-best"
        )


def output_files(out: Path, onnx: bool) -> list[Path]:
    """The files ``export`` writes for ``-o out``: .pt, .pt2, .json (and .onnx)."""
    return [out, out.with_suffix(".pt2"), out.with_suffix(".json"), *([out.with_suffix(".onnx")] if onnx else [])]


def check_output(out: Path, onnx: bool, force: bool) -> None:
    """Refuse, before any work, an output that cannot be written or would replace files."""
    if out.is_dir():
        raise ExportError(f"-o: {out} is a folder; give a file name, e.g. {out / 'best.pt'}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"-o {out}: {parent} is a file, not a folder (Not a directory); choose another output path")
            break
    taken = [str(p) for p in output_files(out, onnx) if p.exists() or p.is_symlink()]
    if taken and not force:
        raise ExportError(f"-o {out}: would overwrite {', '.join(taken)}; pass --force to replace them, or choose another name")


def _write_pt(rb: Rebuilt, pre: Preprocessing, out: Path) -> None:
    recipe = {
        "format": FORMAT,
        "model": rb.cfg.model.model_dump_json(),
        "spec": rb.spec.to_json(),
        "run_id": rb.run_id,
        "channels": {k: v.tolist() for k, v in rb.plan.channels.items()},
        "input_shape": list(rb.splits.input_shape),
        "preprocessing": pre.to_dict(),
    }
    torch.save({"recipe": json.dumps(recipe), "state_dict": rb.model.state_dict()}, out)


def _batch_dim() -> tuple[dict[int, object]]:
    return ({0: torch.export.Dim("batch")},)  # any batch size, named "batch" in both graphs (not s77)


#: the key of the preprocessing in the .pt2's extra files (``torch.export.load(path, extra_files={PT2_EXTRA: ""})``)
PT2_EXTRA = "prunesearch.json"


def embedded_metadata(pre: Preprocessing, run_id: str) -> dict[str, str]:
    """What a graph file carries of its preprocessing, as text (ONNX ``metadata_props``,
    the .pt2's extra file): mean, std, input shape (C, H, W), channel order, class names
    (JSON lists), so a copy travelling without the sidecar JSON still says how to feed it."""
    d = pre.to_dict()
    return {
        "prunesearch.format": FORMAT,
        "run_id": run_id,
        "mean": json.dumps(list(d["mean"])),
        "std": json.dumps(list(d["std"])),
        "input_shape": json.dumps(list(d["input_shape"])),
        "channel_order": str(d["channel_order"]),
        "num_classes": str(d["num_classes"]),
        "class_names": json.dumps(d.get("class_names")),
        "input": "images (batch, C, H, W) float32: pixels in [0, 1], minus mean, divided by std, per channel",
        "output": "logits (batch, num_classes)",
    }


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    diff = float((got - want).abs().max())
    if not diff <= _ATOL:
        raise ExportError(f"the {name} export's logits differ from the PyTorch module's by {diff:.3g} (more than {_ATOL})")
    return diff


@torch.no_grad()
def _write_program(model: nn.Module, x: torch.Tensor, path: Path, meta: dict[str, str]) -> float:
    program = torch.export.export(model, (x,), dynamic_shapes=_batch_dim())
    torch.export.save(program, path, extra_files={PT2_EXTRA: json.dumps(meta, indent=2)})
    return _check("torch.export", torch.export.load(path).module()(x), model(x))


@torch.no_grad()
def _write_onnx(model: nn.Module, x: torch.Tensor, path: Path, meta: dict[str, str]) -> float | None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError:
        raise ExportError("ONNX export needs the packages onnx and onnxscript: pip install 'prunesearch[onnx]'") from None
    with quiet_loggers("onnxscript", "onnx_ir", "torch.onnx"):  # INFO lines for every rewrite pass
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=_batch_dim(),
            external_data=False,
            verbose=False,
        )  # one self-contained file
    import onnx

    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, meta)  # metadata_props: what the sidecar JSON says, inside the file
    onnx.save(graph, str(path))
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: %s is written but its outputs are not checked", path)
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _check("ONNX", torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), model(x))


def load_exported(path: str | Path, allow_import: bool = False) -> Loaded:
    """Rebuild an exported candidate: ``model, transform = load_exported("best.pt")``.

    ``model`` is an ``nn.Module`` in eval mode; ``transform`` (a ``Preprocessing``) maps
    uint8 (N, H, W, C) / (H, W, C) numpy images, float ones in [0, 1], or PIL images to
    the normalised float32 (N, C, H, W) batch the model was scored on. Loading uses
    ``weights_only=True`` (no pickled code); an ``import`` model class is refused
    unless ``allow_import``.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    recipe = json.loads(blob["recipe"])
    if recipe.get("format") != FORMAT:
        raise ExportError(f"{path} is not a prunesearch export of format {FORMAT!r} (found {recipe.get('format')!r}); export it again")
    model_cfg = ModelConfig.model_validate_json(recipe["model"])
    refuse_imports(model_cfg, allow_import, str(path))
    channels = {k: torch.tensor(v, dtype=torch.int64) for k, v in recipe["channels"].items()}
    model = load_base(model_cfg, blob["state_dict"], reshape=(lambda m: shrink(m, channels)) if channels else None)
    return Loaded(model, Preprocessing.from_dict(recipe["preprocessing"]))
