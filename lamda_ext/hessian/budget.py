"""How a [`HessianOperator`][lamda_ext.hessian.HessianOperator] fits its work in its memory budget.

The work is done slice by slice: each batch is cut into slices of at most ``sub_batch`` samples (each weighted by its
sample count, so the result is the unsplit one up to the order of the float sums), and each slice evaluates the rows of
``V`` (or ``Z``) ``k`` at a time. Per kind of work — ``"products"`` (``A V``) and ``"forms"`` (``zᵀAz``) — the bytes
alive at once for a slice of ``b`` samples are modelled as

    prepare(b)     preparing the slice (its linearisation: the primal forward and backward, or the adjoint pass)
    keep(b)        what that preparation keeps (what the cache holds for the slice)
    rows(b, k)     one evaluation of k rows on a prepared slice (k = 1: one(b); k ≥ 2: base(b) + k·row(b))
    direct(b)      one row without preparing (a single forward-over-reverse HVP), where the work has that way

    peak(b, k) = max(prepare(b), keep(b) + rows(b, k), direct(b))

each term the largest of the lines through consecutive points measured on trial slices of the first batch (1, 4
and 8 samples, [`trial_sizes`][lamda_ext.hessian.budget.trial_sizes]; the whole batch where batches are not split)
under [`AllocationTracker`][lamda_ext.memory.AllocationTracker] (plus one trial of a quarter of the planned slice
where that is larger); the trials' results are discarded and the random-number state is restored after them. Where
the work is small against the budget, every term is instead bounded by one eager HVP
([`bound_costs`][lamda_ext.hessian.budget.bound_costs]), which traces nothing. The plan ([`HessianPlan`][lamda_ext.hessian.budget.HessianPlan]) takes
the largest ``sub_batch`` with ``peak(sub_batch, 1)`` within [`SAFETY`][lamda_ext.planning.SAFETY] × the budget; each
slice then takes the most rows ``k`` whose peak fits besides what the cache holds (dropping kept values when not even
one row fits), and the cache may keep a slice's values only while that still leaves the slice's peak free. The first
slice of each measured kind of work is measured too: where it took more than predicted, that kind's costs are scaled up by the
ratio and the plan is made again (not for the bounded kinds).

Batches are split only where their samples are independent: a deterministic setup (no active dropout, no train-mode
batch norm) and a batch of which every tensor has the leading sample size
([`splits_into_samples`][lamda_ext.hessian.data.splits_into_samples]); other batches are taken whole (only their rows
are split), and a budget too small for a whole such batch with one row is refused as one too small for one sample.
"""
from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .._state import RngReplay
from ..memory import AllocationTracker, format_bytes
from ..planning import SAFETY, budget_too_small
from .data import cut_samples

__all__ = ["Curve", "fit_curve", "SliceCost", "HessianPlan", "trial_sizes", "measure_costs", "bound_costs",
           "make_plan"]

log = logging.getLogger("lamda_ext")

KINDS = ("products", "forms")


@dataclass(frozen=True)
class Curve:
    """Bytes for ``b`` samples: the largest of the lines ``a + c·b`` in ``lines`` and of ``floor``."""
    lines: tuple
    floor: float = 0.0

    def __call__(self, b: int) -> float:
        """Bytes for ``b`` samples."""
        return max([self.floor] + [a + c * b for a, c in self.lines])

    def scaled(self, f: float) -> "Curve":
        """The curve times ``f``."""
        return Curve(tuple((a * f, c * f) for a, c in self.lines), self.floor * f)


def fit_curve(points: list[tuple[int, float]]) -> Curve:
    """The lines through consecutive measured ``(b, bytes)`` points (each with intercept ≥ 0 and slope ≥ 0).

    Their largest value follows a small-batch overhead below the middle point and the growth of the larger slices
    above it. One point ``(b₁, v)``: ``v`` up to ``b₁`` samples, proportional beyond.
    """
    points = sorted(points)
    if len(points) == 1:
        (b, v), = points
        return Curve(((0.0, v / b),), v)
    lines = []
    for (b0, v0), (b1, v1) in zip(points, points[1:]):
        c = max((v1 - v0) / (b1 - b0), 0.0)
        a = v0 - c * b0
        if a < 0:             # superlinear growth: from the origin with the larger slope
            a, c = 0.0, max(c, v1 / b1)
        lines.append((a, c))
    return Curve(tuple(lines))


@dataclass(frozen=True)
class SliceCost:
    """The measured bytes of one kind of work on a slice of ``b`` samples (module docstring)."""
    prepare: Curve
    keep: Curve
    one: Curve
    base: Optional[Curve] = None
    row: Optional[Curve] = None
    direct: Optional[Curve] = None

    def scaled(self, f: float) -> "SliceCost":
        """Every term times ``f``."""
        return SliceCost(*(None if t is None else t.scaled(f) for t in (self.prepare, self.keep, self.one,
                                                                       self.base, self.row, self.direct)))

    def rows(self, b: int, k: int) -> float:
        """Bytes of one evaluation of ``k`` rows on a prepared slice."""
        if k == 1 or self.row is None:
            return self.one(b) if k == 1 else self.one(b) * k
        return self.base(b) + k * self.row(b)

    def peak(self, b: int, k: int) -> float:
        """Bytes alive at once while a slice of ``b`` samples evaluates ``k`` rows at a time (fresh or kept)."""
        return max(self.prepare(b), self.keep(b) + self.rows(b, k), self.direct(b) if self.direct else 0.0)

    def chunk(self, b: int, avail: float, cap: Optional[int]) -> Optional[int]:
        """The most rows at once (at most ``cap``; None: no limit) whose peak fits ``avail`` bytes; 0: not even one."""
        if self.peak(b, 1) > avail:
            return 0
        if cap == 1:
            return 1
        per_row, fixed = (self.one(b), self.keep(b)) if self.row is None else (self.row(b), self.keep(b) + self.base(b))
        if per_row <= 0:
            return cap
        k = int((avail - fixed) // per_row)
        return max(1, k if cap is None else min(k, cap))


@dataclass
class HessianPlan:
    """How an operator's work is split within ``budget`` bytes.

    Attributes:
        budget: the memory budget (bytes).
        sub_batch: the most samples a slice takes (batches of up to that many are taken whole).
        splits_samples: whether batches may be cut into slices (False: every batch is taken whole and only the rows
            are split).
        batch: the samples of the batch the plan was measured on.
        corrected: the factor by which a kind's measured costs were scaled up after its first slice took more than
            predicted (1: none was).
        chunk: per kind of work (``"products"``, ``"forms"``), the most rows one evaluation takes on the first batch's
            slices with nothing kept (None: as many as asked); fewer while the cache holds values.
        predicted_peak: per kind, the bytes alive at once on the first batch's slices at ``chunk`` rows (one row where
            ``chunk`` is None).
        cache_limit: the bytes left for kept values besides the largest one-row peak on the first batch's slices.
        min_budget: the smallest budget in which every planned kind runs (one sample — a whole batch where batches
            are not split — and one row).
        costs: the measured [`SliceCost`][lamda_ext.hessian.budget.SliceCost] per kind.
        bounded: the kinds whose costs are the bound of one eager HVP
            ([`bound_costs`][lamda_ext.hessian.budget.bound_costs]: it fitted the whole batch) rather than measured;
            their ``predicted_peak`` and ``min_budget`` are upper bounds.
    """
    budget: int
    sub_batch: int
    splits_samples: bool
    batch: int
    corrected: float = 1.0
    chunk: dict = field(default_factory=dict)
    predicted_peak: dict = field(default_factory=dict)
    cache_limit: int = 0
    min_budget: int = 0
    costs: dict = field(default_factory=dict)
    bounded: frozenset = frozenset()

    @property
    def usable(self) -> float:
        """The bytes a plan fills: [`SAFETY`][lamda_ext.planning.SAFETY] × the budget."""
        return SAFETY * self.budget

    def __str__(self) -> str:
        parts = ", ".join(f"{kind} {'all' if k is None else k} row(s) at a time (peak "
                          f"{format_bytes(self.predicted_peak[kind])})" for kind, k in self.chunk.items())
        split = (f"slices of ≤ {self.sub_batch} sample(s) (the first batch, {self.batch} samples: "
                 f"{math.ceil(self.batch / self.sub_batch)} slice(s))" if self.splits_samples
                 else "whole batches (samples not split)")
        fix = "" if self.corrected == 1.0 else f"; costs scaled ×{self.corrected:.2f} after the first slice"
        if self.bounded:
            fix += f"; {', '.join(sorted(self.bounded))} bounded by an eager HVP, not measured"
        return (f"hessian plan: {split}; {parts or 'nothing planned'}; budget {format_bytes(self.budget)}, "
                f"cache ≤ {format_bytes(self.cache_limit)}, smallest budget {format_bytes(self.min_budget)}{fix}")


def _tracked(fn: Callable, start: RngReplay, collect: bool = True):
    start.reset()
    with AllocationTracker() as tr:
        out = fn()
    if collect:
        gc.collect()          # cycles (traced graphs) that are garbage
    return out, tr


def _measure_slice(work, kinds, shard, batch, n: int, W: torch.Tensor, ks, start: RngReplay) -> dict:
    """``{kind: {"prepare", "keep", k..., "direct"}}`` bytes of one trial slice (kinds without a prepared form: absent)."""
    out, entries = {}, {}
    for kind in kinds:
        store = work.store(kind)
        if store not in entries:
            entry, tr = _tracked(lambda: work.prepare(kind, shard, batch, n), start)
            entries[store] = (entry, tr.peak, tr.live)
        entry, prepare, keep = entries[store]
        if entry is None:
            continue
        rec = {"prepare": prepare, "keep": keep}
        for k in ks(kind):
            rec[k] = _tracked(lambda: work.apply(kind, entry, W[:k]), start)[1].peak
        if work.has_direct(kind):
            rec["direct"] = _tracked(lambda: work.direct(kind, shard, batch, n, W[:1]), start)[1].peak
        out[kind] = rec
    return out


def _trial_rows(k: int, like: torch.Tensor) -> torch.Tensor:
    """``k`` fixed random rows ``[k, P]`` in ``like``'s dtype and device (the same for every trial)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(k, like.shape[-1], generator=g, dtype=torch.float64).to(like.device, like.dtype)


def _first_samples(shard, batch, b: int, n: int) -> tuple:
    """``(shard, slice)`` of the first ``b`` samples of a batch of ``n``."""
    sub = batch if b == n else cut_samples(batch, 0, b, n)
    return shard._replace(batch=sub), sub


def _fit(points: list[tuple[int, dict]]) -> SliceCost:
    line = lambda key: fit_curve([(b, r[key]) for b, r in points])     # noqa: E731
    direct = line("direct") if all("direct" in r for _, r in points) else None   # not where an eager HVP failed
    if 3 not in points[0][1]:
        return SliceCost(line("prepare"), line("keep"), line(1), direct=direct)
    for _, r in points:        # rows k = 2, 3 at once → base + k·row
        r["row"] = max(r[3] - r[2], 0.0)
        r["base"] = max(r[2] - 2 * r["row"], 0.0)
    return SliceCost(line("prepare"), line("keep"), line(1), line("base"), line("row"), direct)


def trial_sizes(n: int) -> list[int]:
    """The trial slices of a batch of ``n`` samples: 1, 4 and 8 samples (fewer and smaller for a smaller batch)."""
    return [1, 4, 8] if n >= 8 else sorted({1, max(1, n // 2), n})


def measure_costs(work, kinds, shard, batch, n: int, split: bool, like: torch.Tensor, ks, points: dict,
                  sizes: Optional[list] = None) -> dict:
    """``{kind: SliceCost}`` of ``work`` from trial slices of the first batch (``batch``, ``n`` samples).

    ``split``: slices of ``sizes`` samples (default `trial_sizes`), else the whole batch. ``like``: a parameter
    vector (dtype, device) for the trial rows; ``ks(kind)``: the row counts measured (1, or 1, 2, 3); ``points``:
    ``{kind: [(samples, bytes by term)]}`` measured so far, extended in place and fitted together. The
    random-number state is left as it was.
    """
    W = _trial_rows(3, like)
    sizes = (sizes or trial_sizes(n)) if split else [n]
    start = RngReplay(like.device)
    try:
        for b in sizes:
            sub_shard, sub = _first_samples(shard, batch, b, n)
            for kind, rec in _measure_slice(work, kinds, sub_shard, sub, b, W, ks, start).items():
                points.setdefault(kind, []).append((b, rec))
    finally:
        start.reset()
    return {kind: _fit(p) for kind, p in points.items() if p}


MARGIN = 2.0   # the bound's factor over the bytes of one eager forward-over-reverse HVP


def bound_costs(probe: Callable, shard, batch, n: int, split: bool, like: torch.Tensor, points: list,
                enough: Callable[[SliceCost], bool]) -> Optional[SliceCost]:
    """A [`SliceCost`][lamda_ext.hessian.budget.SliceCost] bounding every kind of work by one eager HVP (no trace).

    ``probe(shard, batch, n, rows)`` evaluates one row the eager way (a forward-over-reverse HVP); its tracked peak
    ``D(b)`` on a slice of 1 sample, then of 2 (the whole batch where batches are not split) is fitted by
    `fit_curve` and scaled by `MARGIN`: one point bounds ``D(b) ≤ b·D(1)`` (a fixed part and a per-sample part),
    two separate them. Each of preparing, keeping, one row and the direct way is bounded by ``M(b) = MARGIN · D(b)``,
    so ``k`` rows on a slice of ``b`` samples peak at ``(1 + k) · M(b)``.

    ``points``: the ``(samples, MARGIN · bytes)`` measured so far, extended in place; the second slice is measured
    only where ``enough`` (whether a bound settles the plan) is False for the first one. The random-number state is
    left as it was. None where the eager HVP fails (an op without a forward-mode rule, e.g. CPU flash attention).
    """
    def cost() -> SliceCost:
        m = fit_curve(points)
        return SliceCost(prepare=m, keep=m, one=m, base=Curve(((0.0, 0.0),)), row=m, direct=m)

    W = _trial_rows(1, like)
    start = RngReplay(like.device)
    try:
        for b in ([1, 2] if split and n > 2 else [n]):
            if any(b == p for p, _ in points):
                continue
            if points and enough(cost()):
                break
            sub_shard, sub = _first_samples(shard, batch, b, n)
            try:
                peak = _tracked(lambda: probe(sub_shard, sub, b, W), start, collect=False)[1].peak
            except (NotImplementedError, RuntimeError):     # an op without an eager forward-mode rule
                return None
            points.append((b, MARGIN * peak))
    finally:
        start.reset()
    return cost()


def _largest_sub_batch(costs: dict, usable: float, n: int) -> int:
    """The largest ``b`` with every kind's one-row peak within ``usable`` (costs grow with b; at most 2³¹)."""
    fits = lambda b: all(c.peak(b, 1) <= usable for c in costs.values())   # noqa: E731
    lo, hi = 1, max(n, 2)
    while fits(hi) and hi < 2**31:      # batches later in the data may be larger than the first
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def make_plan(costs: dict, budget: int, n: int, split: bool, caps: Callable[[str, int], Optional[int]],
              corrected: float = 1.0, bounded: frozenset = frozenset()) -> HessianPlan:
    """The plan for ``costs`` (``{kind: SliceCost}``) within ``budget`` bytes, measured on a batch of ``n`` samples.

    ``split``: whether batches may be cut into slices; ``caps(kind, b)``: the most rows one evaluation may take (None:
    no limit); ``corrected``: see [`HessianPlan`][lamda_ext.hessian.budget.HessianPlan]. Raises ValueError naming the
    smallest budget that works when one sample (the whole batch when batches are not split) with one row does not fit.
    """
    usable = SAFETY * budget
    unit = 1 if split else n
    worst = max((c.peak(unit, 1) for c in costs.values()), default=0.0)
    if worst > usable:
        what = "one sample" if split else f"a batch of {n} samples (its samples cannot be taken apart)"
        raise budget_too_small(budget, f"{what} and one direction of a curvature product", worst)
    b = _largest_sub_batch(costs, usable, n) if split and costs else n
    plan = HessianPlan(budget=budget, sub_batch=b, splits_samples=split, batch=n, corrected=corrected,
                       costs=dict(costs), min_budget=math.ceil(worst / SAFETY), bounded=bounded)
    s = min(b, n)             # the first batch's slices
    for kind, c in costs.items():
        k = c.chunk(s, usable, caps(kind, s))
        plan.chunk[kind] = k
        plan.predicted_peak[kind] = int(c.peak(s, 1 if k is None else k))
    plan.cache_limit = max(0, int(usable - max(c.peak(s, 1) for c in costs.values()))) if costs else int(usable)
    log.debug("%s", plan)
    return plan
