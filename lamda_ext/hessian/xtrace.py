"""XTrace (Epperly, Tropp, Webber 2024): an exchangeable Hutch++ that uses every test vector for both parts.

With m standard Gaussian test vectors ω_i and ``Y = A Ω`` (m products), every i gives a Hutch++ estimate whose sketch is
the span of the other m − 1 columns of Y and whose probe is ω_i:
``t_i = tr(Q_(i)ᵀ A Q_(i)) + ω_iᵀ (I − Q_(i)Q_(i)ᵀ) A (I − Q_(i)Q_(i)ᵀ) ω_i``, ``Q_(i) = orth(A Ω_{−i})``.
All m leave-one-out bases are rank-one downdates of ``Q = orth(Y) = Y R⁻¹``: ``Q_(i) Q_(i)ᵀ = Q (I − ŝ_i ŝ_iᵀ) Qᵀ``
with ``ŝ_i`` the normalised i-th column of ``R⁻ᵀ``; so ``A Q`` (m more products) and small ``m × m`` algebra give
every ``t_i``. The estimate is ``mean_i t_i``, its standard error ``std(t_i) / sqrt(m)`` (the paper's: the ``t_i``
share their test vectors, so it is approximate, and tends to be low for few test vectors).

When Y has numerical rank below m, or m = P, the sketch holds the whole range of A (with probability one: Gaussian
Ω has full rank, unlike a small Rademacher one), and ``tr(QᵀAQ)`` is the trace (standard error 0). With an ``rtol``
target, test vectors are added ``block`` at a time (``A Q`` for the new basis rows only) until the standard error is at
most ``rtol · |estimate|``.
"""
from __future__ import annotations

import math

import torch

from .estimates import (MIN_SAMPLES, TraceEstimate, apply_blocks, extend_basis, gram64, product_budget, reached,
                        rowdot64, warn_unconverged)

__all__ = ["xtrace", "xtrace_estimates"]


def _gaussian(op, n: int, generator) -> torch.Tensor:
    """``n`` standard Gaussian test vectors ``[n, P]`` (drawn in float64 on the CPU; rank 0's on every rank)."""
    g = torch.randn(n, op.size, generator=generator, dtype=torch.float64)
    return op.broadcast(g.to(op.dtype).to(op.device))


def xtrace_estimates(H: torch.Tensor, R: torch.Tensor, W: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The m leave-one-out estimates ``t_i`` (float64).

    From ``H = QᵀAQ`` ``[m, m]``, ``R = QᵀY``, ``W = QᵀΩ`` (``[m, m]``, column i for test vector i) and ``d_i = ω_iᵀ A
    ω_i`` ``[m]``.
    """
    S = torch.linalg.inv(R).t()
    S = S / S.norm(dim=0, keepdim=True)
    sHs = (S * (H @ S)).sum(dim=0)
    HW = H @ W
    c = (S * W).sum(dim=0)
    u_Au = d - 2 * (R * W).sum(dim=0) + (W * HW).sum(dim=0)        # residual outside span(Q)
    q_Au = (S * (R - HW)).sum(dim=0)
    return torch.trace(H) - sHs + u_Au + 2 * c * q_Au + c * c * sHs


class _State:
    """Test vectors Ω, Y = AΩ and the basis Q with ``H = QᵀAQ``, grown a block at a time."""

    def __init__(self, op, block: int):
        self.op, self.block = op, block
        empty = torch.zeros(0, op.size, dtype=op.dtype, device=op.device)
        self.Om, self.Y, self.Q = empty, empty, empty
        self.H = torch.zeros(0, 0, dtype=torch.float64)
        self.matvecs = 0

    def add(self, Om: torch.Tensor) -> None:
        Y = apply_blocks(self.op.matvec, Om, self.block)
        Qn = extend_basis(self.Q, Y)
        Zn = apply_blocks(self.op.matvec, Qn, self.block) if Qn.shape[0] else Qn
        k = self.Q.shape[0]
        H = torch.zeros(k + Qn.shape[0], k + Qn.shape[0], dtype=torch.float64)
        H[:k, :k] = self.H
        if Qn.shape[0]:
            cross = gram64(Zn, self.Q)                 # (A Q_new)ᵀ Q_old
            H[k:, :k], H[:k, k:] = cross, cross.t()
            new = gram64(Zn, Qn)
            H[k:, k:] = (new + new.t()) / 2
        self.Om, self.Y, self.Q, self.H = torch.cat([self.Om, Om]), torch.cat([self.Y, Y]), \
            torch.cat([self.Q, Qn]), H
        self.matvecs += Om.shape[0] + Qn.shape[0]

    def estimates(self) -> torch.Tensor:
        m = self.Om.shape[0]
        if self.Q.shape[0] < m or self.Q.shape[0] == self.op.size:   # Q spans range(A): the trace is exact
            return torch.full((m,), float(torch.trace(self.H)), dtype=torch.float64)
        d = rowdot64(self.Om, self.Y)
        return xtrace_estimates(self.H, gram64(self.Q, self.Y), gram64(self.Q, self.Om), d)


def xtrace(op, *, matvecs: int | None = None, rtol: float | None = None, generator: torch.Generator | None = None,
           block: int = 32) -> TraceEstimate:
    """``tr(A)`` by XTrace (module docstring) with ``matvecs // 2`` test vectors at most.

    Args:
        op: the operator (see [`lamda_ext.hessian.estimates`][lamda_ext.hessian.estimates]).
        matvecs: the product budget (≥ 4: two products per test vector; default 100, or 10 000 with ``rtol``).
        rtol: the target relative standard error (test vectors added ``block`` at a time); a ``RuntimeWarning``
            when the budget ends first.
        generator: draws the Gaussian test vectors (on the CPU).
        block: rows per block product and per growth step.

    Returns:
        A [`TraceEstimate`][lamda_ext.hessian.TraceEstimate] (samples: the m leave-one-out estimates; sketch: the rank
        of Q).
    """
    budget, rtol, block = product_budget(matvecs, rtol, block)
    m_max = min(budget // 2, op.size)
    if m_max < 2:
        raise ValueError(f"xtrace needs matvecs ≥ 4 (two products per test vector), got {budget}")
    st = _State(op, block)
    step = m_max if rtol is None else max(min(block, m_max), min(MIN_SAMPLES, m_max))
    while True:
        st.add(_gaussian(op, min(step, m_max - st.Om.shape[0]), generator))
        t = st.estimates()
        m = t.numel()
        est, se = float(t.mean()), float(t.std()) / math.sqrt(m)
        if rtol is None or reached(est, se, m, rtol) or m >= m_max:
            break
    return warn_unconverged(TraceEstimate(est, t, "xtrace", m, std_error=se, matvecs=st.matvecs,
                                          sketch=st.Q.shape[0], rtol=rtol))
