"""Model state around a measurement: a measurement never changes the model, nor the caller's inputs.

- The model runs on a copy of the caller's input (`fresh_input`), one per forward pass, wherever it would
  otherwise get the caller's own tensor: a model that changes its input in place (``x.flatten(1).add_(1)``)
  changes the copy, and every pass starts from the caller's values.
- Batch norm in train mode uses batch statistics, but its running statistics are left as
  they were (all backends see the same normalisation; nothing is updated).
- Dropout: every backend uses one mask per measurement. Backends that run the model once per
  direction replay the RNG state so that each direction sees the mask the Taylor engine draws.
- Under ``torch.inference_mode()`` a measurement leaves inference mode (`outside_inference_mode`):
  autograd cannot differentiate inside it, and would return zeros.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping

import torch
from torch import nn


def fresh_input(x):
    """A copy of a model input for one forward pass.

    Args:
        x: a tensor, or a mapping (a dict, a Hugging Face ``BatchEncoding``), list or tuple (named tuples
            included) holding tensors, nested; other values are passed through.

    Returns:
        The same structure with every tensor cloned (same dtype, device and values; a new storage), so that a
        model changing its input in place changes the copy and never the caller's tensor. A mapping whose type
        cannot be built from a dict comes back as a dict.
    """
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, Mapping):
        items = {k: fresh_input(v) for k, v in x.items()}
        try:
            return type(x)(items)
        except TypeError:
            return items
    if isinstance(x, (list, tuple)):
        items = [fresh_input(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else type(x)(items)
    return x


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.running_mean is not None:
            saved.append((m, m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean = m.running_var = m.num_batches_tracked = None
    try:
        yield
    finally:
        for m, rm, rv, nbt in saved:
            m.running_mean, m.running_var, m.num_batches_tracked = rm, rv, nbt


class RngReplay:
    """Snapshot of the RNG of ``device`` (and the CPU); `reset` returns to it."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.device = device
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def reset(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def _normal_tensor(a):
    return a.clone() if isinstance(a, torch.Tensor) and a.is_inference() else a


def outside_inference_mode(fn):
    """Decorator: run ``fn`` outside ``torch.inference_mode()`` when called under it.

    Inside inference mode ``fn`` runs with grad mode off (so the result is detached), with inference-tensor arguments
    cloned into normal tensors; the numbers are those computed outside inference mode. Elsewhere ``fn`` runs unchanged.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not torch.is_inference_mode_enabled():
            return fn(*args, **kwargs)
        with torch.inference_mode(False), torch.no_grad():
            args = tuple(_normal_tensor(a) for a in args)
            kwargs = {k: _normal_tensor(v) for k, v in kwargs.items()}
            return fn(*args, **kwargs)
    return wrapper
