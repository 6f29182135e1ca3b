"""Taylor rules for the ops models use, registered into :data:`series.RULES`.

Degree tracking: linear maps, ReLU/leaky ReLU/abs, max-pool, dropout and eval-mode batch
norm keep the degree D of their input; products add degrees; smooth nonlinearities raise
it to the run's order N. A constant operand (plain tensor) is a series of degree 0.

Conventions: ``S`` is the primal shape; a series' higher coefficients are ``[D, K, *S]``.
Constant-weight linear ops run once on the primal and once on all D·K coefficient
slices folded into the batch.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..losses import split_ignored
from ..routing import sdpa_masks, unguarded
from . import rules
from .series import RULES, TaylorSeries, current_context, is_series


def register(*names):
    def deco(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return deco


# ----------------------------------------------------------------------------- helpers
def order() -> int:
    return current_context().order


def from_terms(terms: Sequence[torch.Tensor]):
    """Build a series from ``[c0, c1, ...]`` (c0 ``[*S]``; others ``[K, *S]``, broadcastable)."""
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


def _ndim(x) -> int:
    if is_series(x):
        return x.c0.dim()
    return x.dim() if isinstance(x, torch.Tensor) else 0


def terms_of(x):
    return x.terms() if is_series(x) else [x]


def map_linear(x: TaylorSeries, f_primal, f_folded) -> TaylorSeries:
    """Apply a linear map: ``f_primal`` to c0, ``f_folded`` to hi viewed as ``[D·K, *S]``."""
    d, k = x.hi.shape[:2]
    c0 = f_primal(x.c0)
    hi = f_folded(x.hi.reshape((d * k,) + tuple(x.c0.shape)))
    return TaylorSeries(c0, hi.reshape((d, k) + tuple(hi.shape[1:])))


def map_batched(x: TaylorSeries, f) -> TaylorSeries:
    """Apply a per-sample linear op taking ``[batch, ...]`` to c0 and to hi folded as ``[D·K·B, ...]``."""
    b = x.c0.shape[0]
    return map_linear(x, f, lambda h: _unfold_batch(f(h.reshape((-1,) + tuple(h.shape[2:]))), h.shape[0], b))


def _unfold_batch(y, lead, b):
    return y.reshape((lead, b) + tuple(y.shape[1:]))


def scale_by(x: TaylorSeries, m: torch.Tensor) -> TaylorSeries:
    """Multiply every coefficient by a constant ``m`` broadcastable to the primal (masks, ReLU)."""
    return TaylorSeries(x.c0 * m, x.hi * m)


def shift_dim(d: int, ndim: int) -> int:
    """Map a primal dim to the corresponding dim of hi (two leading axes D, K)."""
    if d < 0:
        d += ndim
    if not 0 <= d < max(ndim, 1):
        raise IndexError(f"dimension {d} out of range for a tensor of {ndim} dims")
    return d + 2


# ----------------------------------------------------------------------------- arithmetic
def add(a, b, alpha=1):
    if alpha != 1:
        b = mul(b, alpha)
    nd = max(_ndim(a), _ndim(b))
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


def neg(a):
    return TaylorSeries(-a.c0, -a.hi) if is_series(a) else -a


def sub(a, b, alpha=1):
    return add(a, neg(b) if alpha == 1 else mul(b, -alpha))


def mul(a, b):
    nd = max(_ndim(a), _ndim(b))
    a, b = align(a, nd), align(b, nd)
    if not is_series(a):
        a, b = b, a
    if not is_series(b):
        return TaylorSeries(a.c0 * b, a.hi * b)
    return from_terms(rules.mul_list(a.terms(), b.terms(), order() + 1))


def div(a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise NotImplementedError(f"Taylor mode: division with rounding_mode={rounding_mode!r} is not differentiable")
    if not is_series(b):
        return mul(a, 1.0 / b)
    return mul(a, from_terms(rules.recip_list(b.terms(), order() + 1)))


def power(a, e):
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
    return from_terms(rules.pow_list(a.terms(), float(e), order() + 1))


register("add")(add)
register("radd")(lambda a, b: add(b, a))
register("sub")(sub)
register("rsub")(lambda a, b, alpha=1: sub(b, a) if alpha == 1 else sub(b, mul(a, alpha)))
register("mul", "rmul")(mul)
register("div")(div)
register("rtruediv")(lambda a, b: div(b, a))
register("neg")(neg)
register("pow")(power)
register("square")(lambda a: mul(a, a))
register("sqrt")(lambda a: power(a, 0.5))
register("rsqrt")(lambda a: power(a, -0.5))
register("reciprocal")(lambda a: from_terms(rules.recip_list(a.terms(), order() + 1)))


# ----------------------------------------------------------------------------- elementwise
def unary(kind: str, x: TaylorSeries, alpha: float = 1.0):
    return current_context().impl.unary(kind, x, order() + 1, alpha)


for _kind in rules.UNARY_KINDS:   # every kind is an op of the same name; gelu/softplus/elu override below
    register(_kind)(lambda x, *a, _k=_kind, **kw: unary(_k, x))


@register("gelu")
def gelu(x, approximate="none"):
    if approximate == "none":
        return unary("gelu", x)
    if approximate == "tanh":   # 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³)))
        inner = mul(add(x, mul(power(x, 3), 0.044715)), math.sqrt(2.0 / math.pi))
        return mul(mul(x, 0.5), add(unary("tanh", inner), 1.0))
    raise ValueError(f"unknown gelu approximation {approximate!r}")


@register("softplus")
def softplus(x, beta=1.0, threshold=20.0):
    y = unary("softplus", mul(x, beta) if beta != 1 else x)
    if beta != 1:
        y = mul(y, 1.0 / beta)
    linear = x.c0 * beta > threshold      # torch reverts to the identity above the threshold
    if bool(linear.any()):
        y = from_terms([torch.where(linear, xc, yc) for xc, yc in zip(_pad_terms(x, y.degree), y.terms())])
    return y


def _pad_terms(x: TaylorSeries, degree: int):
    t = x.terms()
    return t + [torch.zeros_like(t[1])] * (degree + 1 - len(t))


@register("elu")
def elu(x, alpha=1.0, inplace=False):
    return unary("elu", x, float(alpha))


@register("relu")
def relu(x, inplace=False):
    return scale_by(x, (x.c0 > 0).to(x.dtype))


@register("leaky_relu")
def leaky_relu(x, negative_slope=0.01, inplace=False):
    return scale_by(x, torch.where(x.c0 > 0, torch.ones_like(x.c0), torch.full_like(x.c0, negative_slope)))


@register("abs")
def abs_(x):
    return scale_by(x, torch.sign(x.c0))


@register("log_softmax")
def log_softmax(x, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        raise ValueError("log_softmax needs an explicit dim in Taylor mode")
    n = order() + 1
    d = dim if dim >= 0 else dim + x.c0.dim()
    terms = [t.movedim(d if i == 0 else d + 1, -1) for i, t in enumerate(x.terms())]
    m = terms[0].detach().amax(dim=-1, keepdim=True)
    shifted = [terms[0] - m] + terms[1:]          # log_softmax(x) = (x − m) − log Σ e^(x − m): no cancellation
    e = rules.exp_list(shifted, n)
    lse = rules.log_list([c.sum(dim=-1, keepdim=True) for c in e], n)
    out = [(shifted[i] if i < len(shifted) else 0.0) - lse[i] for i in range(n)]
    return from_terms([o.movedim(-1, d if i == 0 else d + 1) for i, o in enumerate(out)])


@register("softmax")
def softmax(x, dim=None, _stacklevel=3, dtype=None):
    return unary("exp", log_softmax(x, dim))


@register("cross_entropy")
def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """``F.cross_entropy`` of a series of logits ``[N, C, *d]`` (or ``[C]``) and class-index targets, by the run's
    loss head (the fused kernels under ``backend='fused'``): entries labelled ``ignore_index`` count 0 and
    ``reduction="mean"`` divides by the counted entries, as torch does."""
    if is_series(target) or not isinstance(target, torch.Tensor) or target.is_floating_point():
        raise NotImplementedError("Taylor mode: cross_entropy takes class-index targets (an integer tensor) only; "
                                  "use backend='autograd' for class probabilities")
    if weight is not None or size_average is not None or reduce is not None:
        raise NotImplementedError("Taylor mode: cross_entropy with class weights or the legacy size_average/reduce "
                                  "arguments has no rule; use backend='autograd'")
    classes = input.c0.shape[1 if input.c0.dim() >= 2 else 0]
    flat = _reshape(movedim(input, 1, -1) if input.c0.dim() > 2 else input, -1, classes)
    safe, keep = split_ignored(target.reshape(-1), ignore_index)
    terms = current_context().impl.cross_entropy(flat.terms(), safe, order() + 1, float(label_smoothing))
    if keep is not None:
        terms = [t * keep.to(t.dtype) for t in terms]
    per = from_terms(terms).reshape(target.shape)      # a series, or a tensor when the logits are constant in t
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction != "mean":
        raise ValueError(f"cross_entropy: unknown reduction {reduction!r}")
    return per.sum() * (1.0 / (float(keep.sum()) if keep is not None else float(target.numel())))


# ----------------------------------------------------------------------------- bilinear
def _batch_broadcast(x: TaylorSeries) -> bool:
    """True when every coefficient of ``x`` is the same for all entries of the primal's dim 0 (a stride-0
    broadcast, as directions shared by every point enter the model)."""
    return x.c0.dim() >= 2 and x.c0.shape[0] > 1 and x.hi.stride(2) == 0


def bilinear(x, w, op_pp, op_lp, op_pk, op_kk, rowwise: bool = False, max_degree: Optional[int] = None):
    """Cauchy product of a bilinear op.

    op_pp(x0, w0); op_lp(x_lead [L, *S], w0) with any leading axis L; op_pk(x0, w_k [K, ...]);
    op_kk(x_k [K, *S], w_k [K, ...]). A constant ``w`` takes the folded fast path. ``rowwise``: the op
    acts on each entry of the primal's dim 0 independently, so a coefficient broadcast over that dim is
    mapped once and broadcast again. ``max_degree``: compute the coefficients up to this degree only.
    """
    if not is_series(w):
        if rowwise and _batch_broadcast(x):
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
    """``out`` + the series part ``b_rest`` of a bias (primal zero, coefficients ``[Db, K, O]``) that broadcasts
    over ``lead`` dims before and ``trail`` dims after the output-feature dim. ``out`` is the fresh result of
    a linear/conv rule: the bias is added into its coefficients in place where they are not a broadcast
    (no copy of the primal, no zero added to it), else as a series sum."""
    bh = b_rest.hi.reshape(tuple(b_rest.hi.shape[:2]) + (1,) * lead + (b_rest.hi.shape[-1],) + (1,) * trail)
    if (is_series(out) and 0 not in [st for st, n in zip(out.hi.stride(), out.hi.shape) if n > 1]
            and out.degree >= bh.shape[0] and out.hi.dim() == bh.dim()
            and torch.broadcast_shapes(out.hi[:bh.shape[0]].shape, bh.shape) == out.hi[:bh.shape[0]].shape):
        out.hi[:bh.shape[0]] += bh
        return out
    return add(out, TaylorSeries(b_rest.c0.reshape((-1,) + (1,) * trail), bh.reshape(
        tuple(bh.shape[:2]) + (bh.shape[2 + lead],) + (1,) * trail)))


def _primal_bias(bias):
    """The bias the primal is computed with (the model's own op adds it, so the primal rounds as the model's
    does and every backend picks the same max-pool argmax on ties) and the series part still to add."""
    if bias is None:
        return None, None
    if is_series(bias):
        return bias.c0, TaylorSeries(torch.zeros_like(bias.c0), bias.hi)
    return bias, None


@register("linear")
def linear(x, weight, bias=None):
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
    return out if b_rest is None else _add_bias(out, b_rest, _ndim(out) - 1, 0)


def _contract_conv(ctr, xk, vk, out_shape, nd: int, stride, padding, dilation) -> None:
    """Add ``⟨ḡ, V_k * x1_k⟩`` to a quadratic-form contraction without forming ``V_k * x1_k`` ``[K, B, O, ...]``:
    it is ``⟨V_k, G_k⟩`` with ``G`` the weight gradient of the input ``x1`` (all K as channels) under the shared
    output gradient ``ḡ`` (the output's adjoint), one dense convolution. xk ``[K, B, C, ...]``, vk ``[K, O, C, ...]``."""
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


def _conv(nd: int):
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]

    def rule(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        kw = dict(stride=stride, padding=padding, dilation=dilation)
        b0, b_rest = _primal_bias(bias)

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

        ctr = current_context().contraction
        if is_series(x):
            # in a contracted quadratic-form pass the term V_k * x1_k is contracted here, not formed
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
        return _add_bias(out, b_rest, _ndim(out) - nd - 1, nd)
    return rule


register("conv1d")(_conv(1))
register("conv2d")(_conv(2))
register("conv3d")(_conv(3))


# ----------------------------------------------------------------------------- pooling, dropout
@register("max_pool2d", "max_pool1d")
def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    nd = x.c0.dim() - 2
    pool = F.max_pool2d if nd == 2 else F.max_pool1d
    out0, idx = pool(x.c0, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    d, k = x.hi.shape[:2]
    flat = x.hi.reshape(d * k, *x.c0.shape[:2], -1)
    gidx = idx.reshape(1, *idx.shape[:2], -1).expand(d * k, -1, -1, -1)
    hi = torch.gather(flat, 3, gidx).reshape((d, k) + tuple(out0.shape))
    out = TaylorSeries(out0, hi)
    return (out, idx) if return_indices else out


def _linear_pool(fn):
    def rule(x, *args, **kwargs):
        return map_batched(x, lambda t: fn(t, *args, **kwargs))
    return rule


for _name, _fn in (("avg_pool1d", F.avg_pool1d), ("avg_pool2d", F.avg_pool2d), ("avg_pool3d", F.avg_pool3d),
                   ("adaptive_avg_pool1d", F.adaptive_avg_pool1d), ("adaptive_avg_pool2d", F.adaptive_avg_pool2d),
                   ("adaptive_avg_pool3d", F.adaptive_avg_pool3d)):
    register(_name)(_linear_pool(_fn))


@register("dropout")
def dropout(x, p=0.5, training=True, inplace=False):
    if not training or p == 0.0:
        return x
    # one mask for every coefficient, drawn exactly as F.dropout would draw it for the primal
    mask = F.dropout(torch.ones_like(x.c0), p, True)
    return scale_by(x, mask)


def _channel_dropout(fn):
    def rule(x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:
            return x
        return scale_by(x, fn(torch.ones_like(x.c0), p, True))
    return rule


register("dropout1d")(_channel_dropout(F.dropout1d))
register("dropout2d")(_channel_dropout(F.dropout2d))
register("dropout3d")(_channel_dropout(F.dropout3d))


# ----------------------------------------------------------------------------- reductions
def _dims(dim, ndim):
    if dim is None:
        return list(range(ndim))
    if isinstance(dim, int):
        dim = [dim]
    return sorted(d + ndim if d < 0 else d for d in dim)


def reduce(x, fn, dim=None, keepdim=False, dtype=None):
    nd = x.c0.dim()
    dims = _dims(dim, nd)
    if not dims:
        return x
    c0 = fn(x.c0, dim=dims, keepdim=keepdim)
    hi = fn(x.hi, dim=[d + 2 for d in dims], keepdim=keepdim)
    return TaylorSeries(c0, hi)


register("sum")(lambda x, dim=None, keepdim=False, dtype=None: reduce(x, torch.sum, dim, keepdim))
register("mean")(lambda x, dim=None, keepdim=False, dtype=None: reduce(x, torch.mean, dim, keepdim))


# ----------------------------------------------------------------------------- normalisation
def _normalize(x, dims, eps):
    """(x − mean) / sqrt(var + eps) over ``dims`` (biased variance), as a series."""
    xc = sub(x, reduce(x, torch.mean, dims, keepdim=True))
    var = reduce(mul(xc, xc), torch.mean, dims, keepdim=True)
    return mul(xc, power(add(var, eps), -0.5))


def _affine(y, weight, bias, shape):
    if weight is not None:
        y = mul(y, weight.reshape(shape) if not is_series(weight) else _reshape_series(weight, shape))
    if bias is not None:
        y = add(y, bias.reshape(shape) if not is_series(bias) else _reshape_series(bias, shape))
    return y


def _reshape_series(s, shape):
    return TaylorSeries(s.c0.reshape(shape), s.hi.reshape(tuple(s.hi.shape[:2]) + tuple(shape)))


@register("batch_norm")
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               cudnn_enabled=None):
    nd = x.c0.dim() if is_series(x) else x.dim()
    shape = (1, -1) + (1,) * (nd - 2)
    if not is_series(x):      # params mode, constant input: normalise the constant, the affine map is a series
        stats = (None, None) if training or running_mean is None else (running_mean, running_var)
        y = F.batch_norm(x, *stats, None, None, training or running_mean is None, 0.0, eps)
        return _affine(y, weight, bias, shape)
    if training or running_mean is None:
        y = _normalize(x, [0] + list(range(2, nd)), eps)
        return _affine(y, weight, bias, shape)
    # eval: a fixed affine map (keeps the degree)
    inv = torch.rsqrt(running_var + eps)
    y = mul(sub(x, running_mean.reshape(shape)), inv.reshape(shape))
    return _affine(y, weight, bias, shape)


@register("layer_norm")
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    n = len(normalized_shape)
    if not is_series(x):      # params mode, constant input
        return _affine(F.layer_norm(x, normalized_shape, None, None, eps), weight, bias, tuple(normalized_shape))
    y = _normalize(x, list(range(x.c0.dim() - n, x.c0.dim())), eps)
    return _affine(y, weight, bias, tuple(normalized_shape))


# ----------------------------------------------------------------------------- shape ops
def _shape_args(args):
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args)


def _reshape(x, *shape):
    c0 = x.c0.reshape(_shape_args(shape))
    return TaylorSeries(c0, x.hi.reshape(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


register("view", "reshape")(_reshape)
register("view_as", "reshape_as")(lambda x, other: _reshape(x, tuple(other.shape)))


@register("flatten")
def flatten(x, start_dim=0, end_dim=-1):
    nd = x.c0.dim()
    if nd == 0:
        return _reshape(x, 1)
    return TaylorSeries(x.c0.flatten(start_dim, end_dim),
                        x.hi.flatten(shift_dim(start_dim, nd), shift_dim(end_dim, nd)))


@register("permute")
def permute(x, *dims):
    dims = _shape_args(dims)
    nd = x.c0.dim()
    return TaylorSeries(x.c0.permute(dims), x.hi.permute((0, 1) + tuple(shift_dim(d, nd) for d in dims)))


@register("transpose", "swapaxes", "swapdims")
def transpose(x, d0, d1):
    nd = x.c0.dim()
    return TaylorSeries(x.c0.transpose(d0, d1), x.hi.transpose(shift_dim(d0, nd), shift_dim(d1, nd)))


register("t")(lambda x: transpose(x, 0, 1))


@register("unsqueeze")
def unsqueeze(x, dim):
    nd = x.c0.dim() + 1
    return TaylorSeries(x.c0.unsqueeze(dim), x.hi.unsqueeze(shift_dim(dim, nd)))


@register("squeeze")
def squeeze(x, dim=None):
    c0 = x.c0.squeeze() if dim is None else x.c0.squeeze(dim)
    return TaylorSeries(c0, x.hi.reshape(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


@register("contiguous", "clone")
def contiguous(x, *args, **kwargs):
    return TaylorSeries(x.c0.contiguous(), x.hi.contiguous())


@register("expand")
def expand(x, *sizes):
    c0 = x.c0.expand(_shape_args(sizes))
    return TaylorSeries(c0, align(x, c0.dim()).hi.expand(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


register("expand_as")(lambda x, other: expand(x, tuple(other.shape)))


@register("getitem")
def getitem(x, index):
    if not isinstance(index, tuple):
        index = (index,)
    if any(is_series(i) for i in index):
        raise NotImplementedError("Taylor mode: indexing with a series has no rule; use backend='autograd'")
    c0 = x.c0[index]
    return TaylorSeries(c0, x.hi[(slice(None), slice(None)) + index])


def _primal_only(fn):
    """Ops whose result carries no derivative (comparisons, argmax, sign, ...): evaluated on the primal."""
    def rule(*args, **kwargs):
        return fn(*(a.c0 if is_series(a) else a for a in args), **kwargs)
    return rule


for _name in ("gt", "ge", "lt", "le", "eq", "ne", "greater", "less", "argmax", "argmin", "sign", "isnan", "isfinite",
              "isinf", "any", "all", "argsort"):
    register(_name)(_primal_only(getattr(torch, _name)))


@register("detach")
def detach(x):
    return x.c0.detach()


@register("to", "type_as")
def to(x, *args, **kwargs):
    c0 = x.c0.to(*args, **kwargs) if not isinstance(args[0] if args else None, TaylorSeries) else x.c0
    return TaylorSeries(c0, x.hi.to(dtype=c0.dtype, device=c0.device))


@register("type")
def type_(x, dtype=None, non_blocking=False, **kwargs):
    """``x.type()`` (the primal's type name) or ``x.type(dtype)`` (a cast, as ``to``)."""
    if dtype is None:
        return x.c0.type()
    c0 = x.c0.type(dtype, non_blocking)
    return TaylorSeries(c0, x.hi.to(c0.dtype))


register("float")(lambda x: to(x, torch.float32))
register("double")(lambda x: to(x, torch.float64))


def _join(tensors, dim, fn):
    tensors = list(tensors)
    if fn is torch.cat:     # torch.cat skips legacy empty 1-D constants (e.g. an empty key/value cache)
        tensors = [t for t in tensors if is_series(t) or not (isinstance(t, torch.Tensor) and t.shape == (0,))]
    series = [t for t in tensors if is_series(t)]
    if not series:
        return fn(tensors, dim)
    deg = max(s.degree for s in series)
    k = series[0].hi.shape[1]
    nd = series[0].c0.dim() + (1 if fn is torch.stack else 0)
    c0 = fn([t.c0 if is_series(t) else t for t in tensors], dim)
    his = []
    for t in tensors:
        if is_series(t):
            h = t.hi if t.degree == deg else torch.cat([t.hi, t.hi.new_zeros((deg - t.degree,) + tuple(t.hi.shape[1:]))])
        else:
            h = t.new_zeros((deg, k) + tuple(t.shape))
        his.append(h)
    return TaylorSeries(c0, fn(his, shift_dim(dim, nd)))


register("cat", "concat", "concatenate")(lambda tensors, dim=0: _join(tensors, dim, torch.cat))
register("stack")(lambda tensors, dim=0: _join(tensors, dim, torch.stack))


@register("chunk")
def chunk(x, chunks, dim=0):
    nd = x.c0.dim()
    return tuple(TaylorSeries(a, b) for a, b in zip(x.c0.chunk(chunks, dim), x.hi.chunk(chunks, shift_dim(dim, nd))))


@register("split")
def split(x, split_size_or_sections, dim=0):
    nd = x.c0.dim()
    return tuple(TaylorSeries(a, b) for a, b in zip(x.c0.split(split_size_or_sections, dim),
                                                    x.hi.split(split_size_or_sections, shift_dim(dim, nd))))


# ----------------------------------------------------------------------------- in-place helpers, constants
def _full_terms(x, degree: int):
    """``[c0, c1, ..., c_degree]`` of a series or constant (zeros past its degree; c_n ``[K or 1, *S]``)."""
    if not is_series(x):
        z = torch.zeros((1,) + tuple(x.shape), dtype=x.dtype, device=x.device) if isinstance(x, torch.Tensor) \
            else None
        return [x] + [z] * degree
    t = x.terms()
    return t + [torch.zeros_like(t[1])] * (degree + 1 - len(t))


def _select(cond: torch.Tensor, a, b):
    """``where(cond, a, b)`` for a constant condition and series or constant branches."""
    if not is_series(a) and not is_series(b):
        return torch.where(cond, a, b)
    deg = max(s.degree for s in (a, b) if is_series(s))
    ta, tb = _full_terms(a, deg), _full_terms(b, deg)
    out = [torch.where(cond, ta[0], tb[0])]
    for n in range(1, deg + 1):
        an = ta[n] if ta[n] is not None else torch.zeros((), dtype=out[0].dtype, device=out[0].device)
        bn = tb[n] if tb[n] is not None else torch.zeros((), dtype=out[0].dtype, device=out[0].device)
        out.append(torch.where(cond, an, bn))
    return from_terms(out)


@register("where")
def where(cond, a=None, b=None):
    if a is None and b is None:
        return torch.where(cond.c0 if is_series(cond) else cond)
    if is_series(cond):
        raise NotImplementedError("Taylor mode: torch.where with a series as condition has no rule; "
                                  "compare the series first (a comparison gives a constant mask)")
    return _select(cond, a, b)


@register("masked_fill")
def masked_fill(x, mask, value):
    if is_series(mask):
        raise NotImplementedError("Taylor mode: masked_fill with a series as mask has no rule")
    if is_series(value):
        return _select(mask, value, x)
    value = value.item() if isinstance(value, torch.Tensor) else value
    c0 = x.c0.masked_fill(mask, value)
    return TaylorSeries(c0, x.hi.masked_fill(mask, 0.0).expand(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


@register("setitem")
def setitem(x, index, value):
    """``x[index] = value`` as a new series (dispatch makes it the new value of x, writing through views)."""
    if not isinstance(index, tuple):
        index = (index,)
    if any(is_series(i) for i in index):
        raise NotImplementedError("Taylor mode: indexing with a series has no rule; use backend='autograd'")
    deg = max(x.degree, value.degree if is_series(value) else 1)
    k = max(x.hi.shape[1], value.hi.shape[1] if is_series(value) else 1)
    c0 = x.c0.clone()
    c0[index] = value.c0 if is_series(value) else value
    hi = _full_hi(x, deg, k).clone()
    hi[(slice(None), slice(None)) + index] = _full_hi(value, deg, k) if is_series(value) else 0.0
    return TaylorSeries(c0, hi)


def _full_hi(x: TaylorSeries, degree: int, k: int) -> torch.Tensor:
    h = x.hi if x.degree >= degree else torch.cat([x.hi, x.hi.new_zeros((degree - x.degree,) + tuple(x.hi.shape[1:]))])
    return h.expand((degree, k) + tuple(x.c0.shape))


@register("copy")
def copy(x, src, non_blocking=False):
    if is_series(src):
        c0 = x.c0.new_empty(x.c0.shape).copy_(src.c0)
        return TaylorSeries(c0, src.hi.to(c0.dtype).expand(tuple(src.hi.shape[:2]) + tuple(c0.shape)))
    return x.c0.new_empty(x.c0.shape).copy_(src)


register("fill")(lambda x, value: torch.full_like(x.c0, value.item() if isinstance(value, torch.Tensor) else value))
register("zero")(lambda x: torch.zeros_like(x.c0))


def _constant_like(fn):
    """zeros_like/new_ones/...: a constant (degree 0) from the primal's metadata."""
    def rule(x, *args, **kwargs):
        return fn(x.c0, *args, **kwargs)
    return rule


for _name in ("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros",
              "new_ones", "new_full", "new_empty", "new_tensor"):
    register(_name)(_constant_like(getattr(torch, _name, None) or getattr(torch.Tensor, _name)))


# ----------------------------------------------------------------------------- piecewise-linear activations
def _piecewise(x, primal, slope):
    """A function linear on pieces: primal computed by the model's own op, coefficients scaled by the slope."""
    return TaylorSeries(primal, x.hi * slope)


@register("hardtanh")
def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
    return _piecewise(x, F.hardtanh(x.c0, min_val, max_val), ((x.c0 > min_val) & (x.c0 < max_val)).to(x.dtype))


register("relu6")(lambda x, inplace=False: hardtanh(x, 0.0, 6.0))


@register("clamp", "clip")
def clamp(x, min=None, max=None):
    if is_series(min) or is_series(max):
        raise NotImplementedError("Taylor mode: clamp with series bounds has no rule; use backend='autograd'")
    inside = torch.ones_like(x.c0, dtype=torch.bool)
    if min is not None:
        inside = inside & (x.c0 > min)
    if max is not None:
        inside = inside & (x.c0 < max)
    return _piecewise(x, torch.clamp(x.c0, min, max), inside.to(x.dtype))


@register("hardsigmoid")
def hardsigmoid(x, inplace=False):
    return _piecewise(x, F.hardsigmoid(x.c0), ((x.c0 > -3.0) & (x.c0 < 3.0)).to(x.dtype) / 6.0)


@register("hardswish")
def hardswish(x, inplace=False):
    # x (x + 3) / 6 on (-3, 3), x above, 0 below; the primal exactly as torch computes it
    mid = (x.c0 > -3.0) & (x.c0 < 3.0)
    q = mul(mul(x, add(x, 3.0)), 1.0 / 6.0)
    out = _select(mid, q, _select(x.c0 >= 3.0, x, torch.zeros_like(x.c0)))
    return TaylorSeries(F.hardswish(x.c0), out.hi)


# ----------------------------------------------------------------------------- products of any rank
def _product(a, b, op):
    """A bilinear op that broadcasts over leading dims (matmul): Cauchy product of the two series."""
    if not is_series(b):
        return TaylorSeries(op(a.c0, b), op(a.hi, b))
    if not is_series(a):
        return TaylorSeries(op(a, b.c0), op(a, b.hi))
    return from_terms(_cauchy([a.terms(), b.terms()], lambda ts, idx: op(*ts)))


def _cauchy(term_lists, op):
    """Coefficients of a multilinear op of several series: Σ over index tuples summing to n of op(terms)."""
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


def _matmul(a, b):
    ra, rb = _ndim(a), _ndim(b)
    if ra == 0 or rb == 0:
        raise RuntimeError("both arguments to matmul need to be at least 1D")
    if ra == 1:
        a = unsqueeze(a, 0) if is_series(a) else a.unsqueeze(0)
    if rb == 1:
        b = unsqueeze(b, -1) if is_series(b) else b.unsqueeze(-1)
    nd = max(_ndim(a), _ndim(b))
    a = align(a, nd) if is_series(a) else a.reshape((1,) * (nd - a.dim()) + tuple(a.shape))
    b = align(b, nd) if is_series(b) else b.reshape((1,) * (nd - b.dim()) + tuple(b.shape))
    if is_series(a) and is_series(b):
        out = from_terms(_cauchy([a.terms(), b.terms()], lambda ts, idx: torch.matmul(*ts)))
    else:
        out = _product(a, b, torch.matmul)
    if ra == 1 and rb == 1:
        return _reshape(out, ())
    if rb == 1:
        out = squeeze(out, -1)
    if ra == 1:
        out = squeeze(out, -2)
    return out


@register("matmul", "mm", "bmm")
def matmul(a, b):
    return _matmul(a, b)


register("rmatmul")(lambda a, b: matmul(b, a))


@register("baddbmm", "addmm", "addbmm")
def baddbmm(input, b1, b2, beta=1, alpha=1):
    prod = matmul(b1, b2)
    if alpha != 1:
        prod = mul(prod, alpha)
    if beta == 0:
        return prod
    return add(mul(input, beta) if beta != 1 else input, prod)


def _einsum_with_k(eq: str, has_k):
    """Add a direction axis (a fresh letter) to the operands that carry one, and to the output."""
    lhs, _, rhs = eq.replace(" ", "").partition("->")
    ops = lhs.split(",")
    if not _:
        letters = [c for c in lhs.replace(",", "").replace(".", "") if c.isalpha()]
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    used = set(eq)
    z = next(c for c in "ZYXWVUTSRQPONMLKJIHGFEDCBAzyxwvutsrqponmlkjihgfedcba" if c not in used)
    ops = [(z + o) if k else o for o, k in zip(ops, has_k)]
    return ",".join(ops) + "->" + (z + rhs if any(has_k) else rhs)


@register("einsum")
def einsum(eq, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    term_lists = [x.terms() if is_series(x) else [x] for x in operands]
    eqs = {}

    def op(ts, idx):
        key = tuple(j > 0 for j in idx)
        if key not in eqs:
            eqs[key] = _einsum_with_k(eq, key)
        return torch.einsum(eqs[key], *ts)

    return from_terms(_cauchy(term_lists, op))


# ----------------------------------------------------------------------------- more shape ops
@register("pad")
def pad(x, pad, mode="constant", value=None):
    if mode == "constant":
        c0 = F.pad(x.c0, pad, mode, value)
        return TaylorSeries(c0, F.pad(x.hi, pad, mode, 0.0))
    return map_batched(x, lambda t: F.pad(t, pad, mode))


@register("roll")
def roll(x, shifts, dims=None):
    if dims is None:
        hi = x.hi.reshape(tuple(x.hi.shape[:2]) + (-1,)).roll(shifts, 2).reshape(x.hi.shape)
        return TaylorSeries(x.c0.roll(shifts), hi)
    nd = x.c0.dim()
    dd = [shift_dim(d, nd) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))]
    return TaylorSeries(x.c0.roll(shifts, dims), x.hi.roll(shifts, dd))


@register("normalize")
def normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    if p != 2:
        raise NotImplementedError(f"Taylor mode: F.normalize with p={p} has no rule (p=2 only)")
    norm = power(reduce(mul(x, x), torch.sum, dim, keepdim=True), 0.5)
    big = norm.c0 > eps
    inv = _select(big, from_terms(rules.recip_list(norm.terms(), order() + 1)),
                  torch.full_like(norm.c0, 1.0 / eps))
    return mul(x, inv)


@register("embedding")
def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    if is_series(input):
        raise NotImplementedError("Taylor mode: embedding indices cannot carry derivatives")
    if max_norm is not None:
        raise NotImplementedError("Taylor mode: embedding with max_norm (renormalises the weight in place) "
                                  "has no rule; use backend='autograd'")
    c0 = F.embedding(input, weight.c0)
    return TaylorSeries(c0, weight.hi[:, :, input])


@register("unflatten")
def unflatten(x, dim, sizes):
    nd = x.c0.dim()
    return TaylorSeries(x.c0.unflatten(dim, sizes), x.hi.unflatten(shift_dim(dim, nd), sizes))


@register("movedim", "moveaxis")
def movedim(x, source, destination):
    nd = x.c0.dim()
    src = [shift_dim(d, nd) for d in (source if isinstance(source, (tuple, list)) else (source,))]
    dst = [shift_dim(d, nd) for d in (destination if isinstance(destination, (tuple, list)) else (destination,))]
    return TaylorSeries(x.c0.movedim(source, destination), x.hi.movedim(src, dst))


@register("narrow")
def narrow(x, dim, start, length):
    nd = x.c0.dim()
    return TaylorSeries(x.c0.narrow(dim, start, length), x.hi.narrow(shift_dim(dim, nd), start, length))


@register("select")
def select(x, dim, index):
    nd = x.c0.dim()
    return TaylorSeries(x.c0.select(dim, index), x.hi.select(shift_dim(dim, nd), index))


@register("unbind")
def unbind(x, dim=0):
    nd = x.c0.dim()
    return tuple(TaylorSeries(a, b) for a, b in zip(x.c0.unbind(dim), x.hi.unbind(shift_dim(dim, nd))))


@register("repeat_interleave")
def repeat_interleave(x, repeats, dim=None, output_size=None):
    if dim is None:
        return repeat_interleave(_reshape(x, -1), repeats, 0)
    nd = x.c0.dim()
    return TaylorSeries(x.c0.repeat_interleave(repeats, dim), x.hi.repeat_interleave(repeats, shift_dim(dim, nd)))


@register("repeat")
def repeat(x, *sizes):
    sizes = _shape_args(sizes)
    c0 = x.c0.repeat(sizes)
    xa = align(x, len(sizes))
    return TaylorSeries(c0, xa.hi.repeat((1, 1) + tuple(sizes)))


# ----------------------------------------------------------------------------- attention
@register("scaled_dot_product_attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """softmax(q kᵀ · scale + mask) v in series ops; dropout draws its mask as the math reference does."""
    q_shape, k_shape = tuple(query.shape), tuple(key.shape)
    length, src = q_shape[-2], k_shape[-2]
    scale = 1.0 / math.sqrt(q_shape[-1]) if scale is None else scale
    if enable_gqa and len(q_shape) >= 3 and q_shape[-3] != k_shape[-3]:
        rep = q_shape[-3] // k_shape[-3]
        key = repeat_interleave(key, rep, -3) if is_series(key) else key.repeat_interleave(rep, -3)
        value = repeat_interleave(value, rep, -3) if is_series(value) else value.repeat_interleave(rep, -3)
    kt = transpose(key, -2, -1) if is_series(key) else key.transpose(-2, -1)
    attn = mul(matmul(query, kt), scale)
    ref = attn.c0 if is_series(attn) else attn
    keep, bias, dead = sdpa_masks(length, src, attn_mask, is_causal, ref.device)
    if keep is not None:
        attn = masked_fill(attn, ~keep, float("-inf")) if is_series(attn) else attn.masked_fill(~keep, float("-inf"))
    if bias is not None:
        attn = add(attn, bias)
    attn = softmax(attn, -1) if is_series(attn) else torch.softmax(attn, -1)
    if dead is not None:        # rows with nothing to attend: zero weights, as torch gives them
        attn = masked_fill(attn, dead, 0.0) if is_series(attn) else attn.masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        attn = dropout(attn, dropout_p, True) if is_series(attn) else F.dropout(attn, dropout_p, True)
    return matmul(attn, value)


_mha_body = unguarded(F.multi_head_attention_forward)


@register("multi_head_attention_forward")
def multi_head_attention_forward(*args, **kwargs):
    """torch's own ``F.multi_head_attention_forward`` (the slow path of ``nn.MultiheadAttention``) run on series:
    projections, head split, SDPA or explicit softmax attention (need_weights), masks, dropout, output projection."""
    return _mha_body(*args, **kwargs)
