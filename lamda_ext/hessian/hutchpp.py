"""Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the trace of a low-rank sketch exactly, Hutchinson on the rest.

The sketch ``Q = orth(A S)`` (Rademacher S) comes from block products ``A @ [s, P]``. Its trace ``tr(QᵀAQ) =
Σ_i q_iᵀ A q_i`` needs only the diagonal of ``QᵀAQ``: s quadratic forms, which the operator evaluates without a
product where its curvature allows (the Hessian's second directional derivatives, the GGN's tangent forwards: about
half a product's arithmetic; see
[`HessianOperator.quadratic_forms`][lamda_ext.hessian.operator.HessianOperator.quadratic_forms]). Rademacher probes g
are deflated, ``g_⊥ = g − Qᵀ(Q g)``, and their quadratic forms ``d = g_⊥ᵀ A g_⊥`` estimate the trace of the rest,
``tr((I − QQᵀ) A (I − QQᵀ))``. The standard error is that of the deflated forms (the sketched part is exact given Q).
Each of the three parts counts one operator use per row in ``matvecs``.

With a budget only (``matvecs``), a third of it sketches and a third measures the sketch, as in the paper.

With an ``rtol`` target the sketch size adapts. The sketch's own vectors give plain Hutchinson samples ``sᵀ(As)``
without more work. After each pilot block of deflated probes the sketch doubles while the remaining probes the target
needs exceed four times the doubling's cost and the last doubling (the first sketch: against the plain samples) at
least halved the per-probe variance. Deflation can also spread the samples more than it removes (a near-diagonal A
gains off-diagonal mass under the projection); where the deflated forms vary more than the plain samples, the
estimate is plain Hutchinson (``sketch = 0`` in the result): on the sketch's samples and new undeflated probes.
Probes are then added, as many as the spread so far asks (at most a block at a time,
[`next_draw`][lamda_ext.hessian.estimates.next_draw]), until the standard error is at most ``rtol · |estimate|``.
"""
from __future__ import annotations

import math

import torch

from .estimates import (TraceEstimate, apply_blocks, draw_probes, extend_basis, next_draw, product_budget, reached,
                        rowdot64, warn_unconverged)

__all__ = ["hutchpp_trace", "Sketch"]


class Sketch:
    """The sketch of Hutch++ for the operator ``op``.

    Orthonormal rows Q ``[r, P]`` (the operator's dtype and device), their quadratic forms ``q_iᵀAq_i`` ``[r]``
    (float64, CPU) and the operator uses taken (``matvecs``); grown by
    [`grow`][lamda_ext.hessian.hutchpp.Sketch.grow], probed by [`probe`][lamda_ext.hessian.hutchpp.Sketch.probe].
    """

    def __init__(self, op, block: int):
        self.op, self.block = op, block
        self.Q = torch.zeros(0, op.size, dtype=op.dtype, device=op.device)
        self.forms = torch.zeros(0, dtype=torch.float64)
        self.matvecs = 0

    @property
    def trace(self) -> float:
        """``tr(QᵀAQ)`` of the sketch, the exactly traced part."""
        return float(self.forms.sum())

    def grow(self, S: torch.Tensor) -> torch.Tensor:
        """Add the part of ``range(A S)`` not yet in Q (``S`` ``[s, P]``); the plain samples ``sᵀAs`` ``[s]``."""
        Y = apply_blocks(self.op.matvec, S, self.block)
        Qn = extend_basis(self.Q, Y)
        if Qn.shape[0]:
            self.forms = torch.cat([self.forms, apply_blocks(self.op.quadratic_forms, Qn, self.block)])
            self.Q = torch.cat([self.Q, Qn])
        self.matvecs += S.shape[0] + Qn.shape[0]
        return rowdot64(S, Y)

    def probe(self, G: torch.Tensor) -> torch.Tensor:
        """The deflated forms ``g_⊥ᵀ A g_⊥`` ``[g]`` (float64, CPU) of probes ``G`` ``[g, P]``."""
        Gp = (G - (G @ self.Q.t()) @ self.Q).contiguous() if self.Q.shape[0] else G
        return apply_blocks(self.op.quadratic_forms, Gp, self.block)


def _stats(samples: torch.Tensor, offset: float) -> tuple[float, float]:
    """(offset + mean, standard error) of the samples."""
    n = samples.numel()
    se = float(samples.std()) / math.sqrt(n) if n >= 2 else math.inf
    return offset + float(samples.mean()), se


def _grow_adaptively(op, sk: Sketch, plain: list, rtol: float, budget: int, generator, block: int) -> torch.Tensor:
    """Double the sketch while it pays (module docstring).

    The last pilot's deflated forms (``plain`` collects the sketch's plain samples).
    """
    prev_var = None
    while True:
        g = min(block, budget - sk.matvecs)
        d = sk.probe(draw_probes(op, g, generator))
        sk.matvecs += g
        t, _ = _stats(d, sk.trace)
        var = float(d.var()) if d.numel() >= 2 else math.inf
        base = float(torch.cat(plain).var()) if prev_var is None else prev_var
        need = var / (rtol * abs(t)) ** 2 if t != 0 else math.inf
        grow = sk.Q.shape[0] or block
        pays = need - d.numel() > 4 * grow and var < base / 2
        fits = sk.matvecs + 2 * grow + block <= budget and sk.Q.shape[0] + grow <= op.size
        if not (pays and fits):
            return d
        prev_var = var            # the pilot's deflated forms go with the old sketch
        plain.append(sk.grow(draw_probes(op, grow, generator)))


def hutchpp_trace(op, *, matvecs: int | None = None, rtol: float | None = None,
                  generator: torch.Generator | None = None, block: int = 32) -> TraceEstimate:
    """``tr(A)`` by Hutch++ (module docstring).

    Args:
        op: the operator (see [`lamda_ext.hessian.estimates`][lamda_ext.hessian.estimates]).
        matvecs: the product budget (≥ 3; default 100, or 10 000 with ``rtol``).
        rtol: the target relative standard error (adaptive sketch and probes); a ``RuntimeWarning`` when the
            budget ends first.
        generator: draws the sketch and the probes (on the CPU).
        block: rows per block product, probes per pilot.

    Returns:
        A [`TraceEstimate`][lamda_ext.hessian.TraceEstimate] (samples: the deflated quadratic forms, or the plain
        samples when the estimate is plain Hutchinson; sketch: the rank of Q used, 0 in that case).
    """
    budget, rtol, block = product_budget(matvecs, rtol, block)
    if budget < 3:
        raise ValueError(f"hutch++ needs matvecs ≥ 3, got {budget}")
    sk = Sketch(op, block)
    if rtol is None:
        s = budget // 3
        S = draw_probes(op, s, generator)
        G = draw_probes(op, budget - 2 * s, generator)
        sk.grow(S)
        rest = sk.probe(G)
        return TraceEstimate(sk.trace + float(rest.mean()), rest, "hutch++", S.shape[0] + G.shape[0],
                             matvecs=sk.matvecs + G.shape[0], sketch=sk.Q.shape[0])
    plain = [sk.grow(draw_probes(op, min(block, budget // 3), generator))]
    rest = _grow_adaptively(op, sk, plain, rtol, budget, generator, block)
    plain = torch.cat(plain)
    use_sketch = rest.numel() >= 2 and float(rest.var()) < float(plain.var())
    while True:
        t, se = _stats(rest, sk.trace) if use_sketch else _stats(plain, 0.0)
        n = rest.numel() if use_sketch else plain.numel()
        if reached(t, se, n, rtol) or sk.matvecs >= budget:
            break
        G = draw_probes(op, min(next_draw(t, se, n, rtol, block), budget - sk.matvecs), generator)
        sk.matvecs += G.shape[0]
        if use_sketch:
            rest = torch.cat([rest, sk.probe(G)])
        else:
            plain = torch.cat([plain, op.quadratic_forms(G)])
    samples = rest if use_sketch else plain
    probes = sk.matvecs - sk.Q.shape[0]        # every operator use but the sketch's forms drew a probe
    return warn_unconverged(TraceEstimate(t, samples, "hutch++", probes, std_error=se, matvecs=sk.matvecs,
                                          sketch=sk.Q.shape[0] if use_sketch else 0, rtol=rtol))
