"""Hessian-vector products of a model's loss, by forward-over-reverse.

``hvp`` is ``torch.func.jvp`` of ``torch.func.grad`` of a
``torch.func.functional_call`` of the model, batched over K directions with
``torch.func.vmap``. The reference HVPs (reverse-over-reverse, finite
differences) live in :mod:`lamda_ext.hvp_reference`.

Conventions (shared with :mod:`lamda_ext.hvp_reference`):

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
  (:mod:`lamda_ext._hvp_ops`); the values are those of the native op.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from ._hvp_ops import ForwardOverReverseOps
from ._state import RngReplay, outside_inference_mode
from .checks import check_hvp_inputs, check_int, check_reduction, check_v, params_and_v
from .gauss_newton import gauss_newton_product
from .linearization import default_chunk, linearize_map, linearized_nbytes
from .loss_curvature import check_curvature
from .losses import LossSpec, resolve_loss
from .params import Bound, flatten_params, functional_state, model_loss_fn, split_bound, unflatten_params

__all__ = ["hvp", "params_hvp", "input_hvp", "loss_hvp", "LinearizedHVP"]


def _apply_tangent_map(tangent_map: Callable, v: torch.Tensor, unpack: Callable, pack: Callable,
                       chunk_size: int | None, start: RngReplay | None = None) -> torch.Tensor:
    """``tangent_map`` applied to each row of ``v`` ``[K, ...]``, ``chunk_size`` rows per vmapped call."""
    def one(vec: torch.Tensor) -> torch.Tensor:
        if start is not None:
            start.reset()
        return pack(tangent_map(unpack(vec)))

    chunk = default_chunk(v.device) if chunk_size is None else chunk_size
    if chunk == 1 or v.shape[0] == 1:
        return torch.stack([one(vec) for vec in v])
    return vmap(one, chunk_size=chunk, randomness="same")(v)


def _forward_over_reverse(f: Callable, primal, v: torch.Tensor, batched: bool, unpack: Callable, pack: Callable,
                          chunk_size: int | None) -> torch.Tensor:
    """``jvp`` of the gradient map of the scalar function ``f`` (a :class:`~lamda_ext.params.Bound` or a plain
    function of ``primal``) at ``primal`` along one direction or each row of ``v``.

    For K > 1 directions ``torch.func.linearize`` evaluates the forward-over-reverse pass once and
    keeps its tangent part as a graph; that graph is then vmapped over the directions (``chunk_size``
    at a time, see :func:`lamda_ext.linearization.default_chunk`), so the primal forward and backward are
    not repeated per direction or per chunk. ``unpack`` turns a direction into the tangent pytree, ``pack`` the
    resulting tangent pytree into the output layout.
    """
    fn, args = split_bound(f)
    g = grad(fn)
    if not batched or v.shape[0] == 1:
        vs = v if not batched else v[0]
        with ForwardOverReverseOps():
            out = pack(jvp(lambda p: g(p, *args), (primal,), (unpack(vs),))[1])
        return out if not batched else out.unsqueeze(0)
    # random ops (dropout) stay in the traced graph and draw again on every replay: each replay
    # restarts the generator where the trace started, so every direction sees the mask that a
    # single-direction HVP would draw, and the generator ends one draw on, as after that HVP
    start = RngReplay(v.device)
    tangent_map = linearize_map(g, primal, args)[1]
    return _apply_tangent_map(tangent_map, v, unpack, pack, chunk_size, start)


def loss_hvp(f: Callable, primal: dict[str, torch.Tensor], v: torch.Tensor,
             chunk_size: int | None = None) -> torch.Tensor:
    """Forward-over-reverse HVP of a scalar function ``f(params dict)`` (best a :class:`~lamda_ext.params.Bound`)
    at ``primal``; v ``[P]`` or ``[K, P]`` (parameters flattened in ``primal``'s order), the result has the shape
    of v."""
    primal = {k: t.detach() for k, t in primal.items()}
    return _forward_over_reverse(f, primal, v, v.dim() == 2, lambda vec: unflatten_params(vec, primal),
                                 flatten_params, chunk_size)


class LinearizedHVP:
    """The forward-over-reverse HVP of one scalar function ``f(params dict)`` at ``primal``, linearised once
    (``f`` best a :class:`~lamda_ext.params.Bound`: see :func:`lamda_ext.linearization.linearize_map`).

    Construction traces the forward-over-reverse pass; the first call evaluates its primal part once
    and keeps what the tangent pass needs (the activations and backward intermediates, :attr:`nbytes`
    bytes); every call replays only the tangent part, for one direction ``[P]`` or each row of ``[K, P]`` (``chunk_size`` rows per
    vmapped replay; None = one at a time on the CPU, all at once elsewhere). For deterministic
    functions only: random ops would draw again on every replay.
    """

    def __init__(self, f: Callable, primal: dict[str, torch.Tensor]):
        self.primal = {k: t.detach() for k, t in primal.items()}
        with torch.enable_grad():
            fn, args = split_bound(f)
            self._map = linearize_map(grad(fn), self.primal, args)[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the kept intermediates (complete once the first call has folded the primal part)."""
        return linearized_nbytes(self._map)

    def __call__(self, v: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """``H v`` for v ``[P]`` or ``[K, P]`` (same shape out, detached)."""
        batched = v.dim() == 2
        V = v if batched else v.unsqueeze(0)
        with torch.enable_grad():
            out = _apply_tangent_map(self._map, V, lambda vec: unflatten_params(vec, self.primal),
                                     flatten_params, chunk_size).detach()
        return out if batched else out[0]


def params_hvp(model, x, y, v, loss_fn, params: dict[str, torch.Tensor],
                chunk_size: int | None = None) -> torch.Tensor:
    """Forward-over-reverse HVP w.r.t. ``params`` (a name → tensor dict); v ``[P]`` or ``[K, P]``."""
    return loss_hvp(model_loss_fn(model, x, y, loss_fn, list(params)), params, v, chunk_size)


def input_hvp(model, x, y, v, loss_fn, chunk_size: int | None = None) -> torch.Tensor:
    """Per-sample input-space HVPs; v shaped like x or ``[K, *x.shape]``."""
    def total(xx: torch.Tensor, state, y) -> torch.Tensor:
        return loss_fn(functional_call(model, (state,), (xx,)), y).sum()

    f = Bound(total, functional_state(model, set()), y)
    return _forward_over_reverse(f, x.detach(), v, v.dim() == x.dim() + 1, lambda vec: vec, lambda out: out,
                                 chunk_size)


@outside_inference_mode
def hvp(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, *, loss: LossSpec = "cross_entropy",
        wrt: str = "params", label_smoothing: float = 0.0, chunk_size: int | None = None,
        reduction: str = "mean", curvature: str = "hessian", mc_samples: int = 1, mc_seed: int = 0) -> torch.Tensor:
    """Hessian-vector product(s) of the loss by forward-over-reverse (or products with another curvature).

    Args:
        model: any ``nn.Module`` (dropout/batch norm run in the model's current mode).
        x: inputs ``[B, ...]``; y: targets (``[B]`` class labels for cross-entropy).
        v: ``wrt="params"``: ``[P]`` or ``[K, P]`` (P = all parameters requiring grad, flattened in
            ``model.parameters()`` order). ``wrt="input"``: ``[B, ...]`` like x, or ``[K, B, ...]``.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, y) -> [B]``.
        label_smoothing: for cross-entropy.
        chunk_size: directions per vmapped tangent evaluation (K directions share one primal pass
            either way); None = one at a time on the CPU, all at once elsewhere.
        reduction: ``wrt="params"`` only: ``"mean"`` (the Hessian of the batch-mean loss) or ``"sum"``
            (of the summed loss, B times the mean's).
        curvature: ``wrt="params"`` only: ``"hessian"`` (default), or ``"ggn"``, ``"fisher"``, ``"fisher_mc"``,
            ``"empirical_fisher"``: ``Jᵀ M J v`` by a Jacobian–vector / vector–Jacobian pair
            (:mod:`lamda_ext.gauss_newton`, :mod:`lamda_ext.loss_curvature`; the model must be deterministic:
            eval mode). ``"fisher"``/``"fisher_mc"`` need ``loss="cross_entropy"`` or ``"mse"``.
        mc_samples, mc_seed: ``curvature="fisher_mc"``: sampled targets per sample and their seed
            (:func:`lamda_ext.loss_curvature.sample_targets` with batch index 0).

    Returns:
        ``H v`` with the shape of ``v``. For ``wrt="params"`` H is the curvature of the batch-mean (or summed) loss;
        for ``wrt="input"`` entry b is ``H_b v_b`` (Hessian of sample b's loss w.r.t. ``x_b``).
        The result is detached (not differentiable w.r.t. the parameters).
    """
    y = check_hvp_inputs(model, x, y, loss, wrt)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    check_reduction(reduction)
    check_curvature(curvature, loss, loss_fn_form=False)
    loss_fn = resolve_loss(loss, label_smoothing)
    if wrt == "params":
        params, _ = params_and_v(model, v)
        if curvature != "hessian":
            from .hessian.data import check_deterministic   # the hessian package imports this module
            check_deterministic(model, what=f"curvature={curvature!r}")
            out = gauss_newton_product(model, x, y, v, loss, curvature, params, label_smoothing=label_smoothing,
                                       mc_samples=check_int(mc_samples, "mc_samples"), mc_seed=mc_seed,
                                       chunk=chunk_size)
        else:
            with torch.enable_grad():
                out = params_hvp(model, x, y, v, loss_fn, params, chunk_size).detach()
        return out * x.shape[0] if reduction == "sum" else out
    if curvature != "hessian":
        raise NotImplementedError(f"curvature={curvature!r} is defined for wrt='params'; input-space products "
                                  "are Hessian-vector products")
    if reduction != "mean":
        raise ValueError("reduction applies to wrt='params'; input-space HVPs are per sample (H_b v_b), "
                         "leave reduction='mean'")
    check_v(v, tuple(x.shape), x, "inputs x")
    with torch.enable_grad():
        return input_hvp(model, x, y, v, loss_fn, chunk_size).detach()
