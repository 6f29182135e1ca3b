"""Routing modes: while active, calls of chosen torch functions go to replacements with the same values.

[`HigherOrderSafe`][lamda_ext.routing.HigherOrderSafe] routes ops whose native kernels cannot be differentiated to high
order to elementary-op composites (used by the ``autograd`` and ``func`` reference backends);
`lamda_ext._hvp_ops` builds its forward-over-reverse routes on [`RoutingMode`][lamda_ext.routing.RoutingMode].
[`torch_jvp_warning_filtered`][lamda_ext.routing.torch_jvp_warning_filtered] wraps the calls that may be a process's
first use of forward-mode AD.
"""
from __future__ import annotations

import contextlib
import math
import types
import warnings

import torch

__all__ = ["RoutingMode", "HigherOrderSafe", "unguarded", "torch_jvp_warning_filtered", "sdpa_masks", "composite_sdpa",
           "composite_hardsigmoid", "ROUTED_MHA"]


@contextlib.contextmanager
def torch_jvp_warning_filtered():
    """Filter torch's ``FutureWarning`` "`torch.jit.script` is deprecated" raised at the first dual tensor.

    Torch raises it from inside itself when a process makes its first dual tensor (``torch.func.jvp``,
    ``torch.func.linearize``): torch then imports its forward-AD decompositions, which call ``torch.jit.script``. A user
    of the HVPs cannot act on it; every other warning passes.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        yield


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


def composite_hardsigmoid(input, inplace=False):
    """relu6(x + 3) / 6 (the native backward has no derivative of its own)."""
    return torch.clamp(input + 3.0, 0.0, 6.0) / 6.0


def sdpa_masks(length: int, src: int, attn_mask, is_causal: bool, device):
    """The masks of ``scaled_dot_product_attention`` as its math backend applies them: ``(keep, bias, dead)``.

    Args:
        length: the query length L.
        src: the key length S.
        attn_mask: None, bool ``[..., L, S]`` (True = attend) or an additive float mask.
        is_causal: a lower-triangular mask on top.
        device: of the masks.

    Returns:
        ``keep``: bool ``[..., L, S]`` of the positions that may be attended (None: all); ``bias``: the float mask
        to add (None: none); ``dead``: bool ``[..., L, 1]`` of the rows with nothing to attend (every position
        masked or -inf), or None. torch gives those rows zero weights; they are unmasked in ``keep`` and ``bias``
        so that the softmax stays finite, and their weights are set to 0 after it.
    """
    keep = torch.ones(length, src, dtype=torch.bool, device=device).tril() if is_causal else None
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            bias = attn_mask
            finite = attn_mask != float("-inf")
            keep = finite if keep is None else keep & finite
    if keep is None:
        return None, bias, None
    dead = ~keep.any(-1, keepdim=True)
    if not bool(dead.any()):
        return keep, bias, None
    return keep | dead, (bias.masked_fill(dead, 0.0) if bias is not None else None), dead


def composite_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False):
    """The math of ``scaled_dot_product_attention`` in elementary ops.

    The fused CPU/flash kernels have no derivatives past the first (no double backward, no forward-mode AD). Dropout
    draws its mask with ``F.dropout`` on the attention weights, as the Taylor rule does, so replayed RNG gives one mask;
    rows with nothing to attend get zero weights, as in torch ([`sdpa_masks`][lamda_ext.routing.sdpa_masks]).
    """
    length, src = query.shape[-2], key.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa and query.dim() >= 3 and query.shape[-3] != key.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
    attn = torch.matmul(query, key.transpose(-2, -1)) * scale
    keep, bias, dead = sdpa_masks(length, src, attn_mask, is_causal, query.device)
    if keep is not None:
        attn = attn.masked_fill(~keep, float("-inf"))
    if bias is not None:
        attn = attn + bias
    attn = torch.softmax(attn, -1)
    if dead is not None:
        attn = attn.masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        attn = torch.nn.functional.dropout(attn, dropout_p, True)
    return torch.matmul(attn, value)


def unguarded(fn):
    """A copy of the ``torch.nn.functional`` function ``fn`` whose own ``__torch_function__`` guard is off.

    Its body runs on whatever it is given, while every op it calls keeps its guard. Lets a routing mode (or the Taylor
    engine) run torch's own composite, e.g. ``F.multi_head_attention_forward``, with the ops inside it routed.
    """
    glb = dict(fn.__globals__)
    glb["has_torch_function"] = lambda *_: False
    body = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
    body.__kwdefaults__ = fn.__kwdefaults__
    return body


class _Reenter:
    """A route that runs with the routing mode active again, so the ops inside it are routed too."""

    def __init__(self, fn):
        self.fn = fn


# nn.MultiheadAttention's slow path: torch's body, with the SDPA/layer-norm calls inside it routed
ROUTED_MHA = _Reenter(unguarded(torch.nn.functional.multi_head_attention_forward))

_COMPOSITES = {torch.nn.functional.batch_norm: _composite_batch_norm,
               torch.nn.functional.layer_norm: _composite_layer_norm,
               torch.nn.functional.silu: _composite_silu,
               torch.nn.functional.hardsigmoid: composite_hardsigmoid,
               torch.nn.functional.scaled_dot_product_attention: composite_sdpa,
               torch.nn.functional.multi_head_attention_forward: ROUTED_MHA}


class RoutingMode(torch.overrides.TorchFunctionMode):
    """While active, calls of the functions in ``routes`` go to their replacements (same values)."""

    routes: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        route = self.routes.get(func)
        if isinstance(route, _Reenter):
            with self:
                return route.fn(*args, **kwargs)
        if route is not None:
            return route(*args, **kwargs)
        return func(*args, **kwargs)


class HigherOrderSafe(RoutingMode):
    """Routes batch/layer norm, SiLU, hardsigmoid and ``scaled_dot_product_attention`` to elementary ops.

    The native kernels' nested derivatives stop at order 2 (batch norm, hardsigmoid, the fused attention kernels), are
    wrong past it (layer norm) or lack forward-mode AD in their backward (SiLU, flash attention), so the references must
    not use them. ``nn.MultiheadAttention`` and the transformer layers reach SDPA through
    ``F.multi_head_attention_forward`` and are routed with it.
    """

    routes = _COMPOSITES

