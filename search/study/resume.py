"""What a resumed search may change.

The first run that passes preflight stores its config in the run folder
(``RUN_DIR/search-NAME.config.json``). A later run of the same search compares its
config with it before any work starts: fields the recorded candidates depend on (data,
model, space, recalibration, objective, ...) must be equal, or the run is refused with
the list of differing fields; fields in ``SAFE`` (how long and on what the search
runs) may change, and each change is logged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from search.config import ConfigError, SearchConfig
from search.study.fingerprint import changes, fingerprints, input_files

log = logging.getLogger(__name__)

#: dotted field prefixes a resume may change: budget, resources, how latency is sampled,
#: and where the folder and cluster are (a copied run folder has another run_dir)
SAFE = ("budget", "actors", "measure.latency_repeats", "measure.latency_budget_s", "measure.collapse_plot", "ray_address", "run_dir", "log_models")


def recorded_config_path(cfg: SearchConfig) -> Path:
    return cfg.inside_run_dir(f"search-{cfg.name}.config.json")


def check_resume(cfg: SearchConfig) -> None:
    """Refuse a changed config for an existing search (``ConfigError`` listing the fields);
    log the safe changes. A search seen for the first time passes."""
    path = recorded_config_path(cfg)
    if not path.exists():
        return
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{path} cannot be read ({e}); restore it from a backup, or delete it to accept the current config as the recorded one"
        ) from None
    recorded = _flatten(_with_defaults(raw))
    current = _flatten(cfg.model_dump(mode="json"))
    changed = sorted(k for k in recorded.keys() | current.keys() if recorded.get(k, _MISSING) != current.get(k, _MISSING))
    unsafe = [k for k in changed if not _safe(k)]
    if unsafe:
        lines = "\n  ".join(f"{k}: {_show(recorded.get(k, _MISSING))} -> {_show(current.get(k, _MISSING))}" for k in unsafe[:20])
        raise ConfigError(
            f"search {cfg.name!r} in {cfg.run_path} was started with another config; its recorded candidates depend on:\n  {lines}\n"
            f"put the recorded values back (see {path}), or start a new search (another name or run_dir)"
        )
    for k in changed:
        log.info("resume: %s changed from %s to %s", k, _show(recorded.get(k, _MISSING)), _show(current.get(k, _MISSING)))
    _check_inputs(cfg)


def recorded_inputs_path(cfg: SearchConfig) -> Path:
    return cfg.inside_run_dir(f"search-{cfg.name}.inputs.json")


def current_inputs(cfg: SearchConfig) -> dict[str, dict[str, Any]]:
    """Fingerprints of ``cfg``'s input files now (``search.study.fingerprint``)."""
    from search.runner.basemodel import cache_path

    return fingerprints(input_files(cfg, None if cfg.model.checkpoint else cache_path(cfg)), cfg.run_path)


def _check_inputs(cfg: SearchConfig) -> None:
    path = recorded_inputs_path(cfg)
    if not path.exists():  # recorded by a version without fingerprints: recorded from now on
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); restore it, or delete it to accept the current input files as the recorded ones") from None
    lines = changes(recorded, current_inputs(cfg))
    if lines:
        raise ConfigError(
            f"search {cfg.name!r} in {cfg.run_path} was scored on other input files; its recorded candidates would be mixed "
            "with results on the new ones:\n  "
            + "\n  ".join(lines)
            + "\nput the original files back, or start a new search (another name or run_dir)"
        )


def record_config(cfg: SearchConfig) -> None:
    """Store ``cfg`` as the search's recorded config, and its input files' fingerprints
    (after preflight passed, so the base model is cached), atomically."""
    for path, text in ((recorded_config_path(cfg), cfg.model_dump_json(indent=2)), (recorded_inputs_path(cfg), inputs_json(cfg))):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def inputs_json(cfg: SearchConfig) -> str:
    """The input fingerprints as JSON (the run folder's record, and the parent run's ``inputs.json``)."""
    return json.dumps(current_inputs(cfg), indent=2)


_MISSING = object()


def _with_defaults(raw: Any) -> Any:
    """The recorded config with the fields added to prunesearch since it was written at
    their defaults (an upgrade alone changes no candidate); as recorded if it no longer
    validates (the comparison then names what differs)."""
    try:
        return SearchConfig.model_validate(raw).model_dump(mode="json")
    except ValueError:
        return raw


def _safe(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in SAFE)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def _show(value: Any) -> str:
    text = "(unset)" if value is _MISSING else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
