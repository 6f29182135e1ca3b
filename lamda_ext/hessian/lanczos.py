"""Lanczos tridiagonalisation with full reorthogonalisation.

Vectors live on the operator's device in its dtype; the recurrence coefficients
(α, β) and the Ritz problem are float64 on the CPU.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["Lanczos", "rademacher"]

DGKS = 2 ** -0.5     # repeat the Gram-Schmidt pass when it left less than this fraction of the vector


def rademacher(shape, generator: torch.Generator | None, dtype, device) -> torch.Tensor:
    """A tensor of ``shape`` with ±1 entries in ``dtype`` on ``device`` (drawn on the CPU from ``generator``)."""
    z = torch.randint(0, 2, tuple(shape), generator=generator, dtype=torch.int8)
    return z.to(dtype).mul_(2).sub_(1).to(device)      # in place: one tensor of shape in dtype at a time


class Lanczos:
    """Incremental Lanczos on a symmetric operator ``matvec: [P] -> [P]``.

    Every new vector is orthogonalised against all previous ones by classical Gram-Schmidt,
    repeated once when the projection cancelled most of the vector (the DGKS criterion, as in
    ARPACK: the norm left is below 1/√2 of the norm of H q before any projection), which keeps
    the basis orthogonal to working precision with one pass over the basis where the Krylov
    direction is well separated, two where it is not. On breakdown (β ≈ 0: the Krylov space is invariant)
    the iteration stops, or — with ``restart=True`` — continues from a fresh random vector
    orthogonal to all previous ones (T becomes block diagonal), which also exposes repeated
    eigenvalues.

    Attributes after ``n`` steps: ``alpha [n]``, ``beta [n]`` (float64; ``beta[j]`` couples
    vectors j and j+1, the last one is the residual norm), ``Q[:n]`` the Lanczos vectors.
    """

    def __init__(self, matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, max_steps: int, *,
                 restart: bool = False, generator: torch.Generator | None = None,
                 sync: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if v0.dim() != 1:
            raise ValueError(f"v0 must be a vector [P], got shape {list(v0.shape)}")
        P = v0.shape[0]
        self.P = P
        self.max_steps = int(min(max_steps, P))
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be ≥ 1, got {max_steps}")
        self.matvec = matvec
        self.restart = restart
        self.generator = generator
        self.sync = sync or (lambda t: t)
        nrm = v0.norm()
        if not torch.isfinite(nrm) or nrm == 0:
            raise ValueError("the starting vector must be finite and non-zero")
        self.Q = torch.empty(self.max_steps + 1, P, dtype=v0.dtype, device=v0.device)
        self.Q[0] = v0 / nrm
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.n = 0              # steps done
        self.exhausted = False  # no further step possible (invariant subspace without restart, or n == P)
        self.breakdown_tol = 10 * torch.finfo(v0.dtype).eps

    def _orthogonalise(self, w: torch.Tensor, upto: int, before: float | None = None) -> tuple[torch.Tensor, float]:
        """(w minus its projection on ``Q[:upto]``, its norm).

        ``before``: the norm to judge cancellation against (default ‖w‖).
        """
        Qk = self.Q[:upto]
        before = float(w.norm()) if before is None else before
        for _ in range(2):
            w = w - Qk.t() @ (Qk @ w)
            after = float(w.norm())
            if after > DGKS * before:
                break
            before = after
        return w, after

    def step(self) -> bool:
        """One Lanczos step; returns False when no step could be taken."""
        if self.exhausted or self.n >= self.max_steps:
            return False
        j = self.n
        q = self.Q[j]
        w = self.matvec(q)
        wnorm = float(w.norm())
        a = float(torch.dot(q, w))
        w = w - a * q
        if j > 0 and self.beta[j - 1] != 0.0:
            w = w - self.beta[j - 1] * self.Q[j - 1]
        w, b = self._orthogonalise(w, j + 1, wnorm)
        self.alpha.append(a)
        self.n += 1
        scale = max(abs(x) for x in self.alpha + [1e-300] + [abs(y) for y in self.beta])
        if self.n >= self.P:
            self.beta.append(b)
            self.exhausted = True
            return True
        if b <= self.breakdown_tol * scale:
            self.beta.append(0.0)
            if not self.restart:
                self.exhausted = True
                return True
            for _ in range(3):
                r = self.sync(torch.randn(self.P, generator=self.generator, dtype=torch.float64)
                              .to(self.Q.dtype).to(self.Q.device))
                r, rn = self._orthogonalise(r, j + 1)
                if rn > 1e-8:
                    break
            else:
                self.exhausted = True
                return True
            if self.n < self.max_steps + 1:
                self.Q[self.n] = r / rn
            return True
        self.beta.append(b)
        if self.n < self.max_steps + 1:
            self.Q[self.n] = w / b
        return True

    def run(self, steps: int) -> None:
        """Take up to ``steps`` Lanczos steps (fewer when the Krylov space is exhausted)."""
        for _ in range(steps):
            if not self.step():
                break

    def tridiagonal(self) -> torch.Tensor:
        """T ``[n, n]`` (float64, CPU)."""
        n = self.n
        T = torch.zeros(n, n, dtype=torch.float64)
        if n == 0:
            return T
        a = torch.tensor(self.alpha, dtype=torch.float64)
        T[range(n), range(n)] = a
        if n > 1:
            b = torch.tensor(self.beta[: n - 1], dtype=torch.float64)
            T[range(n - 1), range(1, n)] = b
            T[range(1, n), range(n - 1)] = b
        return T

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ritz values ``[n]`` (ascending), eigenvectors of T ``[n, n]`` (columns) and residual norms ``[n]``.

        The residual norms are ``‖H y − θ y‖ = |β_n s_{n,i}|``; zero when the space is exhausted.
        """
        theta, S = torch.linalg.eigh(self.tridiagonal())
        last = self.beta[self.n - 1] if self.n else 0.0
        res = (last * S[-1, :]).abs()
        if self.exhausted and last == 0.0:
            res = torch.zeros_like(res)
        return theta, S, res

    def ritz_vectors(self, S: torch.Tensor) -> torch.Tensor:
        """Ritz vectors ``[k, P]`` for the columns of ``S`` ``[n, k]``."""
        return S.t().to(self.Q.dtype).to(self.Q.device) @ self.Q[: self.n]
