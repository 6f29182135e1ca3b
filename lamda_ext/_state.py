"""Model state around a measurement: a measurement never changes the model.

- Batch norm in train mode uses batch statistics, but its running statistics are left as
  they were (all backends see the same normalisation; nothing is updated).
- Dropout: every backend uses one mask per measurement. Backends that run the model once per
  direction replay the RNG state so that each direction sees the mask the Taylor engine draws.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.running_mean is not None:
            saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean = m.running_var = m.num_batches_tracked = None
    try:
        yield
    finally:
        for m, rm, rv, nbt in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = rm, rv, nbt


class RngReplay:
    """Snapshot of the RNG of ``device`` (and the CPU); :meth:`reset` returns to it."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.device = device
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def reset(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


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

