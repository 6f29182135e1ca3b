"""What an operator keeps per batch between products (linearisations, adjoints, per-sample gradients).

One byte budget and one parameter fingerprint for every store: a kept value belongs to one batch (recognised
by a copy of its tensors) at one parameter value; all of them are dropped when a parameter changes (compared
by value: in-place updates through ``.data`` bump no version).
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["BatchCache"]


class BatchCache:
    """Per-batch values in named stores within ``budget`` bytes (each value has an ``nbytes`` attribute).

    Args:
        budget: bytes the kept values may hold together (0: keep nothing).
        fingerprint: returns the current parameter vector (compared before every use, see
            [`check`][lamda_ext.hessian.cache.BatchCache.check]).
    """

    def __init__(self, budget: int, fingerprint: Callable[[], torch.Tensor]):
        self.budget = int(budget)
        self._fingerprint = fingerprint
        self._stores: dict[str, dict[int, tuple[list[torch.Tensor], object]]] = {}
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
        """Bytes held by the kept values."""
        return sum(v.nbytes for store in self._stores.values() for _, v in store.values())

    def get(self, store: str, i: int, leaves: list[torch.Tensor]):
        """The value kept in ``store`` for the i-th batch if that batch's tensors are still ``leaves``, else None."""
        hit = self._stores.get(store, {}).get(i)
        if hit is not None and len(hit[0]) == len(leaves) and all(
                a.shape == b.shape and torch.equal(a, b) for a, b in zip(hit[0], leaves)):
            return hit[1]
        return None

    def put(self, store: str, i: int, leaves: list[torch.Tensor], value) -> bool:
        """Keep ``value`` for the i-th batch when it fits in the budget; True when kept.

        An older value at that position goes either way. A value that does not fit marks ``store`` as
        [`full`][lamda_ext.hessian.cache.BatchCache.full].
        """
        self._stores.get(store, {}).pop(i, None)
        if self.nbytes + value.nbytes > self.budget:
            self.full.add(store)
            return False
        if self.empty:
            self._key = self._fingerprint()
        self._stores.setdefault(store, {})[i] = ([t.detach().clone() for t in leaves], value)
        return True
