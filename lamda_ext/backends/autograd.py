"""The reference: nested ``torch.autograd.grad(create_graph=True)``, one direction at a time.

Cost grows exponentially with the order and linearly with K. Per-sample derivatives of the
loss vector L(t) ∈ R^B come from a dummy weight w: s_n = Σ_b w_b L_b^(n)(t) is differentiated
in t for the next order, and in w for the values — this stays exact when samples interact
(batch norm in train mode).
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from ..losses import resolve_loss
from .._state import RngReplay, fresh_input
from ..routing import HigherOrderSafe


def _nested(s: torch.Tensor, t: torch.Tensor, order: int, read) -> list:
    """Differentiate the scalar s in t ``order`` times; ``read(s_n)`` extracts each derivative."""
    out = []
    for _ in range(order):
        g = torch.autograd.grad(s, t, create_graph=True, allow_unused=True)[0] if s.requires_grad else None
        if g is None:            # the loss is polynomial in t of lower degree: the rest is exactly zero
            break
        s = g
        out.append(read(s))
    return out


def _input_derivs(model, x, y, u, order, loss, label_smoothing=0.0, keep_graph=True):
    loss_fn = resolve_loss(loss, label_smoothing)
    replay = RngReplay(x.device)
    per_dir, loss0 = [], None
    for k in range(u.shape[0]):
        replay.reset()
        t = x.new_zeros((), requires_grad=True)
        per_sample = loss_fn(model(x + t * u[k]), y)
        loss0 = per_sample if loss0 is None else loss0
        w = torch.ones_like(per_sample, requires_grad=True)
        ds = _nested((w * per_sample).sum(), t, order,
                     lambda s: torch.autograd.grad(s, w, create_graph=keep_graph, retain_graph=True,
                                                   allow_unused=True)[0] if s.requires_grad else None)
        ds = [d if d is not None else x.new_zeros(x.shape[0]) for d in ds]
        ds += [x.new_zeros(x.shape[0])] * (order - len(ds))
        per_dir.append(torch.stack(ds, dim=-1))
    return torch.stack(per_dir, dim=1), loss0


def perturbed_call(model, x, v_k: torch.Tensor, t: torch.Tensor):
    """model(x) with every parameter p replaced by p + t·v.

    v is flat over ``parameters()`` order; the model runs on a copy of x (it may change its input in place).
    """
    params, offset = {}, 0
    for name, p in model.named_parameters():
        params[name] = p + t * v_k[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    buffers = dict(model.named_buffers())
    return functional_call(model, {**params, **buffers}, (fresh_input(x),))


def _params_derivs(model, x, y, v, order, loss, label_smoothing=0.0, keep_graph=True):
    loss_fn = resolve_loss(loss, label_smoothing)
    replay = RngReplay(x.device)
    per_dir, loss0 = [], None
    for k in range(v.shape[0]):
        replay.reset()
        t = x.new_zeros((), requires_grad=True)
        per_sample = loss_fn(perturbed_call(model, x, v[k], t), y)
        loss0 = per_sample if loss0 is None else loss0
        s = per_sample.mean()
        ds = _nested(s, t, order, lambda s: s)
        ds += [x.new_zeros(())] * (order - len(ds))
        per_dir.append(torch.stack(ds))
    return torch.stack(per_dir), loss0


def _graded(fn, *args):
    """Run with grad mode on (nested autograd needs it); detach when the caller had it off."""
    caller = torch.is_grad_enabled()
    with HigherOrderSafe(), torch.enable_grad():
        derivs, loss0 = fn(*args, keep_graph=caller)
    return (derivs, loss0) if caller else (derivs.detach(), loss0.detach())


def input_derivs(model, x, y, u, order, loss, label_smoothing=0.0):
    """d^n/dt^n loss_b(x + t·u_k): x ``[B, ...]``, u ``[K, B, ...]`` or shared ``[K, ...]`` (broadcast) → (``[B, K, order]``, loss ``[B]``)."""
    return _graded(_input_derivs, model, x, y, u, order, loss, label_smoothing)


def params_derivs(model, x, y, v, order, loss, label_smoothing=0.0):
    """d^n/dt^n of the batch-mean loss at θ + t·v_k: v ``[K, P]`` → (``[K, order]``, loss ``[B]``)."""
    return _graded(_params_derivs, model, x, y, v, order, loss, label_smoothing)
