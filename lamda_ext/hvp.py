"""Hessian-vector products of a model's loss, by forward-over-reverse.

``hvp`` is ``torch.func.jvp`` of ``torch.func.grad`` of a
``torch.func.functional_call`` of the model, batched over K directions with
``torch.func.vmap``. The reference HVPs (reverse-over-reverse, finite
differences) live in [`lamda_ext.hvp_reference`][lamda_ext.hvp_reference].

Conventions (shared with [`lamda_ext.hvp_reference`][lamda_ext.hvp_reference]):

* ``wrt="params"``: the loss is the batch mean of the per-sample loss; the
  parameter vector (length P) is every parameter with ``requires_grad=True``,
  flattened and concatenated in ``model.parameters()`` order (parameters that
  do not require grad are held fixed and are not part of P). ``v`` is ``[P]``
  or ``[K, P]``; the result has the shape of ``v``.
* ``wrt="input"``: per-sample input-space HVPs. ``v`` is shaped like ``x``
  (``[B, ...]``) or ``[K, B, ...]``; entry b of the result is ``H_b v_b`` with
  ``H_b`` the Hessian of the per-sample loss of sample b w.r.t. ``x_b``. (For
  models whose samples do not interact — anything but train-mode batch norm —
  this is the HVP of the summed loss.)
* Nothing is mutated: parameters and buffers go through ``functional_call``;
  a batch-norm module in train mode is called without its running statistics
  (it normalises with the batch statistics, exactly as in the forward pass,
  but its running buffers are not updated).
* Dropout draws one mask, shared by all K directions: the one a single-direction
  ``hvp`` draws from the same generator state.
* ReLU runs in a formulation with a cheaper forward-over-reverse derivative
  (`lamda_ext._hvp_ops`); the values are those of the native op.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from ._hvp_ops import ForwardOverReverseOps
from ._state import RngReplay, fresh_input, outside_inference_mode
from .batches import prepare
from .checks import check_forward, check_hvp_inputs, check_int, check_reduction, check_v, params_and_v
from .gauss_newton import gauss_newton_product
from .linearization import default_chunk, linearized_nbytes, replays, tangent_map
from .loss_curvature import check_curvature
from .losses import LossSpec, resolve_loss
from .memory import Budget, format_bytes, heap_reuse, resolve_budget
from .params import flatten_params, functional_state, model_loss_fn, unflatten_params
from .planning import SAFETY, choose_chunks
from .routing import torch_jvp_warning_filtered

__all__ = ["hvp", "hvp_chunks", "params_hvp", "input_hvp", "loss_hvp", "LinearizedHVP"]


# Coarse memory model of a forward-over-reverse HVP, in units of the plain forward pass's allocations per point
# (F) and the parameters' bytes (Pb): the linearised primal keeps about KEEP·F per point; each direction's
# tangent pass takes about ROW_PARAMS·Pb + ROW_POINT·F per point.
HVP_KEEP, HVP_ROW_PARAMS, HVP_ROW_POINT = 4.0, 6.0, 2.0


def hvp_chunks(n_points: int, rows: int, point_bytes: float, param_bytes: float, budget: int,
               splittable: bool) -> tuple[int, int]:
    """Points and directions per evaluation within ``budget``.

    The HVP's coarse memory model stays within ``budget`` (points only when ``splittable``); ValueError naming the
    smallest budget that works otherwise.
    """
    def size(b, k):
        return b * point_bytes * (HVP_KEEP + HVP_ROW_POINT * k) + k * HVP_ROW_PARAMS * param_bytes

    b, k = choose_chunks(n_points, rows, splittable, SAFETY * budget, size)
    if b == 0:
        need = size(1 if splittable else n_points, 1) / SAFETY
        raise ValueError(f"memory_budget={budget} bytes ({format_bytes(budget)}) is too small for one Hessian-vector "
                         f"product of {'one point' if splittable else f'the {n_points} points'}; the smallest budget "
                         f"that works is about {int(need) + 1} bytes ({format_bytes(need)})")
    return b, k


def _splittable(model: nn.Module, x: torch.Tensor, y) -> bool:
    """Points can be evaluated apart: no module in training mode and targets one row per point."""
    return not any(m.training for m in model.modules()) and (
        y is None or isinstance(y, torch.Tensor) and y.dim() >= 1 and y.shape[0] == x.shape[0])


def _apply_tangent_map(tmap: Callable, v: torch.Tensor, unpack: Callable, pack: Callable,
                       chunk_size: int | None, start: RngReplay | None = None) -> torch.Tensor:
    """``tmap`` applied to each row of ``v`` ``[K, ...]``, ``chunk_size`` rows per vmapped call."""
    def one(vec: torch.Tensor) -> torch.Tensor:
        if start is not None:
            start.reset()
        return pack(tmap(unpack(vec)))

    chunk = default_chunk(v.device) if chunk_size is None else chunk_size
    if chunk == 1 or v.shape[0] == 1:
        return torch.stack([one(vec) for vec in v])
    return vmap(one, chunk_size=chunk, randomness="same")(v)


def _forward_over_reverse(g: Callable, primal, v: torch.Tensor, batched: bool, unpack: Callable, pack: Callable,
                          chunk_size: int | None) -> torch.Tensor:
    """``jvp`` of the gradient map ``g`` at ``primal`` along one direction or each row of ``v``.

    For K > 1 directions [`lamda_ext.linearize.linearize`][lamda_ext.linearize.linearize] traces the
    forward-over-reverse pass once, evaluates its primal part once and keeps its tangent part as a graph; that graph is
    then vmapped over the directions (``chunk_size`` at a time, see
    [`lamda_ext.linearization.default_chunk`][lamda_ext.linearization.default_chunk]), so the primal forward and
    backward are not repeated per direction or per chunk. In-place ops on values of the point (``out += identity``, a
    model that changes its input) are replayed in their out-of-place form. Where no consistent replay is found (see
    [`lamda_ext.linearize.linearize`][lamda_ext.linearize.linearize]) every direction takes its own ``jvp``. ``unpack``
    turns a direction into the tangent pytree, ``pack`` the resulting tangent pytree into the output layout.
    """
    if not batched or v.shape[0] == 1:
        vs = v if not batched else v[0]
        with ForwardOverReverseOps(), torch_jvp_warning_filtered():
            out = pack(jvp(g, (primal,), (unpack(vs),))[1])
        return out if not batched else out.unsqueeze(0)
    # random ops (dropout) stay in the traced graph and draw again on every replay: each replay
    # restarts the generator where the trace started, so every direction sees the mask that a
    # single-direction HVP would draw, and the generator ends one draw on, as after that HVP
    start = RngReplay(v.device)
    tangent = tangent_map(g, primal)
    return _apply_tangent_map(tangent, v, unpack, pack, chunk_size if replays(tangent) else 1, start)


def loss_hvp(f: Callable, primal: dict[str, torch.Tensor], v: torch.Tensor,
             chunk_size: int | None = None) -> torch.Tensor:
    """Forward-over-reverse HVP of a scalar function ``f(params dict)`` at ``primal``.

    ``v``: ``[P]`` or ``[K, P]`` (parameters flattened in ``primal``'s order), the result has the shape of v.
    """
    primal = {k: t.detach() for k, t in primal.items()}
    return _forward_over_reverse(grad(f), primal, v, v.dim() == 2, lambda vec: unflatten_params(vec, primal),
                                 flatten_params, chunk_size)


class LinearizedHVP:
    """The forward-over-reverse HVP of one scalar function ``f(params dict)`` at ``primal``, linearised once.

    Construction traces the forward-over-reverse pass
    ([`lamda_ext.linearize.linearize`][lamda_ext.linearize.linearize]), evaluates its primal part once and keeps what
    the tangent pass needs (the activations and backward intermediates, [`nbytes`][lamda_ext.hvp.LinearizedHVP.nbytes]
    bytes); every call replays only the tangent part, for one direction ``[P]`` or each row of ``[K, P]``
    (``chunk_size`` rows per vmapped replay; None = one at a time on the CPU, all at once elsewhere). In-place ops on
    values of the point (``h += r``, ``relu_``, a model that changes its input) replay in their out-of-place form.
    Random ops (dropout) draw again on every replay: with ``start`` (the random-number state taken before
    construction) every direction restarts from it and sees the masks of the construction, as
    [`loss_hvp`][lamda_ext.hvp.loss_hvp] does; without it, for deterministic functions only. Where no consistent
    replay is found ([`lamda_ext.linearize.linearize`][lamda_ext.linearize.linearize];
    [`replays`][lamda_ext.hvp.LinearizedHVP.replays] False) nothing is kept and every direction takes its own ``jvp``.
    """

    def __init__(self, f: Callable, primal: dict[str, torch.Tensor], start: RngReplay | None = None):
        self.primal = {k: t.detach() for k, t in primal.items()}
        self._start = start
        with torch.enable_grad():
            self._map = tangent_map(grad(f), self.primal)

    @property
    def replays(self) -> bool:
        """Whether calls replay the kept tangent graph (else every direction runs its own ``jvp``)."""
        return replays(self._map)

    @property
    def nbytes(self) -> int:
        """Bytes of the kept intermediates (0 when nothing is kept; the parameters themselves are not counted)."""
        return linearized_nbytes(self._map, {t.untyped_storage().data_ptr() for t in self.primal.values()})

    def __call__(self, v: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """``H v`` for v ``[P]`` or ``[K, P]`` (same shape out, detached)."""
        batched = v.dim() == 2
        V = v if batched else v.unsqueeze(0)
        with torch.enable_grad():
            out = _apply_tangent_map(self._map, V, lambda vec: unflatten_params(vec, self.primal),
                                     flatten_params, chunk_size if self.replays else 1, self._start).detach()
        return out if batched else out[0]


def params_hvp(model, x, y, v, loss_fn, params: dict[str, torch.Tensor],
                chunk_size: int | None = None) -> torch.Tensor:
    """Forward-over-reverse HVP w.r.t. ``params`` (a name → tensor dict); v ``[P]`` or ``[K, P]``."""
    return loss_hvp(model_loss_fn(model, x, y, loss_fn, list(params)), params, v, chunk_size)


def input_hvp(model, x, y, v, loss_fn, chunk_size: int | None = None) -> torch.Tensor:
    """Per-sample input-space HVPs.

    ``v`` is shaped like x or ``[K, *x.shape]``. The model runs on a copy of the differentiated input (it may change its
    input in place; x stays as the caller passed it).
    """
    state = functional_state(model, set())

    def total(xx: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, (state,), (fresh_input(xx),)), y).sum()

    return _forward_over_reverse(grad(total), x.detach(), v, v.dim() == x.dim() + 1, lambda vec: vec,
                                 lambda out: out, chunk_size)


@outside_inference_mode
def hvp(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, *, loss: LossSpec = "cross_entropy",
        wrt: str = "params", label_smoothing: float = 0.0, chunk_size: int | None = None,
        reduction: str = "mean", params=None, memory_budget: Budget = "auto", curvature: str = "hessian",
        mc_samples: int = 1, mc_seed: int = 0) -> torch.Tensor:
    """Hessian-vector product(s) of the loss by forward-over-reverse (or products with another curvature).

    Args:
        model: any ``nn.Module`` (dropout/batch norm run in the model's current mode).
        x: inputs ``[B, ...]`` (floating point, the model's dtype and device), or a mapping of the model's keyword
            arguments ([`lamda_ext.batches`][lamda_ext.batches]).
        y: targets (``[B]`` int64 class labels for cross-entropy; for MSE the output's shape); with a mapping, None =
            the model's own loss from ``x["labels"]`` per sample.
        v: the directions, in the dtype and on the device of the parameters (``wrt="params"``) or of x.
            ``wrt="params"``: ``[P]`` or ``[K, P]`` (P = all parameters requiring grad — or those ``params``
            selects — flattened in ``model.parameters()`` order). ``wrt="input"``: ``[B, ...]`` like x, or
            ``[K, B, ...]``; ``wrt="inputs_embeds"``/``"pixel_values"`` likewise, shaped like the batch's input
            embeddings ``[B, T, d]`` / pixel values (positions with ``attention_mask`` 0 are held fixed: zero in
            ``v`` and in the result).
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, y) -> [B]``.
        wrt: ``"params"`` (the Hessian of the batch loss in parameter space), ``"input"`` (per-sample Hessians in
            input space), or ``"inputs_embeds"``/``"pixel_values"`` with a mapping x.
        label_smoothing: for cross-entropy.
        chunk_size: directions per vmapped tangent evaluation (K directions share one primal pass either way);
            None = one at a time on the CPU, all at once elsewhere, at most as many as ``memory_budget`` allows.
        reduction: ``wrt="params"`` only: ``"mean"`` (the Hessian of the batch-mean loss) or ``"sum"`` (of the
            summed loss, B times the mean's).
        params: ``wrt="params"`` only: the parameters to differentiate (names of parameters or submodules, a
            predicate ``f(name) -> bool`` or a submodule; [`select_parameters`][lamda_ext.params.select_parameters]).
        memory_budget: bytes the call may use beyond the model and its inputs, or ``"auto"`` (half of the free
            memory of x's device). From the plain forward pass's allocations and the parameters' size
            ([`hvp_chunks`][lamda_ext.hvp.hvp_chunks]) the call picks how many directions one vmapped evaluation
            takes and — for models with no module in training mode — evaluates the points in chunks (the batch-mean
            Hessian is the point-weighted mean of the chunks'); the numbers are those of the unsplit call.
        curvature: ``wrt="params"`` only: ``"hessian"`` (default), or ``"ggn"``, ``"fisher"``, ``"fisher_mc"``,
            ``"empirical_fisher"``: ``Jᵀ M J v`` by a Jacobian–vector / vector–Jacobian pair over the whole batch
            ([`lamda_ext.gauss_newton`][lamda_ext.gauss_newton], [`lamda_ext.loss_curvature`][lamda_ext.loss_curvature];
            the model must be deterministic: eval mode). ``"fisher"``/``"fisher_mc"`` need ``loss="cross_entropy"``
            or ``"mse"``.
        mc_samples: ``curvature="fisher_mc"``: sampled targets per sample.
        mc_seed: ``curvature="fisher_mc"``: their seed
            ([`sample_targets`][lamda_ext.loss_curvature.sample_targets] with batch index 0).

    Returns:
        ``H v`` with the shape, dtype and device of ``v``. For ``wrt="params"`` H is the curvature of the batch-mean
        (or summed) loss; for ``wrt="input"`` entry b is ``H_b v_b`` (Hessian of sample b's loss w.r.t. ``x_b``).
        The result is detached (not differentiable w.r.t. the parameters).

    Raises:
        ValueError: ``v`` of the wrong shape (the message gives the expected one), bad inputs or targets, an option
            that does not apply to ``wrt``, a ``memory_budget`` too small for one product.
        NotImplementedError: a curvature other than the Hessian in input space.

    Example:
        >>> import torch, lamda_ext
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
        >>> v = torch.randn(2, lamda_ext.num_parameters(model), dtype=torch.float64)   # [K, P]
        >>> hv = lamda_ext.hvp(model, x, y, v)
        >>> tuple(hv.shape)
        (2, 26)
        >>> torch.allclose(hv[0], lamda_ext.hvp(model, x, y, v[0]))                      # one direction [P]
        True
        >>> torch.allclose(v[1] @ hv[0], v[0] @ hv[1])                                 # H is symmetric
        True
        >>> tuple(lamda_ext.hvp(model, x, y, torch.randn(6, 3, dtype=torch.float64), wrt="input").shape)
        (6, 3)
    """
    prob = prepare(model, x, y, loss=loss, wrt=wrt, params=params, label_smoothing=label_smoothing)
    model, x, y, loss, wrt = prob.model, prob.x, prob.y, prob.loss, prob.wrt
    budget = resolve_budget(memory_budget, x.device)
    y = check_hvp_inputs(model, x, y, loss, wrt, forward=False)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    check_reduction(reduction)
    check_curvature(curvature, loss, loss_fn_form=False)
    if wrt != "params" and curvature != "hessian":
        raise NotImplementedError(f"curvature={curvature!r} is defined for wrt='params'; input-space products "
                                  "are Hessian-vector products")
    if wrt != "params" and reduction != "mean":
        raise ValueError("reduction applies to wrt='params'; input-space HVPs are per sample (H_b v_b), "
                         "leave reduction='mean'")
    forward_bytes = check_forward(model, x, y, loss)
    loss_fn = resolve_loss(loss, label_smoothing)
    if wrt == "params":
        params, batched = params_and_v(model, v)
        if curvature != "hessian":
            out = _curvature_product(model, x, y, v, loss, curvature, params, label_smoothing, chunk_size,
                                     mc_samples, mc_seed)
            return out * x.shape[0] if reduction == "sum" else out
    else:
        batched = check_v(v, tuple(x.shape), x, "inputs x")
        params = {}
        v = prob.restrict(v)
    rows = v.shape[0] if batched else 1
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    splittable = _splittable(model, x, y) and (prob.source is None or wrt == "params")
    b, k = hvp_chunks(x.shape[0], rows, forward_bytes / x.shape[0], param_bytes, budget, splittable)
    chunk = chunk_size if chunk_size is not None else (None if k >= rows else k)
    with torch.enable_grad(), heap_reuse(x.device):
        if wrt == "params":
            out = _params_hvp_points(model, x, y, v, loss_fn, params, chunk, b)
            return out * x.shape[0] if reduction == "sum" else out
        return prob.restrict(_input_hvp_points(model, x, y, v, loss_fn, chunk, b, batched))


def _curvature_product(model, x, y, v, loss, curvature, params, label_smoothing, chunk, mc_samples, mc_seed):
    """``Jᵀ M J v`` of the whole batch (`lamda_ext.gauss_newton.gauss_newton_product`)."""
    from .hessian.data import check_deterministic   # the hessian package imports this module
    check_deterministic(model, what=f"curvature={curvature!r}")
    return gauss_newton_product(model, x, y, v, loss, curvature, params, label_smoothing=label_smoothing,
                                mc_samples=check_int(mc_samples, "mc_samples"), mc_seed=mc_seed, chunk=chunk)


def _point_slices(n: int, b: int):
    return [(i, min(i + b, n)) for i in range(0, n, b)]


def _params_hvp_points(model, x, y, v, loss_fn, params, chunk, b) -> torch.Tensor:
    """The batch-mean HVP as the point-weighted mean of chunks of ``b`` points."""
    n = x.shape[0]
    if b >= n:
        return params_hvp(model, x, y, v, loss_fn, params, chunk).detach()
    out = None
    for lo, hi in _point_slices(n, b):
        part = params_hvp(model, x[lo:hi], y[lo:hi] if isinstance(y, torch.Tensor) else y, v, loss_fn, params,
                          chunk).detach() * ((hi - lo) / n)
        out = part if out is None else out + part
    return out


def _input_hvp_points(model, x, y, v, loss_fn, chunk, b, batched) -> torch.Tensor:
    """Per-sample input HVPs, chunks of ``b`` points side by side."""
    n = x.shape[0]
    if b >= n:
        return input_hvp(model, x, y, v, loss_fn, chunk).detach()
    dim = 1 if batched else 0
    parts = [input_hvp(model, x[lo:hi], y[lo:hi] if isinstance(y, torch.Tensor) else y, v.narrow(dim, lo, hi - lo),
                       loss_fn, chunk).detach() for lo, hi in _point_slices(n, b)]
    return torch.cat(parts, dim=dim)
