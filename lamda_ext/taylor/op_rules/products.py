"""Products of any rank (``matmul`` and its batched forms, ``einsum``).

The coefficients of a multilinear op of several series are sums of the op over index tuples (the Cauchy product).
"""
from __future__ import annotations

from typing import Callable, List

import torch

from ..series import TaylorSeries, is_series
from ..series_ops import align, from_terms, ndim_of, order
from .arithmetic import add, mul
from .shape import reshape, squeeze, unsqueeze

__all__ = ["cauchy", "matmul", "rmatmul", "baddbmm", "einsum"]


def cauchy(term_lists: List[list], op: Callable) -> list:
    """Coefficients of a multilinear op of several series, truncated at the run's order.

    Args:
        term_lists: per operand, its terms ``[c0, c1, ...]`` (a constant: ``[c0]``).
        op: ``op(terms, idx)`` → the op on one term of each operand; ``idx`` the terms' indices.

    Returns:
        ``[y0, y1, ...]`` with ``y_n = Σ_{idx summing to n} op(terms[idx], idx)``.
    """
    lens = [len(t) for t in term_lists]
    n_out = min(order() + 1, sum(lens) - len(lens) + 1)
    out = []

    def tuples(i, remaining):
        if i == len(lens) - 1:
            if remaining < lens[i]:
                yield (remaining,)
            return
        for j in range(min(remaining, lens[i] - 1) + 1):
            for rest in tuples(i + 1, remaining - j):
                yield (j,) + rest

    for n in range(n_out):
        acc = None
        for idx in tuples(0, n):
            term = op([tl[j] for tl, j in zip(term_lists, idx)], idx)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _stacked(terms: list, has_k: list, dim: int) -> torch.Tensor:
    """Terms concatenated along ``dim``; a term without the direction axis (a primal) gets it, broadcast."""
    shaped = [t if k else t.unsqueeze(0) for t, k in zip(terms, has_k)]
    lead = torch.broadcast_shapes(*(t.shape[:-2] for t in shaped))
    return torch.cat([t.expand(lead + t.shape[-2:]) for t in shaped], dim=dim)


def _matmul_terms(ta: list, tb: list) -> list:
    """Coefficients of ``a @ b`` for two series.

    ``y_n = Σ_i a_i @ b_{n−i}``. Where a product is larger than its factors (``q @ kᵀ`` in attention: [T, d] @ [d, T]),
    the terms of one order are one matmul over the concatenated contraction, ``[a_0 … a_n] @ [b_n; …; b_0]``: one output
    written instead of n + 1 summed.
    """
    m, p, q = ta[0].shape[-2], ta[0].shape[-1], tb[0].shape[-1]
    grown = m * q > p * (m + q)
    out = [torch.matmul(ta[0], tb[0])]
    for n in range(1, min(order() + 1, len(ta) + len(tb) - 1)):
        pairs = [(i, n - i) for i in range(max(0, n - len(tb) + 1), min(n, len(ta) - 1) + 1)]
        if grown and len(pairs) > 1:
            out.append(torch.matmul(_stacked([ta[i] for i, _ in pairs], [i > 0 for i, _ in pairs], -1),
                                    _stacked([tb[j] for _, j in pairs], [j > 0 for _, j in pairs], -2)))
            continue
        acc = None
        for i, j in pairs:
            t = torch.matmul(ta[i], tb[j])
            acc = t if acc is None else acc + t
        out.append(acc)
    return out


def _product(a, b, op: Callable):
    """A bilinear op that broadcasts over leading dims, with at most one operand a series."""
    if not is_series(b):
        return TaylorSeries(op(a.c0, b), op(a.hi, b))
    return TaylorSeries(op(a, b.c0), op(a, b.hi))


def matmul(a, b):
    """``torch.matmul`` (and ``mm``, ``bmm``) of series and constants, with torch's 1-D promotion rules."""
    ra, rb = ndim_of(a), ndim_of(b)
    if ra == 0 or rb == 0:
        raise RuntimeError("both arguments to matmul need to be at least 1D")
    if ra == 1:
        a = unsqueeze(a, 0) if is_series(a) else a.unsqueeze(0)
    if rb == 1:
        b = unsqueeze(b, -1) if is_series(b) else b.unsqueeze(-1)
    nd = max(ndim_of(a), ndim_of(b))
    a = align(a, nd) if is_series(a) else a.reshape((1,) * (nd - a.dim()) + tuple(a.shape))
    b = align(b, nd) if is_series(b) else b.reshape((1,) * (nd - b.dim()) + tuple(b.shape))
    if is_series(a) and is_series(b):
        out = from_terms(_matmul_terms(a.terms(), b.terms()))
    else:
        out = _product(a, b, torch.matmul)
    if ra == 1 and rb == 1:
        return reshape(out, ())
    if rb == 1:
        out = squeeze(out, -1)
    if ra == 1:
        out = squeeze(out, -2)
    return out


def rmatmul(a, b):
    """``b @ a`` (the reflected ``__rmatmul__``)."""
    return matmul(b, a)


def baddbmm(input, b1, b2, beta=1, alpha=1):
    """``beta·input + alpha·(b1 @ b2)`` (``baddbmm``, ``addmm``, ``addbmm``)."""
    prod = matmul(b1, b2)
    if alpha != 1:
        prod = mul(prod, alpha)
    if beta == 0:
        return prod
    return add(mul(input, beta) if beta != 1 else input, prod)


def _einsum_with_k(eq: str, has_k) -> str:
    """Add a direction axis (a fresh letter) to the operands that carry one, and to the output."""
    lhs, arrow, rhs = eq.replace(" ", "").partition("->")
    ops = lhs.split(",")
    if not arrow:
        letters = [c for c in lhs.replace(",", "").replace(".", "") if c.isalpha()]
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    used = set(eq)
    z = next(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if c not in used)
    ops = [(z + o) if k else o for o, k in zip(ops, has_k)]
    return ",".join(ops) + "->" + (z + rhs if any(has_k) else rhs)


def einsum(eq, *operands):
    """``torch.einsum`` of series and constants.

    Each term of the Cauchy product is one einsum, with a direction axis on the operands whose term carries one.
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    term_lists = [x.terms() if is_series(x) else [x] for x in operands]
    eqs = {}

    def op(ts, idx):
        key = tuple(j > 0 for j in idx)
        if key not in eqs:
            eqs[key] = _einsum_with_k(eq, key)
        return torch.einsum(eqs[key], *ts)

    return from_terms(cauchy(term_lists, op))
