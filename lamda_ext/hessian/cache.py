"""What an operator keeps per sub-batch between products (linearisations, adjoints, per-sample gradients).

One byte limit and one parameter fingerprint for every store: a kept value belongs to one sub-batch (recognised
by a copy of its tensors) at one parameter value; all of them are dropped when a parameter changes (compared
by value: in-place updates through ``.data`` bump no version). The bytes counted are the values', the copies of
their sub-batches' tensors and the fingerprint's.
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch

__all__ = ["BatchCache"]


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class BatchCache:
    """Per-sub-batch values in named stores within ``budget`` bytes (each value has an ``nbytes`` attribute).

    Args:
        budget: bytes the kept values may hold together (0: keep nothing). The owner may lower or raise it between
            uses ([`shrink`][lamda_ext.hessian.cache.BatchCache.shrink] drops what no longer fits).
        fingerprint: returns the current parameter vector (compared before every use, see
            [`check`][lamda_ext.hessian.cache.BatchCache.check]).
    """

    def __init__(self, budget: int, fingerprint: Callable[[], torch.Tensor]):
        self.budget = int(budget)
        self._fingerprint = fingerprint
        self._stores: dict[str, dict[Hashable, tuple[list[torch.Tensor], object]]] = {}
        self._key: torch.Tensor | None = None
        self.full: set[str] = set()      # stores that stopped keeping: a value did not fit

    def clear(self) -> None:
        """Forget every kept value."""
        self._stores.clear()
        self._key = None
        self.full.clear()

    @property
    def empty(self) -> bool:
        """Whether no value is kept."""
        return not any(self._stores.values())

    def check(self) -> None:
        """Drop everything when a parameter changed since the first value was kept."""
        if not self.empty and (self._key is None or not torch.equal(self._fingerprint(), self._key)):
            self.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held: the kept values, the copies of their sub-batches and the parameter fingerprint."""
        if self.empty:
            return 0
        held = sum(v.nbytes + _bytes(leaves) for store in self._stores.values() for leaves, v in store.values())
        return held + (0 if self._key is None else _bytes([self._key]))

    def get(self, store: str, key: Hashable, leaves: list[torch.Tensor]):
        """The value kept in ``store`` under ``key`` if that sub-batch's tensors are still ``leaves``, else None."""
        hit = self._stores.get(store, {}).get(key)
        if hit is not None and len(hit[0]) == len(leaves) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(hit[0], leaves)):
            return hit[1]
        return None

    def fits(self, nbytes: float, leaves: list[torch.Tensor]) -> bool:
        """Whether a value of ``nbytes`` for a sub-batch of ``leaves`` would fit besides what is kept."""
        key = _bytes([self._fingerprint()]) if self.empty else 0
        return self.nbytes + nbytes + _bytes(leaves) + key <= self.budget

    def put(self, store: str, key: Hashable, leaves: list[torch.Tensor], value) -> bool:
        """Keep ``value`` for the sub-batch ``key`` when it fits in the budget; True when kept.

        An older value under that key goes either way. A value that does not fit marks ``store`` as
        [`full`][lamda_ext.hessian.cache.BatchCache.full].
        """
        self._stores.get(store, {}).pop(key, None)
        if not self.fits(value.nbytes, leaves):
            self.full.add(store)
            return False
        if self.empty:
            self._key = self._fingerprint()
        self._stores.setdefault(store, {})[key] = ([t.detach().clone() for t in leaves], value)
        return True

    def shrink(self, budget: int) -> None:
        """Lower the budget to ``budget`` bytes, dropping kept values (the latest first) until the rest fits.

        A store that loses a value is marked [`full`][lamda_ext.hessian.cache.BatchCache.full].
        """
        self.budget = int(budget)
        for name, store in reversed(list(self._stores.items())):
            while store and self.nbytes > self.budget:
                store.pop(next(reversed(store)))
                self.full.add(name)
        if self.empty:
            self._key = None
