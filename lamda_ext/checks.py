"""Input checks shared by every public function of the core.

The callers are ``directional_derivs``, ``hvp`` and its references, the Hessian operator and its spectral tools: one
message per mistake, raised before any work is done.
"""
from __future__ import annotations

import numbers
import weakref

import torch
from torch import nn

from ._state import RngReplay, fresh_input, frozen_batchnorm_stats
from .losses import LossSpec, check_output, check_targets
from .memory import AllocationTracker
from .params import trainable_parameters

__all__ = ["all_finite", "finite_flag", "MAX_ORDER", "MAX_ORDERS", "WRT", "check_model_and_x", "check_finite_state", "check_forward",
           "check_wrt", "check_order", "check_direction_tensor", "check_hvp_inputs", "check_vector_like", "check_v",
           "params_and_v", "check_int", "check_reduction"]

# Highest order each backend accepts. The composite Taylor engine handles any order (the limit only bounds the
# cost); fused runs its kernels up to their compiled maximum and the composite rules beyond it; the references
# grow exponentially in the order (nested autograd graphs, 2^N nested jvp passes).
MAX_ORDERS = {"taylor": 32, "fused": 32, "auto": 32, "autograd": 16, "func": 12}
MAX_ORDER = max(MAX_ORDERS.values())
WRT = ("params", "input")


_FINITE_SLICE = 1 << 20


def finite_flag(t: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: every element of ``t`` is finite.

    Checked in slices of 2^20 elements, so the temporaries of ``isfinite`` stay small next to a large parameter or input
    (no host sync).
    """
    flat = t.reshape(-1)
    if flat.numel() <= _FINITE_SLICE:
        return torch.isfinite(flat).all()
    return torch.stack([torch.isfinite(s).all() for s in flat.split(_FINITE_SLICE)]).all()


def all_finite(t: torch.Tensor) -> bool:
    """Every element of ``t`` is finite ([`finite_flag`][lamda_ext.checks.finite_flag], read on the host)."""
    return bool(finite_flag(t))


def check_model_and_x(model, x):
    """Check that ``model`` is an ``nn.Module`` and ``x`` a finite floating-point tensor of its dtype and device.

    Raises:
        TypeError: ``model`` or ``x`` of the wrong type or dtype.
        ValueError: non-finite values in ``x``, the parameters or buffers; a device mismatch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}; convert it with x.float()")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a batch dimension with at least one point, got shape {list(x.shape)}")
    if not all_finite(x):
        raise ValueError("x contains NaN or inf values; clean the inputs before measuring derivatives")
    p = next((q for q in model.parameters() if q.dtype.is_floating_point), None)
    if p is not None:
        if p.dtype != x.dtype:
            raise TypeError(f"dtype mismatch: model parameters are {p.dtype} but x is {x.dtype}; "
                            f"use model.to({x.dtype}) or x.to({p.dtype})")
        if p.device != x.device:
            raise ValueError(f"device mismatch: model parameters are on {p.device} but x is on {x.device}; "
                             "move both to one device")
    check_finite_state(model)


def check_finite_state(model: nn.Module) -> None:
    """Every floating-point parameter and buffer of ``model`` is finite (one reduction per tensor, one sync).

    The error names the first parameter/buffer holding NaN or inf. Inference tensors (created under
    ``torch.inference_mode()``) are refused: no derivative can be taken through them.
    """
    named = [(f"parameter '{n}'", t) for n, t in model.named_parameters()]
    named += [(f"buffer '{n}'", t) for n, t in model.named_buffers()]
    named = [(n, t) for n, t in named if t is not None and t.dtype.is_floating_point and t.device.type != "meta"]
    if not named:
        return
    for what, t in named:
        if t.is_inference():
            raise ValueError(f"the model's {what} was created under torch.inference_mode(): derivatives cannot be "
                             "taken through it; build or load the model outside inference mode")
    dev = named[0][1].device
    ok = torch.stack([finite_flag(t).to(dev) for _, t in named])
    if not bool(ok.all()):
        what = next(n for (n, _), good in zip(named, ok.tolist()) if not good)
        raise ValueError(f"the model's {what} contains NaN or inf values; every derivative would be NaN "
                         "(reload a finite checkpoint or lower the learning rate)")


def _module_stack(model: nn.Module):
    """Forward hooks recording which modules are running; ``(stack, handles)``."""
    stack, handles = [], []

    def enter(mod, args) -> None:
        stack.append(mod)

    def leave(mod, args, out) -> None:      # must return None: a returned value would replace the output
        if stack:
            stack.pop()

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    return stack, handles


def check_forward(model: nn.Module, x: torch.Tensor, y, loss: LossSpec) -> int:
    """One plain forward pass at a copy of ``x`` to check the model's output against x and the loss.

    The shape of x must fit the model, the output must be one tensor ``[B, ...]``, and the targets must fit the output
    ([`lamda_ext.losses.check_output`][lamda_ext.losses.check_output]). ``y`` must already have passed
    ``check_targets``. No grad; the RNG state and batch-norm running statistics are restored and ``x`` is left as it was
    (a model that changes its input in place changes the copy), so the measurement that follows is unchanged.

    A ``RuntimeError`` of the forward (e.g. "mat1 and mat2 shapes cannot be multiplied") becomes a
    ``ValueError`` naming x's shape and the innermost module that was running.

    Returns the bytes that forward pass allocated
    ([`lamda_ext.memory.AllocationTracker`][lamda_ext.memory.AllocationTracker]), the unit of the coarse size estimate
    of [`lamda_ext.planning`][lamda_ext.planning].
    """
    key = _forward_signature(model, x)
    seen = _CHECKED_OUTPUTS.get(model)
    if seen is not None and key in seen and not callable(loss):
        meta, nbytes = seen[key]
        check_output(loss, meta, y, x.shape[0])   # the output's shape and dtype, from the first call
        return nbytes
    names = {id(m): (n or "<root>") for n, m in model.named_modules()}
    stack, handles = _module_stack(model)
    replay = RngReplay(x.device)
    try:
        with torch.no_grad(), frozen_batchnorm_stats(model), AllocationTracker() as tracker:
            out = model(fresh_input(x))
    except (NotImplementedError, torch.OutOfMemoryError):
        raise
    except RuntimeError as err:
        where = (f"module '{names.get(id(stack[-1]), '?')}' ({type(stack[-1]).__name__})" if stack
                 else "the model's forward")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"x of shape {list(x.shape)} does not fit the model: {where} failed with: {first}") from err
    finally:
        for h in handles:
            h.remove()
        replay.reset()
    check_output(loss, out, y, x.shape[0])
    if isinstance(out, torch.Tensor):
        meta = torch.empty(out.shape, dtype=out.dtype, device="meta")
        _CHECKED_OUTPUTS.setdefault(model, {})[key] = (meta, tracker.total)
    return tracker.total


# model → {forward signature → (its output as a meta tensor, bytes the forward allocated)}: a model whose forward was checked once for an
# input of this shape, dtype and device, in this mode and with parameters of these shapes, is not run again
# (a training loop that measures every step pays for one check forward, not one per step)
_CHECKED_OUTPUTS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _forward_signature(model: nn.Module, x: torch.Tensor) -> tuple:
    return (tuple(x.shape), x.dtype, x.device, model.training,
            tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters()))


def check_int(value, name: str, minimum: int = 1, allow_none: bool = False):
    """``value`` must be an int ≥ ``minimum`` (not a bool, not a float; None when ``allow_none``); returned."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int ≥ {minimum}{' or None' if allow_none else ''}, "
                        f"got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return int(value)


def check_order(order, backend: str = "auto"):
    """Check that ``order`` is an int in ``1..MAX_ORDERS[backend]``.

    Raises:
        TypeError: ``order`` is not an int.
        ValueError: ``order`` is out of the backend's range (the message names the backends that go further).
    """
    top = MAX_ORDERS.get(backend, MAX_ORDER)
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int in 1..{top}, got {order!r}")
    if not 1 <= order <= top:
        hint = "; backend='taylor' or 'fused' go to order 32" if top < MAX_ORDERS["taylor"] else ""
        raise ValueError(f"order must be in 1..{top} for backend={backend!r}, got {order}{hint}")


def check_direction_tensor(d: torch.Tensor, expected: tuple, what: str, x: torch.Tensor):
    """Check explicit directions ``d`` against ``x``: dtype, device, shape ``expected`` (described by ``what``), finite.

    Raises:
        TypeError: ``d`` has another dtype than ``x``.
        ValueError: another device, another shape, or NaN/inf values.
    """
    if d.dtype != x.dtype:
        raise TypeError(f"directions are {d.dtype} but x is {x.dtype}; pass directions of the same dtype")
    if d.device != x.device:
        raise ValueError(f"device mismatch: directions are on {d.device} but x is on {x.device}")
    if d.dim() != len(expected) or tuple(d.shape[1:]) != tuple(expected[1:]) or d.shape[0] < 1:
        raise ValueError(f"directions must have shape {what}, got {list(d.shape)}")
    if not all_finite(d):
        raise ValueError("directions contain NaN or inf values")


def check_wrt(wrt) -> None:
    """Check that ``wrt`` is ``"input"`` or ``"params"`` (ValueError otherwise)."""
    if wrt not in WRT:
        raise ValueError(f"wrt must be 'input' or 'params', got {wrt!r}")


def check_hvp_inputs(model: nn.Module, x: torch.Tensor, y, loss: LossSpec, wrt: str, forward: bool = True):
    """The model, x, ``wrt`` and the targets of an HVP call.

    Returns the targets as every backend takes them (integer labels as ``torch.long``). ``forward``: also check the
    output with one plain forward pass ([`check_forward`][lamda_ext.checks.check_forward]).
    """
    check_model_and_x(model, x)
    check_wrt(wrt)
    y = check_targets(loss, y, x.shape[0])
    if isinstance(y, torch.Tensor) and y.device != x.device:
        raise ValueError(f"device mismatch: y is on {y.device} but x is on {x.device}")
    if forward:
        check_forward(model, x, y, loss)
    return y


def check_vector_like(v, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """``v`` must be a tensor of ``dtype`` on ``device`` (those of ``what``, named in the errors)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype != dtype:
        raise TypeError(f"dtype mismatch: v is {v.dtype} but the {what} are {dtype}")
    if v.device != device:
        raise ValueError(f"device mismatch: v is on {v.device} but the {what} are on {device}")
    if v.device.type != "meta" and not all_finite(v):
        raise ValueError("v contains NaN or inf values")


def check_v(v, shape_one: tuple[int, ...], ref: torch.Tensor, what: str) -> bool:
    """Validate ``v`` against one direction of shape ``shape_one``; return True when batched [K, ...]."""
    check_vector_like(v, ref.dtype, ref.device, what)
    if tuple(v.shape) == shape_one:
        return False
    if v.dim() == len(shape_one) + 1 and tuple(v.shape[1:]) == shape_one and v.shape[0] >= 1:
        return True
    raise ValueError(f"v must have shape {list(shape_one)} (one direction) or [K, {', '.join(map(str, shape_one))}]"
                     f" (K directions); got {list(v.shape)}")


def params_and_v(model: nn.Module, v) -> tuple[dict[str, torch.Tensor], bool]:
    """The differentiated parameters, after checking ``v`` against them; True when ``v`` is ``[K, P]``."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    P = sum(p.numel() for p in params.values())
    return params, check_v(v, (P,), next(iter(params.values())), "model parameters")


def check_reduction(reduction) -> None:
    """``reduction`` of a Hessian: ``"mean"`` (of the mean loss over samples) or ``"sum"`` (of the summed loss)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
