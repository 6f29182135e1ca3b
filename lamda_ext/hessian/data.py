"""Data handling for the Hessian tools: batches, determinism checks, sharding across ranks.

``data`` is an ``(x, y)`` pair of tensors or an iterable of such pairs (a list, a
``DataLoader``, ...). The Hessian of a data set is the sample-weighted mean of the
batch-mean Hessians (so the same as one big batch when the loss is a mean).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

__all__ = ["is_single_batch", "iter_batches", "check_deterministic", "dist_info", "shard_batches", "rank_local"]

_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


def is_single_batch(data) -> bool:
    """True when ``data`` is one ``(x, y)`` pair of tensors (y may be None)."""
    return (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
            and (data[1] is None or isinstance(data[1], torch.Tensor)))


def iter_batches(data) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` pairs from a single batch or an iterable of batches."""
    if is_single_batch(data):
        yield data[0], data[1]
        return
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError("data must be an (x, y) pair of tensors or an iterable of (x, y) pairs "
                        f"(e.g. a DataLoader); got {type(data).__name__}")
    n = 0
    for item in data:
        if not (isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor)):
            raise TypeError(f"every batch must be an (x, y) pair of tensors; batch {n} is {type(item).__name__}")
        n += 1
        yield item[0], item[1]
    if n == 0:
        raise ValueError("data is empty: it yielded no batches (a generator can be iterated only once; "
                         "pass a list of (x, y) pairs or a DataLoader)")


def _loader_shuffles(data) -> bool:
    if not isinstance(data, DataLoader):
        return False
    sampler = data.sampler
    bs = data.batch_sampler
    if bs is not None and hasattr(bs, "sampler"):
        sampler = bs.sampler
    if isinstance(sampler, _RANDOM_SAMPLERS):
        return True
    # DistributedSampler(shuffle=True) and similar samplers expose a 'shuffle' flag
    return bool(getattr(sampler, "shuffle", False))


def check_deterministic(model: nn.Module, data=None, *, what: str = "the Hessian") -> None:
    """Raise ``ValueError`` when ``model``/``data`` make repeated evaluations differ.

    Refused: an active dropout module (train mode, p > 0), a batch norm in train mode,
    a ``DataLoader`` that shuffles (random sampler or ``shuffle`` flag).
    """
    problems = []
    for name, mod in model.named_modules():
        if not mod.training:
            continue
        if isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0:
            problems.append(f"dropout '{name or type(mod).__name__}' is active (train mode, p={mod.p})")
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            problems.append(f"batch norm '{name or type(mod).__name__}' is in train mode")
    if data is not None and _loader_shuffles(data):
        problems.append("the DataLoader shuffles (random sampler): build it with shuffle=False")
    if problems:
        raise ValueError(f"non-deterministic setup for {what}: " + "; ".join(problems)
                         + ". Call model.eval() / use an unshuffled loader, or pass allow_nondeterministic=True.")


_RANK_LOCAL = contextvars.ContextVar("lamda_ext_hessian_rank_local", default=False)


@contextlib.contextmanager
def rank_local():
    """Inside this block the Hessian tools work on this process's data alone (:func:`dist_info` → ``(0, 1)``).

    For work that each rank does on its own while a process group is up — a cell of a grid spread over
    ``torchrun`` ranks — where sharding the data over ranks (and waiting for the others) would be wrong.
    """
    token = _RANK_LOCAL.set(True)
    try:
        yield
    finally:
        _RANK_LOCAL.reset(token)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when not initialised or inside
    :func:`rank_local`."""
    if _RANK_LOCAL.get():
        return 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_batches(data, rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of ``data``: batches ``i`` with ``i % world == rank``, or, for a single
    ``(x, y)`` batch, the ``rank``-th of ``world`` near-equal contiguous slices of its samples."""
    if world == 1:
        yield from iter_batches(data)
        return
    if is_single_batch(data):
        x, y = data
        B = x.shape[0]
        lo, hi = (rank * B) // world, ((rank + 1) * B) // world
        if hi > lo:
            yield x[lo:hi], (y[lo:hi] if y is not None else None)
        return
    for i, batch in enumerate(iter_batches(data)):
        if i % world == rank:
            yield batch
