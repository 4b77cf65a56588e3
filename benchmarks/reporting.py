"""Writing the benchmarks' reports: JSON files and Markdown tables, without torch, so a
report renders from its JSON alone (``peers_report.py``, ``search_report.py``)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf become null, tuples lists, paths strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table; ``align`` per column: 'l' or 'r' (default: l for the first)."""
    header = list(header)
    align = list(align) if align else ["l"] + ["r"] * (len(header) - 1)
    sep = [":---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string, '' for None."""
    return "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.{digits}f}"


def standard_error(p: float | None, n: int) -> float | None:
    """Binomial standard error of an accuracy ``p`` (a fraction) on ``n`` images; None for None."""
    return None if p is None else math.sqrt(max(p * (1 - p), 0.0) / n)


def read_json(path: Path, flag: str) -> dict[str, Any]:
    """The JSON object in ``path``; a clear exit naming ``flag`` when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{flag} {path}: cannot read it as JSON ({e})") from None


def render_cli(name: str, markdown: Callable[[dict[str, Any]], str], description: str) -> None:
    """The command line of a report script: ``results/NAME.json`` (``--json``) rendered by
    ``markdown`` into ``NAME.md`` beside it (``--out``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--json", type=Path, default=RESULTS_DIR / f"{name}.json", help="the run's figures (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help=f"the Markdown file (default: {name}.md beside the JSON)")
    args = ap.parse_args()
    out = args.out or args.json.with_name(f"{name}.md")
    write_text(out, markdown(read_json(args.json, "--json")))
    print(f"wrote {out}")
