"""Spectral density of the loss Hessian by stochastic Lanczos quadrature (SLQ)."""
from __future__ import annotations

import math

import torch

from ..checks import check_int
from ..losses import LossSpec
from .lanczos import rademacher
from .operator import as_operator

__all__ = ["hessian_density", "slq_nodes"]


def _batched_lanczos(op, Z: torch.Tensor, iters: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Independent Lanczos recurrences for the rows of ``Z`` ``[n, P]``, run in lockstep.

    Every step is one block product ``H @ [n, P]``; full reorthogonalisation per row; a row whose recurrence breaks down
    (invariant subspace) stops there.
    """
    n, P = Z.shape
    m = min(int(iters), P)
    Q = torch.zeros(m + 1, n, P, dtype=Z.dtype, device=Z.device)
    Q[0] = Z / Z.norm(dim=1, keepdim=True)
    alpha = torch.zeros(m, n, dtype=torch.float64)
    beta = torch.zeros(m, n, dtype=torch.float64)
    length = torch.full((n,), m, dtype=torch.long)
    active = torch.ones(n, dtype=torch.bool)
    tol = 10 * torch.finfo(Z.dtype).eps
    for j in range(m):
        q = Q[j]                                        # [n, P]
        W = op.matvec(q)                                # [n, P]
        a = (q * W).sum(dim=1)
        W = W - a[:, None] * q
        if j > 0:
            W = W - beta[j - 1].to(W.dtype).to(W.device)[:, None] * Q[j - 1]
        for _ in range(2):                              # full reorthogonalisation, per column
            Qk = Q[: j + 1]                             # [j+1, n, P]
            W = W - torch.einsum("jn,jnp->np", torch.einsum("jnp,np->jn", Qk, W), Qk)
        b = W.norm(dim=1)
        alpha[j] = a.to("cpu", torch.float64)
        beta[j] = b.to("cpu", torch.float64)
        scale = torch.maximum(alpha[: j + 1].abs().amax(0), beta[: j + 1].abs().amax(0)).clamp_min(1e-300)
        broke = active & (beta[j] <= tol * scale)
        length[broke] = j + 1
        active &= ~broke
        if not bool(active.any()):
            break
        Q[j + 1] = torch.where(active.to(W.device)[:, None], W / b.clamp_min(1e-300)[:, None], torch.zeros_like(W))
    nodes, weights = [], []
    for i in range(n):
        L = int(length[i])
        T = torch.diag(alpha[:L, i])
        if L > 1:
            off = beta[: L - 1, i]
            T = T + torch.diag(off, 1) + torch.diag(off, -1)
        theta, S = torch.linalg.eigh(T)
        nodes.append(theta)
        weights.append(S[0, :] ** 2)
    return nodes, weights


def slq_nodes(model, loss: LossSpec | None = None, data=None, iters: int = 80, probes: int = 4,
              generator: torch.Generator | None = None, *, block: int = 16,
              **operator_kw) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Gauss quadrature nodes and weights of the spectral measure, one set per Rademacher probe.

    For probe z (normalised), Lanczos runs ``min(iters, P)`` steps with full reorthogonalisation (stopping early on an
    invariant subspace); the nodes are the Ritz values θ_j and the weights ``τ_j = (e_1ᵀ s_j)²`` (summing to 1), so
    ``Σ τ_j θ_j = zᵀAz / ‖z‖² = zᵀAz / P``. Up to ``block`` probes run in lockstep (one block product per step).

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a
            [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        loss: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        data: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        iters: Lanczos steps per probe.
        probes: Rademacher probes.
        generator: draws the probes (on the CPU).
        block: probes run in lockstep.
        **operator_kw: passed to [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].

    Returns:
        ``(nodes, weights)``: two lists with one float64 CPU tensor ``[m]`` per probe (``m ≤ iters``: the steps that
        probe took).
    """
    op = as_operator(model, loss, data, **operator_kw)
    for value, name in ((iters, "iters"), (probes, "probes"), (block, "block")):
        check_int(value, name)
    nodes, weights = [], []
    done = 0
    while done < int(probes):
        n = min(int(block), int(probes) - done)
        Z = op.broadcast(rademacher((n, op.size), generator, op.dtype, op.device))
        nd, wt = _batched_lanczos(op, Z, int(iters))
        nodes += nd
        weights += wt
        done += n
    return nodes, weights


def hessian_density(model, loss: LossSpec | None = None, data=None, iters: int = 80, probes: int = 4,
                    grid: int | torch.Tensor = 1000, *, sigma: float | None = None,
                    generator: torch.Generator | None = None, block: int = 16, **operator_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral density ``φ(t) = mean_probes Σ_j τ_j N(t; θ_j, σ²)`` by stochastic Lanczos quadrature.

    For each Rademacher probe, ``iters`` Lanczos steps give nodes θ_j (Ritz values) and weights τ_j (summing to 1,
    [`slq_nodes`][lamda_ext.hessian.density.slq_nodes]); φ integrates to 1 and ``P ∫ t φ(t) dt`` estimates the trace.

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a
            [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        loss: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        data: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        iters: Lanczos steps per probe (at most P).
        probes: Rademacher probes.
        grid: a number of points (default 1000) or a 1-D tensor of evaluation points. A count spans
            ``[min θ − 8σ, max θ + 8σ]``, wide and fine enough for φ to integrate to 1 (trapezoid rule) up to rounding.
        sigma: broadening width; default 1% of the Ritz-value spread (or 1e-3·max(1, |θ|) when all nodes coincide).
        generator: draws the probes (on the CPU).
        block: probes run in lockstep (one block product per Lanczos step).
        **operator_kw: passed to [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator] (``curvature``,
            ``params``, ``loss_fn``, ...).

    Returns:
        ``(grid [G], density [G])``, float64 CPU tensors. ``∫ t φ(t) dt`` estimates ``tr(A) / P``.

    Raises:
        ValueError: a malformed ``grid``, a ``sigma`` that is not a finite number > 0, counts < 1.

    Example:
        >>> import torch, lamda_ext
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
        >>> grid, phi = lamda_ext.hessian_density(model, "cross_entropy", (x, y), iters=20, probes=2,
        ...                                       generator=torch.Generator().manual_seed(0))
        >>> tuple(grid.shape), phi.dtype, round(float(torch.trapezoid(phi, grid)), 6)
        ((1000,), torch.float64, 1.0)
    """
    if isinstance(grid, torch.Tensor):
        if grid.dim() != 1 or grid.numel() < 2:
            raise ValueError(f"grid must be a 1-D tensor with ≥ 2 points, got shape {list(grid.shape)}")
        if not bool(torch.isfinite(grid).all()):
            raise ValueError("grid contains NaN or inf values")
    else:
        check_int(grid, "grid (a number of points)", minimum=2)
    if sigma is not None and not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
                                  and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0 or None, got {sigma!r}")
    nodes, weights = slq_nodes(model, loss, data, iters, probes, generator, block=block, **operator_kw)
    th = torch.cat(nodes)
    w = torch.cat(weights) / len(nodes)
    lo, hi = float(th.min()), float(th.max())
    spread = hi - lo
    if sigma is None:
        sigma = 0.01 * spread if spread > 0 else 1e-3 * max(1.0, abs(hi))
    sigma = float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if isinstance(grid, torch.Tensor):
        if grid.dim() != 1 or grid.numel() < 2:
            raise ValueError(f"grid must be a 1-D tensor with ≥ 2 points, got shape {list(grid.shape)}")
        t = grid.detach().to("cpu", torch.float64)
    else:
        if int(grid) < 2:
            raise ValueError(f"grid must be ≥ 2 points, got {grid}")
        n = int(grid)
        # at least ~6 points per σ so that the trapezoid rule integrates each Gaussian exactly
        # (the 1e-6 slack keeps the count independent of rounding: CPU and GPU nodes give the same grid)
        ratio = spread / sigma
        n = max(n, int(math.ceil(6 * (ratio + 16) - 1e-6)) + 1) if ratio < 1e4 else n
        t = torch.linspace(lo - 8 * sigma, hi + 8 * sigma, n, dtype=torch.float64)
    z = (t[:, None] - th[None, :]) / sigma
    dens = (w[None, :] * torch.exp(-0.5 * z * z)).sum(dim=1) / (sigma * math.sqrt(2 * math.pi))
    return t, dens
