"""Per-sample losses shared by every backend, the HVPs and the Hessian tools.

A loss spec is ``"cross_entropy"``, ``"mse"`` or a callable
``(output [B, ...], y) -> per-sample loss [B]``.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

LossSpec = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
LOSS_NAMES = ("cross_entropy", "mse")


def cross_entropy_per_sample(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy per sample: logits ``[B, C]``, integer targets ``[B]`` → ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)


def mse_per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over all non-batch dims: ``[B, ...]`` → ``[B]``."""
    d = out - y
    return (d * d).reshape(d.shape[0], -1).mean(dim=1)


def resolve_loss(loss: LossSpec, label_smoothing: float = 0.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Turn a loss spec into a function ``(output, y) -> [B]`` per-sample losses."""
    if callable(loss):
        if label_smoothing:
            raise ValueError("label_smoothing applies to loss='cross_entropy' only, not to a callable loss")
        return loss
    if loss == "cross_entropy":
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        return lambda out, y: cross_entropy_per_sample(out, y, float(label_smoothing))
    if loss == "mse":
        if label_smoothing:
            raise ValueError("label_smoothing applies to loss='cross_entropy' only")
        return mse_per_sample
    raise ValueError(f"loss must be one of {LOSS_NAMES} or a callable (output, y) -> per-sample loss; got {loss!r}")


def check_targets(loss: LossSpec, y, batch: int) -> None:
    """Validate targets against a loss spec (raises ValueError/TypeError with an actionable message)."""
    if loss == "cross_entropy":
        if y is None:
            raise ValueError("loss='cross_entropy' needs targets y (integer class labels of shape [B])")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor of class labels, got {type(y).__name__}")
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"cross-entropy targets must be integer class labels (torch.long), got {y.dtype}")
        if y.shape != (batch,):
            raise ValueError(f"cross-entropy targets must have shape [B]=[{batch}], got {list(y.shape)}")
    elif loss == "mse":
        if y is None:
            raise ValueError("loss='mse' needs targets y with the model output's shape")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
