"""Activations whose rule is more than one elementwise kind.

Smooth ones built from the recurrences (tanh-GELU, softplus with torch's threshold, ELU, softmax and log-softmax), and
the piecewise-linear ones (ReLU, leaky ReLU, abs, hardtanh, ReLU6, clamp, hardsigmoid, hardswish) that keep the degree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import recurrences
from ..series import TaylorSeries, is_series
from ..series_ops import from_terms, order, unary
from .arithmetic import add, mul, power
from .factories import piecewise_linear
from .selection import select_where

__all__ = ["gelu", "softplus", "elu", "log_softmax", "softmax", "relu", "leaky_relu", "absolute", "hardtanh",
           "relu6", "clamp", "hardsigmoid", "hardswish"]


def gelu(x, approximate="none"):
    """``F.gelu``: the exact form is an elementwise kind; the tanh form is composed from tanh."""
    if approximate == "none":
        return unary("gelu", x)
    if approximate == "tanh":   # 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))
        inner = mul(add(x, mul(power(x, 3), 0.044715)), math.sqrt(2.0 / math.pi))
        return mul(mul(x, 0.5), add(unary("tanh", inner), 1.0))
    raise ValueError(f"unknown gelu approximation {approximate!r}")


def softplus(x, beta=1.0, threshold=20.0):
    """``F.softplus(x, beta, threshold)``: the identity where ``beta·x`` exceeds the threshold, as torch."""
    y = unary("softplus", mul(x, beta) if beta != 1 else x)
    if beta != 1:
        y = mul(y, 1.0 / beta)
    linear = x.c0 * beta > threshold
    if bool(linear.any()):
        y = select_where(linear, x, y)
    return y


def elu(x, alpha=1.0, inplace=False):
    """Rule of ``F.elu``."""
    return unary("elu", x, float(alpha))


def log_softmax(x, dim=None, _stacklevel=3, dtype=None):
    """``log_softmax`` over ``dim``: the series minus a max-shifted log-sum-exp series.

    Raises:
        ValueError: no ``dim``.
    """
    if dim is None:
        raise ValueError("log_softmax needs an explicit dim in Taylor mode")
    n = order() + 1
    d = dim if dim >= 0 else dim + x.c0.dim()
    terms = [t.movedim(d if i == 0 else d + 1, -1) for i, t in enumerate(x.terms())]
    m = terms[0].detach().amax(dim=-1, keepdim=True)
    shifted = [terms[0] - m] + terms[1:]          # log_softmax(x) = (x − m) − log Σ e^(x − m): no cancellation
    e = recurrences.exp_list(shifted, n)
    lse = recurrences.log_list([c.sum(dim=-1, keepdim=True) for c in e], n)
    out = [(shifted[i] if i < len(shifted) else 0.0) - lse[i] for i in range(n)]
    return from_terms([o.movedim(-1, d if i == 0 else d + 1) for i, o in enumerate(out)])


def softmax(x, dim=None, _stacklevel=3, dtype=None):
    """Rule of ``softmax`` along ``dim``."""
    return unary("exp", log_softmax(x, dim))


def _open_interval(c, low, high):
    return ((c > low) & (c < high)).to(c.dtype)


def _clamp_slope(c, min=None, max=None):
    if is_series(min) or is_series(max):
        raise NotImplementedError("Taylor mode: clamp with series bounds has no rule; use backend='autograd'")
    inside = torch.ones_like(c, dtype=torch.bool)
    if min is not None:
        inside = inside & (c > min)
    if max is not None:
        inside = inside & (c < max)
    return inside.to(c.dtype)


relu = piecewise_linear(lambda c, inplace=False: (c > 0).to(c.dtype))
leaky_relu = piecewise_linear(lambda c, negative_slope=0.01, inplace=False:
                              torch.where(c > 0, torch.ones_like(c), torch.full_like(c, negative_slope)))
absolute = piecewise_linear(lambda c: torch.sign(c))
hardtanh = piecewise_linear(lambda c, min_val=-1.0, max_val=1.0, inplace=False: _open_interval(c, min_val, max_val),
                            lambda c, min_val=-1.0, max_val=1.0, inplace=False: F.hardtanh(c, min_val, max_val))
relu6 = piecewise_linear(lambda c, inplace=False: _open_interval(c, 0.0, 6.0),
                         lambda c, inplace=False: F.hardtanh(c, 0.0, 6.0))
clamp = piecewise_linear(_clamp_slope, lambda c, min=None, max=None: torch.clamp(c, min, max))
hardsigmoid = piecewise_linear(lambda c, inplace=False: _open_interval(c, -3.0, 3.0) / 6.0,
                               lambda c, inplace=False: F.hardsigmoid(c))


def hardswish(x, inplace=False):
    """``F.hardswish``: ``x (x + 3) / 6`` on (-3, 3), x above, 0 below (quadratic in the middle piece).

    The primal exactly as torch computes it.
    """
    mid = (x.c0 > -3.0) & (x.c0 < 3.0)
    q = mul(mul(x, add(x, 3.0)), 1.0 / 6.0)
    out = select_where(mid, q, select_where(x.c0 >= 3.0, x, torch.zeros_like(x.c0)))
    return TaylorSeries(F.hardswish(x.c0), out.hi)
