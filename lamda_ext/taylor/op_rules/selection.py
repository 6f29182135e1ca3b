"""Ops that pick, mask or overwrite elements.

The choice is made on the primal (a constant condition, index or mask, the pooled argmax) and applied to every
coefficient, so they keep the degree.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..series import TaylorSeries, is_series
from ..series_ops import constant_index, from_terms, hi_at, padded_terms
from .factories import dropout_mask

__all__ = ["select_where", "where", "masked_fill", "setitem", "copy", "fill", "zero", "embedding", "max_pool",
           "dropout"]


def select_where(cond: torch.Tensor, a, b):
    """``torch.where(cond, a, b)`` for a constant boolean ``cond`` and series, tensor or number branches."""
    if not is_series(a) and not is_series(b):
        return torch.where(cond, a, b)
    ref = a.c0 if is_series(a) else b.c0
    a, b = (v if is_series(v) or isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=ref.dtype,
                                                                                  device=ref.device) for v in (a, b))
    deg = max(s.degree for s in (a, b) if is_series(s))
    return from_terms([torch.where(cond, an, bn) for an, bn in zip(padded_terms(a, deg), padded_terms(b, deg))])


def where(cond, a=None, b=None):
    """``torch.where``: three arguments select by a constant condition; one argument gives the primal's indices.

    Raises:
        NotImplementedError: a series as condition.
    """
    if a is None and b is None:
        return torch.where(cond.c0 if is_series(cond) else cond)
    if is_series(cond):
        raise NotImplementedError("Taylor mode: torch.where with a series as condition has no rule; "
                                  "compare the series first (a comparison gives a constant mask)")
    return select_where(cond, a, b)


def masked_fill(x, mask, value):
    """``masked_fill`` with a constant mask; a constant value zeroes the masked coefficients.

    Raises:
        NotImplementedError: a series as mask.
    """
    if is_series(mask):
        raise NotImplementedError("Taylor mode: masked_fill with a series as mask has no rule")
    if is_series(value):
        return select_where(mask, value, x)
    value = value.item() if isinstance(value, torch.Tensor) else value
    c0 = x.c0.masked_fill(mask, value)
    return TaylorSeries(c0, x.hi.masked_fill(mask, 0.0).expand(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


def setitem(x, index, value):
    """``x[index] = value`` as a new series (the dispatcher makes it the new value of x, writing through views).

    Raises:
        NotImplementedError: a series in the index.
    """
    index = constant_index(index)
    deg = max(x.degree, value.degree if is_series(value) else 1)
    k = max(x.hi.shape[1], value.hi.shape[1] if is_series(value) else 1)
    c0 = x.c0.clone()
    c0[index] = value.c0 if is_series(value) else value
    hi = hi_at(x, deg, k).clone()
    hi[(slice(None), slice(None)) + index] = hi_at(value, deg, k) if is_series(value) else 0.0
    return TaylorSeries(c0, hi)


def copy(x, src, non_blocking=False):
    """``x.copy_(src)``: the value of ``src`` (a series or a constant) in ``x``'s dtype and shape."""
    if is_series(src):
        c0 = x.c0.new_empty(x.c0.shape).copy_(src.c0)
        return TaylorSeries(c0, src.hi.to(c0.dtype).expand(tuple(src.hi.shape[:2]) + tuple(c0.shape)))
    return x.c0.new_empty(x.c0.shape).copy_(src)


def fill(x, value):
    """``x.fill_(value)``: a constant."""
    return torch.full_like(x.c0, value.item() if isinstance(value, torch.Tensor) else value)


def zero(x):
    """``x.zero_()``: a constant."""
    return torch.zeros_like(x.c0)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """``F.embedding`` with constant indices and a series weight: the rows of every coefficient.

    Raises:
        NotImplementedError: series indices, or ``max_norm`` (it renormalises the weight in place).
    """
    if is_series(input):
        raise NotImplementedError("Taylor mode: embedding indices cannot carry derivatives")
    if max_norm is not None:
        raise NotImplementedError("Taylor mode: embedding with max_norm (renormalises the weight in place) "
                                  "has no rule; use backend='autograd'")
    c0 = F.embedding(input, weight.c0)
    return TaylorSeries(c0, weight.hi[:, :, input])


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """``F.max_pool1d``/``F.max_pool2d``: every coefficient gathered at the primal's argmax (ties as torch's)."""
    nd = x.c0.dim() - 2
    pool = F.max_pool2d if nd == 2 else F.max_pool1d
    out0, idx = pool(x.c0, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    d, k = x.hi.shape[:2]
    flat = x.hi.reshape(d * k, *x.c0.shape[:2], -1)
    gidx = idx.reshape(1, *idx.shape[:2], -1).expand(d * k, -1, -1, -1)
    hi = torch.gather(flat, 3, gidx).reshape((d, k) + tuple(out0.shape))
    out = TaylorSeries(out0, hi)
    return (out, idx) if return_indices else out


dropout = dropout_mask(F.dropout)
