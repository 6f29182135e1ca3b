"""Extreme eigenpairs of the loss Hessian: Lanczos on the model's device, or scipy ``eigsh``."""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..checks import check_int
from ..losses import LossSpec
from .lanczos import Lanczos
from .operator import HessianOperator, as_operator

__all__ = ["hessian_eigs", "WHICH"]

WHICH = ("LA", "LM", "SA")


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-8 if dtype == torch.float64 else 1e-4


def _order(theta: torch.Tensor, which: str, k: int) -> torch.Tensor:
    """Indices of the k wanted values: LA descending, SA ascending, LM by descending magnitude."""
    if which == "LA":
        return torch.argsort(theta, descending=True)[:k]
    if which == "SA":
        return torch.argsort(theta)[:k]
    return torch.argsort(theta.abs(), descending=True)[:k]


def _start_vector(op: HessianOperator, generator) -> torch.Tensor:
    v = torch.randn(op.size, generator=generator, dtype=torch.float64).to(op.dtype).to(op.device)
    return op.broadcast(v)


def hessian_eigs(model, loss: LossSpec = "cross_entropy", data=None, k: int = 30, which: str = "LA",
                 method: str = "lanczos", tol: float | None = None, *, max_iter: int | None = None,
                 generator: torch.Generator | None = None, **operator_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The k extreme eigenpairs of the loss Hessian.

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a :class:`HessianOperator`.
        loss, data: as for :class:`HessianOperator`; ``operator_kw`` (``params``, ``label_smoothing``,
            ``allow_nondeterministic``, ``shard``, ``chunk``) are passed on to it.
        k: number of eigenpairs (1 ≤ k ≤ P; k < P for ``eigsh``).
        which: ``"LA"`` largest algebraic (descending), ``"SA"`` smallest algebraic (ascending),
            ``"LM"`` largest magnitude (descending |λ|).
        method: ``"lanczos"`` (torch, on the model's device, full reorthogonalisation, float64
            recurrence; iterates until the k Ritz residuals ``‖Hy − θy‖ ≤ tol · max|θ|`` or
            ``max_iter`` steps) or ``"eigsh"`` (``scipy.sparse.linalg.eigsh`` on ``to_scipy()``).
        tol: relative tolerance (default 1e-8 in float64, 1e-4 otherwise).
        max_iter: Lanczos steps at most (default ``min(P, max(6k, 120))``); ARPACK iterations for eigsh.
        generator: seeds the starting vector (rank 0's vector is used on every rank).

    Returns:
        ``(eigenvalues [k] float64 on the CPU, eigenvectors [k, P])`` — eigenvectors in the
        parameters' dtype and on their device, unit norm, in the order described above.
    """
    op = as_operator(model, loss, data, **operator_kw)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if method not in ("lanczos", "eigsh"):
        raise ValueError(f"method must be 'lanczos' or 'eigsh', got {method!r}")
    k = check_int(k, "k")
    max_iter = check_int(max_iter, "max_iter", allow_none=True)
    if not 1 <= k <= op.size:
        raise ValueError(f"k must be in [1, P={op.size}], got {k}")
    tol = _default_tol(op.dtype) if tol is None else float(tol)
    if tol < 0:
        raise ValueError(f"tol must be ≥ 0, got {tol}")

    if method == "eigsh":
        if k >= op.size:
            raise ValueError(f"eigsh needs k < P={op.size}; use method='lanczos' for k = P")
        from scipy.sparse.linalg import eigsh
        v0 = _start_vector(op, generator).to("cpu", torch.float64).numpy()
        vals, vecs = eigsh(op.to_scipy(), k=k, which=which, tol=tol, v0=v0, maxiter=max_iter)
        theta = torch.from_numpy(np.ascontiguousarray(vals))
        idx = _order(theta, which, k)
        Y = torch.from_numpy(np.ascontiguousarray(vecs[:, idx.numpy()].T)).to(op.dtype).to(op.device)
        return theta[idx], Y

    steps = min(op.size, max(6 * k, 120)) if max_iter is None else int(max_iter)
    if steps < k:
        raise ValueError(f"max_iter={steps} must be ≥ k={k}")
    lz = Lanczos(op.matvec, _start_vector(op, generator), steps, restart=True, generator=generator,
                 sync=op.broadcast)
    lz.run(min(steps, max(2 * k, k + 10)))
    check_every = max(5, k // 2)
    while True:
        theta, S, res = lz.ritz()
        if lz.n >= k:
            idx = _order(theta, which, k)
            scale = float(theta.abs().max()) or 1.0
            if bool((res[idx] <= tol * scale).all()) or lz.exhausted or lz.n >= lz.max_steps:
                break
        if not lz.step():
            break
        lz.run(check_every - 1)
    if lz.n < k:
        raise ValueError(f"the Krylov space has dimension {lz.n} < k={k}")
    idx = _order(theta, which, k)
    scale = float(theta.abs().max()) or 1.0
    worst = float(res[idx].max()) / scale
    if worst > tol:
        warnings.warn(f"hessian_eigs: Lanczos stopped after {lz.n} steps with relative residual {worst:.2e} > "
                      f"tol={tol:.1e}; raise max_iter for more accurate eigenpairs", RuntimeWarning, stacklevel=2)
    Y = lz.ritz_vectors(S[:, idx])
    Y = Y / Y.norm(dim=1, keepdim=True)
    return theta[idx].clone(), Y
