"""How a directional-derivative call fits its memory budget: a cost model from measured chunks, and the plan.

The cost of a Taylor-mode call is linear in the points ``b`` and directions ``k`` of a chunk:

    bytes alive at once ≈ b · (α + β·k),    bytes allocated ≈ b · (α' + β'·k),    FLOPs ≈ b · (φ + ψ·k)

([`CostModel`][lamda_ext.planning.CostModel]). The coefficients come from two small chunks of the call itself — the
first points with one direction, then with two — run under [`AllocationTracker`][lamda_ext.memory.AllocationTracker];
their results are kept as part of the answer. A cost model is remembered per model structure, input signature, order and
backend, so later calls plan without measuring. A call whose coarse size estimate (the plain forward pass's
allocations × the coefficients carried, with a 4× margin) fits the budget runs unsplit without measuring.

Modes: ``"measure"`` (no gradient wanted: each chunk frees its series as it goes), ``"graph"`` (a
differentiable call whose autograd graph fits: chunks keep their graphs), ``"recompute"`` (a differentiable
call whose graph does not fit: values computed as in ``"measure"``, and the backward pass recomputes chunk by
chunk, each chunk's graph within the budget).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ._state import RngReplay
from .memory import AllocationTracker, format_bytes
from .split import Chunk, Job

__all__ = ["CostModel", "Plan", "SAFETY", "ESTIMATE_MARGIN", "measure_cost", "choose_chunks", "make_plan",
           "budget_too_small"]

# share of the budget a plan fills with its predicted peak; the rest absorbs the allocator's overhead (on the CPU the
# heap that serves large tensors during a call, memory.heap_reuse, keeps freed blocks resident between reuses)
SAFETY = 0.7
# a call runs unsplit without measuring when this many times its coarse size estimate fits the budget
ESTIMATE_MARGIN = 4.0


@dataclass(frozen=True)
class CostModel:
    """Per-point costs of a chunk with k directions.

    ``peak = b·(alive + alive_dir·k)`` bytes alive at once, ``graph = b·(alloc + alloc_dir·k)`` bytes allocated (what an
    autograd graph keeps at most), ``flops = b·(flops + flops_dir·k)``; ``forward_flops``: one plain forward pass per
    point.
    """
    alive: float
    alive_dir: float
    alloc: float
    alloc_dir: float
    flops: float
    flops_dir: float
    forward_flops: float

    def peak(self, b: int, k: int) -> float:
        """Bytes alive at once for ``b`` points and ``k`` directions."""
        return b * (self.alive + self.alive_dir * k)

    def graph(self, b: int, k: int) -> float:
        """Bytes allocated (what an autograd graph keeps at most) for ``b`` points and ``k`` directions."""
        return b * (self.alloc + self.alloc_dir * k)

    def cost(self, b: int, k: int) -> float:
        """FLOPs of matrix products and convolutions for ``b`` points and ``k`` directions."""
        return b * (self.flops + self.flops_dir * k)


@dataclass
class Plan:
    """How a call runs: its chunks, the mode, the predicted peak working memory and cost.

    The peak is in bytes beyond the model, its inputs and the directions; the cost in forward passes (matrix-product and
    convolution FLOPs of the call over those of one plain forward pass of all its points; the elementwise Taylor
    recurrences are not counted). ``measured``: the prediction comes from a cost model (True) or the coarse estimate
    (False). ``min_budget``: the smallest budget in which the call runs (one point — all points when they cannot be
    split — and one direction per chunk; None without a cost model). ``attention_rows``: where even that chunk does not
    fit, attention scores are taken this many query rows at a time (None: all rows at once).
    ``min_backward_budget``: for a differentiable call, the smallest budget in which its backward pass runs too.
    ``backward_refusal``: in ``"recompute"`` mode, the error a backward pass raises when not even one chunk's graph fits
    the budget (the values are computed; None: the backward pass runs).
    """
    points: int
    directions: int
    order: int
    wrt: str
    backend: str
    mode: str
    budget: int
    chunks: tuple
    predicted_peak: int
    forward_passes: Optional[float]
    measured: bool
    recompute_chunks: tuple = field(default=())
    min_budget: Optional[int] = None
    attention_rows: Optional[int] = None
    backward_refusal: Optional[str] = None
    min_backward_budget: Optional[int] = None

    @property
    def n_chunks(self) -> int:
        """The number of chunks."""
        return len(self.chunks)

    def __str__(self) -> str:
        sizes = sorted({(c.n_points, c.n_directions) for c in self.chunks}, reverse=True)
        fw = "n/a" if self.forward_passes is None else f"{self.forward_passes:.1f}"
        lines = [f"plan: B={self.points} points × K={self.directions} directions, order {self.order}, "
                 f"wrt={self.wrt}, backend={self.backend}, mode={self.mode}",
                 f"  {self.n_chunks} chunk(s) of (points, directions) in {sizes}; budget "
                 f"{format_bytes(self.budget)}, predicted peak {format_bytes(self.predicted_peak)} "
                 f"({'measured cost model' if self.measured else 'coarse estimate'}); forward passes ≈ {fw}"]
        if self.recompute_chunks:
            lines.append(f"  backward recomputes {len(self.recompute_chunks)} chunk(s)")
        if self.backward_refusal:
            lines.append("  a backward pass does not fit the budget and would be refused")
        if self.attention_rows is not None:
            lines.append(f"  attention scores {self.attention_rows} query rows at a time")
        return "\n".join(lines)


def _tracked(job: Job, chunk: Chunk, start: RngReplay):
    start.reset()
    with torch.no_grad(), AllocationTracker() as tr:
        res = job.sub(chunk).run()
    return res, tr


def trial_chunks(job: Job) -> list[Chunk]:
    """The chunks measured for a cost model.

    The first points (one, or all when points cannot be split) with direction 0, then directions 1..2.
    """
    b = 1 if job.points_splittable else job.n_points
    out = [Chunk((0, b), (0, 1))]
    if job.n_directions >= 3:
        out.append(Chunk((0, b), (1, 3)))
    return out


def measure_cost(job: Job, start: RngReplay) -> tuple[CostModel, dict]:
    """Fit [`CostModel`][lamda_ext.planning.CostModel] from the trial chunks; returns it with their results.

    The trials run under no_grad, each from the random-number state ``start``, as every chunk of the call starts.
    """
    trials = trial_chunks(job)
    done, stats = {}, []
    for c in trials:
        res, tr = _tracked(job, c, start)
        done[c] = res
        stats.append((tr.peak, tr.total, tr.flops))
    b = trials[0].n_points
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)      # the fused attention kernel hides its FLOPs
    start.reset()
    try:
        with torch.no_grad(), AllocationTracker() as fw:
            job.model(job.x[:b]) if job.take_points is None else job.take_points(0, b)[0](job.x[:b])
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    per = [tuple(v / b for v in s) for s in stats]
    if len(per) == 1:               # one direction: everything scales with the points
        (p, a, f), = per
        return CostModel(0.0, p, 0.0, a, 0.0, f, fw.flops / b), done
    (p1, a1, f1), (p2, a2, f2) = per   # k = 1 and k = 2

    def fit(v1, v2):          # intercept and slope through k = 1, 2 (intercept ≥ 0: superlinear growth is
        slope = max(v2 - v1, 0.0)    # extrapolated from the origin with the larger slope)
        return max(v1 - slope, 0.0), slope
    return CostModel(*fit(p1, p2), *fit(a1, a2), *fit(f1, f2), fw.flops / b), done


def choose_chunks(B: int, K: int, splittable: bool, usable: float, size) -> tuple[int, int]:
    """Largest directions per chunk, then points per chunk, with ``size(b, k) ≤ usable``.

    (0, 0) if even the smallest chunk (one point, or all when points cannot be split, and one direction) does not fit.
    """
    b = 1 if splittable else B
    if size(b, 1) > usable:
        return 0, 0
    k = K
    while k > 1 and size(b, k) > usable:
        k = max(1, min(k - 1, int(k * usable / size(b, k))))
    if splittable:
        b = B
        while b > 1 and size(b, k) > usable:
            b = max(1, min(b - 1, int(b * usable / size(b, k))))
    return b, k


def grid(B: int, K: int, b: int, k: int, start: Optional[list] = None) -> list[Chunk]:
    """Chunks of ``b`` points × ``k`` directions covering the call, after the ``start`` chunks.

    The ``start`` chunks are the trials (the first points with the first directions); their points' remaining directions
    come first.
    """
    out = list(start or [])
    p0 = 0
    if out:
        p0 = out[0].points[1]
        k0 = out[-1].directions[1]
        out += [Chunk((0, p0), (j, min(j + k, K))) for j in range(k0, K, k)]
    for i in range(p0, B, b):
        out += [Chunk((i, min(i + b, B)), (j, min(j + k, K))) for j in range(0, K, k)]
    return out


_COSTS: "dict" = {}   # structural key → CostModel
_MODEL_KEYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _structure(model) -> tuple:
    key = _MODEL_KEYS.get(model)
    if key is None:
        key = tuple((type(m).__name__, tuple((n, tuple(p.shape)) for n, p in m.named_parameters(recurse=False)))
                    for m in model.modules())
        _MODEL_KEYS[model] = key
    return key


def cost_key(job: Job, backend: str) -> tuple:
    """What a cost model depends on.

    The model's structure and modes, the points' shape, dtype and device, the directions' layout, order, loss and
    backend.
    """
    return (_structure(job.model), tuple(m.training for m in job.model.modules()), tuple(job.x.shape[1:]),
            job.x.dtype, job.x.device, job.wrt, job.per_point_dirs, job.order, str(job.loss), backend,
            job.take_points is None, job.attention_rows)


def _chunks_for(job: Job, usable: float, size, start=None) -> list[Chunk]:
    b, k = choose_chunks(job.n_points, job.n_directions, job.points_splittable, usable, size)
    if b == 0:
        return []
    return grid(job.n_points, job.n_directions, b, k, start)


def estimate_bytes(job: Job, forward_bytes: int) -> float:
    """Coarse size of the unsplit call.

    The plain forward's allocations carried for 1 + K·order coefficients (plus the parameter series in
    ``wrt="params"``).
    """
    coeffs = 1 + job.n_directions * job.order
    extra = 0
    if job.wrt == "params":
        extra = job.dirs.numel() * job.dirs.element_size() * (job.order + 1)
    return forward_bytes * coeffs + extra


# query rows per block of attention scores tried, in turn, when one point and one direction do not fit
ATTENTION_ROWS = (512, 128, 32, 8)


def _attention_rows_that_fit(job: Job, backend: str, usable: float, start: RngReplay) -> Optional[int]:
    """The largest of ``ATTENTION_ROWS`` with which the smallest chunk of ``job`` fits ``usable`` bytes, or None.

    Each cost model is measured and kept. None: no attention, or attention is not what fills the memory.
    """
    b_min = 1 if job.points_splittable else job.n_points
    for rows in ATTENTION_ROWS:
        trial = replace(job, attention_rows=rows)
        key = cost_key(trial, backend)
        if key not in _COSTS:
            _COSTS[key] = measure_cost(trial, start)[0]
        if _COSTS[key].peak(b_min, 1) <= usable:
            return rows
    return None


def budget_too_small(budget: int, unit: str, working: float) -> ValueError:
    """The refusal of a budget too small for the smallest piece of a call's work.

    ``unit`` says what that piece is (``"1 point(s) and one direction"``), ``working`` its bytes of working memory;
    the message names the smallest budget that works (``working / SAFETY``).
    """
    need = working / SAFETY
    return ValueError(f"memory_budget={budget} bytes ({format_bytes(budget)}) is too small for even {unit} of this "
                      f"call (about {format_bytes(working)} of working memory); the smallest budget that works is "
                      f"about {math.ceil(need)} bytes ({format_bytes(need)})")


def make_plan(job: Job, backend: str, budget: int, needs_grad: bool, forward_bytes: Optional[int] = None,
              measure: bool = False, start: Optional[RngReplay] = None) -> tuple[Plan, dict]:
    """The plan of ``job`` within ``budget`` bytes, and the results of any chunks measured to make it.

    Each measured chunk starts from the random-number state ``start`` (default: the current one).

    ``forward_bytes``: bytes one plain forward pass of all points allocates (enables the coarse estimate that
    skips measuring); ``measure``: always measure (what [`lamda_ext.plan`][lamda_ext.plan] reports). Raises ValueError
    naming the smallest budget that works when one point (all points when they cannot be split) with one
    direction does not fit.
    """
    B, K = job.n_points, job.n_directions
    usable = SAFETY * budget
    mode = "graph" if needs_grad else "measure"
    base = dict(points=B, directions=K, order=job.order, wrt=job.wrt, backend=backend, budget=budget,
                attention_rows=job.attention_rows)
    key = cost_key(job, backend)
    cost = _COSTS.get(key)
    if cost is None and not measure and forward_bytes is not None:
        est = estimate_bytes(job, forward_bytes)
        if ESTIMATE_MARGIN * est <= usable:
            return Plan(mode=mode, chunks=(Chunk((0, B), (0, K)),), predicted_peak=int(est),
                        forward_passes=None, measured=False, **base), {}
    done = {}
    start = RngReplay(job.x.device) if start is None else start
    if cost is None:
        cost, done = measure_cost(job, start)
        _COSTS[key] = cost
    first = list(done) if done else None
    fw = cost.forward_flops * B
    b_min = 1 if job.points_splittable else B
    base["min_budget"] = math.ceil(cost.peak(b_min, 1) / SAFETY)
    if needs_grad:
        base["min_backward_budget"] = math.ceil(max(cost.peak(b_min, 1), cost.graph(b_min, 1)) / SAFETY)
    if needs_grad and cost.graph(B, K) <= usable:
        chunks = (Chunk((0, B), (0, K)),)
        return Plan(mode="graph", chunks=chunks, predicted_peak=int(cost.graph(B, K)),
                    forward_passes=cost.cost(B, K) / fw if fw else None, measured=True, **base), {}
    chunks = _chunks_for(job, usable, cost.peak, first)
    if not chunks and job.attention_rows is None:
        rows = _attention_rows_that_fit(job, backend, usable, start)
        if rows is not None:
            return make_plan(replace(job, attention_rows=rows), backend, budget, needs_grad, None, True, start)
    if not chunks:
        raise budget_too_small(budget, f"{b_min} point(s) and one direction", cost.peak(b_min, 1))
    recompute, refusal = (), None
    if needs_grad:
        mode = "recompute"
        recompute = tuple(_chunks_for(job, usable, cost.graph))
        if not recompute:     # the values fit; a backward pass would not: refused if it is asked for
            need = cost.graph(b_min, 1) / SAFETY
            refusal = (f"memory_budget={budget} bytes ({format_bytes(budget)}) is too small to differentiate even "
                       f"{b_min} point(s) and one direction of this call (its autograd graph takes about "
                       f"{format_bytes(cost.graph(b_min, 1))}); the smallest budget that works is about "
                       f"{math.ceil(need)} bytes ({format_bytes(need)}); the values were computed within the budget")
    flops = sum(cost.cost(c.n_points, c.n_directions) for c in chunks)
    peak = max(cost.peak(c.n_points, c.n_directions) for c in chunks)
    return Plan(mode=mode, chunks=tuple(chunks), predicted_peak=int(peak), forward_passes=flops / fw if fw else None,
                measured=True, recompute_chunks=recompute, backward_refusal=refusal, **base), \
        (done if chunks[:len(done)] == list(done) else {})
