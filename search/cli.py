"""The ``prunesearch`` command line."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from pipeline.errors import InputError

log = logging.getLogger("prunesearch")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input, 1 other failure)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not getattr(args, "verbose", False) else logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "ray", "optuna"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
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
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run the embedded default search (digits, local Ray, local MLflow and Optuna files)")
    d.add_argument("--run-dir", default="runs", help="run folder (default ./runs)")
    d.add_argument("--trials", type=_positive_int, default=24, help="candidates to evaluate in total (default 24)")
    d.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")
    d.set_defaults(func=_demo)

    r = sub.add_parser("run", help="run or resume the search described by a YAML config")
    r.add_argument("config", help="YAML file (see configs/)")
    r.add_argument("--run-dir", help="override run_dir")
    r.add_argument("--trials", type=_positive_int, help="override budget.trials")
    r.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar (for jobs)")
    r.set_defaults(func=_run)

    b = sub.add_parser("best", help="print the Pareto-best feasible candidates (accuracy vs effective MACs); exit 1 if none matches")
    _store_args(b)
    b.add_argument("--top", type=_positive_int, help="at most this many rows (default 10; with --all, every row)")
    b.add_argument(
        "--all", action="store_true", help="every candidate passing the filters, not only the Pareto front (and no --top limit unless given)"
    )
    b.add_argument("--sort", default="accuracy", help="METRIC[:asc|:desc], e.g. latency_ms:asc (default accuracy, descending)")
    b.add_argument("--max-macs", type=_positive_float, help="keep candidates with at most this many effective MACs")
    b.add_argument("--max-macs-ratio", type=_fraction, help="effective MACs at most this fraction of the dense model's")
    b.add_argument("--max-latency-ms", type=_positive_float, help="measured latency_ms at most this (per latency_batch images)")
    b.add_argument("--granularity", choices=["unstructured", "channel"], help="keep one granularity")
    b.add_argument(
        "--feasibility",
        choices=["feasible", "infeasible", "any"],
        default="feasible",
        help="candidates meeting the search's constraints (default), the others, or both",
    )
    b.add_argument("--min-accuracy", type=_fraction, help="keep candidates with at least this validation accuracy (fraction)")
    b.add_argument("--method", help="keep one method")
    b.add_argument("--min-sparsity", type=_fraction, help="weight sparsity at least (fraction)")
    b.add_argument("--max-sparsity", type=_fraction, help="weight sparsity at most (fraction)")
    b.add_argument("--format", choices=["table", "json", "parquet"], default="table")
    b.add_argument("-o", "--output", help="output file for --format parquet")
    b.set_defaults(func=_best)

    c = sub.add_parser("curves", help="print the power-law fits and the pressure predicted for a target sparsity")
    _store_args(c)
    c.add_argument("--target-sparsity", type=_fraction, help="weight sparsity to predict the pressure for (fraction)")
    c.set_defaults(func=_curves)

    e = sub.add_parser(
        "export", help="rebuild a recorded candidate, check its accuracy, write .pt / .pt2 / .json (/ .onnx), or log it as an MLflow model"
    )
    e.add_argument("run_id", help="the candidate's MLflow run id (see `prunesearch best`)")
    e.add_argument(
        "-o",
        "--output",
        help="output .pt file, relative to the run folder (absolute: anywhere); .pt2 (torch.export), .json (preprocessing) and .onnx go beside it",
    )
    e.add_argument("--onnx", action="store_true", help="also write FILE.onnx (needs: pip install 'prunesearch[onnx]')")
    e.add_argument("--log-model", action="store_true", help="log the rebuilt network as MLflow model runs:/RUN_ID/model (pt2 format)")
    e.add_argument("--register", metavar="NAME", help="log it and register it as a new version of MLflow model NAME")
    e.add_argument("--run-dir", default="runs", help="run folder whose MLflow store to read (default ./runs)")
    e.add_argument("--tracking-uri", help="MLflow tracking URI (overrides --run-dir)")
    e.add_argument("--allow-import", action="store_true", help="trust and import a model class named in the record (model 'import')")
    e.set_defaults(func=_export)

    st = sub.add_parser("stages", help="list the model's stages (the keys space.allocation accepts) and their prunable layers")
    st.add_argument("config", help="YAML file (see configs/)")
    st.set_defaults(func=_stages)

    u = sub.add_parser("ui", help="open the MLflow UI on a run folder's store (http://127.0.0.1:PORT)")
    u.add_argument("--run-dir", default="runs", help="run folder whose MLflow store to show (default ./runs)")
    u.add_argument("--tracking-uri", help="MLflow store URI (overrides --run-dir)")
    u.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    u.set_defaults(func=_ui)

    s = sub.add_parser("submit", help="submit the search of a YAML config to a Ray cluster through the Ray Jobs API")
    s.add_argument("config", help="YAML file; needs ray_address: auto (see configs/cluster.yaml)")
    s.add_argument("--address", help="the head's Jobs API, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS or $RAY_ADDRESS)")
    s.add_argument("--follow", action="store_true", help="stream the job's logs until it ends; exit 0 SUCCEEDED, 1 FAILED, 130 STOPPED")
    s.add_argument("--working-dir", default=".", help="the project folder uploaded as the job's working directory (default .)")
    s.add_argument("--exclude", action="append", default=[], help="extra path pattern not to upload (repeatable)")
    s.add_argument("--submission-id", help="job id to use instead of a generated one")
    s.set_defaults(func=_submit)
    return p


def _parse(text: str, cast: type, what: str):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _positive_int(text: str) -> int:
    value = _parse(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _finite(text: str) -> float:
    value = _parse(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs", help="run folder whose MLflow store to read (default ./runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (overrides --run-dir)")
    p.add_argument("--experiment", help="experiment (search name); default: the only search in the store")


def _store_hint(args: argparse.Namespace) -> str:
    where = args.tracking_uri or str(Path(args.run_dir).expanduser().resolve())
    return f"(read {where}; pass --run-dir DIR or --tracking-uri URI to read another store)"


def _hinted(args: argparse.Namespace, query_fn, *a, **kw):
    """``query_fn(*a, **kw)``; a ``QueryError`` (no such experiment, several searches) names the store read."""
    from search.query import QueryError

    try:
        return query_fn(*a, **kw)
    except QueryError as e:
        raise QueryError(f"{e} {_store_hint(args)}") from None


def _uri(args: argparse.Namespace) -> str:
    if args.tracking_uri:
        if args.tracking_uri.startswith(("http://", "https://")):
            from search.records import check_server

            check_server(args.tracking_uri)  # seconds, not MLflow's minutes of retries
        return args.tracking_uri
    db = Path(args.run_dir).expanduser().resolve() / "mlflow.db"
    if not db.exists():
        raise InputError(f"no MLflow store at {db}; run a search first or pass --run-dir / --tracking-uri")
    return f"sqlite:///{db}"


def _search(cfg, quiet: bool) -> int:
    from search.driver import run_search
    from search.query import best, format_table

    out = run_search(cfg, quiet=quiet)
    print(f"\n{out.evaluated} candidates evaluated ({out.failed} failed); {out.recorded_total} recorded in study {cfg.name!r}.")
    rows = best(out.tracking_uri, out.experiment, top=10)  # feasible ones: in constrained mode, those meeting the constraints
    if rows:
        print("\nPareto-best feasible candidates (accuracy on the validation split, MACs per image):")
        print(format_table(rows))
    else:
        print("\nNo candidate meets the objective's constraints yet (see `prunesearch best --feasibility any`).")
    if out.tracking_uri.startswith("sqlite:///"):
        from search.ui import ui_hint

        print(f"\nBrowse every candidate:  {ui_hint(cfg.run_path)}")
    return 130 if out.interrupted else 0


def _demo(args: argparse.Namespace) -> int:
    from search.config import parse_config

    cfg = parse_config({"run_dir": args.run_dir, "budget": {"trials": args.trials}})
    return _search(cfg, args.quiet)


def _run(args: argparse.Namespace) -> int:
    from search.config import load_config

    overrides: dict = {}
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    if args.trials is not None:
        overrides["budget"] = {"trials": args.trials}
    return _search(load_config(args.config, overrides), args.quiet)


def _best(args: argparse.Namespace) -> int:
    from search import query

    feasible = {"feasible": True, "infeasible": False, "any": None}[args.feasibility]
    rows = _hinted(
        args,
        query.best,
        _uri(args),
        args.experiment,
        args.top or (None if args.all else 10),
        args.max_macs,
        args.min_accuracy,
        args.method,
        args.min_sparsity,
        args.max_sparsity,
        args.max_macs_ratio,
        args.max_latency_ms,
        args.granularity,
        feasible,
        front=not args.all,
        sort=args.sort,
    )
    if not rows:
        what = "candidate" if args.all else "Pareto-front candidate"
        print(f"no {what} matches these filters (feasibility: {args.feasibility}); loosen them or add --all", file=sys.stderr)
        return 1
    if args.format == "json":
        print(query.to_json(rows))
    elif args.format == "parquet":
        if not args.output:
            raise InputError("--format parquet needs -o FILE")
        query.to_parquet(rows, args.output)
        print(f"wrote {len(rows)} rows to {args.output}")
    else:
        print(query.format_table(rows))
    return 0


def _curves(args: argparse.Namespace) -> int:
    from search import powerlaw
    from search.query import candidate_rows
    from search.report import fit_curves

    fits = fit_curves([r for r in _hinted(args, candidate_rows, _uri(args), args.experiment) if "accuracy" in r])
    if not fits:
        raise InputError(f"experiment {args.experiment!r} has too few candidates for a fit (need 3 of a kind)")
    for name, fit in fits.items():
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in fit.to_dict().items() if not k.startswith("cov")))
    if args.target_sparsity is not None:
        if "pressure" not in fits:
            raise InputError("no density-vs-pressure fit: the search has fewer than 3 candidates with a pressure knob")
        try:
            est = powerlaw.predict_pressure(fits["pressure"], 1.0 - args.target_sparsity)
        except ValueError as e:  # the fitted curve does not reach it
            raise InputError(f"--target-sparsity {args.target_sparsity}: {e}") from None
        print(
            f"pressure for sparsity {args.target_sparsity:.3f}: {est.gamma:.4g} "
            f"({est.level:.0%} interval {est.low:.4g} .. {est.high:.4g}{', extrapolated' if est.extrapolated else ''})"
        )
    return 0


def export_path(run_dir: str, output: str | None) -> Path | None:
    """Where ``export -o OUTPUT`` writes: a relative path inside the run folder (never
    outside it), an absolute one as given (taken as deliberate); None without ``-o``."""
    if output is None:
        return None
    p = Path(output).expanduser()
    if p.is_absolute():
        return p
    root = Path(run_dir).expanduser().resolve()
    full = (root / p).resolve()
    if not full.is_relative_to(root):
        raise InputError(f"-o {output}: a relative output path stays inside the run folder {root}; give an absolute path to write elsewhere")
    return full


def _export(args: argparse.Namespace) -> int:
    from search.export import export
    from search.query import QueryError, has_run

    output = export_path(args.run_dir, args.output)  # refused before the store is read
    if not has_run(_uri(args), args.run_id):
        raise QueryError(f"no candidate run {args.run_id!r} {_store_hint(args)}")
    out = export(_uri(args), args.run_id, output, allow_import=args.allow_import, onnx=args.onnx, log_model=args.log_model, register=args.register)
    print(f"rebuilt {args.run_id}: accuracy {out.rebuilt_accuracy:.4f} (recorded {out.recorded_accuracy:.4f})")
    if out.path:
        checked = ", ".join(f"{k} max |logit diff| {v:.1e}" for k, v in out.max_abs_diff.items())
        extra = f" and {out.onnx}" if out.onnx else ""
        print(f"wrote {out.path} (search.export.load_exported), {out.program} (torch.export.load), {out.preprocessing}{extra}; {checked}")
    if out.model_uri:
        reg = f"; registered as {args.register!r} version {out.registered_version}" if out.registered_version else ""
        print(f"logged MLflow model {out.model_uri} (mlflow.pytorch.load_model){reg}")
    return 0


def _stages(args: argparse.Namespace) -> int:
    from search.config import load_config
    from search.preflight import model_stages

    for stage, layers in model_stages(load_config(args.config)).items():
        print(f"{stage}: {len(layers)} prunable layer(s): {', '.join(layers)}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from search.ui import serve

    return serve(_uri(args), port=args.port)


def _submit(args: argparse.Namespace) -> int:
    from search.submit import submit

    return submit(args.config, args.address, args.working_dir, args.follow, args.exclude, args.submission_id)


if __name__ == "__main__":
    sys.exit(main())
