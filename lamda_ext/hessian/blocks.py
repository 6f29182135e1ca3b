"""Parameter blocks: which parameters an operator differentiates (``params=``), and the per-layer blocks of
``per_layer=True`` (parameters grouped by the module that owns them)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..params import trainable_parameters

__all__ = ["select_params", "layer_blocks", "ROOT_BLOCK"]

ROOT_BLOCK = "<root>"       # the block of parameters registered on the model itself


def _by_predicate(model: nn.Module, pred: Callable) -> set[int]:
    try:
        return {id(p) for n, p in model.named_parameters() if pred(n, p)}
    except TypeError as err:
        raise TypeError("params as a callable must be a predicate (name, parameter) -> bool; calling it "
                        f"failed: {err}") from err


def _by_module(model: nn.Module, module: nn.Module) -> set[int]:
    if not any(m is module for m in model.modules()):
        raise ValueError(f"params: the {type(module).__name__} given is not a submodule of the model")
    return {id(p) for p in module.parameters()}


def _by_items(model: nn.Module, items) -> set[int]:
    named = dict(model.named_parameters())
    wanted = set()
    for p in items:
        if isinstance(p, str):
            if p not in named:
                raise ValueError(f"params: the model has no parameter named {p!r}")
            wanted.add(id(named[p]))
        elif isinstance(p, torch.Tensor):
            wanted.add(id(p))
        else:
            raise TypeError("params must be parameter names, parameter tensors, a predicate (name, parameter) "
                            f"-> bool or a submodule; got an item of type {type(p).__name__}")
    return wanted


def select_params(model: nn.Module, params=None) -> dict[str, torch.Tensor]:
    """The parameters to differentiate, by name, in ``model.named_parameters()`` order.

    Args:
        model: the model.
        params: None (every parameter with ``requires_grad``); names or tensors (a sequence, or a dict whose
            values are tensors); a predicate ``(name, parameter) -> bool``; or a submodule of ``model`` (its
            parameters).

    Raises:
        ValueError: a name or tensor that is not a parameter of the model, a module that is not a submodule, or
            an empty selection. TypeError: an item of another type.
    """
    if params is None:
        sel = trainable_parameters(model)
        if not sel:
            raise ValueError("the model has no parameters with requires_grad=True")
        return sel
    if isinstance(params, nn.Module):
        wanted = _by_module(model, params)
    elif isinstance(params, dict):
        wanted = _by_items(model, params.values())
    elif callable(params):
        wanted = _by_predicate(model, params)
    elif isinstance(params, torch.Tensor):
        wanted = _by_items(model, [params])
    else:
        wanted = _by_items(model, params)
    sel = {n: p for n, p in model.named_parameters() if id(p) in wanted}
    if len(sel) != len(wanted):
        raise ValueError("params: some of the given tensors are not parameters of the model")
    if not sel:
        raise ValueError("params selects no parameter of the model")
    return sel


def layer_blocks(names) -> dict[str, list[str]]:
    """Parameter names grouped by their owning module (the name up to its last dot; :data:`ROOT_BLOCK` for
    parameters of the model itself), in order of first appearance."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        owner = n.rsplit(".", 1)[0] if "." in n else ROOT_BLOCK
        blocks.setdefault(owner, []).append(n)
    return blocks
