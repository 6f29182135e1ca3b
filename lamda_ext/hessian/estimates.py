"""What the stochastic estimators return, and what they share: probes, block products, stopping rules.

The estimators work on any symmetric operator with the protocol of
[`HessianOperator`][lamda_ext.hessian.HessianOperator]: ``size``, ``dtype``, ``device``, ``matvec(V [n, P]) -> [n, P]``,
``quadratic_forms(Z [n, P]) -> [n]`` (float64, CPU) and ``broadcast(t)`` (rank 0's copy of a tensor on every rank);
[`MatrixOperator`][lamda_ext.hessian.MatrixOperator] wraps a dense matrix.
"""
from __future__ import annotations

import math
import warnings

import torch

from ..checks import check_int
from .lanczos import rademacher

__all__ = ["TraceEstimate", "DiagonalEstimate", "draw_probes", "apply_blocks", "product_budget", "reached",
           "next_draw", "warn_unconverged", "gram64", "rowdot64", "extend_basis", "MIN_SAMPLES", "DEFAULT_MATVECS", "MAX_ADAPTIVE_MATVECS"]

MIN_SAMPLES = 8                 # samples before a standard error is trusted to stop an adaptive estimate
DEFAULT_MATVECS = 100           # products when neither a budget nor a target is given
MAX_ADAPTIVE_MATVECS = 10_000   # products an rtol target may take when no budget is given


class TraceEstimate(float):
    """A trace estimate (a ``float``) with its standard error and the work it took.

    Attributes:
        std_error: the estimated standard deviation of the estimate; by default ``std(s) / sqrt(n)`` over the n
            per-probe values ``s`` (Hutchinson: ``zᵀAz``; Hutch++: the quadratic forms of the deflated probes — the
            sketched part ``tr(QᵀAQ)`` is exact given Q and adds nothing; XTrace: its n exchangeable estimates).
            NaN when n < 2 (one value gives no spread).
        samples: the per-probe values ``s`` ``[n]`` (float64, CPU).
        method: the estimator (``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``).
        probes: random test vectors drawn.
        matvecs: operator products used (rows of block products and quadratic forms, each counted once).
        sketch: the low-rank part's size (Hutch++, XTrace; else 0).
        rtol: the target relative standard error (None: a fixed budget).
        converged: whether ``std_error ≤ rtol · |estimate|`` (True without a target).
    """

    def __new__(cls, value: float, samples: torch.Tensor, method: str, probes: int, std_error: float | None = None,
                matvecs: int | None = None, sketch: int = 0, rtol: float | None = None):
        """Build the estimate from its value, the per-probe samples and the products used."""
        self = super().__new__(cls, value)
        self.samples = samples
        n = samples.numel()
        if std_error is None:
            std_error = float(samples.std(correction=1)) / math.sqrt(n) if n >= 2 else math.nan
        self.std_error = float(std_error)
        self.method, self.probes = method, int(probes)
        self.matvecs = int(probes if matvecs is None else matvecs)
        self.sketch, self.rtol = int(sketch), rtol
        self.converged = rtol is None or self.std_error <= rtol * abs(float(value))
        return self

    def __reduce__(self):   # pickle / deepcopy with the attributes
        return (TraceEstimate, (float(self), self.samples, self.method, self.probes, self.std_error, self.matvecs,
                                self.sketch, self.rtol))

    @property
    def estimate(self) -> float:
        """The estimate as a plain ``float``."""
        return float(self)

    def __repr__(self) -> str:
        return (f"TraceEstimate({float(self)!r} ± {self.std_error:.3g}, method={self.method!r}, "
                f"matvecs={self.matvecs})")


class DiagonalEstimate:
    """A diagonal estimate ``[P]`` with its per-entry standard error.

    Attributes:
        estimate: ``[P]`` float64 (CPU).
        std_error: ``[P]`` float64 (zeros for an exact diagonal; NaN with one probe).
        method: ``"hutchinson"`` or ``"exact"``.
        matvecs: operator products used (0 for exact).
    """

    def __init__(self, estimate: torch.Tensor, std_error: torch.Tensor, method: str, matvecs: int):
        self.estimate, self.std_error, self.method, self.matvecs = estimate, std_error, method, int(matvecs)

    def __repr__(self) -> str:
        return f"DiagonalEstimate(P={self.estimate.numel()}, method={self.method!r}, matvecs={self.matvecs})"


def draw_probes(op, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` Rademacher probes ``[n, P]`` in the operator's dtype and device (rank 0's on every rank)."""
    return op.broadcast(rademacher((n, op.size), generator, op.dtype, op.device))


def apply_blocks(fn, Z: torch.Tensor, block: int) -> torch.Tensor:
    """``fn`` on the rows of ``Z`` ``[n, P]``, ``block`` rows per call, results joined along the first dimension.

    ``fn``: an operator's ``matvec`` (``[k, P] -> [k, P]``) or ``quadratic_forms`` (``[k, P] -> [k]``).
    """
    return torch.cat([fn(Z[i:i + block]) for i in range(0, Z.shape[0], block)], dim=0)


def product_budget(matvecs, rtol, block) -> tuple[int, float | None, int]:
    """Checked ``(budget, rtol, block)``.

    ``matvecs`` (default [`DEFAULT_MATVECS`][lamda_ext.hessian.estimates.DEFAULT_MATVECS], or
    [`MAX_ADAPTIVE_MATVECS`][lamda_ext.hessian.estimates.MAX_ADAPTIVE_MATVECS] with an ``rtol`` target).
    """
    block = check_int(block, "block")
    if rtol is not None:
        if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
            raise ValueError(f"rtol must be a target relative standard error in (0, 1), got {rtol!r}")
        rtol = float(rtol)
    if matvecs is None:
        return (MAX_ADAPTIVE_MATVECS if rtol is not None else DEFAULT_MATVECS), rtol, block
    return check_int(matvecs, "matvecs"), rtol, block


def reached(estimate: float, std_error: float, n: int, rtol: float | None) -> bool:
    """Whether an adaptive estimate may stop: ``n ≥`` `MIN_SAMPLES` and ``std_error ≤ rtol · |estimate|``."""
    return rtol is not None and n >= MIN_SAMPLES and std_error <= rtol * abs(estimate)


def next_draw(estimate: float, std_error: float, n: int, rtol: float, block: int) -> int:
    """How many probes to add toward ``std_error ≤ rtol · |estimate|`` after ``n``.

    What the spread so far asks, ``n (std_error / (rtol |estimate|))² − n``, at least `MIN_SAMPLES` (a step
    that falls short is followed by another) and at most ``block``; ``block`` while the spread is unknown.
    """
    if n < 2 or not math.isfinite(std_error) or estimate == 0:
        return block
    need = n * (std_error / (rtol * abs(estimate))) ** 2
    return max(MIN_SAMPLES, min(block, math.ceil(need) - n))


def warn_unconverged(est: TraceEstimate) -> TraceEstimate:
    """``est``, after a ``RuntimeWarning`` when it missed its ``rtol`` target within the budget."""
    if not est.converged:
        warnings.warn(f"trace ({est.method}): relative standard error {est.std_error / abs(float(est)):.2e} > "
                      f"rtol={est.rtol:g} after {est.matvecs} products (the budget); raise matvecs",
                      RuntimeWarning, stacklevel=3)
    return est


def gram64(A: torch.Tensor, B: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """``A Bᵀ`` for rows ``A`` ``[a, P]``, ``B`` ``[b, P]``, on the CPU.

    Accumulated in float64, ``chunk`` columns at a time.
    """
    out = torch.zeros(A.shape[0], B.shape[0], dtype=torch.float64, device=A.device)
    for j in range(0, A.shape[1], chunk):
        out += A[:, j:j + chunk].to(torch.float64) @ B[:, j:j + chunk].to(torch.float64).t()
    return out.cpu()


def rowdot64(A: torch.Tensor, B: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """``Σ_j A_ij B_ij`` for rows ``A``, ``B`` ``[n, P]``: ``[n]`` on the CPU.

    Accumulated in float64, ``chunk`` columns at a time.
    """
    out = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
    for j in range(0, A.shape[1], chunk):
        out += (A[:, j:j + chunk].to(torch.float64) * B[:, j:j + chunk].to(torch.float64)).sum(dim=1)
    return out.cpu()


def extend_basis(Q: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Orthonormal rows ``[r, P]`` spanning the part of ``Y`` ``[m, P]`` orthogonal to the rows ``Q`` ``[k, P]``.

    ``Q`` is orthonormal. Gram–Schmidt twice, then a QR; directions whose norm is at rounding level (``100 · eps ·
    max‖y‖``) are dropped, so ``r ≤ m``.
    """
    W = Y
    if Q.shape[0]:
        for _ in range(2):
            W = W - (W @ Q.t()) @ Q
    Qw, R = torch.linalg.qr(W.t())
    scale = float(Y.norm(dim=1).max()) if Y.shape[0] else 0.0
    keep = R.diagonal().abs() > 100 * torch.finfo(Y.dtype).eps * scale
    return Qw.t()[keep].contiguous()
