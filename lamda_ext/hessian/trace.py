"""Stochastic trace of the loss Hessian: Hutchinson and Hutch++ with Rademacher probes."""
from __future__ import annotations

import torch

from ..checks import check_int
from ..losses import LossSpec
from .lanczos import rademacher
from .operator import as_operator

__all__ = ["hessian_trace"]


def hessian_trace(model, loss: LossSpec = "cross_entropy", data=None, probes: int = 100,
                  method: str = "hutchinson", generator: torch.Generator | None = None, *,
                  block: int = 32, **operator_kw) -> float:
    """Estimate ``tr(H)`` with ``probes`` Hessian-vector products.

    ``hutchinson``: mean of ``zᵀHz`` over Rademacher ``z``. ``hutch++`` (Meyer et al. 2021):
    a third of the products sketch the top subspace ``Q = orth(H S)``, its trace is taken
    exactly and Hutchinson runs on the deflated rest (needs ``probes ≥ 3``).

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a :class:`HessianOperator`.
        probes: number of HVPs in all. generator: draws the probes on the CPU (rank 0's probes
            are used on every rank). block: probes per vmapped HVP.
        operator_kw: passed to :class:`HessianOperator`.
    """
    op = as_operator(model, loss, data, **operator_kw)
    probes = check_int(probes, "probes")
    block = check_int(block, "block")
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")

    def draw(n: int) -> torch.Tensor:  # [P, n]
        return op.broadcast(rademacher((op.size, n), generator, op.dtype, op.device))

    def apply(Z: torch.Tensor) -> torch.Tensor:  # [P, n] -> [P, n] in blocks
        return torch.cat([op.matvec(Z[:, i:i + block]) for i in range(0, Z.shape[1], block)], dim=1)

    if method == "hutchinson":
        total, done = 0.0, 0
        while done < probes:
            n = min(block, probes - done)
            Z = draw(n)
            total += float((Z * op.matvec(Z)).sum(dtype=torch.float64))
            done += n
        return total / probes

    if probes < 3:
        raise ValueError(f"hutch++ needs probes ≥ 3, got {probes}")
    s = probes // 3
    g = probes - 2 * s
    S = draw(s)
    G = draw(g)
    Q, _ = torch.linalg.qr(apply(S))
    t_top = float((Q * apply(Q)).sum(dtype=torch.float64))
    Gp = G - Q @ (Q.t() @ G)
    t_rest = float((Gp * apply(Gp)).sum(dtype=torch.float64)) / g
    return t_top + t_rest
