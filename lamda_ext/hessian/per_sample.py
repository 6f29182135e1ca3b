"""Per-sample gradients by ``torch.func.vmap(grad)`` over the samples of a batch, a chunk of samples at a time.

``fn(params, sample_batch)`` is a scalar function of the parameters and a batch holding one sample (every tensor
of the batch with the batch's leading size n is cut to ``[1, ...]``; other tensors are passed whole). The model
must treat samples independently (eval-mode batch norm) and run under ``vmap``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Callable

import torch
from torch.func import grad, vmap

from .data import map_tensors, tensor_leaves

__all__ = ["per_sample_grads", "samples_per_chunk", "PER_SAMPLE_BYTES"]

PER_SAMPLE_BYTES = 2 ** 27      # bytes of per-sample gradients one chunk produces at most


def samples_per_chunk(P: int, itemsize: int, limit: int = PER_SAMPLE_BYTES) -> int:
    """Samples per chunk so that ``[chunk, P]`` gradients take at most ``limit`` bytes (at least 1)."""
    return max(1, int(limit) // max(1, P * itemsize))


def _rebuild(batch, leaves: list[torch.Tensor]):
    """``batch`` with its tensors replaced, in order, by ``leaves``."""
    it = iter(leaves)
    return map_tensors(lambda _: next(it), batch)


def per_sample_grads(fn: Callable, primal: dict[str, torch.Tensor], batch, n: int,
                     chunk: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first sample, gradients [c, P])`` of ``fn(params, one-sample batch)`` for the samples of ``batch``.

    Args:
        fn: ``(params dict, batch of one sample) -> scalar``.
        primal: the parameters (name → tensor) to differentiate at; P counts them flattened in this order.
        batch: a tensor or nested dict/list/tuple of tensors; tensors with leading size ``n`` are per sample.
        n: the batch's sample count.
        chunk: samples per vmapped call (default:
            [`samples_per_chunk`][lamda_ext.hessian.per_sample.samples_per_chunk]).

    Returns:
        An iterator over the chunks, in sample order.
    """
    primal = {k: t.detach() for k, t in primal.items()}
    leaves = tensor_leaves(batch)
    per = [t.dim() > 0 and t.shape[0] == n for t in leaves]
    if chunk is None:
        first = next(iter(primal.values()))
        chunk = samples_per_chunk(sum(t.numel() for t in primal.values()), first.element_size())

    def one(p, sample_leaves):
        it = iter(sample_leaves)
        full = [next(it).unsqueeze(0) if b else t for t, b in zip(leaves, per)]
        return fn(p, _rebuild(batch, full))

    g = vmap(grad(one), in_dims=(None, 0))
    for lo in range(0, n, chunk):
        cut = tuple(t[lo:lo + chunk] for t, b in zip(leaves, per) if b)
        with torch.enable_grad():
            G = g(primal, cut)
        yield lo, torch.cat([v.reshape(v.shape[0], -1) for v in G.values()], dim=1).detach()
