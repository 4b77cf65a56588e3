"""The ``prunesearch`` command line: the entry point and the argument table (what each
command does is in ``search.cli.commands``)."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any, Callable, Sequence

from pipeline.errors import InputError
from search.cli import commands
from search.cli.commands import export_path

__all__ = ["export_path", "main"]  # export_path: used by tests and callers as search.cli.parser.export_path

log = logging.getLogger("prunesearch")

#: how every verb's ``-o`` is resolved (``search.cli.commands.export_path``)
OUTPUT_RULE = "a relative path is inside the run folder (--run-dir), an absolute one is used as given"

#: two or three example command lines per verb, shown at the end of its --help
EXAMPLES: dict[str, list[str]] = {
    "demo": ["prunesearch demo", "prunesearch demo --trials 8 --run-dir runs/quick"],
    "run": ["prunesearch run configs/digits.yaml", "prunesearch run configs/digits.yaml --trials 80   # resume with a larger budget"],
    "init": ["prunesearch init                # example configs into ./configs", "prunesearch init my-configs"],
    "best": [
        "prunesearch best --experiment demo --top 5 --max-macs 5e5 --method magnitude",
        "prunesearch best --max-macs-ratio 0.5 --granularity channel --all --sort latency_ms",
        "prunesearch best --format parquet -o best.parquet    # writes runs/best.parquet",
    ],
    "curves": ["prunesearch curves --experiment demo", "prunesearch curves --experiment digits-space --target-sparsity 0.9"],
    "export": [
        "prunesearch export RUN_ID -o best.pt --onnx          # writes runs/best.pt, .pt2, .json, .onnx",
        "prunesearch export RUN_ID --log-model --register digits-best",
    ],
    "stages": ["prunesearch stages configs/digits.yaml", "prunesearch stages configs/resnet20_cifar10.yaml"],
    "ui": ["prunesearch ui", "prunesearch ui --run-dir runs/nb --port 5001"],
    "submit": [
        "prunesearch submit configs/cluster.yaml --address http://HEAD:8265 --follow",
        "prunesearch submit configs/cluster.yaml --exclude data/",
    ],
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input, 1 other failure)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not getattr(args, "verbose", False) else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "ray", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)  # its error log (a traceback) repeats what RecordError says
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # a reader that left (`| head`) shows here, inside the handler below, not at exit
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `prunesearch best | head`: the reader left; no traceback at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except InputError as e:  # the user's to fix: the message names it; no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment: a folder, a full disk, a file that cannot be written
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}; check the path, its permissions and free space", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunesearch", description="Search pruned subnetworks on Ray, record every candidate in MLflow.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    d = _command(sub, commands.demo, "run the embedded default search (digits, local Ray, local MLflow and Optuna files)")
    d.add_argument("--run-dir", default="runs", help="run folder (default ./runs)")
    d.add_argument("--trials", type=_positive_int, default=24, help="candidates to evaluate in total (default 24)")
    d.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")

    i = _command(sub, commands.init, "write the example configs (digits, ResNet-20, a cluster, your own model and data) into a folder")
    i.add_argument("folder", nargs="?", default="configs", help="where to write them (default ./configs); existing files are kept")

    r = _command(sub, commands.run, "run or resume the search described by a YAML config")
    r.add_argument("config", help="YAML file (see configs/)")
    r.add_argument("--run-dir", help="override run_dir")
    r.add_argument("--trials", type=_positive_int, help="override budget.trials")
    r.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar (for jobs)")

    b = _command(sub, commands.best, "print the Pareto-best feasible candidates (accuracy vs effective MACs); exit 1 if none matches")
    _store_args(b, experiment=True)
    b.add_argument("--top", type=_positive_int, help="at most this many rows (default 10; with --all, every row)")
    b.add_argument(
        "--all", action="store_true", help="every candidate passing the filters, not only the Pareto front (and no --top limit unless given)"
    )
    b.add_argument("--sort", default="accuracy", help="METRIC[:asc|:desc], e.g. latency_ms:asc (default accuracy, descending)")
    b.add_argument("--max-macs", type=_positive_float, help="keep candidates with at most this many effective MACs")
    b.add_argument("--max-macs-ratio", type=_fraction, help="effective MACs at most this fraction of the dense model's")
    b.add_argument("--max-latency-ms", type=_positive_float, help="measured latency_ms at most this (per latency_batch images)")
    b.add_argument("--granularity", metavar="{unstructured,channel,nm}", help="keep one granularity")
    b.add_argument(
        "--feasibility",
        choices=["feasible", "infeasible", "any"],
        default="feasible",
        help="candidates meeting the search's constraints (default), the others, or both",
    )
    b.add_argument(
        "--fidelity",
        choices=["full", "any"],
        default="full",
        help="candidates measured at full fidelity (default), or also those the trial pruner stopped at a cheap rung",
    )
    b.add_argument("--min-accuracy", type=_fraction, help="keep candidates with at least this validation accuracy (fraction)")
    b.add_argument("--method", help="keep one method")
    b.add_argument("--min-sparsity", type=_fraction, help="weight sparsity at least (fraction)")
    b.add_argument("--max-sparsity", type=_fraction, help="weight sparsity at most (fraction)")
    b.add_argument(
        "--format", choices=["table", "json", "parquet"], default="table", help="table (default) or json on stdout, or a parquet file (-o)"
    )
    b.add_argument("-o", "--output", help=f"output file for --format parquet; {OUTPUT_RULE}")

    c = _command(sub, commands.curves, "print the power-law fits and the pressure predicted for a target sparsity")
    _store_args(c, experiment=True)
    c.add_argument("--fidelity", choices=["full", "any"], default="full", help="fit full-fidelity candidates (default) or all of them")
    c.add_argument("--target-sparsity", type=_fraction, help="weight sparsity to predict the pressure for (fraction)")

    e = _command(
        sub, commands.export, "rebuild a recorded candidate, check its accuracy, write .pt / .pt2 / .json (/ .onnx), or log it as an MLflow model"
    )
    e.add_argument("run_id", help="the candidate's MLflow run id (see `prunesearch best`)")
    e.add_argument(
        "-o",
        "--output",
        help=f"output .pt file; {OUTPUT_RULE}; .pt2 (torch.export), .json (preprocessing) and .onnx go beside it",
    )
    e.add_argument("--force", action="store_true", help="replace output files that exist (default: refuse, naming them)")
    e.add_argument("--onnx", action="store_true", help="also write FILE.onnx (needs: pip install 'prunesearch[onnx]')")
    e.add_argument("--log-model", action="store_true", help="log the rebuilt network as MLflow model runs:/RUN_ID/model (pt2 format)")
    e.add_argument("--register", metavar="NAME", help="log it and register it as a new version of MLflow model NAME")
    _store_args(e, experiment=False)
    e.add_argument("--allow-import", action="store_true", help="trust and import a model class named in the record (model 'import')")

    st = _command(sub, commands.stages, "list the model's stages (the keys space.allocation accepts) and their prunable layers")
    st.add_argument("config", help="YAML file (see configs/)")

    u = _command(sub, commands.ui, "open the MLflow UI on a run folder's store (http://127.0.0.1:PORT)")
    _store_args(u, experiment=False, verb="show")
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")

    s = _command(sub, commands.submit, "submit the search of a YAML config to a Ray cluster through the Ray Jobs API")
    s.add_argument("config", help="YAML file; needs ray_address: auto (see configs/cluster.yaml)")
    s.add_argument("--address", help="the head's Jobs API, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)")
    s.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 0 SUCCEEDED, 1 FAILED, 130 STOPPED")
    s.add_argument("--working-dir", default=".", help="the project folder uploaded as the job's working directory (default .)")
    s.add_argument("--exclude", action="append", default=[], help="extra path pattern not to upload (repeatable)")
    s.add_argument("--submission-id", help="job id to use instead of a generated one")
    return p


def _command(sub: argparse._SubParsersAction, run: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
    """The subcommand named like its handler in ``search.cli.commands``, which ``main`` calls."""
    examples = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[run.__name__])
    p = sub.add_parser(run.__name__, help=help, description=help, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run)
    return p


def _version() -> str:
    """The installed distribution's version (the source tree's pyproject when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("prunesearch")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _store_args(p: argparse.ArgumentParser, experiment: bool, verb: str = "read") -> None:
    """The options that name the MLflow store a command reads (and the experiment in it)."""
    p.add_argument("--run-dir", default="runs", help=f"run folder whose MLflow store to {verb} (default ./runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides --run-dir)")
    if experiment:
        p.add_argument("--experiment", help="experiment (search name); default: the only search in the store")


def _number(cast: type, what: str, need: str, ok: Callable[[float], bool]) -> Callable[[str], Any]:
    """An argparse ``type``: the text as ``cast`` (``what``), finite and ``ok``; else an error
    saying what it must be (``need``)."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
        return value

    return parse


_positive_int = _number(int, "a whole number", "at least 1", lambda v: v >= 1)
_positive_float = _number(float, "a number", "> 0", lambda v: v > 0)
_fraction = _number(float, "a number", "a fraction in [0, 1]", lambda v: 0 <= v <= 1)


if __name__ == "__main__":
    sys.exit(main())
