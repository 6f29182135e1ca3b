"""Hessian-vector products of a model's loss, by forward-over-reverse.

``hvp`` is ``torch.func.jvp`` of ``torch.func.grad`` of a
``torch.func.functional_call`` of the model, batched over K directions with
``torch.func.vmap``. ``hvp_double_backward`` (reverse-over-reverse) and
``hvp_finite_difference`` (central differences of gradients) exist only as
references for the tests and the benchmarks.

Conventions shared by the three functions:

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

import warnings
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, linearize, vmap

from ._hvp_ops import ForwardOverReverseOps
from ._state import RngReplay
from .losses import LossSpec, check_targets, resolve_loss

__all__ = ["hvp", "hvp_double_backward", "hvp_finite_difference", "grad_params",
           "trainable_parameters", "flatten_params", "unflatten_params", "functional_state", "model_loss_fn"]

WRT = ("params", "input")


# ----------------------------------------------------------------------------------------------
# parameter / buffer plumbing
# ----------------------------------------------------------------------------------------------
def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters requiring grad, by name, in ``model.parameters()`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def flatten_params(tensors) -> torch.Tensor:
    """Concatenate tensors (dict values or a sequence) into one flat vector ``[P]``."""
    vals = list(tensors.values()) if isinstance(tensors, dict) else list(tensors)
    return torch.cat([t.reshape(-1) for t in vals])


def unflatten_params(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split a flat ``[..., P]`` vector into views shaped like ``like`` (leading dims kept)."""
    out, i = {}, 0
    lead = flat.shape[:-1]
    for name, p in like.items():
        n = p.numel()
        out[name] = flat[..., i:i + n].reshape(*lead, *p.shape)
        i += n
    if i != flat.shape[-1]:
        raise ValueError(f"flat vector has {flat.shape[-1]} entries but the parameters have {i}")
    return out


def functional_state(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor | None]:
    """Everything except the differentiated parameters, for ``functional_call``.

    Parameters not in ``names`` are passed detached; buffers are passed as they are,
    except the running statistics of train-mode batch norms, which become ``None`` so
    that the call normalises with batch statistics without updating any buffer.
    """
    names = set() if names is None else names
    state: dict[str, torch.Tensor | None] = {}
    for name, p in model.named_parameters():
        if name not in names:
            state[name] = p.detach()
    for name, b in model.named_buffers():
        state[name] = b.detach() if b is not None else None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training and mod.track_running_stats:
            prefix = f"{mod_name}." if mod_name else ""
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                if f"{prefix}{buf}" in state:
                    state[f"{prefix}{buf}"] = None
    return state


def model_loss_fn(model: nn.Module, x: torch.Tensor, y, loss_fn: Callable, names: list[str]):
    """``f(params_dict) -> batch-mean loss`` evaluated through ``functional_call``."""
    state = functional_state(model, set(names))

    def f(params: dict[str, torch.Tensor]) -> torch.Tensor:
        out = functional_call(model, (params, state), (x,))
        return loss_fn(out, y).mean()

    return f


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _check_common(model: nn.Module, x: torch.Tensor, y, loss: LossSpec, wrt: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if wrt not in WRT:
        raise ValueError(f"wrt must be one of {WRT}, got {wrt!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a non-empty batch dimension [B, ...], got shape {list(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    p = next(iter(model.parameters()), None)
    if p is not None:
        if p.dtype != x.dtype:
            raise TypeError(f"dtype mismatch: model parameters are {p.dtype} but x is {x.dtype}; "
                            f"convert one of them (e.g. model.to({x.dtype}))")
        if p.device != x.device:
            raise ValueError(f"device mismatch: model parameters are on {p.device} but x is on {x.device}")
    if isinstance(loss, str):
        check_targets(loss, y, x.shape[0])


def _check_vector_like(v, dtype: torch.dtype, device: torch.device, what: str) -> None:
    """``v`` must be a tensor of ``dtype`` on ``device`` (those of ``what``, named in the errors)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype != dtype:
        raise TypeError(f"dtype mismatch: v is {v.dtype} but the {what} are {dtype}")
    if v.device != device:
        raise ValueError(f"device mismatch: v is on {v.device} but the {what} are on {device}")


def _check_v(v, shape_one: tuple[int, ...], ref: torch.Tensor, what: str) -> bool:
    """Validate ``v`` against one direction of shape ``shape_one``; return True when batched [K, ...]."""
    _check_vector_like(v, ref.dtype, ref.device, what)
    if tuple(v.shape) == shape_one:
        return False
    if v.dim() == len(shape_one) + 1 and tuple(v.shape[1:]) == shape_one and v.shape[0] >= 1:
        return True
    raise ValueError(f"v must have shape {list(shape_one)} (one direction) or [K, {', '.join(map(str, shape_one))}]"
                     f" (K directions); got {list(v.shape)}")


def _params_and_v(model: nn.Module, v) -> tuple[dict[str, torch.Tensor], bool]:
    """The differentiated parameters, after checking ``v`` against them; True when ``v`` is ``[K, P]``."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    P = sum(p.numel() for p in params.values())
    return params, _check_v(v, (P,), next(iter(params.values())), "model parameters")


# ----------------------------------------------------------------------------------------------
# the HVP
# ----------------------------------------------------------------------------------------------
def _default_chunk(v: torch.Tensor) -> int | None:
    """Directions per vmapped evaluation: all of them on a GPU; one at a time on the CPU.

    On the CPU the tangent passes are bound by memory traffic: K-batched activations ([K·B, ...])
    stream through DRAM while one direction's stay in cache. MNIST CNN, batch 128, K = 16, 2 cores:
    one direction at a time 2.0–2.3 gradient-times per direction, all 16 at once 3.0–3.2 (benchmarks/README.md).
    """
    return 1 if v.device.type == "cpu" else None


def _forward_over_reverse(g: Callable, primal, v: torch.Tensor, batched: bool, unpack: Callable, pack: Callable,
                          chunk_size: int | None) -> torch.Tensor:
    """``jvp`` of the gradient map ``g`` at ``primal`` along one direction or each row of ``v``.

    For K > 1 directions ``torch.func.linearize`` evaluates the forward-over-reverse pass once and
    keeps its tangent part as a graph; that graph is then vmapped over the directions (``chunk_size``
    at a time, see :func:`_default_chunk`), so the primal forward and backward are not repeated per
    direction or per chunk. ``unpack`` turns a direction into the tangent pytree, ``pack`` the
    resulting tangent pytree into the output layout.
    """
    with ForwardOverReverseOps():
        if not batched or v.shape[0] == 1:
            vs = v if not batched else v[0]
            out = pack(jvp(g, (primal,), (unpack(vs),))[1])
            return out if not batched else out.unsqueeze(0)
        # random ops (dropout) stay in the traced graph and draw again on every replay: each replay
        # restarts the generator where the trace started, so every direction sees the mask that a
        # single-direction HVP would draw, and the generator ends one draw on, as after that HVP
        start = RngReplay(v.device)
        with warnings.catch_warnings():   # torch's constant folding warns about its own get_attr nodes
            warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
            _, tangent_map = linearize(g, primal)

        def one(vec: torch.Tensor) -> torch.Tensor:
            start.reset()
            return pack(tangent_map(unpack(vec)))

        chunk = _default_chunk(v) if chunk_size is None else chunk_size
        if chunk == 1:
            return torch.stack([one(vec) for vec in v])
        return vmap(one, chunk_size=chunk, randomness="same")(v)


def _params_hvp(model, x, y, v, loss_fn, params: dict[str, torch.Tensor],
                chunk_size: int | None = None) -> torch.Tensor:
    """Forward-over-reverse HVP w.r.t. ``params`` (a name → tensor dict); v ``[P]`` or ``[K, P]``."""
    f = model_loss_fn(model, x, y, loss_fn, list(params))
    primal = {k: t.detach() for k, t in params.items()}
    return _forward_over_reverse(grad(f), primal, v, v.dim() == 2, lambda vec: unflatten_params(vec, primal),
                                 flatten_params, chunk_size)


def _input_hvp(model, x, y, v, loss_fn, chunk_size: int | None = None) -> torch.Tensor:
    """Per-sample input-space HVPs; v shaped like x or ``[K, *x.shape]``."""
    state = functional_state(model, set())

    def total(xx: torch.Tensor) -> torch.Tensor:
        return loss_fn(functional_call(model, (state,), (xx,)), y).sum()

    return _forward_over_reverse(grad(total), x.detach(), v, v.dim() == x.dim() + 1, lambda vec: vec,
                                 lambda out: out, chunk_size)


def hvp(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, *, loss: LossSpec = "cross_entropy",
        wrt: str = "params", label_smoothing: float = 0.0, chunk_size: int | None = None) -> torch.Tensor:
    """Hessian-vector product(s) of the loss by forward-over-reverse.

    Args:
        model: any ``nn.Module`` (dropout/batch norm run in the model's current mode).
        x: inputs ``[B, ...]``; y: targets (``[B]`` class labels for cross-entropy).
        v: ``wrt="params"``: ``[P]`` or ``[K, P]`` (P = all parameters requiring grad, flattened in
            ``model.parameters()`` order). ``wrt="input"``: ``[B, ...]`` like x, or ``[K, B, ...]``.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, y) -> [B]``.
        label_smoothing: for cross-entropy.
        chunk_size: directions per vmapped tangent evaluation (K directions share one primal pass
            either way); None = one at a time on the CPU, all at once elsewhere.

    Returns:
        ``H v`` with the shape of ``v``. For ``wrt="params"`` H is the Hessian of the batch-mean loss;
        for ``wrt="input"`` entry b is ``H_b v_b`` (Hessian of sample b's loss w.r.t. ``x_b``).
        The result is detached (not differentiable w.r.t. the parameters).
    """
    _check_common(model, x, y, loss, wrt)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    loss_fn = resolve_loss(loss, label_smoothing)
    if wrt == "params":
        params, _ = _params_and_v(model, v)
        with torch.enable_grad():
            return _params_hvp(model, x, y, v, loss_fn, params, chunk_size).detach()
    _check_v(v, tuple(x.shape), x, "inputs x")
    with torch.enable_grad():
        return _input_hvp(model, x, y, v, loss_fn, chunk_size).detach()


# ----------------------------------------------------------------------------------------------
# references
# ----------------------------------------------------------------------------------------------
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


def _input_grad(model, x, y, loss_fn, create_graph=False):
    state = functional_state(model, set())
    xx = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        val = loss_fn(functional_call(model, (state,), (xx,)), y).sum()
        (g,) = torch.autograd.grad(val, xx, create_graph=create_graph)
    return g, xx


def hvp_double_backward(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, *,
                        loss: LossSpec = "cross_entropy", wrt: str = "params",
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Reference HVP by reverse-over-reverse (``autograd.grad`` of ``grad · v``); same contract as :func:`hvp`.

    One gradient graph is built and differentiated once per direction (``retain_graph``).
    """
    _check_common(model, x, y, loss, wrt)
    loss_fn = resolve_loss(loss, label_smoothing)
    if wrt == "params":
        params, batched = _params_and_v(model, v)
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
    batched = _check_v(v, tuple(x.shape), x, "inputs x")
    with torch.enable_grad():
        g, xx = _input_grad(model, x, y, loss_fn, create_graph=True)
        vs = v if batched else v.unsqueeze(0)
        out = [torch.autograd.grad(g, xx, grad_outputs=vs[i], retain_graph=i + 1 < vs.shape[0])[0]
               for i in range(vs.shape[0])]
    res = torch.stack(out)
    return res if batched else res[0]


def hvp_finite_difference(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, *,
                          loss: LossSpec = "cross_entropy", wrt: str = "params",
                          label_smoothing: float = 0.0, eps: float | None = None) -> torch.Tensor:
    """Reference HVP by central differences of gradients: ``(g(θ + εv) − g(θ − εv)) / 2ε``.

    ``eps`` defaults to ``sqrt(machine epsilon) · max(1, ‖θ‖) / ‖v‖`` per direction (θ = parameters
    or the inputs of the sample): smaller than the textbook cube root so that the step rarely crosses
    a ReLU / max-pool kink. Error: O(ε²) truncation plus rounding O(ε_mach ‖g‖ / ε) — a float64
    reference, not a fast path (in float32 the rounding error dominates).
    """
    _check_common(model, x, y, loss, wrt)
    loss_fn = resolve_loss(loss, label_smoothing)
    base_eps = torch.finfo(x.dtype).eps ** 0.5

    if wrt == "params":
        params, batched = _params_and_v(model, v)
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

    batched = _check_v(v, tuple(x.shape), x, "inputs x")
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
        gp, _ = _input_grad(model, x + e.reshape(shape) * vec, y, loss_fn)
        gm, _ = _input_grad(model, x - e.reshape(shape) * vec, y, loss_fn)
        out.append((gp - gm) / (2 * e.reshape(shape)))
    res = torch.stack(out)
    return res if batched else res[0]
