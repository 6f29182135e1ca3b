"""Hutchinson's estimators with Rademacher probes z: the trace ``mean zᵀAz`` and the diagonal ``mean z ⊙ Az``.

Each ``zᵀAz`` is a quadratic form of the operator
([`HessianOperator.quadratic_forms`][lamda_ext.hessian.operator.HessianOperator.quadratic_forms]: for the Hessian a
second directional derivative, for the GGN-type curvatures a tangent forward; no product needed).
"""
from __future__ import annotations

import math
import warnings

import torch

from .estimates import (DiagonalEstimate, TraceEstimate, draw_probes, next_draw, product_budget, reached,
                        warn_unconverged)

__all__ = ["hutchinson_trace", "hutchinson_block_traces", "hutchinson_diagonal"]


def hutchinson_trace(op, *, matvecs: int | None = None, rtol: float | None = None,
                     generator: torch.Generator | None = None, block: int = 32) -> TraceEstimate:
    """``tr(A) ≈ mean_i z_iᵀ A z_i`` over Rademacher probes, drawn ``block`` at a time.

    Args:
        op: the operator (see [`lamda_ext.hessian.estimates`][lamda_ext.hessian.estimates]).
        matvecs: the number of probes (the product budget); default 100, or 10 000 with ``rtol``.
        rtol: stop once the standard error is at most ``rtol · |estimate|`` (checked after every call, from
            8 probes on; after the first block, each call draws what the spread so far asks:
            [`next_draw`][lamda_ext.hessian.estimates.next_draw]); a ``RuntimeWarning`` when the budget ends first.
        generator: draws the probes (on the CPU).
        block: probes per quadratic-form call.

    Returns:
        A [`TraceEstimate`][lamda_ext.hessian.TraceEstimate] (samples: the per-probe ``zᵀAz``).
    """
    budget, rtol, block = product_budget(matvecs, rtol, block)
    parts, done, step = [], 0, block
    while done < budget:
        n = min(step, budget - done)
        parts.append(op.quadratic_forms(draw_probes(op, n, generator)))
        done += n
        s = torch.cat(parts)
        if rtol is not None and s.numel() >= 2:
            t, se = float(s.mean()), float(s.std()) / math.sqrt(s.numel())
            if reached(t, se, s.numel(), rtol):
                break
            step = next_draw(t, se, s.numel(), rtol, block)
    s = torch.cat(parts)
    return warn_unconverged(TraceEstimate(float(s.mean()), s, "hutchinson", done, rtol=rtol))


def _block_columns(op, blocks: dict[str, list[str]]) -> dict[str, list[tuple[int, int]]]:
    """Each block's column ranges ``[lo, hi)`` of the operator's ``[K, P]`` rows (parameters in ``op.params`` order)."""
    at, lo = {}, 0
    for name, p in op.params.items():
        at[name] = (lo, lo + p.numel())
        lo += p.numel()
    return {b: [at[n] for n in names] for b, names in blocks.items()}


def hutchinson_block_traces(op, blocks: dict[str, list[str]], *, matvecs: int | None = None,
                            rtol: float | None = None, generator: torch.Generator | None = None,
                            block: int = 32) -> dict[str, TraceEstimate]:
    """The traces of the diagonal blocks ``A_bb``, all from the same Rademacher probes ``z`` of the whole space.

    Block b's sample is ``z_bᵀ (Az)_b``: unbiased for ``tr(A_bb)``, since ``E[z_bᵀ A_bc z_c] = 0`` for ``c ≠ b``. One
    product serves every block, so the blocks' estimates sum to the Hutchinson estimate of the whole trace from the
    same probes; the cross-block terms add to each block's variance (and to its standard error).

    Args:
        op: the operator.
        blocks: block name → the names of its parameters (keys of ``op.params``).
        matvecs: the number of probes (products); default 100, or 10 000 with ``rtol``.
        rtol: stop once every block's standard error is at most ``rtol ·`` its estimate (checked after every block
            of products); a ``RuntimeWarning`` names the blocks that miss it when the budget ends.
        generator: draws the probes (on the CPU).
        block: probes per block product.

    Returns:
        block name → [`TraceEstimate`][lamda_ext.hessian.TraceEstimate] (samples: the per-probe block forms), in
        the order of ``blocks``.
    """
    budget, rtol, block = product_budget(matvecs, rtol, block)
    cols = _block_columns(op, blocks)
    parts, done = [], 0
    while done < budget:
        n = min(block, budget - done)
        Z = draw_probes(op, n, generator)
        ZAZ = op.matvec(Z).mul_(Z)                                            # [n, P]: z ⊙ Az
        parts.append(torch.stack([sum(ZAZ[:, lo:hi].sum(dim=1, dtype=torch.float64) for lo, hi in ranges)
                                  for ranges in cols.values()], dim=1).cpu())  # [n, blocks]
        done += n
        S = torch.cat(parts)
        if rtol is not None and all(reached(float(c.mean()), float(c.std()) / math.sqrt(c.numel()), c.numel(), rtol)
                                    for c in S.t()):
            break
    S = torch.cat(parts)
    out = {b: TraceEstimate(float(S[:, j].mean()), S[:, j].clone(), "hutchinson", done, rtol=rtol)
           for j, b in enumerate(cols)}
    missed = [b for b, t in out.items() if not t.converged]
    if missed:
        warnings.warn(f"trace (hutchinson, per block): {len(missed)} of {len(out)} blocks above rtol={rtol:g} after "
                      f"{done} products (the budget): {', '.join(missed[:5])}{', ...' if len(missed) > 5 else ''}; "
                      "raise matvecs (a block whose trace is near zero against the others' curvature needs many)",
                      RuntimeWarning, stacklevel=3)
    return out


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
