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
IGNORE_INDEX = -100     # the class label F.cross_entropy skips by default: its per-sample loss is 0


def cross_entropy_per_sample(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy per sample: logits ``[B, C]``, integer targets ``[B]`` → ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)


def split_ignored(y: torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """Class labels with ``ignore_index`` entries replaced by 0 (a valid index) and the mask of the counted ones.

    Args:
        y: integer class labels of any shape.
        ignore_index: the label that marks an entry that does not count.

    Returns:
        ``(labels, keep)``: labels like ``y`` with every ignored entry set to 0, and ``keep`` (bool, ``y``'s shape,
        True where counted) — or ``(y, None)`` when no entry is ignored.
    """
    ignored = y == ignore_index
    if y.device.type == "meta" or not bool(ignored.any()):
        return y, None
    return y.masked_fill(ignored, 0), ~ignored


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


_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def check_targets(loss: LossSpec, y, batch: int):
    """Validate targets against a loss spec before any model evaluation; return them ready for every backend.

    Cross-entropy: integer class labels ``[B]`` (any integer dtype; returned as ``torch.long`` so that every
    backend sees the same labels), each ≥ 0 or ``IGNORE_INDEX`` (−100): as in ``F.cross_entropy``, such a sample
    counts for nothing (its loss and every derivative are 0).
    MSE: a finite floating-point tensor (its shape is checked against the output by
        [`check_output`][lamda_ext.losses.check_output]).
    A callable loss receives ``y`` unchanged. Raises ``ValueError``/``TypeError`` with an actionable message.
    """
    if loss == "cross_entropy":
        if y is None:
            raise ValueError("loss='cross_entropy' needs targets y (integer class labels of shape [B])")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor of class labels, got {type(y).__name__}")
        if y.dtype not in _INT_DTYPES:
            raise TypeError(f"cross-entropy targets must be integer class labels (torch.long), got {y.dtype}")
        if y.shape != (batch,):
            raise ValueError(f"cross-entropy targets must have shape [B]=[{batch}], got {list(y.shape)}")
        y = y.long()
        bad = (y < 0) & (y != IGNORE_INDEX)
        if batch and y.device.type != "meta" and bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise ValueError(f"class labels must be ≥ 0, got label {int(y[i])} at position {i} "
                             f"(only {IGNORE_INDEX} may be negative: it marks a sample that does not count)")
        return y
    if loss == "mse":
        if y is None:
            raise ValueError("loss='mse' needs targets y with the model output's shape")
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if not y.dtype.is_floating_point:
            raise TypeError(f"mse targets must be floating point (the model output's dtype), got {y.dtype}; "
                            "convert them with y.to(x.dtype)")
        if y.device.type != "meta" and not bool(torch.isfinite(y).all()):
            raise ValueError("mse targets y contain NaN or inf values")
    return y


def check_output(loss: LossSpec, out, y, batch: int) -> None:
    """Validate a model output ``out`` (from a plain forward pass) against the loss and the targets.

    Every loss: one tensor ``[B, ...]`` whose batch size is x's. Cross-entropy: logits ``[B, C]`` and labels
    in ``0..C-1``. MSE: ``y`` has exactly the output's shape and dtype (no broadcasting). A callable loss
    must return per-sample losses of shape ``[B]``; one with a ``check(output, y)`` method is asked to validate
    its targets first.
    """
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned a {type(out).__name__}, not a tensor: the loss needs one output "
                        "tensor [B, ...]; wrap the model so that its forward returns it (e.g. out[0] or "
                        "out['logits'])")
    if out.dim() == 0 or out.shape[0] != batch:
        raise ValueError(f"the model's output has shape {list(out.shape)} but x has {batch} points: the output "
                         f"must be [B, ...] with B = {batch} (does the forward reduce or reshape across the batch?)")
    if loss == "cross_entropy":
        if out.dim() != 2:
            raise ValueError(f"cross-entropy needs logits of shape [B, classes], the model returned "
                             f"{list(out.shape)}")
        classes = out.shape[1]
        if batch and y.device.type != "meta" and int(y.max()) >= classes:
            i = int(torch.nonzero(y >= classes)[0, 0])
            raise ValueError(f"class label {int(y[i])} at position {i} is out of range for a model with "
                             f"{classes} classes (labels must be in 0..{classes - 1})")
    elif loss == "mse":
        if tuple(y.shape) != tuple(out.shape):
            raise ValueError(f"mse targets must have the model output's shape {list(out.shape)}, got "
                             f"{list(y.shape)} (targets are not broadcast)")
        if y.dtype != out.dtype:
            raise TypeError(f"mse targets are {y.dtype} but the model output is {out.dtype}; "
                            f"convert them with y.to({out.dtype})")
    elif callable(loss):
        if callable(getattr(loss, "check", None)):     # a loss that validates its targets (lamda_ext.batches.OwnLoss)
            loss.check(out, y)
        per = loss(out, y)
        if not isinstance(per, torch.Tensor) or tuple(per.shape) != (batch,):
            got = list(per.shape) if isinstance(per, torch.Tensor) else type(per).__name__
            raise ValueError(f"a callable loss must return per-sample losses of shape [B]=[{batch}], got {got}")
