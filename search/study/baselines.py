"""The baselines a new study starts from: every plain method of the space, at the target.

One trial per method x granularity x scope (x reconstruction, when the space offers
more than one), with the method's default knobs and no per-stage allocation; ``nm``
granularity gives one trial per N:M pattern of ``space.nm`` instead of one per scope
(a pattern prunes every row the same way whatever the scope). They are
enqueued before any sampled trial, so a search never returns a worse network than
the best plain method it contains, and the sampler explores around them.

Where a baseline sits:
- constrained mode: unstructured at ``min_sparsity`` (else ``1 - max_macs_ratio``, an
  estimate: effective MACs do not fall exactly with density), channel at
  ``max_macs_ratio`` (else ``1 - min_sparsity``), both ``MARGIN`` inside the
  constraint so that rounding to whole weights and channels keeps them feasible;
- pareto mode: unstructured at ``space.target_sparsity`` if set, else the middle of
  ``space.sparsity``; channel at the middle of ``space.macs_ratio``.
Every value is clamped into the space's range. Knobs without a default (hyperflows
``pressure``) take the middle of their range (geometric for log-scale knobs): no
fitted curve exists before the first candidates.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import TYPE_CHECKING, Any

from pipeline.pruning.methods import Knob, get_method
from search.study import encoding as enc
from search.study.space import nm_name, searched_knobs

if TYPE_CHECKING:
    import optuna

    from search.config import SearchConfig

log = logging.getLogger(__name__)
BASELINE_ATTR = "baseline"  # Optuna user attribute of a baseline trial; MLflow tag ``baseline`` = "1"
MARGIN = 1e-3  # fraction inside a constraint where baselines sit


def baseline_params(cfg: SearchConfig) -> list[dict[str, Any]]:
    """Optuna parameters of every baseline trial of ``cfg``, in the order they run.

    The names are exactly those ``search.study.space.suggest`` asks for; a choice with a single
    option is not a parameter and is left out.
    """
    space = cfg.space
    sparsity, macs_ratio = targets(cfg)
    out = []
    for name in space.methods:
        method = get_method(name)
        grans = [g for g in space.granularity if g in method.granularities]
        scopes: list[str] = [s for s in space.scope if s in method.scopes] or [method.scopes[0]]
        points = [(g, s, None) for g in grans if g != "nm" for s in scopes] + [("nm", scopes[0], nm) for nm in space.nm if "nm" in grans]
        for (gran, scope, nm), recon in itertools.product(points, space.reconstruct):
            p: dict[str, Any] = {}
            _choice(p, enc.METHOD, name, space.methods)
            _choice(p, enc.granularity_param(name), gran, grans)
            _choice(p, enc.scope_param(name), scope, scopes)
            if nm is not None:
                _choice(p, enc.NM, nm_name(nm), [nm_name(x) for x in space.nm])
            elif method.target == "sparsity" and gran == "unstructured":
                p[enc.TARGET_SPARSITY] = sparsity
            elif method.target == "sparsity":
                p[enc.TARGET_MACS_RATIO] = macs_ratio
            for knob_name in searched_knobs(space, name):
                p[enc.knob_param(name, knob_name)] = _knob_value(method.knobs[knob_name], space.knobs.get(name, {}).get(knob_name))
            if method.allocates and space.allocation and nm is None:
                p[enc.ALLOCATE] = False
            _choice(p, enc.RECONSTRUCT, recon, space.reconstruct)
            if recon == "lsq":
                p.update(_recon_baseline(cfg))
            out.append(p)
    return out


def targets(cfg: SearchConfig) -> tuple[float, float]:
    """(target sparsity, MACs ratio) of the baselines, clamped into the space's ranges."""
    space, o = cfg.space, cfg.objective
    if o.mode == "constrained":
        floor, cap = o.min_sparsity, o.max_macs_ratio  # each stands in for the other when missing
        if floor is None:
            assert cap is not None  # ObjectiveConfig: constrained mode sets at least one
            sparsity, macs = 1.0 - cap, cap - MARGIN
        else:
            sparsity, macs = floor + MARGIN, (cap - MARGIN if cap is not None else 1.0 - floor)
    else:
        sparsity = space.target_sparsity if space.target_sparsity is not None else sum(space.sparsity) / 2
        macs = sum(space.macs_ratio) / 2
    return _clamp(sparsity, space.sparsity), _clamp(macs, space.macs_ratio)


def enqueue_baselines(study: optuna.Study, cfg: SearchConfig) -> int:
    """Enqueue the baselines into a study that has no trial yet; returns how many.

    A study with trials (a resumed one, also when its baselines are still waiting) gets
    none. A budget below the number of baselines runs the first ``budget.trials`` of
    them; the others wait in the study and run first when it is resumed with more.
    """
    if study.get_trials(deepcopy=False):
        return 0
    params = baseline_params(cfg)
    for p in params:
        study.enqueue_trial(p, user_attrs={BASELINE_ATTR: True})
    if len(params) > cfg.budget.trials:
        log.warning(
            "budget.trials is %d but the space has %d baselines: only the first %d run now; "
            "the others run first when this search is resumed with a larger budget",
            cfg.budget.trials,
            len(params),
            cfg.budget.trials,
        )
    return len(params)


def _recon_baseline(cfg: SearchConfig) -> dict[str, Any]:
    """The ``reconstruction:`` section's settings as the searched ``recon.*`` parameters
    (the nearest choice where the space does not offer it)."""
    r, base = cfg.space.recon, cfg.reconstruction
    p: dict[str, Any] = {}
    if len(r.images) > 1:
        p[enc.recon_param("images")] = min(r.images, key=lambda i: abs(i - base.images))
    if r.ridge is not None and r.ridge[0] < r.ridge[1]:
        p[enc.recon_param("ridge")] = _clamp(base.ridge, r.ridge)
    if len(r.layers) > 1:
        p[enc.recon_param("layers")] = base.layers if base.layers in r.layers else r.layers[0]
    return p


def _choice(p: dict[str, Any], name: str, value: Any, choices: list) -> None:
    if len(choices) > 1:
        p[name] = value


def _knob_value(knob: Knob, rng: tuple[float, float] | None) -> float:
    low, high = rng if rng is not None else (knob.low, knob.high)
    if knob.default is not None:
        v = knob.default
    elif knob.log and low > 0:
        v = math.sqrt(low * high)
    else:
        v = (low + high) / 2
    v = _clamp(v, (low, high))
    return round(v) if knob.integer else v


def _clamp(v: float, rng: tuple[float, float]) -> float:
    return min(max(v, rng[0]), rng[1])
