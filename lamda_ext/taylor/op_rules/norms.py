"""Normalisations: batch norm, layer norm and ``F.normalize`` on series.

Batch norm keeps training statistics as series, and in eval mode is a fixed affine map that keeps the degree; all are
composed from arithmetic, reductions and powers of series.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import recurrences
from ..series import TaylorSeries, is_series
from ..series_ops import from_terms, order
from .arithmetic import add, mul, power, sub
from .factories import reduce
from .selection import select_where
from .shape import reshape

__all__ = ["batch_norm", "layer_norm", "normalize"]


def _standardize(x, dims, eps):
    """(x − mean) / sqrt(var + eps) over ``dims`` (biased variance), as a series."""
    xc = sub(x, reduce(x, torch.mean, dims, keepdim=True))
    var = reduce(mul(xc, xc), torch.mean, dims, keepdim=True)
    return mul(xc, power(add(var, eps), -0.5))


def _affine(y, weight, bias, shape):
    """``y · weight + bias`` with weight and bias (constants or series) reshaped to ``shape``."""
    if weight is not None:
        y = mul(y, reshape(weight, shape) if is_series(weight) else weight.reshape(shape))
    if bias is not None:
        y = add(y, reshape(bias, shape) if is_series(bias) else bias.reshape(shape))
    return y


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               cudnn_enabled=None):
    """``F.batch_norm``: batch statistics in training mode (or without running statistics), else the running ones.

    A constant input (parameter directions) is normalised as a constant and only the affine map is a series.
    """
    nd = x.c0.dim() if is_series(x) else x.dim()
    shape = (1, -1) + (1,) * (nd - 2)
    if not is_series(x):
        stats = (None, None) if training or running_mean is None else (running_mean, running_var)
        y = F.batch_norm(x, *stats, None, None, training or running_mean is None, 0.0, eps)
        return _affine(y, weight, bias, shape)
    if training or running_mean is None:
        y = _standardize(x, [0] + list(range(2, nd)), eps)
        return _affine(y, weight, bias, shape)
    inv = torch.rsqrt(running_var + eps)
    if is_series(weight) or is_series(bias):
        y = mul(sub(x, running_mean.reshape(shape)), inv.reshape(shape))
        return _affine(y, weight, bias, shape)
    return _fixed_affine(x, running_mean, inv, weight, bias, shape)


def _fixed_affine(x, mean, inv, weight, bias, shape):
    """Eval-mode batch norm with constant affine parameters.

    The primal as the composite computes it, the higher coefficients in one multiply by ``inv · weight`` (one pass over
    the K-fold coefficients).
    """
    c0 = (x.c0 - mean.reshape(shape)) * inv.reshape(shape)
    scale = inv
    if weight is not None:
        c0 = c0 * weight.reshape(shape)
        scale = inv * weight
    if bias is not None:
        c0 = c0 + bias.reshape(shape)
    return TaylorSeries(c0, x.hi * scale.reshape(shape))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``F.layer_norm`` over the last ``len(normalized_shape)`` dims."""
    n = len(normalized_shape)
    if not is_series(x):
        return _affine(F.layer_norm(x, normalized_shape, None, None, eps), weight, bias, tuple(normalized_shape))
    y = _standardize(x, list(range(x.c0.dim() - n, x.c0.dim())), eps)
    return _affine(y, weight, bias, tuple(normalized_shape))


def normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    """``F.normalize`` for p = 2: ``x / max(‖x‖, eps)`` (the norm's floor is a constant, as in torch).

    Raises:
        NotImplementedError: ``p`` other than 2.
    """
    if p != 2:
        raise NotImplementedError(f"Taylor mode: F.normalize with p={p} has no rule (p=2 only)")
    norm = power(reduce(mul(x, x), torch.sum, dim, keepdim=True), 0.5)
    big = norm.c0 > eps
    inv = select_where(big, from_terms(recurrences.recip_list(norm.terms(), order() + 1)),
                       torch.full_like(norm.c0, 1.0 / eps))
    return mul(x, inv)
