"""Sharpness-Aware Minimization (Foret et al. 2021), with the adaptive variant (ASAM, Kwon et al. 2021).

One SAM update: the gradient g at w (first, unperturbed pass) gives the ascent step
``e = ρ · s ⊙ s ⊙ g / ‖s ⊙ g‖`` with ``s = |w|`` (adaptive) or ``s = 1``; the gradient at
``w + e`` (second pass) is then applied at w by the base optimizer.

Batch-norm statistics are taken from the unperturbed pass: with ``model=`` given, ``first_step``
freezes the running statistics of every train-mode batch norm (lamda_ext.frozen_batchnorm_stats) and
``second_step`` releases them, so the second forward pass normalises with its batch statistics but
leaves the running averages untouched. [`bn_frozen`][lamda.sam.bn_frozen] does the same as a context manager.

Usage (two explicit passes):

    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, model=model)
    loss_fn(model(x), y).backward(); opt.first_step(zero_grad=True)
    loss_fn(model(x), y).backward(); opt.second_step(zero_grad=True)

or with a closure that computes the loss and calls ``backward`` (SAM zeroes the gradients):

    def closure():
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lamda_ext import frozen_batchnorm_stats

__all__ = ["SAM", "bn_frozen"]


def bn_frozen(model: nn.Module):
    """Within the block, batch norms normalise with batch statistics but keep their running statistics.

    The same mechanism a λ measurement uses: [`lamda_ext.frozen_batchnorm_stats`][lamda_ext.frozen_batchnorm_stats].
    """
    return frozen_batchnorm_stats(model)


class SAM(torch.optim.Optimizer):
    """SAM around any base optimizer.

    Args:
        params: parameters or parameter groups (as for any optimizer).
        base_optimizer: the optimizer class (e.g. ``torch.optim.SGD``); built on SAM's param groups,
            so learning-rate schedulers attached to the SAM instance drive it.
        rho: radius of the ascent step (> 0).
        adaptive: scale the ascent by ``|w|`` (ASAM; use a larger ρ, e.g. 0.5-2).
        model: optional; when given, batch-norm running statistics are frozen between ``first_step``
            and ``second_step`` (taken from the unperturbed pass only).
        **kwargs: the base optimizer's arguments (lr, momentum, weight_decay, ...).
    """

    def __init__(self, params, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05,
                 adaptive: bool = False, model: nn.Module | None = None, **kwargs):
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError("base_optimizer must be a torch.optim.Optimizer class, e.g. torch.optim.SGD")
        defaults = dict(rho=float(rho), adaptive=bool(adaptive), **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model
        self._bn_saved: list | None = None

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = p.abs() if group["adaptive"] else 1.0
                norms.append((s * p.grad).norm(p=2))
        if not norms:
            raise RuntimeError("SAM.first_step: no parameter has a gradient; call backward() first")
        dev = norms[0].device
        return torch.stack([n.to(dev) for n in norms]).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move to ``w + e`` (the ascent step) using the current gradients."""
        norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = (p.pow(2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e)
                self.state[p]["e_w"] = e
        if self.model is not None:
            self._bn_saved = bn_frozen(self.model)
            self._bn_saved.__enter__()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to ``w`` and let the base optimizer apply the gradient taken at ``w + e``."""
        for group in self.param_groups:
            for p in group["params"]:
                e = self.state[p].pop("e_w", None) if p in self.state else None
                if e is not None:
                    p.sub_(e)
        if self._bn_saved is not None:
            self._bn_saved.__exit__(None, None, None)
            self._bn_saved = None
        self.base_optimizer.step()
        self._opt_called = True  # an optimizer step happened (what LR schedulers attached to SAM check)
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Both passes in one call; returns the loss of the unperturbed pass.

        ``closure`` computes the loss and calls ``backward()`` (no ``zero_grad`` needed, SAM zeroes the gradients before
        each pass).
        """
        if closure is None:
            raise ValueError("SAM.step needs a closure that computes the loss and calls backward(); "
                             "or call first_step() and second_step() around your own passes")
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss

    def load_state_dict(self, state_dict) -> None:
        """Restore a ``state_dict``, the base optimizer's included."""
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
