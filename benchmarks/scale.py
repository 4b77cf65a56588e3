#!/usr/bin/env python
"""Scale figures: what a search costs as the data set and the model grow (``results/scale.json``).

The JSON holds three lists, each written by one ``--part`` and kept by the others, so
one part can be re-run without losing the rest:

- ``data`` (this part, issue 20): an ImageFolder of generated JPEGs (``--folders`` sizes,
  256 px, centre-cropped to ``--image-size``), a search of torchvision ``resnet18``
  (a base trained for a few steps at the input size on the same kind of images, so it beats
  chance; the cost figures do not depend on its accuracy) with magnitude candidates:
  ``startup_s`` (driver start to the first candidate submitted, Ray start included),
  ``data_s`` (reading and decoding the subsets), peak resident memory of the driver and
  of the actors (the largest ``info.peak_rss_mb`` any candidate recorded).
- ``reconstruction`` and ``records``: filled by their own parts (issue 21).

Each search runs in a fresh process (``--child``), so its peak memory is its own.

Run (full scale; about an hour on 2 cores):

    nice -n 10 .venv/bin/python benchmarks/scale.py --part data --folders 2000 20000 --candidates 16 --calib 256 --val 1000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reporting import RESULTS_DIR, md_table, write_json, write_text  # noqa: E402

PARTS = ("data", "reconstruction", "records")
CLASSES = 2  # two colours: a base trained for seconds beats chance, which the preflight requires
SIDE = 256  # generated images: the evaluation transform resizes the short side to 256 and crops 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _colour(label: int) -> np.ndarray:
    return np.array([(label * 97) % 256, (label * 57 + 80) % 256, (label * 151 + 160) % 256], dtype=np.float32)


def picture(label: int, index: int, side: int = SIDE) -> np.ndarray:
    """A (side, side, 3) uint8 image of class ``label``: the class colour, a gradient, noise."""
    rng = np.random.default_rng(label * 1_000_003 + index)
    ramp = np.linspace(-30, 30, side, dtype=np.float32)[None, :, None]
    px = _colour(label)[None, None] + ramp + rng.normal(0, 25, (side, side, 3)).astype(np.float32)
    return np.clip(px, 0, 255).astype(np.uint8)


def _write(job: tuple[Path, int, int]) -> None:
    from PIL import Image

    root, label, index = job
    Image.fromarray(picture(label, index)).save(root / f"c{label}" / f"{index:06d}.jpg", quality=85)


def make_folder(root: Path, images: int, link_from: Path | None = None) -> Path:
    """``images`` JPEGs in ``CLASSES`` class folders (links to ``link_from``'s first ones, if given)."""
    for c in range(CLASSES):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    jobs = [(root, i % CLASSES, i // CLASSES) for i in range(images)]
    if link_from is not None:
        for _, c, i in jobs:
            (root / f"c{c}" / f"{i:06d}.jpg").symlink_to(link_from / f"c{c}" / f"{i:06d}.jpg")
        return root
    with Pool(2) as pool:
        pool.map(_write, jobs, chunksize=64)
    return root


def train_base(path: Path, side: int, steps: int = 20) -> Path:
    """resnet18 trained ``steps`` SGD steps on generated images at the model's input size
    ``side`` (product training loop; trained at another size it scores at chance)."""
    import torch

    from pipeline.data.preprocess import normalise
    from pipeline.models import ModelConfig, build_model
    from pipeline.train import train_classifier

    torch.manual_seed(0)
    labels = np.arange(320) % CLASSES
    x = normalise(np.stack([picture(int(c), 10_000 + i, side) for i, c in enumerate(labels)]), MEAN, STD)
    model = build_model(ModelConfig(name="torchvision:resnet18", num_classes=CLASSES))
    train_classifier(model, x, torch.from_numpy(labels), steps, lr=0.05, batch_size=16)
    torch.save(model.state_dict(), path)
    return path


def search_config(folder: Path, base: Path, run_dir: Path, a: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": f"scale-{folder.name}",
        "run_dir": str(run_dir),
        "model": {"name": "torchvision:resnet18", "num_classes": CLASSES, "checkpoint": str(base)},
        "data": {
            "name": "imagefolder",
            "path": str(folder),
            "image_size": a.image_size,
            "mean": list(MEAN),
            "std": list(STD),
            "calib_size": a.calib,
            "val_size": a.val,
            "test_size": a.test,
            "workers": 2,
        },
        "space": {"methods": ["magnitude"], "granularity": ["unstructured"], "reconstruct": ["none"], "sparsity": [0.3, 0.6]},
        "recalibration": {"images": a.calib, "batch_size": 64},
        "objective": {"mode": "pareto"},
        "budget": {"trials": a.candidates},
        "actors": {"count": a.actors, "num_cpus": 1, "threads": 1},
        "measure": {"latency_repeats": 3, "test_accuracy": False, "collapse_plot": False, "eval_batch": 100},
    }


def child(spec: Path) -> None:
    """One search in this process; prints a JSON line of its figures."""
    import torch

    torch.set_num_threads(1)
    from mlflow.tracking import MlflowClient

    from search.config import parse_config
    from search.runner.driver import run_search

    cfg = parse_config(json.loads(spec.read_text()))
    t0 = time.monotonic()
    out = run_search(cfg, quiet=True)
    wall = time.monotonic() - t0
    runs = MlflowClient(out.tracking_uri).search_runs([MlflowClient(out.tracking_uri).get_experiment_by_name(out.experiment).experiment_id])
    actor_rss = [float(r.data.tags["info.peak_rss_mb"]) for r in runs if "info.peak_rss_mb" in r.data.tags]
    fig = {
        "candidates": out.evaluated,
        "failed": out.failed,
        "wall_s": round(wall, 1),
        "startup_s": round(wall - out.loop_s, 1),
        "data_s": round(out.data_s, 1),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "actor_peak_rss_mb": max(actor_rss) if actor_rss else None,
    }
    print("SCALE " + json.dumps(fig), flush=True)


def data_part(a: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunesearch-scale-") as tmp:
        t = Path(tmp)
        sizes = sorted(a.folders)
        t0 = time.monotonic()
        big = make_folder(t / f"folder{sizes[-1]}", sizes[-1])
        print(f"generated {sizes[-1]} JPEGs in {time.monotonic() - t0:.0f} s", flush=True)
        base = train_base(t / "base.pt", a.image_size)
        for n in sizes:
            folder = big if n == sizes[-1] else make_folder(t / f"folder{n}", n, link_from=big)
            spec = t / f"search{n}.json"
            spec.write_text(json.dumps(search_config(folder, base, t / f"run{n}", a)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(spec)], stdout=subprocess.PIPE, text=True, env=env
            )  # its log on our stderr
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SCALE ")]
            if proc.returncode or not line:
                raise SystemExit(f"search on {n} images failed (exit {proc.returncode}); its log is above")
            fig = json.loads(line[-1][6:])
            row = {"folder_images": n, "image_size": a.image_size, "calib_size": a.calib, "val_size": a.val, "test_size": a.test, **fig}
            print(row, flush=True)
            rows.append(row)
    return rows


def render(doc: dict[str, Any]) -> str:
    out = [
        "# Scale figures\n",
        f"Machine: {doc.get('machine', {}).get('cpu_model', '')}, {doc.get('machine', {}).get('logical_cpus', '')} logical CPUs.\n",
    ]
    for part in PARTS:
        rows = doc.get(part) or []
        out.append(f"\n## {part}\n")
        note = doc.get("notes", {}).get(part)
        if note:
            out.append(f"\n{note}\n")
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            out.append("\n" + md_table(keys, ([r.get(k) for k in keys] for r in rows)))
        else:
            out.append("\n(not measured yet)\n")
    return "".join(out)


def main() -> None:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--part", default="data")
    if pre.parse_known_args()[0].part == "reconstruction":  # its own flags: benchmarks/scale_reconstruction.py
        import scale_reconstruction

        return scale_reconstruction.main()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=PARTS, default="data")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--folders", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--note", default="", help="what this run's scale is, when it is not the full one")
    ap.add_argument(
        "--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared", help="shared assets (records part: ResNet-20, CIFAR-10)"
    )
    ap.add_argument("--recon-images", type=int, default=512, help="records part: reconstruction images of the ResNet-20 replay search")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json")
    a = ap.parse_args()
    if a.child:
        return child(a.child)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import common

    doc: dict[str, Any] = json.loads(a.out.read_text()) if a.out.exists() else {}
    doc = {**{p: [] for p in PARTS}, **doc}
    if a.part == "records":
        import scale_records

        doc[a.part] = scale_records.records_rows(a.shared, a.recon_images)
    else:
        doc[a.part] = data_part(a)
    doc.setdefault("machines", {})[a.part] = common.machine_info()
    doc["machine"] = common.machine_info()
    doc.setdefault("notes", {})[a.part] = a.note
    write_json(a.out, doc)
    write_text(a.out.with_suffix(".md"), render(doc))
    print(f"wrote {a.out} and {a.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
