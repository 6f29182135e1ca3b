"""Loss functions a model computes itself (a Hugging Face model's own loss).

``F.cross_entropy`` of a series of logits through the run's loss head (the fused kernels under ``backend='fused'``).
"""
from __future__ import annotations

import torch

from ...losses import split_ignored
from ..series import current_context, is_series
from ..series_ops import from_terms, order
from .shape import movedim, reshape

__all__ = ["cross_entropy"]


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """``F.cross_entropy`` of a series of logits ``[N, C, *d]`` (or ``[C]``) and class-index targets.

    Entries labelled ``ignore_index`` count 0 and ``reduction="mean"`` divides by the counted entries, as torch does.

    Raises:
        NotImplementedError: class-probability targets, class weights, the legacy size_average/reduce arguments.
        ValueError: an unknown reduction.
    """
    if is_series(target) or not isinstance(target, torch.Tensor) or target.is_floating_point():
        raise NotImplementedError("Taylor mode: cross_entropy takes class-index targets (an integer tensor) only; "
                                  "use backend='autograd' for class probabilities")
    if weight is not None or size_average is not None or reduce is not None:
        raise NotImplementedError("Taylor mode: cross_entropy with class weights or the legacy size_average/reduce "
                                  "arguments has no rule; use backend='autograd'")
    classes = input.c0.shape[1 if input.c0.dim() >= 2 else 0]
    flat = reshape(movedim(input, 1, -1) if input.c0.dim() > 2 else input, -1, classes)
    safe, keep = split_ignored(target.reshape(-1), ignore_index)
    terms = current_context().impl.cross_entropy(flat.terms(), safe, order() + 1, float(label_smoothing))
    if keep is not None:
        terms = [t * keep.to(t.dtype) for t in terms]
    per = from_terms(terms).reshape(target.shape)      # a series, or a tensor when the logits are constant in t
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    if reduction != "mean":
        raise ValueError(f"cross_entropy: unknown reduction {reduction!r}")
    return per.sum() * (1.0 / (float(keep.sum()) if keep is not None else float(target.numel())))
