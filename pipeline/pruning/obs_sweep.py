"""The OBS block sweep of one layer (SparseGPT's blocks, exact OBS inside a block): the math
behind the ``obs`` method's unstructured and N:M masks (``pipeline.pruning.methods.obs``
says why this algorithm and what it was measured against).

Shapes: rows (G, o, d) float64 (G groups of a grouped conv, o output rows, d inputs per
row with a bias column last when the layer has one), X^T X (G, d, d).
"""

from __future__ import annotations

import torch

__all__ = ["sweep"]

_CHUNK_BYTES = 64 * 2**20  # memory for one chunk of rows' group updates
_ROUNDS = 4  # a block's removals are chosen in this many greedy rounds


def sweep(
    rows: torch.Tensor, h: torch.Tensor, width: int, damp: float, block: int, remove: int | None, nm: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SparseGPT's OBS column sweep of one layer.

    Args:
        rows: (G, o, d) float64 starting weights, the first ``width`` columns prunable
            (a bias column after them is only updated).
        h: (G, d, d) X^T X of the same columns.
        damp: lambda as a fraction of the mean diagonal over the prunable columns.
        block: columns per lazy-update block (rounded up to a multiple of M for N:M).
        remove: weights to remove from the layer (unstructured), or None with ``nm``.
        nm: (N, M): keep N of every M consecutive columns of each row.

    Returns:
        Rows (G, o, d) with the removed weights exactly 0, and the (G * o, width) kept mask;
        (rows, None) when ``nm`` has no form for ``width`` (not a multiple of M).
    """
    if nm is not None and width % nm[1]:
        return rows, None
    if nm is not None:
        block = -(-block // nm[1]) * nm[1]
    g, o, d = rows.shape
    out, masks = rows.clone(), []
    per_group = [None] * g if remove is None else _spread(remove, [o * width] * g)
    for gi in range(g):
        w, mask = _sweep_one(out[gi], h[gi], width, damp, block, per_group[gi], nm)
        out[gi] = w
        masks.append(mask)
    return out, torch.cat(masks)


def _sweep_one(w: torch.Tensor, h: torch.Tensor, width: int, damp: float, block: int, remove: int | None, nm) -> tuple[torch.Tensor, torch.Tensor]:
    """One group's rows (o, d) and X^T X (d, d): see ``sweep``."""
    w, h = w.clone(), h.clone()
    diag = torch.diagonal(h)
    dead = diag == 0  # inputs that are always zero: their weights do nothing
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    diag.add_(damp * float(diag[:width].mean()))
    # H^-1 = U^T U; the inverse of H over the columns from i on is U[i:, i:]^T U[i:, i:]
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    keep = torch.ones(w.shape[0], width, dtype=torch.bool)
    budget = None if remove is None else _spread(remove, [min(block, width - i) * w.shape[0] for i in range(0, width, block)])
    for bi, i1 in enumerate(range(0, width, block)):
        i2 = min(i1 + block, width)
        ut = u[i1:, i1:]
        hinv = ut.t() @ ut[:, : i2 - i1]  # (d - i1, block): the block's columns of that inverse
        start, removed = w[:, i1:].clone(), torch.zeros(w.shape[0], i2 - i1, dtype=torch.bool)
        rounds = [1] * (nm[1] - nm[0]) if nm is not None else [k for k in _spread(budget[bi] if budget else 0, [1] * _ROUNDS) if k]
        for k in rounds:
            sal = w[:, i1:i2] ** 2 / _conditional_diag(hinv[: i2 - i1], removed)  # OBS cost of each weight now
            sal[removed] = torch.inf
            if nm is None:
                removed.view(-1)[torch.topk(sal.reshape(-1), k, largest=False).indices] = True
            else:
                groups = sal.reshape(sal.shape[0], -1, nm[1])
                lowest = torch.topk(groups, k, dim=2, largest=False).indices
                removed = removed.reshape(groups.shape).scatter(2, lowest, True).reshape(sal.shape)
            w[:, i1:] = _compensate(start, hinv, removed)  # the joint update of everything removed so far
        keep[:, i1:i2] = ~removed
    return w, keep


def _padded(removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's removed columns first, padded to the longest row: indices (o, k) and
    validity (o, k) float64 (0 on padding)."""
    k = max(int(removed.sum(dim=1).max()), 1)
    idx = torch.sort(removed.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
    return idx, torch.gather(removed, 1, idx).double()


def _masked_block(hbb: torch.Tensor, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per row, Hinv[Q, Q] of its removed set (identity on the padding): (o, k, k)."""
    return hbb[idx[:, :, None], idx[:, None, :]] * v[:, :, None] * v[:, None, :] + torch.diag_embed(1 - v)


def _conditional_diag(hbb: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Per row, the diagonal (o, b) of the inverse Hessian once that row's ``removed`` columns
    are fixed at 0: Hinv_jj - Hinv[j, Q] Hinv[Q, Q]^-1 Hinv[Q, j]; ``hbb`` (b, b) is Hinv
    over the block."""
    base = torch.diagonal(hbb).expand(removed.shape).clone()
    if not bool(removed.any()):
        return base
    idx, v = _padded(removed)
    chol = torch.linalg.cholesky(_masked_block(hbb, idx, v))
    z = torch.linalg.solve_triangular(chol, hbb[idx] * v[:, :, None], upper=False)  # (o, k, b)
    return (base - z.square().sum(dim=1)).clamp_min(1e-30)


def _compensate(w: torch.Tensor, hinv: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Rows ``w`` (o, n) with each row's ``removed`` (o, b) weights of the first b columns set
    to 0 and the others updated by the OBS group update dw = -Hinv[:, Q] Hinv[Q, Q]^-1 w_Q,
    ``hinv`` (n, b) the first b columns of the inverse Hessian over the n columns."""
    if not bool(removed.any()):
        return w.clone()
    out = w.clone()
    n, b = hinv.shape
    idx, v = _padded(removed)
    step = max(1, _CHUNK_BYTES // (n * idx.shape[1] * 8))
    for r in range(0, w.shape[0], step):
        i, vi = idx[r : r + step], v[r : r + step]
        sol = torch.linalg.solve(_masked_block(hinv[:b], i, vi), torch.gather(w[r : r + step], 1, i) * vi)
        out[r : r + step] -= torch.einsum("jok,ok->oj", hinv[:, i], sol)
    out[:, :b][removed] = 0.0  # exactly
    return out


def _spread(total: int, sizes: list[int]) -> list[int]:
    """``total`` split over parts of ``sizes`` in proportion, exact in sum (cumulative rounding)."""
    cum, out, acc = 0, [], 0
    whole = sum(sizes)
    for s in sizes:
        acc += s
        nxt = round(total * acc / whole)
        out.append(nxt - cum)
        cum = nxt
    return out
