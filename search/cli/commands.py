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
    from search.records.store import check_store

    if args.tracking_uri:
        if args.tracking_uri.startswith(("http://", "https://")):
            from search.records.runs import check_server

            check_server(args.tracking_uri)  # seconds, not MLflow's minutes of retries
        if args.tracking_uri.startswith("sqlite:///"):
            check_store(Path(args.tracking_uri.removeprefix("sqlite:///")))
        return args.tracking_uri
    from search.config import local_store

    db = local_store(args.run_dir)
    if not db.exists():
        raise InputError(f"no MLflow store at {db}; run a search first or pass --run-dir / --tracking-uri")
    check_store(db)  # read-only: MLflow would create tables in an empty file, or migrate a partial one
    return f"sqlite:///{db}"


def _search(cfg, quiet: bool) -> int:
    from search.records.query import best, format_table
    from search.runner.driver import run_search

    out = run_search(cfg, quiet=quiet)
    print(f"\n{out.evaluated} candidates evaluated ({out.failed} failed); {out.recorded_total} recorded in study {cfg.name!r}.")
    rows = best(out.tracking_uri, out.experiment, top=10)  # feasible ones: in constrained mode, those meeting the constraints
    if rows:
        print(
            "\nPareto-best feasible candidates (accuracy: validation split, used for selection; test_accuracy: held-out test split, reported only):"
        )
        print(format_table(rows))
    else:
        print("\nNo candidate meets the objective's constraints yet (see `prunesearch best --feasibility any`).")
    for line in next_steps(cfg, out, rows[0]["run_id"] if rows else None):
        print(line)
    return 130 if out.interrupted else 0


def next_steps(cfg, out, top_run: str | None) -> list[str]:
    """What to do after a search: the export command for the top candidate, where the
    plots are, the other queries and the UI (commands spelled as this process was started)."""
    import shlex

    from search.cli.ui import cli_prog, ui_hint

    prog, where = cli_prog(), f"--run-dir {shlex.quote(str(cfg.run_path))} --experiment {cfg.experiment}"
    lines = ["\nNext:"]
    if top_run:
        lines.append(f"  export the top candidate:  {prog} export {top_run} -o best.pt --onnx --run-dir {shlex.quote(str(cfg.run_path))}")
        lines.append(f"                             (writes {cfg.run_path / 'best.pt'}, .pt2, .json, .onnx)")
    lines.append(f"  query the candidates:      {prog} best {where} --top 5 --max-macs-ratio 0.5")
    arts = _parent_artifacts(out)
    if arts:
        lines.append(f"  plots and the front:       {arts}/ (population.png, recalibration.png, pareto.parquet; per candidate bn_variance.png)")
    if out.tracking_uri.startswith("sqlite:///"):
        lines.append(f"  browse every candidate:    {ui_hint(cfg.run_path)}")
    return lines


def _parent_artifacts(out) -> str | None:
    """The parent run's artifact folder when it is a local path, else None."""
    from urllib.parse import unquote, urlparse

    from mlflow.tracking import MlflowClient

    uri = MlflowClient(out.tracking_uri).get_run(out.parent_run_id).info.artifact_uri
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("file", "") else None


def demo(args: argparse.Namespace) -> int:
    """``prunesearch demo``: the embedded default search; exit 130 if interrupted."""
    from search.config import parse_config

    cfg = parse_config({"run_dir": args.run_dir, "budget": {"trials": args.trials}})
    return _search(cfg, args.quiet)


def init(args: argparse.Namespace) -> int:
    """``prunesearch init [FOLDER]``: the example configs shipped with the package, written
    into FOLDER (default ./configs); a file already there is kept, not overwritten."""
    from importlib.resources import files

    dest = Path(args.folder).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(files("search.examples").iterdir(), key=lambda f: f.name):
        if not src.name.endswith(".yaml"):
            continue
        target = dest / src.name
        if target.exists():
            print(f"kept {target} (exists)")
            continue
        target.write_text(src.read_text())
        print(f"wrote {target}")
    print(f"next: prunesearch run {dest / 'digits.yaml'}   (own_model.yaml: your model and images)")
    return 0


def run(args: argparse.Namespace) -> int:
    """``prunesearch run CONFIG``: run or resume the search of a YAML config."""
    from search.config import load_config

    overrides: dict = {}
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    if args.trials is not None:
        overrides["budget"] = {"trials": args.trials}
    return _search(load_config(args.config, overrides), args.quiet)


def known_name(flag: str, value: str, names: list[str]) -> str:
    """``value`` if it is one of ``names``; else an ``InputError`` listing them and the closest."""
    if value in names:
        return value
    import difflib

    close = difflib.get_close_matches(value, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise InputError(f"{flag} {value[:60]!r}: no such name; valid: {', '.join(names)}{hint}")


def best(args: argparse.Namespace) -> int:
    """``prunesearch best``: the candidates passing the filters; exit 1 if none does."""
    from typing import get_args

    from pipeline.pruning.methods import list_methods
    from pipeline.spec import Granularity
    from search.records import query

    if args.method is not None:
        known_name("--method", args.method, list_methods())
    if args.granularity is not None:
        known_name("--granularity", args.granularity, list(get_args(Granularity)))
    output = export_path(args.run_dir, args.output)  # one rule for -o across verbs
    if args.format == "parquet" and output is None:
        raise InputError("--format parquet needs -o FILE")
    feasible = {"feasible": True, "infeasible": False, "any": None}[args.feasibility]
    uri = _uri(args)
    rows = _hinted(
        args,
        query.best,
        uri,
        args.experiment,
        args.top or (None if args.all else 10),
        feasible=feasible,
        **{name: getattr(args, name) for name in query.FILTERS},
        front=not args.all,
        sort=args.sort,
        fidelity=args.fidelity,
    )
    if not rows:
        print(_why_nothing(args, uri), file=sys.stderr)
        return 1
    if args.format == "json":
        print(query.to_json(rows))
    elif args.format == "parquet":
        assert output is not None
        output.parent.mkdir(parents=True, exist_ok=True)
        query.to_parquet(rows, str(output))
        print(f"wrote {len(rows)} rows to {output}")
    else:
        print(query.format_table(rows))
    return 0


def _why_nothing(args: argparse.Namespace, uri: str) -> str:
    """Why ``best`` found nothing: a method or granularity this search never recorded, or filters too tight."""
    from search.records.query import candidate_rows

    rows = candidate_rows(uri, args.experiment)
    for key, plural in (("method", "methods"), ("granularity", "granularities")):
        want = getattr(args, key)
        present = sorted({r[key] for r in rows})
        if want is not None and want not in present:
            return f"no candidate matches: this search has no {want} candidate at all (its {plural}: {', '.join(present) or 'none'})"
    if args.method and args.granularity and not any(r["method"] == args.method and r["granularity"] == args.granularity for r in rows):
        return f"no candidate matches: this search has no {args.method}/{args.granularity} candidate at all"
    what = "candidate" if args.all else "Pareto-front candidate"
    hint = "loosen them" if args.all else "loosen them or add --all"
    return f"no {what} matches these filters (feasibility: {args.feasibility}); {hint}"


def curves(args: argparse.Namespace) -> int:
    """``prunesearch curves``: the power-law fits, and each steered knob's value (hyperflows' pressure) for ``--target-sparsity``."""
    from search.records.query import at_fidelity, candidate_rows
    from search.records.report import fit_curves
    from search.study import powerlaw

    fits = fit_curves([r for r in at_fidelity(_hinted(args, candidate_rows, _uri(args), args.experiment), args.fidelity) if "accuracy" in r])
    if not fits:
        raise InputError(f"experiment {args.experiment!r} has too few candidates for a fit (need 3 of a kind)")
    for name, fit in fits.items():
        print(f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in fit.to_dict().items() if not k.startswith("cov")))
    if args.target_sparsity is not None:
        density = 1.0 - args.target_sparsity
        acc = fits.get("accuracy")
        if isinstance(acc, powerlaw.AccuracyFit):
            predicted = float(acc.accuracy(density))
            print(
                f"accuracy at sparsity {args.target_sparsity:.3f} (unstructured): {predicted:.4f} "
                f"from 1 - acc = {acc.e0:.4g} + {acc.k:.4g} * D^-{acc.b:.4g}, D = {density:.3f} (fraction of prunable weights kept)"
            )
        steered = {k: f for k, f in fits.items() if isinstance(f, powerlaw.PressureFit)}
        if not steered:
            print(
                "no pressure can be predicted: no density fit of a steered knob (needs 3 candidates of a method with one, e.g. hyperflows' pressure)"
            )
        for knob, fit in steered.items():
            try:
                est = powerlaw.predict_pressure(fit, density)
            except ValueError as e:  # the fitted curve does not reach it
                print(f"{knob} for sparsity {args.target_sparsity:.3f}: not predicted ({e})")
                continue
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
    from search.export.formats import check_model_name, check_output
    from search.export.formats import export as rebuild
    from search.records.query import QueryError, has_run

    output = export_path(args.run_dir, args.output)  # refused before the store is read
    if args.register is not None:
        check_model_name(args.register)
    if output is not None:
        check_output(output, args.onnx, args.force)
    if not has_run(_uri(args), args.run_id):
        raise QueryError(f"no candidate run {args.run_id!r} {_store_hint(args)}")
    out = rebuild(
        _uri(args),
        args.run_id,
        output,
        allow_import=args.allow_import,
        onnx=args.onnx,
        log_model=args.log_model,
        register=args.register,
        force=args.force,
    )
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
