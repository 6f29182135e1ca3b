"""Implementations of the elementwise Taylor rules and the cross-entropy head.

[`Composite`][lamda_ext.taylor.impl.Composite] runs the recurrences of
[`lamda_ext.taylor.recurrences`][lamda_ext.taylor.recurrences] in ordinary torch ops (the ``taylor`` backend).
[`Fused`][lamda_ext.taylor.impl.Fused] runs the same maths in the C++/CUDA kernels exposed by
[`lamda_ext.ops`][lamda_ext.ops] (the ``fused`` backend). Both take and return coefficient lists ``[c0, c1, ...]`` (c0
without the direction axis) or series, so the engine does not care which runs.
"""
from __future__ import annotations

from typing import List

import torch

from . import recurrences
from .series import TaylorSeries, pad_coeffs
from .series_ops import from_terms


class Composite:
    """The elementwise and loss-head rules as composite recurrences in torch ops (``backend="taylor"``)."""
    name = "taylor"

    def unary(self, kind: str, x: TaylorSeries, n_out: int, alpha: float = 1.0) -> TaylorSeries:
        """The elementwise function ``kind`` of a series, to ``n_out`` coefficients."""
        return from_terms(recurrences.unary_list(kind, x.terms(), n_out, alpha))

    def cross_entropy(self, z: List[torch.Tensor], target: torch.Tensor, n_out: int, ls: float) -> List[torch.Tensor]:
        """Per-sample cross-entropy coefficients: logit coefficients ``[..., M, classes]`` → ``[..., M]`` each."""
        return recurrences.cross_entropy_list(z, target, n_out, ls)

    def cross_entropy_deg1(self, z0, v, target, order: int, ls: float) -> torch.Tensor:
        """CE derivatives along ``z0 + t·v``: z0 ``[B, C]``, v ``[K, B, C]``, target ``[B]`` → ``[K, B, order]``."""
        return recurrences.cross_entropy_deg1(z0, v, target, order, ls)


def _stack_full(terms: List[torch.Tensor], n_out: int) -> torch.Tensor:
    """``[c0, c1.., cD]`` → dense ``[n_out, K, *S]`` (c0 expanded over K, zero padding past D)."""
    shape = terms[1].shape
    return pad_coeffs(torch.stack([terms[0].expand(shape)] + list(terms[1:n_out])), n_out)


class Fused(Composite):
    """Kernels from [`lamda_ext.ops`][lamda_ext.ops].

    Beyond the kernels' compiled number of coefficients ([`lamda_ext.ops.MAX_COEFFS`][lamda_ext.ops.MAX_COEFFS]) each op
    falls back to the composite rules (same numbers).
    """
    name = "fused"

    def __init__(self):
        from .. import ops
        self.ops = ops

    def unary(self, kind, x, n_out, alpha=1.0):
        """The elementwise function ``kind`` of a series, by the fused kernel."""
        if n_out > self.ops.MAX_COEFFS:
            return super().unary(kind, x, n_out, alpha)
        hi = x.hi                                           # [D, K, *S]
        full = pad_coeffs(torch.cat([x.c0.expand(hi.shape[1:]).unsqueeze(0), hi]), n_out)
        out = self.ops.unary_coeffs(kind, full, alpha)     # [n_out, K, *S]
        return TaylorSeries(out[0, 0], out[1:])

    def cross_entropy(self, z, target, n_out, ls):
        """Coefficients of the per-sample cross-entropy of the logit series ``z``, by the fused kernel."""
        if n_out > self.ops.MAX_COEFFS:
            return super().cross_entropy(z, target, n_out, ls)
        full = _stack_full(z, n_out)                       # [C, K, M, classes]
        c, k, m, classes = full.shape
        out = self.ops.cross_entropy_coeffs(full.reshape(c, k * m, classes), target.repeat(k), ls).reshape(c, k, m)
        return [out[0, 0]] + list(out[1:].unbind(0))

    def cross_entropy_deg1(self, z0, v, target, order, ls):
        """The cross-entropy's derivatives to ``order`` along ``z0 + t·v``, by the fused kernel."""
        if order + 1 > self.ops.MAX_COEFFS:
            return super().cross_entropy_deg1(z0, v, target, order, ls)
        return self.ops.cross_entropy_deg1(z0, v, target, order, ls)
