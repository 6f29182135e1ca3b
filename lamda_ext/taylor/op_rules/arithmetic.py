"""Arithmetic on series and constants.

Sums keep the larger degree, products add degrees (truncated at the run's order), quotients and real powers raise the
degree to the order.
"""
from __future__ import annotations

import torch

from .. import recurrences
from ..series import TaylorSeries, is_series
from ..series_ops import align, from_terms, ndim_of, order

__all__ = ["add", "radd", "sub", "rsub", "neg", "mul", "div", "rdiv", "power", "square", "sqrt", "rsqrt",
           "reciprocal"]


def add(a, b, alpha=1):
    """``a + alpha·b`` for series or constants (at least one a series)."""
    if alpha != 1:
        b = mul(b, alpha)
    nd = max(ndim_of(a), ndim_of(b))
    a, b = align(a, nd), align(b, nd)
    if not is_series(a):
        a, b = b, a
    if not is_series(b):
        c0 = a.c0 + b
        return TaylorSeries(c0, a.hi)
    da, db = a.degree, b.degree
    if da < db:
        a, b, da, db = b, a, db, da
    if db < da:   # the lower-degree operand adds into the first db coefficients (shapes broadcast)
        shape = torch.broadcast_shapes(a.c0.shape, b.c0.shape)
        k = max(a.hi.shape[1], b.hi.shape[1])
        hi = a.hi.expand((da, k) + tuple(shape)).clone()
        hi[:db] = hi[:db] + b.hi
    else:
        hi = a.hi + b.hi
    return TaylorSeries(a.c0 + b.c0, hi)


def radd(a, b):
    """``b + a`` (the reflected ``__radd__``)."""
    return add(b, a)


def neg(a):
    """Rule of ``neg``."""
    return TaylorSeries(-a.c0, -a.hi) if is_series(a) else -a


def sub(a, b, alpha=1):
    """``a − alpha·b``."""
    return add(a, neg(b) if alpha == 1 else mul(b, -alpha))


def rsub(a, b, alpha=1):
    """``b − alpha·a`` (``torch.rsub`` and the reflected ``__rsub__``)."""
    return sub(b, a) if alpha == 1 else sub(b, mul(a, alpha))


def mul(a, b):
    """``a · b``: the Cauchy product of two series, or every coefficient times a constant."""
    nd = max(ndim_of(a), ndim_of(b))
    a, b = align(a, nd), align(b, nd)
    if not is_series(a):
        a, b = b, a
    if not is_series(b):
        return TaylorSeries(a.c0 * b, a.hi * b)
    return from_terms(recurrences.mul_list(a.terms(), b.terms(), order() + 1))


def div(a, b, rounding_mode=None):
    """``a / b``.

    Raises:
        NotImplementedError: a ``rounding_mode`` (the result is piecewise constant).
    """
    if rounding_mode is not None:
        raise NotImplementedError(f"Taylor mode: division with rounding_mode={rounding_mode!r} is not differentiable")
    if not is_series(b):
        return mul(a, 1.0 / b)
    return mul(a, from_terms(recurrences.recip_list(b.terms(), order() + 1)))


def rdiv(a, b):
    """``b / a`` (the reflected ``__rtruediv__``)."""
    return div(b, a)


def power(a, e):
    """``a ** e`` for a constant exponent: repeated products for a non-negative integer, the power recurrence else.

    Raises:
        NotImplementedError: a series exponent, or a tensor exponent with more than one element.
    """
    if is_series(e):
        raise NotImplementedError("Taylor mode: a series as exponent (x ** series) has no rule; use backend='autograd'")
    if isinstance(e, torch.Tensor):
        if e.numel() != 1:
            raise NotImplementedError("Taylor mode: pow with a tensor exponent has no rule; use backend='autograd'")
        e = e.item()
    if float(e).is_integer() and e >= 0:
        out = 1.0
        for _ in range(int(e)):
            out = a if isinstance(out, float) else mul(out, a)
        return out if not isinstance(out, float) else torch.ones_like(a.c0)
    return from_terms(recurrences.pow_list(a.terms(), float(e), order() + 1))


def square(a):
    """Rule of ``square``."""
    return mul(a, a)


def sqrt(a):
    """Rule of ``sqrt``."""
    return power(a, 0.5)


def rsqrt(a):
    """Rule of ``rsqrt``."""
    return power(a, -0.5)


def reciprocal(a):
    """Rule of ``reciprocal``."""
    return from_terms(recurrences.recip_list(a.terms(), order() + 1))
