"""``directional_derivs``: batched n-th directional derivatives of the loss (DESIGN.md §1–2)."""
from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import nn

from . import backends
from .batches import prepare
from ._state import RngReplay, frozen_batchnorm_stats, outside_inference_mode
from .checks import check_direction_tensor, check_forward, check_model_and_x, check_order, check_wrt
from .directions import num_parameters, random_directions, random_param_directions
from .losses import LOSS_NAMES, LossSpec, check_targets, resolve_loss

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


@outside_inference_mode
def directional_derivs(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, *, order: int = 6,
                       directions: Union[int, torch.Tensor] = 15, loss: LossSpec = "cross_entropy",
                       wrt: str = "input", backend: str = "auto", generator: Optional[torch.Generator] = None,
                       label_smoothing: float = 0.0, return_loss: bool = False, params=None):
    """n-th directional derivatives of the loss, n = 1..order.

    Args:
        model: the network; its mode (train/eval) is respected, its state is left unchanged.
        x: inputs ``[B, *S]`` (floating point, finite, same dtype/device as the model), or a mapping of the model's
            keyword arguments (a dict or Hugging Face ``BatchEncoding``; :mod:`lamda_ext.batches`).
        y: targets: class labels ``[B]`` for cross-entropy (-100: a sample that counts 0, as in
            ``F.cross_entropy``), a tensor like the output for MSE. With a mapping ``x``, None means the model's
            own loss from ``x["labels"]`` per sample (causal LMs: shifted, -100 excluded, the mean over each
            sample's counted tokens; :mod:`lamda_ext.batches` says how these relate to the model's ``loss``).
        order: highest order N (1..32 for taylor/fused/auto, 1..16 for autograd, 1..12 for func).
        directions: K random directions (Gaussian, unit norm per point over all input dims —
            or over all parameters for ``wrt="params"`` — drawn from ``generator``), or an explicit
            tensor used as given: ``wrt="input"``: ``[K, *x.shape]`` (one direction per point and k) or
            ``[K, *x.shape[1:]]`` (direction k shared by every point; broadcast over the batch without
            copying it B times, the same numbers as passing it expanded to ``[K, *x.shape]``);
            ``wrt="inputs_embeds"``: ``[K, B, T, d]`` or ``[K, T, d]`` (positions with ``attention_mask`` 0 get
            zero direction; random ones are unit over each point's counted positions);
            ``wrt="params"``: ``[K, P]`` (P: the parameters ``params`` selects). Draw shared ones with
            ``random_directions(x, K, g, shared=True)``.
        loss: ``"cross_entropy"`` (with ``label_smoothing``), ``"mse"`` (mean over non-batch dims) or a
            callable ``(output, y) -> per-sample loss [B]``.
        wrt: ``"inputs_embeds"`` / ``"pixel_values"`` (a mapping x: the embeddings of its ``input_ids`` / its
            pixel values) as ``"input"``;
            ``"input"`` → ``[B, K, order]`` with entry ``[b, k, n-1] = d^n/dt^n loss_b`` at
            ``x + t·u_k`` (all points move together, each along its own ``u_{k,b}`` or the shared ``u_k``; without
            batch-coupled layers this is the per-sample derivative at ``x_b + t·u_{k,b}``).
            ``"params"`` → ``[K, order]`` derivatives of the batch-mean loss at ``θ + t·v_k``.
        backend: ``"autograd"`` (reference), ``"func"``, ``"taylor"``, ``"fused"`` or ``"auto"`` (fused when
            the extension is built, else taylor; an op without a Taylor rule falls back to autograd with a
            warning naming the op).
        generator: ``torch.Generator`` for the random directions.
        label_smoothing: for cross-entropy, as in ``torch.nn.functional.cross_entropy``.
        return_loss: also return the per-sample loss at t = 0, ``[B]``, from the same forward pass
            (one dropout mask; batch-norm running statistics are not updated), so a penalised training
            step ``loss.mean() + scale * d.abs().mean()`` needs no second forward pass.
        params: ``wrt="params"`` only: the parameters to differentiate — names of parameters or submodules, a
            predicate ``f(name) -> bool``, or a submodule (:func:`lamda_ext.params.select_parameters`); the
            others are held fixed. None: every parameter.

    Returns ``derivs`` or ``(derivs, loss)``; both are differentiable with respect to the model
    parameters when grad mode is on (under ``torch.inference_mode()`` they are computed outside it and
    detached).

    Bad input raises ``ValueError``/``TypeError`` before any derivative is taken; one plain forward pass
    (no grad, RNG and batch-norm statistics restored) checks that x fits the model, that the output is one
    tensor ``[B, ...]`` and that the targets fit it (labels in range, MSE targets of the output's shape, a
    callable loss returning ``[B]``).
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
    check_forward(model, x, y, loss)

    if backend == "fused" and not _fused_available():
        raise RuntimeError("backend='fused' needs the compiled extension lamda_ext._C; build it with "
                           "`pip install --no-build-isolation .` or use backend='taylor'")
    name = backend if backend != "auto" else ("fused" if _fused_available() else "taylor")
    with frozen_batchnorm_stats(model):
        derivs, loss0 = _run(name, backend == "auto", model, x, y, dirs, order, loss, wrt, label_smoothing)
    return (derivs, loss0) if return_loss else derivs


def _run(name, fallback, model, x, y, dirs, order, loss, wrt, ls):
    impl = backends.BACKENDS[name]
    fn = impl.input_derivs if wrt == "input" else impl.params_derivs
    if not fallback:
        return fn(model, x, y, dirs, order, loss, ls)
    replay = RngReplay(x.device)
    try:
        return fn(model, x, y, dirs, order, loss, ls)
    except NotImplementedError as err:
        warnings.warn(f"backend='auto': {err} Falling back to backend='autograd'.", RuntimeWarning, stacklevel=3)
        replay.reset()
        ref = backends.BACKENDS["autograd"]
        fn = ref.input_derivs if wrt == "input" else ref.params_derivs
        return fn(model, x, y, dirs, order, loss, ls)
