"""Data handling for the Hessian tools: batches, determinism checks, sharding across ranks.

``data`` is an ``(x, y)`` pair of tensors or an iterable of such pairs (a list, a
``DataLoader``, ...). The Hessian of a data set is the sample-weighted mean of the
batch-mean Hessians (so the same as one big batch when the loss is a mean).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from typing import Iterable, Iterator, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

__all__ = ["is_single_batch", "iter_batches", "check_deterministic", "dist_info", "shard_batches", "rank_local",
           "map_tensors", "tensor_leaves", "is_single_loss_batch", "batch_samples", "iter_loss_batches",
           "shard_loss_batches", "Shard", "indexed_shards", "cut_samples", "splits_into_samples"]

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
    """Inside this block the Hessian tools work on this process's data alone (`dist_info` → ``(0, 1)``).

    For work that each rank does on its own while a process group is up — a cell of a grid spread over
    ``torchrun`` ranks — where sharding the data over ranks (and waiting for the others) would be wrong.
    """
    token = _RANK_LOCAL.set(True)
    try:
        yield
    finally:
        _RANK_LOCAL.reset(token)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group.

    ``(0, 1)`` when not initialised or inside [`rank_local`][lamda_ext.hessian.data.rank_local].
    """
    if _RANK_LOCAL.get():
        return 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Shard(NamedTuple):
    """A rank's share of one batch.

    The batch's position in the data, the first of its samples held here, the batch's sample count, and the share itself
    (an ``(x, y)`` pair or a batch of the ``loss_fn`` form).
    """
    index: int
    offset: int
    total: int
    batch: object


def indexed_shards(data, rank: int, world: int, loss_fn_form: bool = False) -> Iterator[Shard]:
    """This rank's share of ``data``.

    Batches ``i`` with ``i % world == rank``, or, for a single batch, the ``rank``-th of ``world`` near-equal contiguous
    slices of its samples (every tensor with the batch's leading size is sliced). ``loss_fn_form``: batches of the
    ``loss_fn(model, batch)`` form, else ``(x, y)`` pairs.
    """
    single = is_single_loss_batch(data) if loss_fn_form else is_single_batch(data)
    if single:
        n = batch_samples(data) if loss_fn_form else data[0].shape[0]
        lo, hi = (rank * n) // world, ((rank + 1) * n) // world
        if world == 1:
            yield Shard(0, 0, n, data if loss_fn_form else (data[0], data[1]))
        elif hi > lo:
            share = cut_samples(data if loss_fn_form else (data[0], data[1]), lo, hi, n)
            yield Shard(0, lo, n, share)
        return
    for i, batch in enumerate(iter_loss_batches(data) if loss_fn_form else iter_batches(data)):
        if i % world == rank:
            n = batch_samples(batch) if loss_fn_form else batch[0].shape[0]
            yield Shard(i, 0, n, batch)


def cut_samples(batch, lo: int, hi: int, n: int):
    """Samples ``lo .. hi − 1`` of a batch of ``n``: every tensor with leading size ``n`` sliced, others passed whole.

    ``batch``: an ``(x, y)`` pair or a batch of the ``loss_fn`` form. The slices are views of the batch's tensors.
    """
    return map_tensors(lambda t: t[lo:hi] if t.dim() > 0 and t.shape[0] == n else t, batch)


def splits_into_samples(batch, n: int) -> bool:
    """Whether `cut_samples` gives sub-batches of ``batch`` (``n`` samples) that hold their samples and nothing else.

    True when every tensor in it has the leading size ``n`` and besides tensors it holds only nested dicts, lists,
    tuples, None, numbers and strings: a tensor of another size (whole-batch data such as class weights) or an object
    that may hide tensors would be passed whole to every sub-batch, so such a batch is not split.
    """
    if isinstance(batch, torch.Tensor):
        return batch.dim() > 0 and batch.shape[0] == n
    if isinstance(batch, Mapping):
        return all(splits_into_samples(v, n) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return all(splits_into_samples(v, n) for v in batch)
    return batch is None or isinstance(batch, (bool, int, float, str))


def shard_batches(data, rank: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The ``(x, y)`` pairs of [`indexed_shards`][lamda_ext.hessian.data.indexed_shards]."""
    for shard in indexed_shards(data, rank, world):
        yield shard.batch


# ---------------------------------------------------------------- batches of the loss_fn(model, batch) form

def map_tensors(fn, obj):
    """``obj`` (a tensor or nested dict/list/tuple holding tensors) with ``fn`` applied to every tensor."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):      # a dict, or a mapping such as a BatchEncoding (given back as a dict)
        return (type(obj) if isinstance(obj, dict) else dict)((k, map_tensors(fn, v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        items = [map_tensors(fn, v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def tensor_leaves(obj) -> list[torch.Tensor]:
    """The tensors in ``obj`` (a tensor or nested dict/list/tuple), in order."""
    out: list[torch.Tensor] = []
    map_tensors(lambda t: out.append(t) or t, obj)
    return out


def is_single_loss_batch(data) -> bool:
    """Whether ``data`` is one batch of the ``loss_fn(model, batch)`` form.

    True for one batch — a tensor, a dict, or a tuple whose items are tensors, dicts or None — rather than an iterable
    of batches (a list, a DataLoader).
    """
    if isinstance(data, (torch.Tensor, Mapping)):
        return True
    return isinstance(data, tuple) and len(data) > 0 and all(
        t is None or isinstance(t, (torch.Tensor, Mapping)) for t in data)


def batch_samples(batch) -> int:
    """Samples in a batch of the ``loss_fn`` form: the leading size of its first tensor."""
    leaves = tensor_leaves(batch)
    if not leaves or leaves[0].dim() == 0:
        raise ValueError("every batch must hold a tensor with a leading sample dimension (its first tensor "
                         f"gives the batch size); got {type(batch).__name__}")
    return int(leaves[0].shape[0])


def iter_loss_batches(data) -> Iterator:
    """Batches of the ``loss_fn`` form: ``data`` itself when it is one batch, else its items."""
    if is_single_loss_batch(data):
        yield data
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError("data must be a batch (a tensor, a dict or a tuple of tensors) or an iterable of "
                        f"batches (a list, a DataLoader); got {type(data).__name__}")
    n = 0
    for item in data:
        n += 1
        yield item
    if n == 0:
        raise ValueError("data is empty: it yielded no batches (a generator can be iterated only once; "
                         "pass a list of batches or a DataLoader)")


def shard_loss_batches(data, rank: int, world: int) -> Iterator:
    """The batches of the ``loss_fn`` form of [`indexed_shards`][lamda_ext.hessian.data.indexed_shards]."""
    for shard in indexed_shards(data, rank, world, loss_fn_form=True):
        yield shard.batch
