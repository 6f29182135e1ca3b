"""Routing modes: while active, calls of chosen torch functions go to replacements with the same values.

:class:`HigherOrderSafe` routes ops whose native kernels cannot be differentiated to high order to
elementary-op composites (used by the ``autograd`` and ``func`` reference backends);
:mod:`lamda_ext._hvp_ops` builds its forward-over-reverse routes on :class:`RoutingMode`.
"""
from __future__ import annotations

import torch

__all__ = ["RoutingMode", "HigherOrderSafe"]


def _composite_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                          momentum=0.1, eps=1e-5):
    """Batch norm in elementary ops (differentiable to any order; the native kernel stops at 2)."""
    shape = (1, -1) + (1,) * (input.dim() - 2)
    if training or running_mean is None:
        dims = [0] + list(range(2, input.dim()))
        mean = input.mean(dim=dims, keepdim=True)
        var = ((input - mean) ** 2).mean(dim=dims, keepdim=True)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    out = (input - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _composite_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    dims = list(range(input.dim() - len(normalized_shape), input.dim()))
    mean = input.mean(dim=dims, keepdim=True)
    var = ((input - mean) ** 2).mean(dim=dims, keepdim=True)
    out = (input - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _composite_silu(input, inplace=False):
    return input * torch.sigmoid(input)


_COMPOSITES = {torch.nn.functional.batch_norm: _composite_batch_norm,
               torch.nn.functional.layer_norm: _composite_layer_norm,
               torch.nn.functional.silu: _composite_silu}


class RoutingMode(torch.overrides.TorchFunctionMode):
    """While active, calls of the functions in ``routes`` go to their replacements (same values)."""

    routes: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = self.routes.get(func)
        if route is not None:
            return route(*args, **kwargs)
        return func(*args, **kwargs)


class HigherOrderSafe(RoutingMode):
    """Routes batch/layer norm and SiLU to elementary ops: the native kernels' nested derivatives
    stop at order 2 (batch norm), are wrong past it (layer norm) or lack forward-mode AD in their
    backward (SiLU), so the references must not use them."""

    routes = _COMPOSITES

