"""Helpers on Taylor series that the op rules share.

Building a series from coefficients, aligning and padding operands, and applying a linear map to every coefficient.

Conventions: a series has the primal ``c0`` ``[*S]`` and higher coefficients ``hi`` ``[D, K, *S]``; its term list
is ``[c0, c1, ..., cD]`` with ``c_n`` ``[K or 1, *S]`` (they broadcast). A plain tensor is a constant, a series of
degree 0. Padding with zero coefficients is [`lamda_ext.taylor.series.pad_coeffs`][lamda_ext.taylor.series.pad_coeffs].
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .series import TaylorSeries, current_context, is_series, pad_coeffs

__all__ = ["order", "unary", "from_terms", "align", "ndim_of", "terms_of", "padded_terms", "hi_at", "map_linear",
           "map_batched", "scale_by", "shift_dim", "constant_index"]


def order() -> int:
    """The current run's truncation order N (a series holds at most N + 1 coefficients)."""
    return current_context().order


def unary(kind: str, x: TaylorSeries, alpha: float = 1.0) -> TaylorSeries:
    """``f(x)`` for the elementwise function ``kind`` of `lamda_ext.taylor.recurrences.UNARY`, to order N.

    By the run's implementation (composite recurrences or fused kernels). ``alpha`` is ELU's.
    """
    return current_context().impl.unary(kind, x, order() + 1, alpha)


def from_terms(terms: Sequence[torch.Tensor]):
    """Build a series from ``[c0, c1, ...]`` (c0 ``[*S]``; the others ``[K, *S]``, broadcastable).

    Returns:
        ``c0`` itself when it is the only term (a constant), else a
        [`TaylorSeries`][lamda_ext.taylor.series.TaylorSeries] of degree ``len(terms) - 1`` over the broadcast shape.
    """
    c0 = terms[0]
    if len(terms) == 1:
        return c0
    shape = torch.broadcast_shapes(c0.shape, *(t.shape[1:] for t in terms[1:]))
    k = max(t.shape[0] for t in terms[1:])
    if len(terms) == 2:     # one coefficient: a view, no copy
        hi = terms[1].expand((k,) + tuple(shape)).unsqueeze(0)
    else:
        hi = torch.stack([t.expand((k,) + tuple(shape)) for t in terms[1:]])
    return TaylorSeries(c0.expand(shape), hi)


def align(x, ndim: int):
    """Give a series ``ndim`` primal dims by prepending singleton dims (so terms broadcast right-aligned)."""
    if not is_series(x) or x.c0.dim() >= ndim:
        return x
    extra = ndim - x.c0.dim()
    c0 = x.c0.reshape((1,) * extra + tuple(x.c0.shape))
    hi = x.hi.reshape(tuple(x.hi.shape[:2]) + (1,) * extra + tuple(x.c0.shape))
    return TaylorSeries(c0, hi)


def ndim_of(x) -> int:
    """Primal dims of a series, dims of a tensor, 0 for a Python number."""
    if is_series(x):
        return x.c0.dim()
    return x.dim() if isinstance(x, torch.Tensor) else 0


def terms_of(x) -> list:
    """``[c0, c1, ..., cD]`` of a series; ``[x]`` for a constant."""
    return x.terms() if is_series(x) else [x]


def padded_terms(x, degree: int) -> list:
    """``[c0, c1, ..., c_degree]`` of a series or a constant tensor, zero past its own degree.

    Args:
        x: a [`TaylorSeries`][lamda_ext.taylor.series.TaylorSeries] of degree ≤ ``degree`` or a tensor ``[*S]``.
        degree: the last coefficient wanted.

    Returns:
        c0 ``[*S]``, then ``degree`` coefficients ``[K or 1, *S]``.
    """
    if is_series(x):
        return [x.c0] + list(pad_coeffs(x.hi, degree).unbind(0))
    return [x] + list(x.new_zeros((degree, 1) + tuple(x.shape)).unbind(0))


def hi_at(x, degree: int, k: int) -> torch.Tensor:
    """Higher coefficients of a series or a constant tensor as ``[degree, k, *S]`` (zeros past its degree)."""
    if not is_series(x):
        return x.new_zeros((degree, k) + tuple(x.shape))
    return pad_coeffs(x.hi, degree).expand((degree, k) + tuple(x.c0.shape))


def map_linear(x: TaylorSeries, f_primal: Callable, f_folded: Callable) -> TaylorSeries:
    """Apply a linear map: ``f_primal`` to c0, ``f_folded`` to hi viewed as ``[D·K, *S]``."""
    d, k = x.hi.shape[:2]
    c0 = f_primal(x.c0)
    hi = f_folded(x.hi.reshape((d * k,) + tuple(x.c0.shape)))
    return TaylorSeries(c0, hi.reshape((d, k) + tuple(hi.shape[1:])))


def map_batched(x: TaylorSeries, f: Callable) -> TaylorSeries:
    """Apply a per-sample linear op taking ``[batch, ...]`` to c0 and to hi folded as ``[D·K·B, ...]``."""
    b = x.c0.shape[0]

    def folded(h):
        y = f(h.reshape((-1,) + tuple(h.shape[2:])))
        return y.reshape((h.shape[0], b) + tuple(y.shape[1:]))
    return map_linear(x, f, folded)


def scale_by(x: TaylorSeries, m: torch.Tensor) -> TaylorSeries:
    """Multiply every coefficient by a constant ``m`` broadcastable to the primal (masks, ReLU)."""
    return TaylorSeries(x.c0 * m, x.hi * m)


def shift_dim(d: int, ndim: int) -> int:
    """Map a primal dim (of a tensor with ``ndim`` dims) to the same dim of hi (two leading axes D, K).

    Raises:
        IndexError: ``d`` is out of range for ``ndim`` dims.
    """
    if d < 0:
        d += ndim
    if not 0 <= d < max(ndim, 1):
        raise IndexError(f"dimension {d} out of range for a tensor of {ndim} dims")
    return d + 2


def constant_index(index) -> tuple:
    """An index (``x[index]``) as a tuple of constants.

    Raises:
        NotImplementedError: a series in the index.
    """
    if not isinstance(index, tuple):
        index = (index,)
    if any(is_series(i) for i in index):
        raise NotImplementedError("Taylor mode: indexing with a series has no rule; use backend='autograd'")
    return index
