"""Forms of ``copy`` and the strided view ops for functionalised graphs, in ops that ``torch.func.vmap`` batches.

Functionalisation turns ``a.copy_(b)`` into ``aten.copy`` and a write through a strided view into
``aten.as_strided_scatter``; forward-mode AD writes tangents through ``as_strided`` views. ``vmap`` has no batching
rule for the first two, and batches ``as_strided`` only where the batch dimension is outermost in memory. In a graph
without in-place ops a view and a copy of the same elements are interchangeable, so `DECOMPOSITIONS` (a
``make_fx`` decomposition table) writes them with ``reshape``, ``narrow``, ``index_select``, ``scatter`` and
``permute`` of the tensor's elements in the memory order they have at tracing time: the values are those of the
strided ops, whatever layout the tensors have when the graph is replayed or vmapped.

Strided ops on a tensor that does not own the whole extent of memory its view reads (a view into a larger tensor),
or whose elements overlap, raise ``NotImplementedError``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["DECOMPOSITIONS"]


def _memory_order(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """The permutation that lists the dimensions of ``x`` from the largest stride to the smallest, and its inverse.

    NotImplementedError when the elements of ``x`` do not fill a block of memory exactly once (an expanded tensor, a
    slice with gaps).
    """
    perm = sorted(range(x.dim()), key=lambda d: (-x.stride(d), d))
    expected = 1
    for d in reversed(perm):
        if x.shape[d] != 1 and x.stride(d) != expected:
            raise NotImplementedError(f"a strided view of a tensor with shape {list(x.shape)} and strides "
                                      f"{list(x.stride())} (not one dense block of memory)")
        expected *= x.shape[d]
    inverse = [0] * len(perm)
    for i, d in enumerate(perm):
        inverse[d] = i
    return perm, inverse


def _flat(x: torch.Tensor, perm: list[int]) -> torch.Tensor:
    """The elements of ``x`` ``[numel]`` in memory order.

    A view of a row-major ``x``, else a copy (a recorded view of the permuted tensor would hold only where a replay
    gives ``x`` the layout it has at tracing time).
    """
    if perm == sorted(perm):
        return x.reshape(-1)
    return torch.clone(x.permute(perm), memory_format=torch.contiguous_format).view(-1)


def _row_major(size, stride) -> bool:
    """Whether ``stride`` is the row-major (contiguous) layout of ``size`` (dimensions of size 1 ignored)."""
    expected = 1
    for n, s in zip(reversed(list(size)), reversed(list(stride))):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _positions(size, stride, offset: int, device) -> torch.Tensor:
    """The memory positions ``[prod(size)]`` (int64) that the strided view ``size``/``stride``/``offset`` reads."""
    pos = torch.full((), offset, dtype=torch.int64, device=device)
    for d, (n, s) in enumerate(zip(size, stride)):
        shape = [1] * len(size)
        shape[d] = n
        pos = pos + torch.arange(n, device=device).reshape(shape) * s
    return pos.expand(tuple(size)).reshape(-1)


def _check_extent(size, stride, offset: int, numel: int) -> None:
    """NotImplementedError when the view reads memory outside ``[0, numel)``."""
    lo = offset + sum((n - 1) * s for n, s in zip(size, stride) if s < 0 and n > 0)
    hi = offset + sum((n - 1) * s for n, s in zip(size, stride) if s > 0 and n > 0)
    if math.prod(size) > 0 and (lo < 0 or hi >= numel):
        raise NotImplementedError(f"a strided view (size {list(size)}, stride {list(stride)}, offset {offset}) that "
                                  f"reads outside the {numel} elements of its tensor")


def _as_strided(x: torch.Tensor, size, stride, storage_offset=None) -> torch.Tensor:
    """``aten.as_strided``: the elements of ``x`` at the view's memory positions, shaped ``size``."""
    perm, _ = _memory_order(x)
    offset = (x.storage_offset() if storage_offset is None else storage_offset) - x.storage_offset()
    _check_extent(size, stride, offset, x.numel())
    n = math.prod(size)
    if _row_major(size, stride):
        return _flat(x, perm).narrow(0, offset, n).reshape(tuple(size))
    return _flat(x, perm).index_select(0, _positions(size, stride, offset, x.device)).reshape(tuple(size))


def _as_strided_scatter(x: torch.Tensor, src: torch.Tensor, size, stride, storage_offset=None) -> torch.Tensor:
    """``aten.as_strided_scatter``.

    A copy of ``x`` (its layout) whose elements at the view's memory positions (in that copy's memory) are those of
    ``src``.
    """
    perm, inverse = _memory_order(x)
    offset = 0 if storage_offset is None else storage_offset
    _check_extent(size, stride, offset, x.numel())
    values = src.to(x.dtype).reshape(-1)
    if offset == 0 and math.prod(size) == x.numel() and _row_major(size, stride):
        flat = values
    else:
        flat = _flat(x, perm).scatter(0, _positions(size, stride, offset, x.device), values)
    return flat.reshape([x.shape[d] for d in perm]).permute(inverse)


def _copy(x: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """``aten.copy``, the out-of-place ``copy_``.

    ``src`` cast to the dtype of ``x`` and broadcast to its shape, in the memory order of ``x`` (the layout a copy into
    ``x`` has).
    """
    out = src.to(dtype=x.dtype, device=x.device).expand(x.shape)
    try:
        perm, inverse = _memory_order(x)
    except NotImplementedError:         # x is not one dense block: a new contiguous tensor
        return out.contiguous()
    return out.permute(perm).contiguous().permute(inverse)


DECOMPOSITIONS = {
    torch.ops.aten.copy.default: _copy,
    torch.ops.aten.as_strided.default: _as_strided,
    torch.ops.aten.as_strided_scatter.default: _as_strided_scatter,
}
