"""Functional parameter plumbing: the differentiated parameters as a flat vector ``[P]`` and the model as a
function of them (``torch.func.functional_call``), shared by the HVPs, the Hessian operator and the research layer.

P counts every parameter with ``requires_grad=True``, flattened and concatenated in ``model.parameters()`` order.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["trainable_parameters", "flatten_params", "unflatten_params", "functional_state", "model_loss_fn", "Bound",
           "split_bound"]


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters requiring grad, by name, in ``model.parameters()`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def flatten_params(tensors) -> torch.Tensor:
    """Concatenate tensors (dict values or a sequence) into one flat vector ``[P]``."""
    vals = list(tensors.values()) if isinstance(tensors, dict) else list(tensors)
    return torch.cat([t.reshape(-1) for t in vals])


def unflatten_params(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split a flat ``[..., P]`` vector into views shaped like ``like`` (leading dims kept)."""
    out, i = {}, 0
    lead = flat.shape[:-1]
    for name, p in like.items():
        n = p.numel()
        out[name] = flat[..., i:i + n].reshape(*lead, *p.shape)
        i += n
    if i != flat.shape[-1]:
        raise ValueError(f"flat vector has {flat.shape[-1]} entries but the parameters have {i}")
    return out


def functional_state(model: nn.Module, names: set[str] | None = None) -> dict[str, torch.Tensor | None]:
    """Everything except the differentiated parameters, for ``functional_call``.

    Parameters not in ``names`` are passed detached; buffers are passed as they are,
    except the running statistics of train-mode batch norms, which become ``None`` so
    that the call normalises with batch statistics without updating any buffer.
    """
    names = set() if names is None else names
    state: dict[str, torch.Tensor | None] = {}
    for name, p in model.named_parameters():
        if name not in names:
            state[name] = p.detach()
    for name, b in model.named_buffers():
        state[name] = b.detach() if b is not None else None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training and mod.track_running_stats:
            prefix = f"{mod_name}." if mod_name else ""
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                if f"{prefix}{buf}" in state:
                    state[f"{prefix}{buf}"] = None
    return state


class Bound:
    """``f(params) = fn(params, *args)``: a function of the parameters whose other inputs (the model's fixed
    parameters and buffers, the batch) are kept as explicit arguments rather than closed over, so that a transform
    can treat them as inputs (:func:`lamda_ext.linearization.linearize_map` functionalises them: an in-place op on
    a value computed from them alone, such as ``out += x`` in a layer that is not differentiated, then becomes
    out-of-place).

    Args:
        fn: ``(params, *args) -> value``. args: its other inputs.
    """

    def __init__(self, fn: Callable, *args):
        self.fn, self.args = fn, args

    def __call__(self, params):
        return self.fn(params, *self.args)


def split_bound(f: Callable) -> tuple[Callable, tuple]:
    """``(fn, args)`` with ``f(params) = fn(params, *args)``: a :class:`Bound`'s parts, else ``(f, ())``."""
    return (f.fn, f.args) if isinstance(f, Bound) else (f, ())


def model_loss_fn(model: nn.Module, x: torch.Tensor, y, loss_fn: Callable, names: list[str]) -> Bound:
    """``f(params_dict) -> batch-mean loss`` evaluated through ``functional_call`` (a :class:`Bound` over the
    model's other parameters and buffers, ``x`` and ``y``)."""
    def f(params: dict[str, torch.Tensor], state, x, y) -> torch.Tensor:
        out = functional_call(model, (params, state), (x,))
        return loss_fn(out, y).mean()

    return Bound(f, functional_state(model, set(names)), x, y)
