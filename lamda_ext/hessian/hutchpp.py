"""Hutch++ (Meyer, Musco, Musco, Woodruff 2021): the trace of a low-rank sketch exactly, Hutchinson on the rest.

The sketch ``Q = orth(A S)`` (Rademacher S) comes from block products ``A @ [s, P]``; ``tr(QᵀAQ)`` takes s more
products; Rademacher probes G are deflated, ``G − (G Qᵀ) Q``, and their quadratic forms estimate the trace of the
rest, ``tr((I − QQᵀ) A (I − QQᵀ))``. The standard error is that of the deflated forms (the sketched part is exact
given Q).

With a budget only (``matvecs``), a third of it sketches and a third measures the sketch, as in the paper. With an
``rtol`` target the sketch grows adaptively: after each growth a pilot block of deflated probes estimates their
variance and so the probes the target still needs; the sketch doubles while those probes exceed four times the
doubling's cost and the last doubling at least halved the variance, then deflated probes are drawn block by block
until the standard error is at most ``rtol · |estimate|``.
"""
from __future__ import annotations

import math

import torch

from .estimates import (TraceEstimate, apply_blocks, draw_probes, extend_basis, gram64, product_budget, reached,
                        warn_unconverged)

__all__ = ["hutchpp_trace"]


class _Sketch:
    """The orthonormal rows Q ``[r, P]`` of the sketch, ``tr(QᵀAQ)`` and the products they took."""

    def __init__(self, op, block: int):
        self.op, self.block = op, block
        self.Q = torch.zeros(0, op.size, dtype=op.dtype, device=op.device)
        self.trace = 0.0
        self.matvecs = 0

    def grow(self, S: torch.Tensor) -> None:
        """Add the part of ``range(A S)`` not yet in Q (``S`` ``[s, P]``)."""
        Qn = extend_basis(self.Q, apply_blocks(self.op, S, self.block))
        if Qn.shape[0]:
            self.trace += float(torch.diagonal(gram64(Qn, apply_blocks(self.op, Qn, self.block))).sum())
        self.Q = torch.cat([self.Q, Qn])
        self.matvecs += S.shape[0] + Qn.shape[0]

    def deflated_forms(self, G: torch.Tensor) -> torch.Tensor:
        """Quadratic forms of the probes ``G`` ``[g, P]`` with Q's span projected out → ``[g]`` float64."""
        Gp = G - (G @ self.Q.t()) @ self.Q if self.Q.shape[0] else G
        return self.op.quadratic_forms(Gp.contiguous())


def _stats(sk: _Sketch, rest: torch.Tensor) -> tuple[float, float]:
    """(estimate, standard error) from the sketch and the deflated forms so far."""
    n = rest.numel()
    se = float(rest.std()) / math.sqrt(n) if n >= 2 else math.inf
    return sk.trace + float(rest.mean()), se


def _grow_adaptively(op, sk: _Sketch, rtol: float, budget: int, generator, block: int) -> torch.Tensor:
    """Double the sketch while it pays (module docstring); the last pilot's deflated forms."""
    prev_var = None
    while True:
        g = min(block, budget - sk.matvecs)
        rest = sk.deflated_forms(draw_probes(op, g, generator))
        t, _ = _stats(sk, rest)
        var = float(rest.var()) if rest.numel() >= 2 else math.inf
        need = var / (rtol * abs(t)) ** 2 if t != 0 else math.inf
        grow = sk.Q.shape[0] or block
        pays = need - rest.numel() > 4 * grow and (prev_var is None or var < prev_var / 2)
        fits = sk.matvecs + g + 2 * grow + block <= budget and sk.Q.shape[0] + grow <= op.size
        if not (pays and fits):
            sk.matvecs += g
            return rest
        sk.matvecs += g          # the pilot's products are spent; its probes were deflated by the old sketch
        prev_var = var
        sk.grow(draw_probes(op, grow, generator))


def hutchpp_trace(op, *, matvecs: int | None = None, rtol: float | None = None,
                  generator: torch.Generator | None = None, block: int = 32) -> TraceEstimate:
    """``tr(A)`` by Hutch++ (module docstring).

    Args:
        op: the operator (see :mod:`lamda_ext.hessian.estimates`).
        matvecs: the product budget (≥ 3; default 100, or 10 000 with ``rtol``).
        rtol: the target relative standard error (adaptive sketch and probes); a ``RuntimeWarning`` when the
            budget ends first.
        generator: draws the sketch and the probes (on the CPU). block: rows per block product, probes per pilot.

    Returns:
        A :class:`~lamda_ext.hessian.TraceEstimate` (samples: the deflated quadratic forms; sketch: the rank of Q).
    """
    budget, rtol, block = product_budget(matvecs, rtol, block)
    if budget < 3:
        raise ValueError(f"hutch++ needs matvecs ≥ 3, got {budget}")
    sk = _Sketch(op, block)
    if rtol is None:
        s = budget // 3
        S = draw_probes(op, s, generator)
        G = draw_probes(op, budget - 2 * s, generator)
        sk.grow(S)
        rest = sk.deflated_forms(G)
        return TraceEstimate(sk.trace + float(rest.mean()), rest, "hutch++", S.shape[0] + G.shape[0],
                             matvecs=sk.matvecs + G.shape[0], sketch=sk.Q.shape[0])
    sk.grow(draw_probes(op, min(block, budget // 3), generator))
    rest = _grow_adaptively(op, sk, rtol, budget, generator, block)
    while True:
        t, se = _stats(sk, rest)
        if reached(t, se, rest.numel(), rtol) or sk.matvecs >= budget:
            break
        g = min(block, budget - sk.matvecs)
        rest = torch.cat([rest, sk.deflated_forms(draw_probes(op, g, generator))])
        sk.matvecs += g
    probes = sk.matvecs - sk.Q.shape[0]        # every product but the sketch's measurement drew a probe
    return warn_unconverged(TraceEstimate(t, rest, "hutch++", probes, matvecs=sk.matvecs, sketch=sk.Q.shape[0],
                                          rtol=rtol))
