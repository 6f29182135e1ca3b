"""Model state around a measurement: a measurement never changes the model.

- Batch norm in train mode uses batch statistics, but its running statistics are left as
  they were (all backends see the same normalisation; nothing is updated).
- Dropout: every backend uses one mask per measurement. Backends that run the model once per
  direction replay the RNG state so that each direction sees the mask the Taylor engine draws.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


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
    """Snapshot of the RNG of ``device`` (and the CPU); :meth:`reset` returns to it."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.device = device
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def reset(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
