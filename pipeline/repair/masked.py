"""Masked ridge least squares for every output row of a layer at once.

Each row r of a layer with kept weights K_r minimises ||X_K w_K - y_r||^2 (+ ridge), i.e.
solves H_KK w_K = b_K. Factorising each row's kept block costs k^3/3 flops per row and
one LAPACK call per row; here the rows share one factorisation of the damped H:

1. the unconstrained solution W* = H^-1 B (one Cholesky per layer and group);
2. the OBS pass of SparseGPT (Frantar & Alistarh 2023) with the mask fixed: columns in
   order, each masked weight set to zero and its error compensated on the later columns
   through the upper Cholesky factor of H^-1, in blocks of ``_BLOCK`` columns with the
   rows batched (one (o, block) x (block, d) product per block);
3. preconditioned conjugate gradients on the masked system, all rows batched (one
   (o, d) x (d, d) product per iteration), from the OBS solution, until an iteration
   lowers the layer's relative squared error ||Y - XW||^2 / ||Y||^2 by less than ``tol``
   (default ``TOL``): the masked least-squares solution to that tolerance, so zeros stay
   zero and the layer error is the per-row factorisation's to within ``tol``.

Everything runs on the statistics' device in float64 (the d x d systems are small next
to the X^T X products, and the ridge leaves them conditioned up to about 1e5).
"""

from __future__ import annotations

import torch

_BLOCK = 128  # columns per lazy OBS update
TOL = 1e-7  # change of the relative layer error at which conjugate gradients stop
_MAX_ITERS = 40  # a cap for rank-deficient layers (fewer rows than inputs), where CG converges slowly


def spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve batched symmetric positive (semi)definite systems; Cholesky, else least squares."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info.max()) == 0:
        return torch.cholesky_solve(b, chol)
    return torch.linalg.lstsq(a, b).solution  # singular (ridge 0 with dead inputs): minimum-norm


def masked_solve(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, yy: float, tol: float = TOL) -> torch.Tensor:
    """Rows (G, o, d) minimising w a w^T - 2 w b under ``mask`` (G, o, d) bool, masked-out
    entries exactly 0. ``a``: (G, d, d) damped H, ``b``: (G, d, o) X^T Y, float64;
    ``yy``: the sum of squared targets (the scale of the layer error)."""
    m = mask.to(a.dtype)
    w = _obs_pass(a, b, mask) * m
    w = _pcg(a, b.transpose(1, 2) * m, m, w, tol * max(yy, 1e-300))
    if not bool(torch.isfinite(w).all()):  # a singular H (ridge 0, too few images): solve row by row
        w = _rows_lstsq(a, b, mask)
    return w


def _rows_lstsq(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's masked subsystem by least squares (minimum norm where singular): the slow,
    always-finite path for a singular H."""
    w = torch.zeros(mask.shape, dtype=a.dtype, device=a.device)
    for g in range(mask.shape[0]):
        for r in range(mask.shape[1]):
            idx = mask[g, r].nonzero().squeeze(1)
            if idx.numel():
                w[g, r, idx] = torch.linalg.lstsq(a[g][idx][:, idx], b[g, idx, r : r + 1]).solution.squeeze(1)
    return w


def _obs_pass(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SparseGPT's sequential OBS update of W* = a^-1 b with the mask given."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info.max()) != 0:  # singular (ridge 0): start from the masked least-norm solution
        return torch.linalg.lstsq(a, b).solution.transpose(1, 2)
    w = torch.cholesky_solve(b, chol).transpose(1, 2).contiguous()  # (G, o, d)
    u = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)  # H^-1 = U^T U
    cut = ~mask
    d = w.shape[-1]
    for i1 in range(0, d, _BLOCK):
        i2 = min(i1 + _BLOCK, d)
        w1, u1 = w[:, :, i1:i2], u[:, i1:i2, i1:i2]
        err = torch.zeros_like(w1)
        for i in range(i2 - i1):
            e = torch.where(cut[:, :, i1 + i], w1[:, :, i], 0.0) / u1[:, i, i][:, None]
            w1[:, :, i:] -= e[:, :, None] * u1[:, None, i, i:]
            err[:, :, i] = e
        if i2 < d:
            w[:, :, i2:] -= torch.bmm(err, u[:, i1:i2, i2:])
    return w


def _pcg(a: torch.Tensor, rhs: torch.Tensor, m: torch.Tensor, w: torch.Tensor, stop: float) -> torch.Tensor:
    """Jacobi-preconditioned conjugate gradients on (M a M) w = M b, every row at once.
    ``rhs``: (G, o, d) masked b^T; ``m``: the mask as 0/1; ``w``: the start (masked);
    ``stop``: the squared-error decrease (summed over rows) below which it stops."""
    diag = torch.diagonal(a, dim1=1, dim2=2)[:, None, :]
    inv_diag = torch.where(diag > 0, 1.0 / diag.clamp_min(1e-300), torch.zeros_like(diag))  # a dead input is never moved
    r = rhs - torch.bmm(w, a) * m
    z = r * inv_diag
    p = z
    rz = (r * z).sum(2)
    for _ in range(_MAX_ITERS):
        ap = torch.bmm(p, a) * m
        alpha = rz / (p * ap).sum(2).clamp_min(1e-300)
        w = w + alpha[..., None] * p
        if float((alpha * rz).sum()) < stop:  # this step lowered ||Y - XW||^2 by alpha r.z
            break
        r = r - alpha[..., None] * ap
        z = r * inv_diag
        rz_new = (r * z).sum(2)
        p = z + (rz_new / rz.clamp_min(1e-300))[..., None] * p
        rz = rz_new
    return w
