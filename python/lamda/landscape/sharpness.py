"""ρ-sharpness: how much the loss rises within a parameter ball of radius ρ."""
from __future__ import annotations

import torch
from torch import nn

from lamda_ext.hessian.data import check_deterministic, iter_batches
from lamda_ext.hvp_reference import grad_params
from lamda_ext.params import trainable_parameters, unflatten_params
from lamda_ext.losses import LossSpec, resolve_loss

from .evaluate import add_to_params, evaluate, param_dict

__all__ = ["sharpness", "data_gradient"]

KINDS = ("adversarial", "random")


def data_gradient(model: nn.Module, loss: LossSpec, data, label_smoothing: float = 0.0) -> torch.Tensor:
    """Flat gradient ``[P]`` of the sample-weighted mean loss over ``data``.

    Trainable parameters in ``model.parameters()`` order; the model is not mutated.
    """
    loss_fn = resolve_loss(loss, label_smoothing)
    params = trainable_parameters(model)
    dev = next(iter(params.values())).device
    acc, n = None, 0
    for x, y in iter_batches(data):
        x = x.to(dev)
        y = y.to(dev) if isinstance(y, torch.Tensor) else y
        g, _ = grad_params(model, x, y, loss_fn, params)
        acc = g * x.shape[0] if acc is None else acc + g * x.shape[0]
        n += x.shape[0]
    return acc / n


def sharpness(model: nn.Module, loss: LossSpec = "cross_entropy", data=None, rho: float = 0.05,
              kind: str = "adversarial", n_random: int = 10, generator: torch.Generator | None = None, *,
              label_smoothing: float = 0.0, allow_nondeterministic: bool = False) -> float:
    """Loss increase ``L(θ + ε) − L(θ)`` over ``data`` for ‖ε‖ = ρ (trainable parameters only).

    ``kind="adversarial"``: one normalised gradient step, ``ε = ρ g / ‖g‖`` (the first-order worst
    case, as in SAM). ``kind="random"``: the mean over ``n_random`` directions drawn uniformly on the
    sphere (Gaussian, normalised) from ``generator``. ``data`` is an ``(x, y)`` pair or an iterable of
    pairs; the loss is the sample-weighted mean. The model is not modified.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if data is None:
        raise ValueError("data is required: an (x, y) pair or an iterable of (x, y) pairs")
    if kind == "random" and int(n_random) < 1:
        raise ValueError(f"n_random must be ≥ 1, got {n_random}")
    if not allow_nondeterministic:
        check_deterministic(model, data, what="sharpness")
    base = param_dict(model)
    train = trainable_parameters(model)
    L0, _ = evaluate(model, data, loss, base, label_smoothing)
    if kind == "adversarial":
        g = data_gradient(model, loss, data, label_smoothing)
        gn = g.norm()
        if gn == 0:
            return 0.0
        eps = unflatten_params(g * (rho / gn), train)
        L1, _ = evaluate(model, data, loss, add_to_params(base, eps), label_smoothing)
        return L1 - L0
    P = sum(p.numel() for p in train.values())
    ref = next(iter(train.values()))
    rises = []
    for _ in range(int(n_random)):
        u = torch.randn(P, generator=generator, dtype=torch.float64).to(ref.dtype).to(ref.device)
        eps = unflatten_params(u * (rho / u.norm()), train)
        L1, _ = evaluate(model, data, loss, add_to_params(base, eps), label_smoothing)
        rises.append(L1 - L0)
    return float(sum(rises) / len(rises))
