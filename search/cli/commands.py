"""What each ``prunesearch`` command does, one function per command (``search.cli.parser`` holds
the argument table and the entry point). Heavy imports (Ray, MLflow, torch) stay inside
the functions, so ``prunesearch --help`` and argument errors come back at once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import InputError


def _store_hint(args: argparse.Namespace) -> str:
    where = args.tracking_uri or str(Path(args.run_dir).expanduser().resolve())
    return f"(read {where}; pass --run-dir DIR or --tracking-uri URI to read another store)"


def _hinted(args: argparse.Namespace, query_fn, *a, **kw):
    """``query_fn(*a, **kw)``; a ``QueryError`` (no such experiment, several searches) names the store read."""
    from search.records.query import QueryError

    try:
        return query_fn(*a, **kw)
    except QueryError as e:
        raise QueryError(f"{e} {_store_hint(args)}") from None


def _uri(args: argparse.Namespace) -> str:
    if args.tracking_uri:
        if args.tracking_uri.startswith(("http://", "https://")):
            from search.records.runs import check_server

            check_server(args.tracking_uri)  # seconds, not MLflow's minutes of retries
        return args.tracking_uri
    from search.config import local_store

    db = local_store(args.run_dir)
    if not db.exists():
        raise InputError(f"no MLflow store at {db}; run a search first or pass --run-dir / --tracking-uri")
    return f"sqlite:///{db}"


def _search(cfg, quiet: bool) -> int:
    from search.records.query import best, format_table
    from search.runner.driver import run_search

    out = run_search(cfg, quiet=quiet)
    print(f"\n{out.evaluated} candidates evaluated ({out.failed} failed); {out.recorded_total} recorded in study {cfg.name!r}.")
    rows = best(out.tracking_uri, out.experiment, top=10)  # feasible ones: in constrained mode, those meeting the constraints
    if rows:
        print("\nPareto-best feasible candidates (accuracy on the validation split, MACs per image):")
        print(format_table(rows))
    else:
        print("\nNo candidate meets the objective's constraints yet (see `prunesearch best --feasibility any`).")
    if out.tracking_uri.startswith("sqlite:///"):
        from search.cli.ui import ui_hint

        print(f"\nBrowse every candidate:  {ui_hint(cfg.run_path)}")
    return 130 if out.interrupted else 0


def demo(args: argparse.Namespace) -> int:
    """``prunesearch demo``: the embedded default search; exit 130 if interrupted."""
    from search.config import parse_config

    cfg = parse_config({"run_dir": args.run_dir, "budget": {"trials": args.trials}})
    return _search(cfg, args.quiet)


def run(args: argparse.Namespace) -> int:
    """``prunesearch run CONFIG``: run or resume the search of a YAML config."""
    from search.config import load_config

    overrides: dict = {}
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    if args.trials is not None:
        overrides["budget"] = {"trials": args.trials}
    return _search(load_config(args.config, overrides), args.quiet)


def best(args: argparse.Namespace) -> int:
    """``prunesearch best``: the candidates passing the filters; exit 1 if none does."""
    from search.records import query

    feasible = {"feasible": True, "infeasible": False, "any": None}[args.feasibility]
    rows = _hinted(
        args,
        query.best,
        _uri(args),
        args.experiment,
        args.top or (None if args.all else 10),
        feasible=feasible,
        **{name: getattr(args, name) for name in query.FILTERS},
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


def curves(args: argparse.Namespace) -> int:
    """``prunesearch curves``: the power-law fits, and each steered knob's value (hyperflows' pressure) for ``--target-sparsity``."""
    from search.records.query import candidate_rows
    from search.records.report import fit_curves
    from search.study import powerlaw

    fits = fit_curves([r for r in _hinted(args, candidate_rows, _uri(args), args.experiment) if "accuracy" in r])
    if not fits:
        raise InputError(f"experiment {args.experiment!r} has too few candidates for a fit (need 3 of a kind)")
    for name, fit in fits.items():
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in fit.to_dict().items() if not k.startswith("cov")))
    if args.target_sparsity is not None:
        steered = {k: f for k, f in fits.items() if isinstance(f, powerlaw.PressureFit)}
        if not steered:
            raise InputError(
                "no density fit of a steered knob: the search has fewer than 3 candidates of a method with one (e.g. hyperflows' pressure)"
            )
        for knob, fit in steered.items():
            try:
                est = powerlaw.predict_pressure(fit, 1.0 - args.target_sparsity)
            except ValueError as e:  # the fitted curve does not reach it
                raise InputError(f"--target-sparsity {args.target_sparsity}: {e}") from None
            print(
                f"{knob} for sparsity {args.target_sparsity:.3f}: {est.gamma:.4g} "
                f"({est.level:.0%} interval {est.low:.4g} .. {est.high:.4g}{', extrapolated' if est.extrapolated else ''})"
            )
    return 0


def export_path(run_dir: str, output: str | None) -> Path | None:
    """Where ``export -o OUTPUT`` writes: a relative path inside the run folder (never
    outside it), an absolute one as given (taken as deliberate); None without ``-o``."""
    if output is None:
        return None
    from search.config import inside_folder

    return inside_folder(Path(run_dir).expanduser().resolve(), output, "-o")


def export(args: argparse.Namespace) -> int:
    """``prunesearch export RUN_ID``: rebuild a recorded candidate, verify it, write or log it."""
    from search.export.formats import export as rebuild
    from search.records.query import QueryError, has_run

    output = export_path(args.run_dir, args.output)  # refused before the store is read
    if not has_run(_uri(args), args.run_id):
        raise QueryError(f"no candidate run {args.run_id!r} {_store_hint(args)}")
    out = rebuild(_uri(args), args.run_id, output, allow_import=args.allow_import, onnx=args.onnx, log_model=args.log_model, register=args.register)
    print(f"rebuilt {args.run_id}: accuracy {out.rebuilt_accuracy:.4f} (recorded {out.recorded_accuracy:.4f})")
    if out.path:
        checked = ", ".join(f"{k} max |logit diff| {v:.1e}" for k, v in out.max_abs_diff.items())
        extra = f" and {out.onnx}" if out.onnx else ""
        print(f"wrote {out.path} (search.export.formats.load_exported), {out.program} (torch.export.load), {out.preprocessing}{extra}; {checked}")
    if out.model_uri:
        reg = f"; registered as {args.register!r} version {out.registered_version}" if out.registered_version else ""
        print(f"logged MLflow model {out.model_uri} (mlflow.pytorch.load_model){reg}")
    return 0


def stages(args: argparse.Namespace) -> int:
    """``prunesearch stages CONFIG``: the stage names ``space.allocation`` accepts."""
    from search.config import load_config
    from search.runner.preflight import model_stages

    for stage, layers in model_stages(load_config(args.config)).items():
        print(f"{stage}: {len(layers)} prunable layer(s): {', '.join(layers)}")
    return 0


def ui(args: argparse.Namespace) -> int:
    """``prunesearch ui``: the MLflow UI on the store, on 127.0.0.1."""
    from search.cli.ui import serve

    return serve(_uri(args), port=args.port)


def submit(args: argparse.Namespace) -> int:
    """``prunesearch submit CONFIG``: the search as a Ray job."""
    from search.cluster.submit import submit

    return submit(args.config, args.address, args.working_dir, args.follow, args.exclude, args.submission_id)
