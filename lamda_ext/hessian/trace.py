"""Stochastic trace of the loss Hessian: Hutchinson and Hutch++ with Rademacher probes, with standard errors."""
from __future__ import annotations

import math

import torch

from ..checks import check_int
from ..losses import LossSpec
from .lanczos import rademacher
from .operator import as_operator

__all__ = ["TraceEstimate", "hessian_trace"]


class TraceEstimate(float):
    """A trace estimate (a ``float``) with its standard error.

    Attributes:
        std_error: the estimated standard deviation of the estimate: ``std(s) / sqrt(n)`` over the n
            per-probe values ``s`` of the stochastic part (Hutchinson: ``zᵀHz``; Hutch++: the
            quadratic forms of the deflated probes — the sketched part ``tr(QᵀHQ)`` is exact given Q
            and adds nothing). NaN when n < 2 (one value gives no spread).
        samples: the per-probe values ``s`` ``[n]`` (float64, CPU). method, probes: as requested.
    """

    def __new__(cls, value: float, samples: torch.Tensor, method: str, probes: int):
        self = super().__new__(cls, value)
        self.samples = samples
        n = samples.numel()
        self.std_error = float(samples.std(correction=1)) / math.sqrt(n) if n >= 2 else math.nan
        self.method = method
        self.probes = probes
        return self

    def __reduce__(self):   # pickle / deepcopy with the attributes
        return (TraceEstimate, (float(self), self.samples, self.method, self.probes))

    @property
    def estimate(self) -> float:
        return float(self)

    def __repr__(self) -> str:
        return f"TraceEstimate({float(self)!r} ± {self.std_error:.3g}, method={self.method!r}, probes={self.probes})"


def _forms(Z: torch.Tensor, HZ: torch.Tensor) -> torch.Tensor:
    """``z_iᵀ H z_i`` for rows ``Z``, ``HZ`` ``[n, P]`` → ``[n]`` float64 CPU."""
    return (Z.to(torch.float64) * HZ.to(torch.float64)).sum(dim=1).cpu()


def hessian_trace(model, loss: LossSpec | None = None, data=None, probes: int = 100,
                  method: str = "hutchinson", generator: torch.Generator | None = None, *,
                  block: int = 32, **operator_kw) -> TraceEstimate:
    """Estimate ``tr(H)`` with ``probes`` Hessian-vector products.

    ``hutchinson``: mean of ``zᵀHz`` over Rademacher ``z`` (each ``zᵀHz`` a second directional derivative
    where :meth:`HessianOperator.quadratic_forms` can, else from an HVP). ``hutch++`` (Meyer et al. 2021):
    a third of the products sketch the top subspace ``Q = orth(H S)``, its trace is taken
    exactly and Hutchinson runs on the deflated rest (needs ``probes ≥ 3``).

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a :class:`HessianOperator`.
        probes: number of HVPs in all. generator: draws the probes on the CPU (rank 0's probes
            are used on every rank). block: probes per block product ``H @ [block, P]``.
        operator_kw: passed to :class:`HessianOperator` (``loss_fn``, ``reduction``, ``memory_budget``, ...).

    Returns:
        A :class:`TraceEstimate`: the estimate as a ``float``, with ``std_error`` and the per-probe ``samples``.
    """
    op = as_operator(model, loss, data, **operator_kw)
    probes = check_int(probes, "probes")
    block = check_int(block, "block")
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")

    def draw(n: int) -> torch.Tensor:  # [n, P]
        return op.broadcast(rademacher((n, op.size), generator, op.dtype, op.device))

    def apply(Z: torch.Tensor) -> torch.Tensor:  # [n, P] -> [n, P] in blocks
        return torch.cat([op.matvec(Z[i:i + block]) for i in range(0, Z.shape[0], block)], dim=0)

    if method == "hutchinson":
        samples, done = [], 0
        while done < probes:
            n = min(block, probes - done)
            Z = draw(n)
            samples.append(op.quadratic_forms(Z))
            done += n
        s = torch.cat(samples)
        return TraceEstimate(float(s.mean()), s, method, probes)

    if probes < 3:
        raise ValueError(f"hutch++ needs probes ≥ 3, got {probes}")
    s_n = probes // 3
    g = probes - 2 * s_n
    S = draw(s_n)
    G = draw(g)
    Q = torch.linalg.qr(apply(S).t())[0].t()            # [s, P] orthonormal rows spanning H S
    t_top = float(_forms(Q, apply(Q)).sum())
    Gp = G - (G @ Q.t()) @ Q
    rest = op.quadratic_forms(Gp)
    return TraceEstimate(t_top + float(rest.mean()), rest, method, probes)
