"""The op table: every op a model may call on a Taylor series, by canonical name, and its rule.

Names as [`lamda_ext.taylor.series.canonical_name`][lamda_ext.taylor.series.canonical_name] gives them. Importing this
module fills [`lamda_ext.taylor.series.RULES`][lamda_ext.taylor.series.RULES], which the dispatcher reads.

A row is ``names: rule``; a family of ops shares a factory from
[`lamda_ext.taylor.op_rules.factories`][lamda_ext.taylor.op_rules.factories], the other rules live in the family modules
of [`lamda_ext.taylor.op_rules`][lamda_ext.taylor.op_rules]. Every name here has a case in the per-op test table
(``tests/test_op_table.py``) checked against nested autograd; a name without one fails that test. The elementwise kinds
come from the one list [`lamda_ext.taylor.recurrences.UNARY`][lamda_ext.taylor.recurrences.UNARY].
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from .op_rules import activations, arithmetic, attention, linear, losses, norms, products, selection, shape
from .op_rules.factories import (constant_like, dropout_mask, elementwise, per_sample_linear, primal_only,
                                 reduction)
from .recurrences import UNARY_KINDS
from .series import RULES

__all__ = ["TABLE", "PRIMAL_ONLY", "CONSTANT_LIKE", "AVERAGE_POOLS"]

# elementwise kinds whose op takes arguments that change the value: their own rules below
_OWN_RULE_KINDS = ("gelu", "softplus", "elu")

PRIMAL_ONLY = ("gt", "ge", "lt", "le", "eq", "ne", "greater", "less", "argmax", "argmin", "sign", "isnan",
               "isfinite", "isinf", "any", "all", "argsort")
CONSTANT_LIKE = ("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "new_zeros",
                 "new_ones", "new_full", "new_empty", "new_tensor")
AVERAGE_POOLS = {"avg_pool1d": F.avg_pool1d, "avg_pool2d": F.avg_pool2d, "avg_pool3d": F.avg_pool3d,
                 "adaptive_avg_pool1d": F.adaptive_avg_pool1d, "adaptive_avg_pool2d": F.adaptive_avg_pool2d,
                 "adaptive_avg_pool3d": F.adaptive_avg_pool3d}

TABLE: Dict[Tuple[str, ...], Callable] = {
    # ---- arithmetic
    ("add",): arithmetic.add,
    ("radd",): arithmetic.radd,
    ("sub",): arithmetic.sub,
    ("rsub",): arithmetic.rsub,
    ("mul", "rmul"): arithmetic.mul,
    ("div",): arithmetic.div,
    ("rtruediv",): arithmetic.rdiv,
    ("neg",): arithmetic.neg,
    ("pow",): arithmetic.power,
    ("square",): arithmetic.square,
    ("sqrt",): arithmetic.sqrt,
    ("rsqrt",): arithmetic.rsqrt,
    ("reciprocal",): arithmetic.reciprocal,
    # ---- smooth elementwise functions (derivative recurrences) and activations
    **{(kind,): elementwise(kind) for kind in UNARY_KINDS if kind not in _OWN_RULE_KINDS},
    ("gelu",): activations.gelu,
    ("softplus",): activations.softplus,
    ("elu",): activations.elu,
    ("log_softmax",): activations.log_softmax,
    ("softmax",): activations.softmax,
    ("cross_entropy",): losses.cross_entropy,
    # ---- piecewise-linear activations
    ("relu",): activations.relu,
    ("leaky_relu",): activations.leaky_relu,
    ("abs",): activations.absolute,
    ("hardtanh",): activations.hardtanh,
    ("relu6",): activations.relu6,
    ("clamp", "clip"): activations.clamp,
    ("hardsigmoid",): activations.hardsigmoid,
    ("hardswish",): activations.hardswish,
    # ---- linear layers, products, normalisation, attention
    ("linear",): linear.linear,
    ("conv1d",): linear.conv1d,
    ("conv2d",): linear.conv2d,
    ("conv3d",): linear.conv3d,
    ("matmul", "mm", "bmm"): products.matmul,
    ("rmatmul",): products.rmatmul,
    ("baddbmm", "addmm", "addbmm"): products.baddbmm,
    ("einsum",): products.einsum,
    ("batch_norm",): norms.batch_norm,
    ("layer_norm",): norms.layer_norm,
    ("normalize",): norms.normalize,
    ("scaled_dot_product_attention",): attention.scaled_dot_product_attention,
    ("multi_head_attention_forward",): attention.multi_head_attention_forward,
    # ---- reductions, pooling, dropout
    ("sum",): reduction(torch.sum),
    ("mean",): reduction(torch.mean),
    **{(name,): per_sample_linear(fn) for name, fn in AVERAGE_POOLS.items()},
    ("max_pool2d", "max_pool1d"): selection.max_pool,
    ("dropout",): selection.dropout,
    ("dropout1d",): dropout_mask(F.dropout1d),
    ("dropout2d",): dropout_mask(F.dropout2d),
    ("dropout3d",): dropout_mask(F.dropout3d),
    # ---- shape ops
    ("view", "reshape"): shape.reshape,
    ("view_as", "reshape_as"): shape.view_as,
    ("flatten",): shape.flatten,
    ("unflatten",): shape.unflatten,
    ("permute",): shape.permute,
    ("transpose", "swapaxes", "swapdims"): shape.transpose,
    ("t",): shape.t,
    ("movedim", "moveaxis"): shape.movedim,
    ("unsqueeze",): shape.unsqueeze,
    ("squeeze",): shape.squeeze,
    ("expand",): shape.expand,
    ("expand_as",): shape.expand_as,
    ("repeat",): shape.repeat,
    ("repeat_interleave",): shape.repeat_interleave,
    ("contiguous", "clone"): shape.contiguous,
    ("getitem",): shape.getitem,
    ("narrow",): shape.narrow,
    ("select",): shape.select,
    ("chunk",): shape.chunk,
    ("split",): shape.split,
    ("unbind",): shape.unbind,
    ("cat", "concat", "concatenate"): shape.cat,
    ("stack",): shape.stack,
    ("pad",): shape.pad,
    ("roll",): shape.roll,
    # ---- dtype and graph
    ("to", "type_as"): shape.to,
    ("type",): shape.type_,
    ("float",): shape.to_float,
    ("double",): shape.to_double,
    ("detach",): shape.detach,
    # ---- selection, masks and writes
    ("where",): selection.where,
    ("masked_fill",): selection.masked_fill,
    ("setitem",): selection.setitem,
    ("copy",): selection.copy,
    ("fill",): selection.fill,
    ("zero",): selection.zero,
    ("embedding",): selection.embedding,
    # ---- results without derivatives, constants
    **{(name,): primal_only(getattr(torch, name)) for name in PRIMAL_ONLY},
    **{(name,): constant_like(getattr(torch, name, None) or getattr(torch.Tensor, name)) for name in CONSTANT_LIKE},
}


def _fill(table: Dict[Tuple[str, ...], Callable]) -> None:
    for names, rule in table.items():
        for name in names:
            if name in RULES and RULES[name] is not rule:
                raise RuntimeError(f"the op table names '{name}' twice")
            RULES[name] = rule


_fill(TABLE)
