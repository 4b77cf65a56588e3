"""Running a model in eval mode for a while without changing what the caller set."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; every submodule's own training flag is
    restored after (not just the root's: a caller may hold some modules in train mode,
    e.g. BatchNorm layers gathering statistics). Yields ``model``."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
