"""Hutchinson's estimators with Rademacher probes z: the trace ``mean zᵀAz`` and the diagonal ``mean z ⊙ Az``.

Each ``zᵀAz`` is a quadratic form of the operator
([`HessianOperator.quadratic_forms`][lamda_ext.hessian.operator.HessianOperator.quadratic_forms]: for the Hessian a
second directional derivative, for the GGN-type curvatures a tangent forward; no product needed).
"""
from __future__ import annotations

import math

import torch

from .estimates import DiagonalEstimate, TraceEstimate, draw_probes, product_budget, reached, warn_unconverged

__all__ = ["hutchinson_trace", "hutchinson_diagonal"]


def hutchinson_trace(op, *, matvecs: int | None = None, rtol: float | None = None,
                     generator: torch.Generator | None = None, block: int = 32) -> TraceEstimate:
    """``tr(A) ≈ mean_i z_iᵀ A z_i`` over Rademacher probes, drawn ``block`` at a time.

    Args:
        op: the operator (see [`lamda_ext.hessian.estimates`][lamda_ext.hessian.estimates]).
        matvecs: the number of probes (the product budget); default 100, or 10 000 with ``rtol``.
        rtol: stop once the standard error is at most ``rtol · |estimate|`` (checked after every block, from
            8 probes on); a ``RuntimeWarning`` when the budget ends first.
        generator: draws the probes (on the CPU).
        block: probes per quadratic-form call.

    Returns:
        A [`TraceEstimate`][lamda_ext.hessian.TraceEstimate] (samples: the per-probe ``zᵀAz``).
    """
    budget, rtol, block = product_budget(matvecs, rtol, block)
    parts, done = [], 0
    while done < budget:
        n = min(block, budget - done)
        parts.append(op.quadratic_forms(draw_probes(op, n, generator)))
        done += n
        s = torch.cat(parts)
        if rtol is not None and s.numel() >= 2 and reached(float(s.mean()), float(s.std()) / math.sqrt(s.numel()),
                                                           s.numel(), rtol):
            break
    s = torch.cat(parts)
    return warn_unconverged(TraceEstimate(float(s.mean()), s, "hutchinson", done, rtol=rtol))


def hutchinson_diagonal(op, *, matvecs: int = 100, generator: torch.Generator | None = None,
                        block: int = 32) -> DiagonalEstimate:
    """``diag(A) ≈ mean_i z_i ⊙ A z_i`` over ``matvecs`` Rademacher probes.

    With per-entry standard errors ``std / sqrt(matvecs)`` (exact entries for a diagonal A: every sample equals the
    diagonal).

    Args:
        op: the operator.
        matvecs: the number of probes (products).
        generator: draws them (on the CPU).
        block: probes per block product.

    Returns:
        A [`DiagonalEstimate`][lamda_ext.hessian.DiagonalEstimate].
    """
    budget, _, block = product_budget(matvecs, None, block)
    mean = torch.zeros(op.size, dtype=torch.float64)
    m2 = torch.zeros(op.size, dtype=torch.float64)       # sum of squared deviations (Chan et al.'s update)
    done = 0
    while done < budget:
        n = min(block, budget - done)
        Z = draw_probes(op, n, generator)
        s = (Z * op.matvec(Z)).to("cpu", torch.float64)
        b_mean = s.mean(dim=0)
        delta = b_mean - mean
        mean += delta * (n / (done + n))
        m2 += ((s - b_mean) ** 2).sum(dim=0) + delta * delta * (done * n / (done + n))
        done += n
    if done < 2:
        return DiagonalEstimate(mean, torch.full_like(mean, math.nan), "hutchinson", done)
    return DiagonalEstimate(mean, (m2 / (done - 1) / done).sqrt(), "hutchinson", done)
