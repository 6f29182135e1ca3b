"""Formulations of common ops that are cheaper under forward-over-reverse (``jvp`` of ``grad``, vmapped).

The HVP differentiates the *backward* pass with forward mode, so what matters is the forward-mode
formula of each op's backward kernel. For ReLU that formula is wasteful: the tangent of
``threshold_backward(g, x)`` is built as ``zeros_like(ẋ) + threshold_backward(ġ, x)`` — three passes
over a K-batched activation where one suffices.

`ForwardOverReverseOps` is a ``TorchFunctionMode`` that, while active, computes ReLU as
``torch.where(x <= 0, 0, x)``: its backward is ``where(x <= 0, 0, g)``, its forward-mode derivative
``where(x <= 0, 0, ẋ)``, and the forward tangent of the backward one more ``where`` on ``ġ`` (the condition is a
saved boolean mask). Plain aten ops, so the formulation also runs under ``torch.func.functionalize``. The values
are identical (the derivative at exactly 0 is 0, as in autograd; NaN propagates).

``scaled_dot_product_attention`` runs as its math in elementary ops
([`lamda_ext.routing.composite_sdpa`][lamda_ext.routing.composite_sdpa]): the fused CPU/flash kernels have no
forward-mode derivative. ``nn.MultiheadAttention`` (and the transformer layers) reach it through
``F.multi_head_attention_forward``, whose body runs with the routes active. ``hardsigmoid`` (MobileNetV3) runs as
its composite: the forward-mode derivative of ``hardsigmoid_backward`` is missing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .routing import ROUTED_MHA, RoutingMode, composite_hardsigmoid, composite_sdpa

__all__ = ["ForwardOverReverseOps"]


def _relu(input, inplace=False):
    # in-place callers (nn.ReLU(inplace=True), torchvision's ResNet) use the returned tensor;
    # under the functional transforms an out-of-place result is what they receive
    return torch.where(input <= 0, 0.0, input)


class ForwardOverReverseOps(RoutingMode):
    """Route ReLU, SDPA and hardsigmoid to forms whose forward-over-reverse derivatives are cheap or exist.

    ReLU becomes a formulation whose forward-over-reverse derivative is one ``where`` pass, SDPA its math
    (forward-mode differentiable, also inside ``F.multi_head_attention_forward``), hardsigmoid its composite.
    """

    routes = {F.relu: _relu, torch.relu: _relu, torch.relu_: _relu, torch.Tensor.relu: _relu,
              torch.Tensor.relu_: _relu, F.scaled_dot_product_attention: composite_sdpa,
              F.hardsigmoid: composite_hardsigmoid, F.multi_head_attention_forward: ROUTED_MHA}
