"""Rule factories: one per family of ops whose Taylor rule has the same shape.

Each factory takes what differs between the ops of its family (a torch function, a tensor method name, a slope)
and returns the rule ``rule(*args, **kwargs)`` that [`lamda_ext.taylor.op_table`][lamda_ext.taylor.op_table] registers:

- [`elementwise`][lamda_ext.taylor.op_rules.factories.elementwise]: a smooth elementwise function with a derivative
  recurrence (a kind of [`lamda_ext.taylor.recurrences.UNARY`][lamda_ext.taylor.recurrences.UNARY]); raises the degree
  to the run's order.
- [`on_shifted_dims`][lamda_ext.taylor.op_rules.factories.on_shifted_dims]: an op linear in the series that moves,
  splits or selects elements along dims (a shape op): the same tensor method on the primal and on ``hi`` with every dim
      argument shifted past (D, K).
- [`per_sample_linear`][lamda_ext.taylor.op_rules.factories.per_sample_linear]: a linear op on ``[batch, ...]`` (average
  pooling): every coefficient folded into the batch.
- [`reduction`][lamda_ext.taylor.op_rules.factories.reduction]: a linear reduction over dims (sum, mean).
- [`piecewise_linear`][lamda_ext.taylor.op_rules.factories.piecewise_linear]: a function linear on pieces chosen by the
  primal (ReLU, clamp, ...): coefficients scaled by the slope of the piece.
- [`dropout_mask`][lamda_ext.taylor.op_rules.factories.dropout_mask]: a random mask drawn once, as the op draws it for
  the primal, applied to every coefficient.
- [`primal_only`][lamda_ext.taylor.op_rules.factories.primal_only]: an op whose result carries no derivative
  (comparisons, argmax, sign): the primal's result.
- [`constant_like`][lamda_ext.taylor.op_rules.factories.constant_like]: a constant built from the primal's metadata
  (``zeros_like``, ``new_ones``, ...).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..series import TaylorSeries, is_series
from ..series_ops import map_batched, scale_by, unary

__all__ = ["elementwise", "on_shifted_dims", "per_sample_linear", "reduce", "reduction", "piecewise_linear",
           "dropout_mask", "primal_only", "constant_like"]


def elementwise(kind: str) -> Callable:
    """Rule of the op named ``kind`` in [`UNARY`][lamda_ext.taylor.recurrences.UNARY].

    Its extra arguments, such as ``inplace``, do not change the value.
    """
    def rule(x, *args, **kwargs):
        return unary(kind, x)
    return rule


def on_shifted_dims(method: str, hi_args: Callable) -> Callable:
    """Rule of a shape op given by the tensor method ``method``.

    Args:
        method: a ``torch.Tensor`` method linear in its tensor (``"unsqueeze"``, ``"narrow"``, ``"chunk"``, ...).
        hi_args: ``hi_args(ndim, *args, **kwargs)`` → the positional arguments of ``method`` on ``hi``
            ``[D, K, *S]`` given the op's own arguments and the primal's ``ndim``: every dim shifted by
            [`shift_dim`][lamda_ext.taylor.series_ops.shift_dim], the other arguments as given.

    Returns:
        The rule: the method with the op's arguments on the primal, with ``hi_args`` on ``hi``; a tuple of
        series when the method returns several tensors (``chunk``, ``split``, ``unbind``).
    """
    def rule(x, *args, **kwargs):
        c0 = getattr(x.c0, method)(*args, **kwargs)
        hi = getattr(x.hi, method)(*hi_args(x.c0.dim(), *args, **kwargs))
        if isinstance(c0, (tuple, list)):
            return tuple(TaylorSeries(a, b) for a, b in zip(c0, hi))
        return TaylorSeries(c0, hi)
    return rule


def per_sample_linear(fn: Callable) -> Callable:
    """Rule of a linear op ``fn(t [batch, ...], *args, **kwargs)`` (pooling): all coefficients in one call."""
    def rule(x, *args, **kwargs):
        return map_batched(x, lambda t: fn(t, *args, **kwargs))
    return rule


def _dims(dim, ndim: int) -> list:
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        dim = [dim]
    return sorted(d + ndim if d < 0 else d for d in dim)


def reduce(x: TaylorSeries, fn: Callable, dim=None, keepdim: bool = False) -> TaylorSeries:
    """``fn(x, dim, keepdim)`` for a linear reduction ``fn`` (``torch.sum``, ``torch.mean``) on every coefficient.

    Args:
        x: the series.
        fn: ``torch.sum`` or ``torch.mean`` (any reduction linear in its input).
        dim: an int, a sequence of ints or None (all dims).
        keepdim: as torch.
    """
    dims = _dims(dim, x.c0.dim())
    if not dims:
        return x
    c0 = fn(x.c0, dim=dims, keepdim=keepdim)
    hi = fn(x.hi, dim=[d + 2 for d in dims], keepdim=keepdim)
    return TaylorSeries(c0, hi)


def reduction(fn: Callable) -> Callable:
    """Rule of a linear reduction with torch's ``(x, dim=None, keepdim=False, dtype=None)`` signature."""
    def rule(x, dim=None, keepdim=False, dtype=None):
        return reduce(x, fn, dim, keepdim)
    return rule


def piecewise_linear(slope: Callable, primal: Optional[Callable] = None) -> Callable:
    """Rule of a function linear on pieces.

    Args:
        slope: ``slope(c0, *args, **kwargs)`` → the slope of the piece each primal entry lies on (a tensor
            broadcastable to the primal).
        primal: ``primal(c0, *args, **kwargs)`` → the op's value computed as the model's op computes it (so ties
            and signed zeros match); None: the primal is scaled by the slope too (ReLU, abs).

    Both take the op's own arguments (an ``inplace`` flag among them must be accepted and ignored: the dispatcher
    commits in-place results).
    """
    def rule(x, *args, **kwargs):
        m = slope(x.c0, *args, **kwargs)
        if primal is None:
            return scale_by(x, m)
        return TaylorSeries(primal(x.c0, *args, **kwargs), x.hi * m)
    return rule


def dropout_mask(fn: Callable) -> Callable:
    """Rule of a dropout op ``fn(t, p, training)`` (``F.dropout``, ``F.dropout2d``, ...).

    One mask for every coefficient, drawn as ``fn`` draws it for the primal; the identity when not training or ``p ==
    0``.
    """
    def rule(x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return x
        return scale_by(x, fn(torch.ones_like(x.c0), p, True))
    return rule


def primal_only(fn: Callable) -> Callable:
    """Rule of an op whose result carries no derivative: ``fn`` on the primals of its arguments."""
    def rule(*args, **kwargs):
        return fn(*(a.c0 if is_series(a) else a for a in args), **kwargs)
    return rule


def constant_like(fn: Callable) -> Callable:
    """Rule of a constructor like ``zeros_like``/``new_ones``: a constant (degree 0) from the primal's metadata."""
    def rule(x, *args, **kwargs):
        return fn(x.c0, *args, **kwargs)
    return rule
