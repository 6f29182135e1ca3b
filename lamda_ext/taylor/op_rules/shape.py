"""Shape, layout and dtype ops.

Linear in the series, so each runs on the primal and on the higher coefficients ``hi`` ``[D, K, *S]`` with its dims
shifted past the two leading axes; they keep the degree.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..series import TaylorSeries, is_series
from ..series_ops import align, constant_index, hi_at, map_batched, shift_dim
from .factories import on_shifted_dims

__all__ = ["reshape", "view_as", "flatten", "permute", "transpose", "t", "unsqueeze", "squeeze", "contiguous",
           "expand", "expand_as", "getitem", "cat", "stack", "chunk", "split", "unbind", "narrow", "select",
           "unflatten", "movedim", "repeat", "repeat_interleave", "pad", "roll", "detach", "to", "type_",
           "to_float", "to_double"]


def _shape_args(args) -> tuple:
    """``f(2, 3)`` and ``f((2, 3))`` both give ``(2, 3)``."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args)


def _dim_list(dims, ndim: int) -> list:
    """One dim or a sequence of dims, shifted into ``hi``."""
    return [shift_dim(d, ndim) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))]


# ---- ops that re-apply a tensor method on the shifted dims -----------------------------------------------
unsqueeze = on_shifted_dims("unsqueeze", lambda nd, dim: (shift_dim(dim, nd + 1),))
narrow = on_shifted_dims("narrow", lambda nd, dim, start, length: (shift_dim(dim, nd), start, length))
select = on_shifted_dims("select", lambda nd, dim, index: (shift_dim(dim, nd), index))
unbind = on_shifted_dims("unbind", lambda nd, dim=0: (shift_dim(dim, nd),))
chunk = on_shifted_dims("chunk", lambda nd, chunks, dim=0: (chunks, shift_dim(dim, nd)))
split = on_shifted_dims("split", lambda nd, split_size_or_sections, dim=0:
                        (split_size_or_sections, shift_dim(dim, nd)))
unflatten = on_shifted_dims("unflatten", lambda nd, dim, sizes: (shift_dim(dim, nd), sizes))
movedim = on_shifted_dims("movedim", lambda nd, source, destination:
                          (_dim_list(source, nd), _dim_list(destination, nd)))
transpose = on_shifted_dims("transpose", lambda nd, dim0, dim1: (shift_dim(dim0, nd), shift_dim(dim1, nd)))
permute = on_shifted_dims("permute", lambda nd, *dims: ((0, 1) + tuple(shift_dim(d, nd) for d in _shape_args(dims)),))
_flatten = on_shifted_dims("flatten", lambda nd, start_dim=0, end_dim=-1:
                           (shift_dim(start_dim, nd), shift_dim(end_dim, nd)))
_roll = on_shifted_dims("roll", lambda nd, shifts, dims: (shifts, _dim_list(dims, nd)))
_repeat_interleave = on_shifted_dims("repeat_interleave", lambda nd, repeats, dim, output_size=None:
                                     (repeats, shift_dim(dim, nd)))


def t(x):
    """Rule of ``Tensor.t``."""
    return transpose(x, 0, 1)


def flatten(x, start_dim=0, end_dim=-1):
    """Rule of ``flatten``."""
    if x.c0.dim() == 0:
        return reshape(x, 1)
    return _flatten(x, start_dim, end_dim)


def roll(x, shifts, dims=None):
    """``torch.roll``; without dims the series is rolled as a flat vector and keeps its shape."""
    if dims is None:
        hi = x.hi.reshape(tuple(x.hi.shape[:2]) + (-1,)).roll(shifts, 2).reshape(x.hi.shape)
        return TaylorSeries(x.c0.roll(shifts), hi)
    return _roll(x, shifts, dims)


def repeat_interleave(x, repeats, dim=None, output_size=None):
    """``torch.repeat_interleave``; without dim the series is flattened first (as torch)."""
    if dim is None:
        return repeat_interleave(reshape(x, -1), repeats, 0)
    return _repeat_interleave(x, repeats, dim)


# ---- ops that follow the primal's new shape --------------------------------------------------------------
def reshape(x, *shape):
    """``view``/``reshape``: ``hi`` takes the primal's new shape after its two leading axes."""
    c0 = x.c0.reshape(_shape_args(shape))
    return TaylorSeries(c0, x.hi.reshape(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


def view_as(x, other):
    """Rule of ``Tensor.view_as``."""
    return reshape(x, tuple(other.shape))


def squeeze(x, dim=None):
    """Rule of ``squeeze``."""
    c0 = x.c0.squeeze() if dim is None else x.c0.squeeze(dim)
    return TaylorSeries(c0, x.hi.reshape(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


def expand(x, *sizes):
    """Rule of ``Tensor.expand``."""
    c0 = x.c0.expand(_shape_args(sizes))
    return TaylorSeries(c0, align(x, c0.dim()).hi.expand(tuple(x.hi.shape[:2]) + tuple(c0.shape)))


def expand_as(x, other):
    """Rule of ``Tensor.expand_as``."""
    return expand(x, tuple(other.shape))


def repeat(x, *sizes):
    """Rule of ``Tensor.repeat``."""
    sizes = _shape_args(sizes)
    c0 = x.c0.repeat(sizes)
    xa = align(x, len(sizes))
    return TaylorSeries(c0, xa.hi.repeat((1, 1) + tuple(sizes)))


def contiguous(x, *args, **kwargs):
    """``contiguous``/``clone``: fresh (or contiguous) storage for every coefficient."""
    return TaylorSeries(x.c0.contiguous(), x.hi.contiguous())


def getitem(x, index):
    """``x[index]`` with a constant index (basic or advanced indexing), applied past the two leading axes of hi.

    Raises:
        NotImplementedError: a series in the index.
    """
    index = constant_index(index)
    c0 = x.c0[index]
    return TaylorSeries(c0, x.hi[(slice(None), slice(None)) + index])


def pad(x, pad, mode="constant", value=None):
    """``F.pad``: the constant fill belongs to the primal (its coefficients are zero); other modes are linear."""
    if mode == "constant":
        c0 = F.pad(x.c0, pad, mode, value)
        return TaylorSeries(c0, F.pad(x.hi, pad, mode, 0.0))
    return map_batched(x, lambda t: F.pad(t, pad, mode))


# ---- joins ------------------------------------------------------------------------------------------------
def _join(tensors, dim, fn):
    """``torch.cat``/``torch.stack`` of series and constants: every operand padded to the highest degree."""
    tensors = list(tensors)
    if fn is torch.cat:     # torch.cat skips legacy empty 1-D constants (e.g. an empty key/value cache)
        tensors = [t for t in tensors if is_series(t) or not (isinstance(t, torch.Tensor) and t.shape == (0,))]
    series = [t for t in tensors if is_series(t)]
    if not series:
        return fn(tensors, dim)
    deg = max(s.degree for s in series)
    k = max(s.hi.shape[1] for s in series)
    nd = series[0].c0.dim() + (1 if fn is torch.stack else 0)
    c0 = fn([t.c0 if is_series(t) else t for t in tensors], dim)
    return TaylorSeries(c0, fn([hi_at(t, deg, k) for t in tensors], shift_dim(dim, nd)))


def cat(tensors, dim=0):
    """Rule of ``torch.cat`` (plain tensors in the list become constant series)."""
    return _join(tensors, dim, torch.cat)


def stack(tensors, dim=0):
    """Rule of ``torch.stack`` (plain tensors in the list become constant series)."""
    return _join(tensors, dim, torch.stack)


# ---- dtype and graph ---------------------------------------------------------------------------------------
def detach(x):
    """A constant: the primal, cut from autograd."""
    return x.c0.detach()


def to(x, *args, **kwargs):
    """``to``/``type_as``: every coefficient follows the primal's new dtype and device."""
    c0 = x.c0.to(*args, **kwargs) if not isinstance(args[0] if args else None, TaylorSeries) else x.c0
    return TaylorSeries(c0, x.hi.to(dtype=c0.dtype, device=c0.device))


def type_(x, dtype=None, non_blocking=False, **kwargs):
    """``x.type()`` (the primal's type name) or ``x.type(dtype)`` (a cast, as ``to``)."""
    if dtype is None:
        return x.c0.type()
    c0 = x.c0.type(dtype, non_blocking)
    return TaylorSeries(c0, x.hi.to(c0.dtype))


def to_float(x):
    """Rule of ``Tensor.float``."""
    return to(x, torch.float32)


def to_double(x):
    """Rule of ``Tensor.double``."""
    return to(x, torch.float64)
