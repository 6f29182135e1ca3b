"""Reference Hessian-vector products for the tests and the benchmarks.

Reverse-over-reverse (``autograd.grad`` of ``grad · v``) and central differences of gradients. Same contract as
[`lamda_ext.hvp.hvp`][lamda_ext.hvp.hvp] (see its module docstring); not fast paths.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ._state import fresh_input, outside_inference_mode
from .checks import check_hvp_inputs, check_v, params_and_v
from .losses import LossSpec, resolve_loss
from .params import flatten_params, functional_state, model_loss_fn, unflatten_params

__all__ = ["grad_params", "input_grad", "hvp_double_backward", "hvp_finite_difference"]


def grad_params(model: nn.Module, x: torch.Tensor, y, loss_fn: Callable,
                params: dict[str, torch.Tensor], shift: torch.Tensor | None = None,
                create_graph: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flat gradient ``[P]`` of the batch-mean loss at ``params + shift`` (shift ``[P]`` or None).

    Returns ``(gradient [P], leaves)`` where ``leaves`` are the fresh leaf tensors the gradient was
    taken at (needed to differentiate it once more when ``create_graph=True``).
    """
    names = list(params)
    base = {k: t.detach() for k, t in params.items()}
    if shift is not None:
        d = unflatten_params(shift, base)
        base = {k: base[k] + d[k] for k in names}
    leaves = {k: t.clone().requires_grad_(True) for k, t in base.items()}
    f = model_loss_fn(model, x, y, loss_fn, names)
    with torch.enable_grad():
        val = f(leaves)
        gs = torch.autograd.grad(val, list(leaves.values()), create_graph=create_graph)
    return flatten_params(gs), leaves


def input_grad(model, x, y, loss_fn, create_graph=False):
    """``∇_x`` of the summed per-sample loss, shaped like ``x`` (``create_graph`` keeps it differentiable)."""
    state = functional_state(model, set())
    xx = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        val = loss_fn(functional_call(model, (state,), (fresh_input(xx),)), y).sum()
        (g,) = torch.autograd.grad(val, xx, create_graph=create_graph)
    return g, xx


@outside_inference_mode
def hvp_double_backward(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, *,
                        loss: LossSpec = "cross_entropy", wrt: str = "params",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Reference HVP by reverse-over-reverse (``autograd.grad`` of ``grad · v``); same contract as `hvp`.

    One gradient graph is built and differentiated once per direction (``retain_graph``).
    """
    y = check_hvp_inputs(model, x, y, loss, wrt)
    loss_fn = resolve_loss(loss, label_smoothing)
    if wrt == "params":
        params, batched = params_and_v(model, v)
        with torch.enable_grad():
            g, leaves = grad_params(model, x, y, loss_fn, params, create_graph=True)
            vs = v if batched else v.unsqueeze(0)
            out = []
            for i in range(vs.shape[0]):
                hv = torch.autograd.grad(g, list(leaves.values()), grad_outputs=vs[i],
                                         retain_graph=i + 1 < vs.shape[0])
                out.append(flatten_params(hv))
        res = torch.stack(out)
        return res if batched else res[0]
    batched = check_v(v, tuple(x.shape), x, "inputs x")
    with torch.enable_grad():
        g, xx = input_grad(model, x, y, loss_fn, create_graph=True)
        vs = v if batched else v.unsqueeze(0)
        out = [torch.autograd.grad(g, xx, grad_outputs=vs[i], retain_graph=i + 1 < vs.shape[0])[0]
               for i in range(vs.shape[0])]
    res = torch.stack(out)
    return res if batched else res[0]


@outside_inference_mode
def hvp_finite_difference(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, *,
                          loss: LossSpec = "cross_entropy", wrt: str = "params",
                          label_smoothing: float = 0.0, eps: float | None = None) -> torch.Tensor:
    """Reference HVP by central differences of gradients: ``(g(θ + εv) − g(θ − εv)) / 2ε``.

    ``eps`` defaults to ``sqrt(machine epsilon) · max(1, ‖θ‖) / ‖v‖`` per direction (θ = parameters
    or the inputs of the sample): smaller than the textbook cube root so that the step rarely crosses
    a ReLU / max-pool kink. Error: O(ε²) truncation plus rounding O(ε_mach ‖g‖ / ε) — a float64
    reference, not a fast path (in float32 the rounding error dominates).
    """
    y = check_hvp_inputs(model, x, y, loss, wrt)
    loss_fn = resolve_loss(loss, label_smoothing)
    base_eps = torch.finfo(x.dtype).eps ** 0.5

    if wrt == "params":
        params, batched = params_and_v(model, v)
        theta_norm = float(flatten_params([p.detach() for p in params.values()]).norm())
        vs = v if batched else v.unsqueeze(0)
        out = []
        for vec in vs:
            vn = float(vec.norm())
            if vn == 0.0:
                out.append(torch.zeros_like(vec))
                continue
            e = eps if eps is not None else base_eps * max(1.0, theta_norm) / vn
            gp, _ = grad_params(model, x, y, loss_fn, params, shift=e * vec)
            gm, _ = grad_params(model, x, y, loss_fn, params, shift=-e * vec)
            out.append((gp - gm) / (2 * e))
        res = torch.stack(out)
        return res if batched else res[0]

    batched = check_v(v, tuple(x.shape), x, "inputs x")
    vs = v if batched else v.unsqueeze(0)
    B = x.shape[0]
    out = []
    for vec in vs:
        # one ε per sample (the per-sample losses are independent)
        xn = x.detach().reshape(B, -1).norm(dim=1).clamp_min(1.0)
        vn = vec.reshape(B, -1).norm(dim=1)
        e = torch.full_like(vn, float(eps)) if eps is not None else base_eps * xn / vn.clamp_min(torch.finfo(x.dtype).tiny)
        e = torch.where(vn > 0, e, torch.ones_like(e))
        shape = (B,) + (1,) * (x.dim() - 1)
        gp, _ = input_grad(model, x + e.reshape(shape) * vec, y, loss_fn)
        gm, _ = input_grad(model, x - e.reshape(shape) * vec, y, loss_fn)
        out.append((gp - gm) / (2 * e.reshape(shape)))
    res = torch.stack(out)
    return res if batched else res[0]
