"""Loss and accuracy of a model at given parameters, over a data set, without touching the model."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.func import functional_call

from lamda_ext.hessian.data import iter_batches
from lamda_ext.params import functional_state
from lamda_ext.losses import LossSpec, resolve_loss

__all__ = ["evaluate", "param_dict", "add_to_params"]


def param_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Detached parameters by name in ``model.parameters()`` order."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad or not trainable_only}


def add_to_params(params: Mapping[str, torch.Tensor], direction: Mapping[str, torch.Tensor],
                  scale: float = 1.0) -> dict[str, torch.Tensor]:
    """``params + scale · direction`` (names missing from ``direction`` are kept as they are)."""
    return {n: (p + scale * direction[n]) if n in direction else p for n, p in params.items()}


@torch.no_grad()
def evaluate(model: nn.Module, data, loss: LossSpec = "cross_entropy", params: Mapping[str, torch.Tensor] | None = None,
             label_smoothing: float = 0.0) -> tuple[float, float]:
    """Sample-weighted mean loss and accuracy of ``model`` (at ``params`` when given) over ``data``.

    ``data`` is an ``(x, y)`` pair or an iterable of pairs (moved to the parameters' device). The
    model runs in its current mode through ``functional_call`` and nothing is mutated (a train-mode
    batch norm uses batch statistics without updating its running ones). Accuracy is NaN unless the
    outputs are ``[B, C]`` logits and the targets ``[B]`` class indices.
    """
    loss_fn = resolve_loss(loss, label_smoothing)
    dev = next(model.parameters()).device
    override = dict(params) if params is not None else {}
    state = {**functional_state(model, set(override)), **override}
    total, correct, n, acc_ok = 0.0, 0.0, 0, True
    for x, y in iter_batches(data):
        x = x.to(dev)
        y = y.to(dev) if isinstance(y, torch.Tensor) else y
        out = functional_call(model, state, (x,))
        total += float(loss_fn(out, y).sum())
        if acc_ok and out.dim() == 2 and isinstance(y, torch.Tensor) and y.dim() == 1 and not y.dtype.is_floating_point:
            correct += float((out.argmax(dim=1) == y).sum())
        else:
            acc_ok = False
        n += x.shape[0]
    if n == 0:
        raise ValueError("data yielded no samples")
    return total / n, (correct / n if acc_ok else float("nan"))
