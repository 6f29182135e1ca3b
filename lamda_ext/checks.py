"""Input checks shared by every public function of the core (``directional_derivs``, ``hvp`` and its references,
the Hessian operator and its spectral tools): one message per mistake, raised before any work is done."""
from __future__ import annotations

import torch
from torch import nn

from .losses import LossSpec, check_targets
from .params import trainable_parameters

__all__ = ["MAX_ORDER", "MAX_ORDERS", "WRT", "check_model_and_x", "check_wrt", "check_order", "check_direction_tensor",
           "check_hvp_inputs", "check_vector_like", "check_v", "params_and_v"]

# Highest order each backend accepts. The composite Taylor engine handles any order (the limit only bounds the
# cost); fused runs its kernels up to their compiled maximum and the composite rules beyond it; the references
# grow exponentially in the order (nested autograd graphs, 2^N nested jvp passes).
MAX_ORDERS = {"taylor": 32, "fused": 32, "auto": 32, "autograd": 16, "func": 12}
MAX_ORDER = max(MAX_ORDERS.values())
WRT = ("params", "input")


def check_model_and_x(model, x):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}; convert it with x.float()")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a batch dimension with at least one point, got shape {list(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf values; clean the inputs before measuring derivatives")
    p = next((q for q in model.parameters() if q.dtype.is_floating_point), None)
    if p is not None:
        if p.dtype != x.dtype:
            raise TypeError(f"dtype mismatch: model parameters are {p.dtype} but x is {x.dtype}; "
                            f"use model.to({x.dtype}) or x.to({p.dtype})")
        if p.device != x.device:
            raise ValueError(f"device mismatch: model parameters are on {p.device} but x is on {x.device}; "
                             "move both to one device")


def check_order(order, backend: str = "auto"):
    top = MAX_ORDERS.get(backend, MAX_ORDER)
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int in 1..{top}, got {order!r}")
    if not 1 <= order <= top:
        hint = "; backend='taylor' or 'fused' go to order 32" if top < MAX_ORDERS["taylor"] else ""
        raise ValueError(f"order must be in 1..{top} for backend={backend!r}, got {order}{hint}")


def check_direction_tensor(d: torch.Tensor, expected: tuple, what: str, x: torch.Tensor):
    if d.dtype != x.dtype:
        raise TypeError(f"directions are {d.dtype} but x is {x.dtype}; pass directions of the same dtype")
    if d.device != x.device:
        raise ValueError(f"device mismatch: directions are on {d.device} but x is on {x.device}")
    if d.dim() != len(expected) or tuple(d.shape[1:]) != tuple(expected[1:]) or d.shape[0] < 1:
        raise ValueError(f"directions must have shape {what}, got {list(d.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise ValueError("directions contain NaN or inf values")


def check_wrt(wrt) -> None:
    if wrt not in WRT:
        raise ValueError(f"wrt must be 'input' or 'params', got {wrt!r}")


def check_hvp_inputs(model: nn.Module, x: torch.Tensor, y, loss: LossSpec, wrt: str) -> None:
    """The model, x, ``wrt`` and (for a named loss) the targets of an HVP call."""
    check_model_and_x(model, x)
    check_wrt(wrt)
    if isinstance(loss, str):
        check_targets(loss, y, x.shape[0])


def check_vector_like(v, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """``v`` must be a tensor of ``dtype`` on ``device`` (those of ``what``, named in the errors)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype != dtype:
        raise TypeError(f"dtype mismatch: v is {v.dtype} but the {what} are {dtype}")
    if v.device != device:
        raise ValueError(f"device mismatch: v is on {v.device} but the {what} are on {device}")


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
