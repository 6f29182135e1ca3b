"""The optimizer of a training run.

Adam or SGD (wrapped in SAM when a regulariser asks for it), its learning-rate schedule, and its state for checkpoints.
"""
from __future__ import annotations

import torch

from .regularizers import RegularizerSet
from .sam import SAM

__all__ = ["make_optimizer", "lr_scheduler", "optimizer_state", "load_optimizer_state"]


def make_optimizer(model, name: str, lr: float, momentum: float, regs: RegularizerSet):
    """``"adam"`` or ``"sgd"`` (with ``momentum``) over ``model``'s parameters.

    With the regularisers' optimizer settings (weight decay); wrapped in [`lamda.sam.SAM`][lamda.sam.SAM] when ``regs``
    holds a SAM regulariser.
    """
    kw = {"lr": lr, **regs.optimizer_kwargs()}
    if name == "adam":
        base, kw2 = torch.optim.Adam, {}
    else:
        base, kw2 = torch.optim.SGD, {"momentum": momentum}
    if regs.sam_rho is not None:
        return SAM(model.parameters(), base, rho=regs.sam_rho, model=model, **kw, **kw2)
    return base(model.parameters(), **kw, **kw2)


def lr_scheduler(opt, schedule: str, epochs: int):
    """Cosine annealing over ``epochs`` for ``schedule="cosine"``; None for ``"none"``."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    return None


def optimizer_state(opt) -> dict:
    """The optimizer's state dict (and its base optimizer's, for SAM)."""
    st = {"main": opt.state_dict()}
    if hasattr(opt, "base_optimizer"):
        st["base"] = opt.base_optimizer.state_dict()
    return st


def load_optimizer_state(opt, st: dict) -> None:
    """Restore `optimizer_state`'s ``st`` into ``opt`` (SAM and its base keep sharing their groups)."""
    opt.load_state_dict(st["main"])
    if "base" in st and hasattr(opt, "base_optimizer"):
        opt.base_optimizer.load_state_dict(st["base"])
        opt.param_groups = opt.base_optimizer.param_groups
