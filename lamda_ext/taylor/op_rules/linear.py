"""Linear layers and convolutions.

Bilinear in (input, weight), so a constant weight maps every coefficient with one call (K and D folded into the batch)
and a series weight gives the Cauchy product of the two series.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..series import TaylorSeries, current_context, is_series
from ..series_ops import from_terms, map_linear, ndim_of, order, terms_of
from .arithmetic import add

__all__ = ["is_batch_broadcast", "bilinear", "linear", "conv1d", "conv2d", "conv3d"]


def is_batch_broadcast(x: TaylorSeries) -> bool:
    """True when every coefficient of ``x`` is the same for all entries of the primal's dim 0.

    That is a stride-0 broadcast, as directions shared by every point enter the model.
    """
    return x.c0.dim() >= 2 and x.c0.shape[0] > 1 and x.hi.stride(2) == 0


def bilinear(x, w, op_pp: Callable, op_lp: Callable, op_pk: Optional[Callable], op_kk: Optional[Callable],
             rowwise: bool = False, max_degree: Optional[int] = None):
    """Cauchy product of a bilinear op.

    Args:
        x: the series operand.
        w: the other operand, a series or a constant.
        op_pp: ``op_pp(x0, w0)``, the primal.
        op_lp: ``op_lp(x_lead [L, *S], w0)`` with any leading axis L.
        op_pk: ``op_pk(x0, w_k [K, ...])``.
        op_kk: ``op_kk(x_k [K, *S], w_k [K, ...])``.
        rowwise: the op acts on each entry of the primal's dim 0 independently, so a coefficient broadcast over
            that dim is mapped once and broadcast again.
        max_degree: compute the coefficients up to this degree only.

    A constant ``w`` takes the folded path (``op_lp`` once on all coefficients).
    """
    if not is_series(w):
        if rowwise and is_batch_broadcast(x):
            b = x.c0.shape[0]
            h = op_lp(x.hi[:, :, :1].reshape((-1, 1) + tuple(x.c0.shape[1:])), w)
            return TaylorSeries(op_pp(x.c0, w), h.reshape(tuple(x.hi.shape[:2]) + (1,) + tuple(h.shape[2:])).expand(
                tuple(x.hi.shape[:2]) + (b,) + tuple(h.shape[2:])))
        return map_linear(x, lambda c: op_pp(c, w), lambda h: op_lp(h, w))
    xt, wt = terms_of(x), w.terms()
    n_out = min(order() + 1, len(xt) + len(wt) - 1, order() + 1 if max_degree is None else max_degree + 1)
    out = []
    for n in range(n_out):
        acc = None
        for i in range(max(0, n - len(wt) + 1), min(n, len(xt) - 1) + 1):
            j = n - i
            if i == 0 and j == 0:
                term = op_pp(xt[0], wt[0])
            elif j == 0:
                term = op_lp(xt[i], wt[0])
            elif i == 0:
                term = op_pk(xt[0], wt[j])
            else:
                term = op_kk(xt[i], wt[j])
            acc = term if acc is None else acc + term
        out.append(acc)
    return from_terms(out)


def _add_bias(out, b_rest, lead: int, trail: int):
    """``out`` + the series part ``b_rest`` of a bias.

    The bias part has primal zero and coefficients ``[Db, K, O]``, and broadcasts over ``lead`` dims before and
    ``trail`` dims after the output-feature dim. ``out`` is the fresh result of a linear/conv rule: the bias is added
    into its coefficients in place where they are not a broadcast (no copy of the primal, no zero added to it), else as
    a series sum.
    """
    bh = b_rest.hi.reshape(tuple(b_rest.hi.shape[:2]) + (1,) * lead + (b_rest.hi.shape[-1],) + (1,) * trail)
    if (is_series(out) and 0 not in [st for st, n in zip(out.hi.stride(), out.hi.shape) if n > 1]
            and out.degree >= bh.shape[0] and out.hi.dim() == bh.dim()
            and torch.broadcast_shapes(out.hi[:bh.shape[0]].shape, bh.shape) == out.hi[:bh.shape[0]].shape):
        out.hi[:bh.shape[0]] += bh
        return out
    return add(out, TaylorSeries(b_rest.c0.reshape((-1,) + (1,) * trail), bh.reshape(
        tuple(bh.shape[:2]) + (bh.shape[2 + lead],) + (1,) * trail)))


def _primal_bias(bias):
    """The bias the primal is computed with, and the series part still to add.

    The model's own op adds the first, so the primal rounds as the model's does and every backend picks the same
    max-pool argmax on ties.
    """
    if bias is None:
        return None, None
    if is_series(bias):
        return bias.c0, TaylorSeries(torch.zeros_like(bias.c0), bias.hi)
    return bias, None


def linear(x, weight, bias=None):
    """``F.linear`` with any of input, weight and bias a series."""
    b0, b_rest = _primal_bias(bias)

    def pk(x0, wk):          # [*S, in] × [K, out, in] → [K, *S, out]
        y = torch.matmul(x0.reshape(-1, x0.shape[-1]), wk.transpose(-1, -2))
        return y.reshape((wk.shape[0],) + tuple(x0.shape[:-1]) + (wk.shape[-2],))

    def kk(xk, wk):          # [K, *S, in] × [K, out, in] → [K, *S, out]
        y = torch.bmm(xk.reshape(xk.shape[0], -1, xk.shape[-1]), wk.transpose(-1, -2))
        return y.reshape(tuple(xk.shape[:-1]) + (wk.shape[-2],))

    if is_series(x):
        out = bilinear(x, weight, lambda x0, w0: F.linear(x0, w0, b0), F.linear, pk, kk, rowwise=True)
    elif is_series(weight):   # constant input, series weight: swap roles
        out = bilinear(weight, x, lambda w0, x0: F.linear(x0, w0, b0), lambda wl, x0: pk(x0, wl), None, None)
    else:                     # only the bias is a series
        out = F.linear(x, weight, b0)
    return out if b_rest is None else _add_bias(out, b_rest, ndim_of(out) - 1, 0)


def _contract_conv(ctr, xk, vk, out_shape, nd: int, stride, padding, dilation) -> None:
    """Add ``⟨ḡ, V_k * x1_k⟩`` to a quadratic-form contraction without forming ``V_k * x1_k`` ``[K, B, O, ...]``.

    It is ``⟨V_k, G_k⟩`` with ``G`` the weight gradient of the input ``x1`` (all K as channels) under the shared output
    gradient ``ḡ`` (the output's adjoint), one dense convolution. xk ``[K, B, C, ...]``, vk ``[K, O, C, ...]``.
    """
    g = ctr.adjoint()
    if g is None or tuple(g.shape) != tuple(out_shape):   # no adjoint, or the op sequence differs (observe raises)
        return
    k, b = xk.shape[:2]
    xb = xk.movedim(0, 1).reshape((b, k * xk.shape[2]) + tuple(xk.shape[3:]))
    lists = [[v] * nd if isinstance(v, int) else list(v) for v in (stride, padding, dilation)]
    shape = (vk.shape[1], k * vk.shape[2]) + tuple(vk.shape[3:])
    gw = torch.ops.aten.convolution_backward(g.to(xb.dtype), xb, xb.new_empty(shape), None, *lists, False,
                                             [0] * nd, 1, [False, True, False])[1]          # [O, K·C, ...]
    ctr.add((gw.reshape(vk.shape[1], k, -1).transpose(0, 1) * vk.reshape(k, vk.shape[1], -1)).sum((1, 2)))


def _conv_ops(conv: Callable, b0, groups: int, kw: dict):
    """The four products of `bilinear` for a convolution ``conv`` with primal bias ``b0``."""
    def pp(x0, w0):      # the primal exactly as the model's op computes it (bias included)
        return conv(x0, w0, b0, groups=groups, **kw)

    def lp(xl, w0):      # [L, B, C, ...] folded into the batch
        y = conv(xl.reshape((-1,) + tuple(xl.shape[2:])), w0, None, groups=groups, **kw)
        return y.reshape(tuple(xl.shape[:2]) + tuple(y.shape[1:]))

    def grouped(xb, wk):  # xb [B, K, C, ...], wk [K, O, C/g, ...] → [K, B, O, ...]
        k, b = wk.shape[0], xb.shape[0]
        y = conv(xb.reshape((b, -1) + tuple(xb.shape[3:])), wk.reshape((-1,) + tuple(wk.shape[2:])), None,
                 groups=groups * k, **kw)
        return y.reshape((b, k, -1) + tuple(y.shape[2:])).movedim(1, 0)

    def pk(x0, wk):      # x0 [B, C, ...], wk [K, O, C/g, ...] → [K, B, O, ...]
        if groups == 1:  # one dense conv with K·O output channels (no K-fold copy of x0)
            y = conv(x0, wk.reshape((-1,) + tuple(wk.shape[2:])), None, **kw)
            return y.reshape((y.shape[0], wk.shape[0], -1) + tuple(y.shape[2:])).movedim(1, 0)
        return grouped(x0.unsqueeze(1).expand((x0.shape[0], wk.shape[0]) + tuple(x0.shape[1:])), wk)

    def kk(xk, wk):
        return grouped(xk.movedim(0, 1), wk)
    return pp, lp, pk, kk


def _conv(nd: int) -> Callable:
    """Rule of ``F.conv{nd}d``.

    In a contracted quadratic-form pass (order 2, degree-1 input and weight) the term ``V_k * x1_k`` is contracted with
    the output's adjoint (`_contract_conv`) instead of being formed.
    """
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]

    def rule(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        b0, b_rest = _primal_bias(bias)
        pp, lp, pk, kk = _conv_ops(conv, b0, groups, dict(stride=stride, padding=padding, dilation=dilation))
        ctr = current_context().contraction
        if is_series(x):
            contract = (ctr is not None and groups == 1 and not isinstance(padding, str) and order() == 2
                        and is_series(weight) and x.degree == 1 and weight.degree == 1 and x.c0.dim() == nd + 2
                        and x.hi.shape[1] == weight.hi.shape[1])
            out = bilinear(x, weight, pp, lp, pk, kk, rowwise=x.c0.dim() == nd + 2,
                           max_degree=1 if contract else None)
            if contract:
                _contract_conv(ctr, x.hi[0], weight.hi[0], out.c0.shape, nd, stride, padding, dilation)
        elif is_series(weight):
            out = bilinear(weight, x, lambda w0, x0: pp(x0, w0), lambda wl, x0: pk(x0, wl), None, None)
        else:
            out = pp(x, weight)
        if b_rest is None:
            return out
        return _add_bias(out, b_rest, ndim_of(out) - nd - 1, nd)
    return rule


conv1d, conv2d, conv3d = _conv(1), _conv(2), _conv(3)
