"""Attention rules: ``scaled_dot_product_attention`` and ``F.multi_head_attention_forward`` on series.

``scaled_dot_product_attention`` is composed from series products, masks and softmax; ``F.multi_head_attention_forward``
(the slow path of ``nn.MultiheadAttention``) runs as torch's own body on series.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...routing import sdpa_masks, unguarded
from ..series import current_context, is_series
from .activations import softmax
from .arithmetic import add, mul
from .products import matmul
from .selection import dropout, masked_fill
from .shape import repeat_interleave, transpose

__all__ = ["scaled_dot_product_attention", "multi_head_attention_forward"]


def _masked(attn, keep: torch.Tensor):
    """``attn`` with −inf where ``keep`` is False (series or tensor scores)."""
    return masked_fill(attn, ~keep, float("-inf")) if is_series(attn) else attn.masked_fill(~keep, float("-inf"))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """softmax(q kᵀ · scale + mask) v in series ops; dropout draws its mask as the math reference does.

    Inside [`attention_row_blocks`][lamda_ext.taylor.series.attention_row_blocks] (and without dropout) the scores are
    taken a block of query rows at a time: each row's softmax needs only its own scores, so the numbers are the same.
    """
    q_shape, k_shape = tuple(query.shape), tuple(key.shape)
    length, src = q_shape[-2], k_shape[-2]
    scale = 1.0 / math.sqrt(q_shape[-1]) if scale is None else scale
    if enable_gqa and len(q_shape) >= 3 and q_shape[-3] != k_shape[-3]:
        rep = q_shape[-3] // k_shape[-3]
        key = repeat_interleave(key, rep, -3) if is_series(key) else key.repeat_interleave(rep, -3)
        value = repeat_interleave(value, rep, -3) if is_series(value) else value.repeat_interleave(rep, -3)
    kt = transpose(key, -2, -1) if is_series(key) else key.transpose(-2, -1)
    ref = query.c0 if is_series(query) else query
    masks = sdpa_masks(length, src, attn_mask, is_causal, ref.device)
    rows = current_context().attention_rows
    if rows is None or rows >= length or dropout_p > 0.0:
        return _attend(query, kt, value, scale, masks, dropout_p)
    blocks = [_attend(query[..., r0:r0 + rows, :], kt, value, scale, [_row_block(m, r0, rows) for m in masks], 0.0)
              for r0 in range(0, length, rows)]
    return torch.cat(blocks, dim=-2)


def _row_block(mask, r0: int, rows: int):
    """Query rows ``r0 .. r0 + rows`` of a mask ``[..., L, S]`` (one broadcast over the rows as it is)."""
    if mask is None or mask.dim() < 2 or mask.shape[-2] == 1:
        return mask
    return mask[..., r0:r0 + rows, :]


def _attend(query, kt, value, scale, masks, dropout_p: float):
    """softmax(q kᵀ · scale + mask) v for the query rows given (masks: ``(keep, bias, dead)`` of those rows)."""
    keep, bias, dead = masks
    attn = mul(matmul(query, kt), scale)
    if keep is not None:
        attn = _masked(attn, keep)
    if bias is not None:
        attn = add(attn, bias)
    attn = softmax(attn, -1) if is_series(attn) else torch.softmax(attn, -1)
    if dead is not None:        # rows with nothing to attend: zero weights, as torch gives them
        attn = masked_fill(attn, dead, 0.0) if is_series(attn) else attn.masked_fill(dead, 0.0)
    if dropout_p > 0.0:
        attn = dropout(attn, dropout_p, True) if is_series(attn) else F.dropout(attn, dropout_p, True)
    return matmul(attn, value)


_mha_body = unguarded(F.multi_head_attention_forward)


def multi_head_attention_forward(*args, **kwargs):
    """Torch's own ``F.multi_head_attention_forward`` run on series.

    Projections, head split, SDPA or explicit softmax attention (need_weights), masks, dropout, output projection.
    """
    return _mha_body(*args, **kwargs)
