"""Extreme eigenpairs of a curvature matrix (the loss Hessian by default).

Lanczos on the model's device, or scipy ``eigsh``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..checks import check_int
from ..losses import LossSpec
from .blocks import layer_blocks
from .lanczos import Lanczos
from .operator import HessianOperator, as_operator

__all__ = ["hessian_eigs", "EigResult", "WHICH"]

WHICH = ("LA", "LM", "SA")


class EigResult(tuple):
    """``(eigenvalues, eigenvectors)`` — unpacks as a pair — with the convergence of every pair attached.

    Attributes:
        eigenvalues: ``[k]`` float64 (CPU).
        eigenvectors: ``[k, P]`` rows, unit norm, in the parameters' dtype and on their device.
        residuals: ``[k]`` float64 (CPU), ``‖H y_i − θ_i y_i‖`` of every returned pair (unit ``y_i``).
        converged: ``[k]`` bool, ``residuals ≤ tol · max|θ|`` (θ: every Ritz value computed; for eigsh the k returned
            eigenvalues).
        tol: the relative tolerance used.
        steps: Lanczos steps (ARPACK: products) taken.
    """

    def __new__(cls, eigenvalues, eigenvectors, residuals, converged, tol, steps):
        """Build the result from its parts (see the class docstring)."""
        self = super().__new__(cls, (eigenvalues, eigenvectors))
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors
        self.residuals, self.converged, self.tol, self.steps = residuals, converged, tol, steps
        return self

    def __reduce__(self):   # pickle / deepcopy with the attributes
        return (EigResult, (self.eigenvalues, self.eigenvectors, self.residuals, self.converged, self.tol, self.steps))

    def __repr__(self) -> str:
        return (f"EigResult(eigenvalues={self.eigenvalues}, residuals={self.residuals}, "
                f"converged={self.converged}, steps={self.steps})")


def _finish(vals: torch.Tensor, Y: torch.Tensor, res: torch.Tensor, scale: float, tol: float, steps: int,
            what: str, hint: str) -> EigResult:
    """Attach convergence flags (``res ≤ tol · scale``) and warn, naming the pairs, when one did not converge."""
    scale = scale or 1.0
    converged = res <= tol * scale
    if not bool(converged.all()):
        bad = (~converged).nonzero().flatten().tolist()
        worst = float(res.max()) / scale
        warnings.warn(f"hessian_eigs: {len(bad)} of {len(vals)} requested eigenpairs did not converge after "
                      f"{what} (pairs {bad}; largest relative residual {worst:.2e} > tol={tol:.1e}); {hint}",
                      RuntimeWarning, stacklevel=3)
    return EigResult(vals, Y, res, converged, tol, steps)


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


def _eigsh(op: HessianOperator, k: int, which: str, tol: float, max_iter, generator) -> EigResult:
    """Scipy ``eigsh`` on ``op.to_scipy()``; residuals from one block product."""
    if k >= op.size:
        raise ValueError(f"eigsh needs k < P={op.size}; use method='lanczos' for k = P")
    from scipy.sparse.linalg import eigsh
    v0 = _start_vector(op, generator).to("cpu", torch.float64).numpy()
    A = op.to_scipy()
    before = op.n_products
    vals, vecs = eigsh(A, k=k, which=which, tol=tol, v0=v0, maxiter=max_iter)
    steps = op.n_products - before
    theta = torch.from_numpy(np.ascontiguousarray(vals))
    idx = _order(theta, which, k)
    Y = torch.from_numpy(np.ascontiguousarray(vecs[:, idx.numpy()].T)).to(op.dtype).to(op.device)
    Y = Y / Y.norm(dim=1, keepdim=True)
    R = op.matvec(Y).to("cpu", torch.float64) - theta[idx, None] * Y.to("cpu", torch.float64)
    return _finish(theta[idx], Y, R.norm(dim=1), float(theta.abs().max()), tol, steps, f"{steps} ARPACK products",
                   "raise max_iter or tol")


def _lanczos(op: HessianOperator, k: int, which: str, tol: float, max_iter, generator) -> EigResult:
    """Lanczos until the k wanted Ritz pairs converge (checked after every step) or ``max_iter`` steps."""
    steps = min(op.size, max(6 * k, 120)) if max_iter is None else int(max_iter)
    if steps < k:
        raise ValueError(f"max_iter={steps} must be ≥ k={k}")
    lz = Lanczos(op.matvec, _start_vector(op, generator), steps, restart=True, generator=generator,
                 sync=op.broadcast)
    lz.run(min(steps, max(2 * k, k + 10)))
    while True:   # the Ritz problem is tiny next to a product: check after every step, stop as soon as possible
        theta, S, res = lz.ritz()
        if lz.n >= k:
            idx = _order(theta, which, k)
            scale = float(theta.abs().max()) or 1.0
            if bool((res[idx] <= tol * scale).all()) or lz.exhausted or lz.n >= lz.max_steps:
                break
        if not lz.step():
            break
    if lz.n < k:
        raise ValueError(f"the Krylov space has dimension {lz.n} < k={k}")
    idx = _order(theta, which, k)
    Y = lz.ritz_vectors(S[:, idx])
    Y = Y / Y.norm(dim=1, keepdim=True)
    return _finish(theta[idx].clone(), Y, res[idx].clone(), float(theta.abs().max()), tol, lz.n,
                   f"{lz.n} Lanczos steps", "raise max_iter for more accurate eigenpairs")


def hessian_eigs(model, loss: LossSpec | None = None, data=None, k: int = 30, which: str = "LA",
                 method: str = "lanczos", tol: float | None = None, *, max_iter: int | None = None,
                 generator: torch.Generator | None = None, per_layer: bool = False,
                 **operator_kw) -> EigResult | dict[str, EigResult]:
    """The k extreme eigenpairs of a curvature matrix (the loss Hessian by default).

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a
            [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator] (reused: its kept linearisations serve every
            tool).
        loss: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        data: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        k: number of eigenpairs (1 ≤ k ≤ P; k < P for ``eigsh``).
        which: ``"LA"`` largest algebraic (descending), ``"SA"`` smallest algebraic (ascending), ``"LM"`` largest
            magnitude (descending |λ|).
        method: ``"lanczos"`` (torch, on the model's device, full reorthogonalisation, float64 recurrence; iterates
            until the k Ritz residuals ``‖Hy − θy‖ ≤ tol · max|θ|`` or ``max_iter`` steps) or ``"eigsh"``
            (``scipy.sparse.linalg.eigsh`` on ``to_scipy()``).
        tol: relative tolerance (default 1e-8 in float64, 1e-4 otherwise).
        max_iter: Lanczos steps at most (default ``min(P, max(6k, 120))``); ARPACK iterations for eigsh.
        generator: seeds the starting vector (rank 0's vector is used on every rank).
        per_layer: the eigenpairs of every parameter block's diagonal block (the parameters of each module, see
            [`layer_blocks`][lamda_ext.hessian.blocks.layer_blocks]); k is capped at a block's size, and a block with
            at most k parameters is solved by Lanczos.
        **operator_kw: passed to [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator]: ``curvature``,
            ``loss_fn``, ``reduction``, ``params``, ``label_smoothing``, ``allow_nondeterministic``, ``shard``,
            ``chunk``, ``memory_budget``, ``mc_samples``, ``mc_seed``.

    Returns:
        An [`EigResult`][lamda_ext.hessian.eigs.EigResult]: unpacks as ``(eigenvalues [k] float64 on the CPU,
        eigenvectors [k, P])`` — eigenvectors in the parameters' dtype and on their device, unit norm, in the order
        described above — and carries ``residuals`` ``‖Hy − θy‖`` (``[k]`` float64) and ``converged`` flags
        (``[k]`` bool) per pair. A ``RuntimeWarning`` names the pairs that did not converge. Lanczos residuals are
        those of the Krylov recurrence (equal to ``‖Hy − θy‖`` up to rounding: the basis is fully reorthogonalised);
        eigsh's are computed with one block product. With ``per_layer``: a dict block name →
        [`EigResult`][lamda_ext.hessian.eigs.EigResult] (eigenvectors over the block's parameters), in parameter
        order.

    Raises:
        ValueError: ``k`` out of range, an unknown ``which`` or ``method``, a negative ``tol``, ``max_iter < k``,
            and whatever [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator] refuses.

    Example:
        >>> import torch, lamda_ext
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
        >>> res = lamda_ext.hessian_eigs(model, "cross_entropy", (x, y), k=2, generator=torch.Generator().manual_seed(0))
        >>> tuple(res.eigenvalues.shape), tuple(res.eigenvectors.shape), bool(res.converged.all())
        ((2,), (2, 26), True)
        >>> H = lamda_ext.HessianOperator(model, "cross_entropy", (x, y))
        >>> dense = H @ torch.eye(H.size, dtype=torch.float64)
        >>> torch.allclose(res.eigenvalues, torch.linalg.eigvalsh(dense).flip(0)[:2])   # the two largest
        True
        >>> blocks = lamda_ext.hessian_eigs(H, k=1, per_layer=True)     # one result per module's parameters
        >>> list(blocks)
        ['0', '2']
    """
    op = as_operator(model, loss, data, **operator_kw)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if method not in ("lanczos", "eigsh"):
        raise ValueError(f"method must be 'lanczos' or 'eigsh', got {method!r}")
    k = check_int(k, "k")
    max_iter = check_int(max_iter, "max_iter", allow_none=True)
    tol = _default_tol(op.dtype) if tol is None else float(tol)
    if tol < 0:
        raise ValueError(f"tol must be ≥ 0, got {tol}")
    if per_layer:
        out = {}
        for name, names in layer_blocks(op.params).items():
            sub = op.restrict(names)
            kb = min(k, sub.size)
            solve = _eigsh if method == "eigsh" and kb < sub.size else _lanczos
            out[name] = solve(sub, kb, which, tol, max_iter, generator)
        return out
    if not 1 <= k <= op.size:
        raise ValueError(f"k must be in [1, P={op.size}], got {k}")
    return (_eigsh if method == "eigsh" else _lanczos)(op, k, which, tol, max_iter, generator)
