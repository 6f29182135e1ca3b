"""Second reference: nested ``torch.func.jvp`` (≈ 2^N forward cost per direction).

One evaluation of the model on nested dual numbers returns every order up to N at once.
"""
from __future__ import annotations

import torch

from ..losses import resolve_loss
from .._state import RngReplay
from ..routing import HigherOrderSafe, torch_jvp_warning_filtered
from .autograd import perturbed_call


def _all_orders(f, t: torch.Tensor, n: int) -> tuple:
    """(f(t), f'(t), …, f^(n)(t)) by n nested forward-mode passes."""
    if n == 0:
        return (f(t),)
    primals, tangents = torch.func.jvp(lambda s: _all_orders(f, s, n - 1), (t,), (torch.ones_like(t),))
    return tuple(primals) + (tangents[-1],)


def _input_derivs(model, x, y, u, order, loss, label_smoothing=0.0):
    loss_fn = resolve_loss(loss, label_smoothing)
    replay = RngReplay(x.device)
    per_dir = []
    for k in range(u.shape[0]):
        replay.reset()
        vals = _all_orders(lambda t: loss_fn(model(x + t * u[k]), y), x.new_zeros(()), order)
        per_dir.append(torch.stack(vals[1:], dim=-1))
    return torch.stack(per_dir, dim=1), vals[0]


def _params_derivs(model, x, y, v, order, loss, label_smoothing=0.0):
    loss_fn = resolve_loss(loss, label_smoothing)
    replay = RngReplay(x.device)
    per_dir = []
    for k in range(v.shape[0]):
        replay.reset()
        vals = _all_orders(lambda t: _mean_with_samples(loss_fn(perturbed_call(model, x, v[k], t), y)),
                           x.new_zeros(()), order)
        per_dir.append(torch.stack([val[0] for val in vals[1:]]))
    return torch.stack(per_dir), vals[0][1]


def _mean_with_samples(per_sample: torch.Tensor):
    """(batch mean, per-sample losses): the mean is differentiated, the samples ride along."""
    return per_sample.mean(), per_sample


def input_derivs(model, x, y, u, order, loss, label_smoothing=0.0):
    """d^n/dt^n loss_b(x + t·u_k): x ``[B, ...]``, u ``[K, B, ...]`` or shared ``[K, ...]`` (broadcast) → ``[B, K, order]``."""
    with HigherOrderSafe(), torch_jvp_warning_filtered():
        return _input_derivs(model, x, y, u, order, loss, label_smoothing)


def params_derivs(model, x, y, v, order, loss, label_smoothing=0.0):
    """d^n/dt^n of the batch-mean loss at θ + t·v_k: v ``[K, P]`` → ``[K, order]``."""
    with HigherOrderSafe(), torch_jvp_warning_filtered():
        return _params_derivs(model, x, y, v, order, loss, label_smoothing)
