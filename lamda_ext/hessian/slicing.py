"""An operator's data as slices of samples within its plan, and one slice's rows within its memory budget.

[`slices`][lamda_ext.hessian.slicing.slices] cuts this rank's batches into slices of at most the plan's ``sub_batch``
samples (where the samples can be taken apart), planning on the first batch
([`budget`][lamda_ext.hessian.budget]); [`run_slice`][lamda_ext.hessian.slicing.run_slice] evaluates one slice's rows,
as many at once as fit besides what the cache keeps, from a kept preparation, a new one (kept while it leaves the
slice's peak free) or directly.

A slice of a batch is weighted by its sample count and its Monte-Carlo targets (``fisher_mc``) are those of its samples
in the whole batch (its offset in the batch is carried, as for a rank's share of a single batch).
"""
from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator

import torch

from ..memory import AllocationTracker
from ..planning import SAFETY, budget_too_small
from .budget import KINDS, HessianPlan, bound_costs, make_plan, measure_costs, trial_sizes
from .data import cut_samples, splits_into_samples, tensor_leaves

__all__ = ["splittable", "planned", "slices", "run_slice"]


def splittable(op, batch, n: int) -> bool:
    """Whether ``op`` may cut ``batch`` (``n`` samples) into slices: a deterministic setup and independent samples."""
    if not op.deterministic:
        return False
    return getattr(op._work, "splits_any_batch", False) or splits_into_samples(batch, n)


def planned(op, kind: str, shard, batch, n: int, measure: bool = False) -> HessianPlan:
    """``op.plan``, planned for ``kind`` (and the kinds sharing its prepared slices) on this batch if not yet.

    Where an eager HVP's bound (`bound_costs`) fits the whole batch the plan takes it, else it measures trial
    slices (`measure_costs`). ``measure``: trial slices in any case (a bounded plan is measured again).
    """
    plan = op.plan
    redo = set(plan.bounded) if plan is not None and measure else set()
    if plan is not None and (kind in plan.costs or kind in op._unplanned) and kind not in redo:
        return plan
    work = op._work
    known = {} if plan is None else {k: c for k, c in plan.costs.items() if k not in redo}
    bounded = set() if plan is None else set(plan.bounded) - redo
    kinds = [k for k in KINDS if work.store(k) == work.store(kind) and k not in known]
    split = splittable(op, batch, n)
    like = torch.empty(0, op.size, dtype=op.dtype, device=op.device)
    def plan_with(costs: dict) -> HessianPlan:
        op.plan = make_plan({**known, **costs}, op.memory_budget, n, split, work.row_cap, bounded=frozenset(bounded))
        return op.plan

    costs = None if measure else _bound_that_fits(op, kinds, shard, batch, n, split, like)
    if costs is not None:
        bounded.update(costs)
        return plan_with(costs)
    points: dict = {}
    rows = lambda k: (1,) if work.row_cap(k, 1) == 1 else (1, 2, 3)      # noqa: E731
    costs = measure_costs(work, kinds, shard, batch, n, split, like, rows, points)
    sub_batch = plan_with(costs).sub_batch
    larger = min(sub_batch, n) // 4 if split else 0
    if larger > max(trial_sizes(n)):    # a trial a quarter of the planned slice: the fit spans the slices it plans
        costs = measure_costs(work, kinds, shard, batch, n, split, like, rows, points, [larger])
        plan_with(costs)
    op._unplanned.update(k for k in kinds if k not in costs)
    op._unverified.update(costs)
    return op.plan


def _bound_that_fits(op, kinds, shard, batch, n: int, split: bool, like: torch.Tensor) -> dict | None:
    """The bound of `bound_costs` where the whole batch, every kind's row cap at once, fits half the budget; else None.

    The other half is left for kept slices. None too where the work has no eager probe or a kind takes all rows at
    once (no cap to bound), or where an eager HVP has failed on this operator.
    """
    work = op._work
    probe = getattr(work, "probe", None)
    caps = {kind: work.row_cap(kind, n) for kind in kinds}
    if probe is None or op._bound_points is None or any(k is None for k in caps.values()):
        return None
    usable = SAFETY * op.memory_budget / 2
    fits = lambda c: all(c.peak(n, k) <= usable for k in caps.values())      # noqa: E731
    cost = bound_costs(probe, shard, batch, n, split, like, op._bound_points, fits)
    if cost is None:
        op._bound_points = None      # no eager HVP for this model: trial slices from now on
        return None
    return {kind: cost for kind in kinds} if fits(cost) else None


def slices(op, kind: str | None) -> Iterator[tuple]:
    """``(key, shard, slice, samples)`` over this rank's share of the data, batches cut as the plan says.

    A batch of ``n`` samples is cut into ``⌈n / sub_batch⌉`` near-equal slices.

    ``kind``: the work the slices are for (planned on the first batch if not yet); None: the current plan's slices
    (whole batches without one). ``key``: ``(position, first sample)``, the slice's name in the cache.
    """
    for i, shard, batch, n in op._shards():
        plan = planned(op, kind, shard, batch, n) if kind is not None else op.plan
        cut = plan is not None and splittable(op, batch, n)
        lo = 0
        while lo < n:        # near-equal slices of the rest (the plan may be corrected by a slice)
            left = n - lo
            hi = lo + (math.ceil(left / math.ceil(left / op.plan.sub_batch)) if cut else left)
            op._widest = max(op._widest, hi - lo)
            if hi - lo == n:
                yield (i, 0), shard, batch, n
            else:
                sub = cut_samples(batch, lo, hi, n)
                yield (i, lo), shard._replace(offset=shard.offset + lo, batch=sub), sub, hi - lo
            lo = hi


def _evaluator(op, kind: str, key, shard, batch, n: int, K: int, keep: float):
    """``(rows ↦ the slice's unweighted result, whether a preparation was made and not kept, copies)``.

    From a kept preparation, a new one (kept when it fits) or directly; ``copies``: the bytes the cache took besides
    a kept preparation (its copy of the slice's tensors, the parameter fingerprint).
    """
    work, cache = op._work, op.cache
    store = work.store(kind)
    leaves = tensor_leaves(batch) if op.keeps else []
    kept = cache.get(store, key, leaves) if op.keeps else None
    if kept is not None:
        return (lambda rows: work.apply(kind, kept, rows)), False, 0
    keepable = op.keeps and store not in cache.full and cache.fits(keep, leaves)
    if not keepable and K == 1 and work.has_direct(kind):
        return (lambda rows: work.direct(kind, shard, batch, n, rows)), False, 0
    entry = work.prepare(kind, shard, batch, n)
    if entry is None:
        return (lambda rows: work.direct(kind, shard, batch, n, rows)), False, 0
    before = cache.nbytes
    if keepable and cache.put(store, key, leaves, entry):
        op.n_linearizations += 1
        return (lambda rows: work.apply(kind, entry, rows)), False, cache.nbytes - before - entry.nbytes
    return (lambda rows: work.apply(kind, entry, rows)), True, 0


def run_slice(op, acc: torch.Tensor, kind: str, key, shard, batch, n: int, rows: torch.Tensor) -> None:
    """Add the slice's weighted result for ``rows`` ``[K, P]`` into ``acc`` (``[K, P]``, or ``[K]`` for forms).

    Rows go ``k`` at a time: the most whose peak fits the plan's share of the budget besides what the cache keeps
    (kept values are dropped, the latest first, when not even one row fits); while the slice runs the cache may keep
    only what leaves free the peak of the widest slice seen with ``k`` rows.
    """
    work, cache, plan = op._work, op.cache, op.plan
    cost = plan.costs.get(kind) if plan is not None else None
    K = rows.shape[0]
    k, keep = K, 0.0
    if cost is not None:
        usable, one = plan.usable, cost.peak(n, 1)
        if one > usable:      # a batch that is not split, larger than the one planned on
            raise budget_too_small(op.memory_budget, f"a batch of {n} samples (its samples cannot be taken apart) "
                                   "and one direction of a curvature product", one)
        k = cost.chunk(n, usable - cache.nbytes, work.row_cap(kind, n))
        if k == 0:
            cache.shrink(int(usable - one))
            k = 1
        k = K if k is None else min(k, K)
        # what is kept must leave the peak of the widest slice free (as many rows at once as this one)
        cache.budget = int(usable - cost.peak(max(n, op._widest), k)) if op.keeps else 0
        keep = cost.keep(n)
    verify = cost is not None and kind in op._unverified
    with AllocationTracker() if verify else contextlib.nullcontext() as tracker:
        evaluate, dropped, copies = _evaluator(op, kind, key, shard, batch, n, K, keep)
        w = work.weight(n)
        for j in range(0, K, k):
            acc[j:j + k].add_(evaluate(rows[j:j + k]).detach().to(acc.dtype), alpha=w)
        if dropped:          # a linearisation is a traced graph, freed by the cycle collector: free it before the next
            del evaluate
            gc.collect()
    if verify:
        _verify(op, kind, tracker.peak, cost.peak(n, k) + max(copies, 0))


def _verify(op, kind: str, peak: int, predicted: float) -> None:
    """After the first slice of ``kind``: where it took more than predicted, scale its costs and plan again."""
    op._unverified.discard(kind)
    if peak <= predicted:
        return
    plan = op.plan
    factor = peak / predicted
    costs = {**plan.costs, kind: plan.costs[kind].scaled(factor)}
    op.plan = make_plan(costs, op.memory_budget, plan.batch, plan.splits_samples, op._work.row_cap,
                        corrected=max(plan.corrected, factor), bounded=plan.bounded)
    op.cache.clear()         # kept slices may be cut otherwise now
