"""``directional_derivs``: batched n-th directional derivatives of the loss (DESIGN.md §1–2)."""
from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from typing import Optional, Union

import torch
from torch import nn

from . import backends
from .batches import Problem, prepare
from ._state import RngReplay, frozen_batchnorm_stats, outside_inference_mode
from .checks import check_direction_tensor, check_forward, check_model_and_x, check_order, check_wrt
from .directions import num_parameters, random_directions, random_param_directions
from .losses import LOSS_NAMES, LossSpec, check_targets, resolve_loss
from .memory import Budget, heap_reuse, resolve_budget
from .planning import Plan, make_plan
from .recompute import derivs_with_recompute, differentiable_inputs
from .split import Job, run_chunks

__all__ = ["directional_derivs", "plan"]

log = logging.getLogger("lamda_ext")

def _directions(directions, model, x, wrt, generator):
    if isinstance(directions, torch.Tensor):
        if wrt == "input":
            if directions.dim() == x.dim():     # [K, *S]: shared by every point
                check_direction_tensor(directions, (0,) + tuple(x.shape[1:]),
                                        f"[K, *x.shape[1:]] = [K, {', '.join(map(str, x.shape[1:]))}] (shared) "
                                        f"or [K, *x.shape] = [K, {', '.join(map(str, x.shape))}] (per point)", x)
                return directions
            check_direction_tensor(directions, (0,) + tuple(x.shape),
                                    f"[K, *x.shape] = [K, {', '.join(map(str, x.shape))}] (per point) or "
                                    f"[K, *x.shape[1:]] = [K, {', '.join(map(str, x.shape[1:]))}] (shared)", x)
        else:
            p = num_parameters(model)
            check_direction_tensor(directions, (0, p), f"[K, P] = [K, {p}]", x)
        return directions
    if isinstance(directions, bool) or not isinstance(directions, int):
        raise TypeError(f"directions must be an int K ≥ 1 or a tensor, got {type(directions).__name__}")
    if directions < 1:
        raise ValueError(f"directions (K) must be ≥ 1, got {directions}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if wrt == "input":
        return random_directions(x, directions, generator)
    return random_param_directions(model, directions, generator)


def _fused_available() -> bool:
    try:
        from . import ops
    except ImportError:
        return False
    return ops.available()


def _points_of(prob: Problem):
    """Points ``[lo:hi]`` of a batch mapping's problem: its model and targets (the inputs are cut by the caller)."""
    def take(lo: int, hi: int):
        part = prob.slice(lo, hi)
        return part.model, part.y
    return take


def _prepare(model, x, y, order, directions, loss, wrt, backend, generator, label_smoothing, params):
    """Check the arguments (one plain forward pass included) and build the call's [`Job`][lamda_ext.split.Job].

    Returns ``(job, backend name, auto-fallback wanted, bytes of the plain forward pass)``.
    """
    prob = prepare(model, x, y, loss=loss, wrt=wrt, params=params, label_smoothing=label_smoothing)
    model, x, y, loss, wrt = prob.model, prob.x, prob.y, prob.loss, prob.wrt
    check_model_and_x(model, x)
    check_wrt(wrt)
    if backend not in backends.NAMES:
        raise ValueError(f"backend must be one of {backends.NAMES}, got {backend!r}")
    check_order(order, backend)
    if not (callable(loss) or loss in LOSS_NAMES):
        raise ValueError(f"loss must be one of {LOSS_NAMES} or a callable (output, y) -> per-sample loss; got {loss!r}")
    resolve_loss(loss, label_smoothing)
    y = check_targets(loss, y, x.shape[0])
    if isinstance(y, torch.Tensor) and y.device != x.device:
        raise ValueError(f"device mismatch: y is on {y.device} but x is on {x.device}")
    dirs = prob.directions(_directions(directions, model, x, wrt, generator),
                           drawn=not isinstance(directions, torch.Tensor))
    forward_bytes = check_forward(model, x, y, loss)
    if backend == "fused" and not _fused_available():
        raise RuntimeError("backend='fused' needs the compiled extension lamda_ext._C; build it with "
                           "`pip install --no-build-isolation .` or use backend='taylor'")
    name = backend if backend != "auto" else ("fused" if _fused_available() else "taylor")
    impl = backends.BACKENDS[name]
    fn = impl.input_derivs if wrt == "input" else impl.params_derivs
    job = Job(model, x, y, dirs, order, loss, wrt, label_smoothing, fn,
              None if prob.source is None else _points_of(prob))
    return job, name, backend == "auto", forward_bytes


def _planned(job: Job, name: str, budget: int, forward_bytes: int, measure: bool = False, start=None):
    needs_grad = torch.is_grad_enabled() and bool(differentiable_inputs(job))
    return make_plan(job, name, budget, needs_grad, forward_bytes, measure, start)


def _execute(job: Job, name: str, budget: int, forward_bytes: int):
    """The call's ``(d, loss0)``.

    Taylor backends by their plan within ``budget``, every chunk from the random- number state at the start of the call;
    the references unsplit.
    """
    if name not in ("taylor", "fused"):
        return job.run()
    start = RngReplay(job.x.device)
    p, done = _planned(job, name, budget, forward_bytes, start=start)
    log.debug("%s", p)
    if p.attention_rows is not None:
        job = replace(job, attention_rows=p.attention_rows)
    if p.mode == "measure":
        with torch.no_grad():
            return run_chunks(job, p.chunks, done, start)
    if p.mode == "graph":
        return run_chunks(job, p.chunks, start=start)
    return derivs_with_recompute(job, p, done, start)


@outside_inference_mode
def directional_derivs(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, *, order: int = 6,
                       directions: Union[int, torch.Tensor] = 15, loss: LossSpec = "cross_entropy",
                       wrt: str = "input", backend: str = "auto", generator: Optional[torch.Generator] = None,
                       label_smoothing: float = 0.0, return_loss: bool = False, params=None,
                       memory_budget: Budget = "auto"):
    """n-th directional derivatives of the loss, n = 1..order.

    Args:
        model: the network; its mode (train/eval) is respected, its state is left unchanged.
        x: inputs ``[B, *S]`` (floating point, finite, the model's dtype and device), or a mapping of the model's
            keyword arguments (a dict or Hugging Face ``BatchEncoding``; see [`lamda_ext.batches`][lamda_ext.batches]).
        y: targets: class labels ``[B]`` (int64) for cross-entropy (-100: a sample that counts 0, as in
            ``F.cross_entropy``), a tensor of the output's shape for MSE. With a mapping ``x``, None means the model's
            own loss from ``x["labels"]`` per sample (causal LMs: shifted, -100 excluded, the mean over each
            sample's counted tokens; [`lamda_ext.batches`][lamda_ext.batches] says how these relate to the model's
            ``loss``).
        order: highest order N (1..32 for taylor/fused/auto, 1..16 for autograd, 1..12 for func).
        directions: K, a number of random directions (Gaussian, unit norm per point over all input dims — or over all
            parameters for ``wrt="params"`` — drawn from ``generator``), or an explicit tensor in x's dtype and device,
            used as given: ``wrt="input"``: ``[K, *x.shape]`` (one direction per point and k) or ``[K, *x.shape[1:]]``
            (direction k shared by every point; broadcast over the batch without copying it B times, the same numbers
            as passing it expanded to ``[K, *x.shape]``); ``wrt="inputs_embeds"``: ``[K, B, T, d]`` or ``[K, T, d]``
            (positions with ``attention_mask`` 0 get zero direction; random ones are unit over each point's counted
            positions); ``wrt="params"``: ``[K, P]`` (P: the parameters ``params`` selects). Draw shared ones with
            ``random_directions(x, K, g, shared=True)``.
        loss: ``"cross_entropy"`` (with ``label_smoothing``), ``"mse"`` (mean over non-batch dims) or a callable
            ``(output, y) -> per-sample loss [B]``.
        wrt: ``"input"`` (a tensor x), ``"inputs_embeds"`` / ``"pixel_values"`` (a mapping x: the embeddings of its
            ``input_ids`` / its pixel values, treated as ``"input"``) or ``"params"`` (the parameters, or those
            ``params`` selects). For input directions entry ``[b, k, n-1]`` is ``d^n/dt^n loss_b`` at ``x + t·u_k``:
            all points move together, each along its own ``u_{k,b}`` or the shared ``u_k`` (without batch-coupled
            layers this is the per-sample derivative at ``x_b + t·u_{k,b}``). For ``"params"`` entry ``[k, n-1]`` is
            the n-th derivative of the batch-mean loss at ``θ + t·v_k``.
        backend: ``"autograd"`` (reference), ``"func"``, ``"taylor"``, ``"fused"`` or ``"auto"`` (fused when the
            extension is built, else taylor; an op without a Taylor rule falls back to autograd with a warning naming
            the op).
        generator: ``torch.Generator`` for the random directions (any device; the directions are moved to x's).
        label_smoothing: for cross-entropy, as in ``torch.nn.functional.cross_entropy``.
        return_loss: also return the per-sample loss at t = 0 from the same forward pass (one dropout mask; batch-norm
            running statistics are not updated), so a penalised training step ``loss.mean() + scale * d.abs().mean()``
            needs no second forward pass.
        params: ``wrt="params"`` only: the parameters to differentiate — names of parameters or submodules, a
            predicate ``f(name) -> bool``, or a submodule
            ([`select_parameters`][lamda_ext.params.select_parameters]); the others are held fixed. None: every
            parameter.
        memory_budget: bytes of working memory the call may use beyond the model and its inputs, or ``"auto"``: half
            of the free memory of x's device ([`resolve_budget`][lamda_ext.memory.resolve_budget]). The taylor/fused
            backends split the call into chunks of directions and — for models with no module in training mode — of
            points so that their peak stays within it ([`plan`][lamda_ext.derivs.plan] shows the split); the numbers
            are those of the unsplit call. A differentiable call (grad mode on and a parameter, x or the directions
            requiring grad) keeps its autograd graph when that fits, else its backward pass recomputes the chunks one
            at a time. The references (autograd, func) run unsplit.

    Returns:
        ``derivs``, or ``(derivs, loss)`` with ``return_loss``. ``derivs``: ``[B, K, order]`` for input directions,
        ``[K, order]`` for ``wrt="params"``; ``loss``: ``[B]``. Both in x's floating dtype (for a mapping: the
        embeddings' or pixel values' dtype) on x's device, and differentiable with respect to the model parameters
        when grad mode is on (under ``torch.inference_mode()`` they are computed outside it and detached).

    Raises:
        ValueError: bad input, before any derivative is taken. One plain forward pass (no grad, RNG and batch-norm
            statistics restored, on a copy of x) checks that x fits the model, that the output is one tensor
            ``[B, ...]`` and that the targets fit it (labels in range, MSE targets of the output's shape, a callable
            loss returning ``[B]``). A ``memory_budget`` too small for one point and one direction is refused with the
            smallest budget that works.
        TypeError: arguments of the wrong type (a non-float x, directions of another dtype, an int-like K that is not
            an int).
        NotImplementedError: an op without a Taylor rule (``backend="taylor"``/``"fused"``; ``"auto"`` falls back
            instead).

    Example:
        >>> import torch, lamda_ext
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        >>> x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
        >>> d = lamda_ext.directional_derivs(model, x, y, order=4, directions=2)
        >>> tuple(d.shape), d.dtype
        ((5, 2, 4), torch.float64)
        >>> u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0), shared=True)  # [K, *S]
        >>> taylor = lamda_ext.directional_derivs(model, x, y, order=4, directions=u, backend="taylor")
        >>> torch.allclose(taylor, lamda_ext.directional_derivs(model, x, y, order=4, directions=u, backend="autograd"))
        True
        >>> tuple(lamda_ext.directional_derivs(model, x, y, order=3, directions=2, wrt="params").shape)
        (2, 3)
    """
    job, name, fallback, forward_bytes = _prepare(model, x, y, order, directions, loss, wrt, backend, generator,
                                                  label_smoothing, params)
    budget = resolve_budget(memory_budget, job.x.device)
    with frozen_batchnorm_stats(model), heap_reuse(job.x.device):
        derivs, loss0 = _run(job, name, fallback, budget, forward_bytes)
    return (derivs, loss0) if return_loss else derivs


def _run(job: Job, name: str, fallback: bool, budget: int, forward_bytes: int):
    if not fallback:
        return _execute(job, name, budget, forward_bytes)
    replay = RngReplay(job.x.device)
    try:
        return _execute(job, name, budget, forward_bytes)
    except NotImplementedError as err:
        warnings.warn(f"backend='auto': {err} Falling back to backend='autograd'.", RuntimeWarning, stacklevel=4)
        replay.reset()
        ref = backends.BACKENDS["autograd"]
        fn = ref.input_derivs if job.wrt == "input" else ref.params_derivs
        job.fn = fn
        return job.run()


@outside_inference_mode
def plan(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, *, order: int = 6,
         directions: Union[int, torch.Tensor] = 15, loss: LossSpec = "cross_entropy", wrt: str = "input",
         backend: str = "auto", generator: Optional[torch.Generator] = None, label_smoothing: float = 0.0,
         params=None, memory_budget: Budget = "auto") -> Plan:
    """How [`directional_derivs`][lamda_ext.derivs.directional_derivs] with the same arguments splits its work.

    No derivative is returned. The taylor/fused backends measure the working memory and FLOPs of the call's first
    chunks — one point (or all points when they cannot be split) with one, then two directions — and fit a cost
    model linear in points and directions; the plan is the largest chunks whose predicted peak stays within the
    budget. The cost model is remembered, so the call that follows plans without measuring again.

    Args:
        model: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        x: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        y: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        order: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        directions: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        loss: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        wrt: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        backend: ``"taylor"``, ``"fused"`` or ``"auto"`` (the references run unsplit and have no plan).
        generator: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        label_smoothing: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        params: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        memory_budget: as for [`directional_derivs`][lamda_ext.derivs.directional_derivs].

    Returns:
        A [`Plan`][lamda_ext.planning.Plan]: ``chunks`` (points and directions of each), ``mode`` (``"measure"``,
        ``"graph"`` or ``"recompute"``, from the current grad mode), ``predicted_peak`` (bytes of working memory),
        ``forward_passes`` (matrix-product/convolution FLOPs over those of one plain forward pass of all points),
        ``budget``. ``print(plan)`` gives a summary.

    Raises:
        ValueError: the arguments [`directional_derivs`][lamda_ext.derivs.directional_derivs] refuses, a reference
            backend, or a budget too small for one point and one direction.

    Example:
        >>> import torch, lamda_ext
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
        >>> p = lamda_ext.plan(model, x, y, order=4, directions=3, memory_budget=2**30)
        >>> p.n_chunks, p.mode          # grad mode is on: the call would keep its graph
        (1, 'graph')
        >>> with torch.no_grad():
        ...     lamda_ext.plan(model, x, y, order=4, directions=3, memory_budget=2**30).mode
        'measure'
    """
    job, name, _, forward_bytes = _prepare(model, x, y, order, directions, loss, wrt, backend, generator,
                                           label_smoothing, params)
    budget = resolve_budget(memory_budget, job.x.device)
    if name not in ("taylor", "fused"):
        raise ValueError(f"backend={backend!r} runs unsplit (one direction at a time); plans are made for the "
                         "taylor and fused backends")
    with frozen_batchnorm_stats(model):
        return _planned(job, name, budget, forward_bytes, measure=True)[0]
