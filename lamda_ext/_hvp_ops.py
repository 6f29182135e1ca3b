"""Formulations of common ops that are cheaper under forward-over-reverse (``jvp`` of ``grad``, vmapped).

The HVP differentiates the *backward* pass with forward mode, so what matters is the forward-mode
formula of each op's backward kernel. For ReLU that formula is wasteful: the tangent of
``threshold_backward(g, x)`` is built as ``zeros_like(ẋ) + threshold_backward(ġ, x)`` — three passes
over a K-batched activation where one suffices.

:class:`ForwardOverReverseOps` is a ``TorchFunctionMode`` that, while active, computes ReLU as an
``autograd.Function`` with a saved 0/1 mask: forward ``x.clamp_min(0)``, backward ``g · mask``,
forward-mode ``ẋ · mask``; the forward tangent of the backward is then one multiplication
``ġ · mask``. The values are identical (the derivative at exactly 0 is 0, as in autograd).

``scaled_dot_product_attention`` runs as its math in elementary ops (:func:`lamda_ext.routing.composite_sdpa`):
the fused CPU/flash kernels have no forward-mode derivative.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .routing import RoutingMode, composite_sdpa

__all__ = ["ForwardOverReverseOps"]


class _MaskedReLU(torch.autograd.Function):
    """ReLU whose backward and tangent are one multiplication by the saved mask ``(x > 0)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clamp_min(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        mask = (x > 0).to(x.dtype)      # same dtype as the gradients: no promotion pass
        ctx.save_for_backward(mask)
        ctx.save_for_forward(mask)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask

    @staticmethod
    def jvp(ctx, x_t):
        (mask,) = ctx.saved_tensors
        return x_t * mask


def _relu(input, inplace=False):
    # in-place callers (nn.ReLU(inplace=True), torchvision's ResNet) use the returned tensor;
    # under the functional transforms an out-of-place result is what they receive
    return _MaskedReLU.apply(input)


class ForwardOverReverseOps(RoutingMode):
    """Route ReLU to a formulation whose forward-over-reverse derivative is one multiplication, and SDPA to its
    math (forward-mode differentiable)."""

    routes = {F.relu: _relu, torch.relu: _relu, torch.relu_: _relu, torch.Tensor.relu: _relu,
              torch.Tensor.relu_: _relu, F.scaled_dot_product_attention: composite_sdpa}
