"""The Taylor engine: push a degree-1 series through the model, then expand the loss head to order N.

The series starts at the input (or at the parameters).

``input`` mode: x + t·u_k for K directions; the primal runs once on ``[B, ...]`` and the
tangent coefficients run with K folded into the batch. ``params`` mode: every parameter
becomes ``p + t·v_k``; products of series raise the degree as needed.
"""
from __future__ import annotations

import contextlib
import math


import torch
from torch import nn

from . import op_table  # noqa: F401  (fills the rule table)
from .._state import fresh_input
from ..losses import cross_entropy_per_sample, resolve_loss, split_ignored
from .impl import Composite
from .op_rules.arithmetic import mul, sub
from .op_rules.factories import reduce
from .series import RunContext, TaylorSeries, is_series



def head_terms(out, y, loss, label_smoothing: float, ctx: RunContext):
    """Per-sample loss at t = 0 ``[B]`` and its derivatives ``[K, B, N]`` (None if out is constant in t)."""
    n = ctx.order
    if not is_series(out):
        return resolve_loss(loss, label_smoothing)(out, y), None
    if loss == "cross_entropy":
        if out.c0.dim() != 2:
            raise ValueError(f"cross-entropy needs logits of shape [B, classes], the model returned {list(out.shape)}")
        safe, keep = split_ignored(y)       # ignored samples (label -100): loss and derivatives 0
        if out.degree == 1:
            d = ctx.impl.cross_entropy_deg1(out.c0, out.hi[0], safe, n, label_smoothing)
            return (cross_entropy_per_sample(out.c0, y, label_smoothing),
                    d if keep is None else d * keep.unsqueeze(-1).to(d.dtype))
        terms = ctx.impl.cross_entropy(out.terms(), safe, n + 1, label_smoothing)
        if keep is not None:
            terms = [t * keep.to(t.dtype) for t in terms]
    elif loss == "mse":
        diff = sub(out, y)
        sq = mul(diff, diff)
        per = reduce(sq, torch.mean, list(range(1, sq.c0.dim())))
        terms = per.terms() if is_series(per) else [per]
    elif callable(loss):
        per = loss(out, y)
        if not is_series(per):
            return per, None
        if per.c0.dim() != 1:
            raise ValueError(f"a callable loss must return per-sample losses [B], got shape {list(per.shape)}")
        terms = per.terms()
    else:
        raise ValueError(f"unknown loss {loss!r}")
    k, b = ctx.k, out.c0.shape[0]
    if len(terms) == 1:
        return terms[0], None
    derivs = [terms[i].expand(k, b) * float(math.factorial(i)) if i < len(terms) else terms[1].new_zeros(k, b)
              for i in range(1, n + 1)]
    return terms[0], torch.stack(derivs, dim=-1)


def input_derivs(model: nn.Module, x: torch.Tensor, y, u: torch.Tensor, order: int, loss,
                 label_smoothing: float = 0.0, impl=None):
    """d^n/dt^n loss_b(x + t·u_k), n = 1..order.

    x ``[B, ...]``, u ``[K, B, ...]`` (per point) or ``[K, ...]`` (shared by every point) → (``[B, K, order]``,
    per-sample loss at t = 0 ``[B]``).

    Shared directions enter as a stride-0 broadcast over the batch (no B-fold copy); linear and
    convolution rules then compute their tangent once per direction instead of once per point.
    """
    ctx = RunContext(order, u.shape[0], impl or Composite(), model)
    if u.dim() == x.dim() + 1:      # [K, B, *S]: one direction per point
        hi = u.unsqueeze(0)
    else:                           # [K, *S] shared: a stride-0 view [1, K, B, *S]
        hi = u.unsqueeze(1).unsqueeze(0).expand((1, u.shape[0]) + tuple(x.shape))
    with ctx.active():
        out = model(TaylorSeries(x, hi))
        loss0, d = head_terms(out, y, loss, label_smoothing, ctx)
    if d is None:
        return x.new_zeros(x.shape[0], u.shape[0], order), loss0
    return d.transpose(0, 1), loss0


@contextlib.contextmanager
def series_parameters(model: nn.Module, v: torch.Tensor, leaf: bool = False):
    """Temporarily replace every parameter p by the series p + t·v_k (v ``[K, P]``, parameters() order).

    ``leaf``: the primal is a fresh leaf ``p.detach().requires_grad_()`` (so the forward is differentiable with respect
    to every primal even where ``p.requires_grad`` is False).
    """
    swapped, offset = [], 0
    k = v.shape[0]
    owners = {}
    for mod in model.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mod, name))
    try:
        for p in model.parameters():
            n = p.numel()
            c0 = p.detach().requires_grad_() if leaf else p
            s = TaylorSeries(c0, v[:, offset:offset + n].reshape((1, k) + tuple(p.shape)))
            offset += n
            for mod, name in owners[id(p)]:
                mod._parameters[name] = s
                swapped.append((mod, name, p))
        yield
    finally:
        for mod, name, p in swapped:
            mod._parameters[name] = p


def params_derivs(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, order: int, loss,
                  label_smoothing: float = 0.0, impl=None):
    """d^n/dt^n of the batch-mean loss at θ + t·v_k. v ``[K, P]`` → (``[K, order]``, per-sample loss ``[B]``)."""
    ctx = RunContext(order, v.shape[0], impl or Composite(), model)
    with ctx.active(), series_parameters(model, v):
        out = model(fresh_input(x))      # a copy: the model may change its (constant) input in place
        loss0, d = head_terms(out, y, loss, label_smoothing, ctx)
    if d is None:
        return x.new_zeros(v.shape[0], order), loss0
    return d.mean(dim=1), loss0
