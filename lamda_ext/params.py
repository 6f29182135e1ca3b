"""Functional parameter plumbing.

The differentiated parameters as a flat vector ``[P]`` and the model as a function of them
(``torch.func.functional_call``), shared by the HVPs, the Hessian operator and the research layer.

P counts every parameter with ``requires_grad=True``, flattened and concatenated in ``model.parameters()`` order.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from ._state import fresh_input

__all__ = ["trainable_parameters", "select_parameters", "ParameterSubset", "flatten_params", "unflatten_params",
           "functional_state", "model_loss_fn", "Bound", "split_bound"]


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters requiring grad, by name, in ``model.parameters()`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _positional_count(fn) -> int:
    """How many positional arguments ``fn`` takes (0 when its signature cannot be read)."""
    import inspect
    try:
        return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 0


def _wanted_ids(model: nn.Module, spec) -> set[int]:
    """Identities of the parameters ``spec`` names (see [`select_parameters`][lamda_ext.params.select_parameters])."""
    aliases = dict(model.named_parameters(remove_duplicate=False))     # tied weights under every name
    if isinstance(spec, nn.Module):
        if not any(spec is m for m in model.modules()):
            raise ValueError(f"params: the {type(spec).__name__} given is not a submodule of the model")
        return {id(p) for p in spec.parameters()}
    if callable(spec):
        two = _positional_count(spec) >= 2
        try:
            return {id(p) for n, p in aliases.items() if (spec(n, p) if two else spec(n))}
        except TypeError as err:
            raise TypeError("params as a callable must be a predicate f(name) -> bool or f(name, parameter) -> "
                            f"bool; calling it failed: {err}") from err
    items = list(spec.values()) if isinstance(spec, dict) else [spec] if isinstance(spec, (str, torch.Tensor)) \
        else list(spec)
    modules = dict(model.named_modules())
    ids = set()
    for it in items:
        if isinstance(it, torch.Tensor):
            if not any(it is p for p in aliases.values()):
                raise ValueError("params: some of the given tensors are not parameters of the model")
            ids.add(id(it))
        elif isinstance(it, str) and it in aliases:
            ids.add(id(aliases[it]))
        elif isinstance(it, str) and it in modules:
            ids.update(id(p) for p in modules[it].parameters())
        elif isinstance(it, str):
            raise ValueError(f"params: the model has no parameter or submodule named {it!r}")
        else:
            raise TypeError("params must be names of parameters or submodules, parameter tensors, a predicate "
                            f"f(name) or f(name, parameter) -> bool, or a submodule; got an item of type "
                            f"{type(it).__name__}")
    return ids


def select_parameters(model: nn.Module, spec=None) -> dict[str, torch.Tensor]:
    """The parameters a ``params=`` argument selects, by name, in ``model.parameters()`` order.

    Args:
        model: the network.
        spec: None (every parameter with ``requires_grad``); a name or a list of names — of parameters
            (``"lm_head.weight"``, tied weights under any of their names) or of submodules
            (``"transformer.h.1"``: all its parameters); parameter tensors or a dict of them; a predicate
            ``f(name) -> bool`` over parameter names (e.g. ``lambda n: "lora_" in n``) or ``f(name, parameter) ->
            bool``; or a submodule of ``model`` (``model.transformer.h[-1]``).

    Returns:
        ``{name: parameter}``, each parameter once (tied weights under their first name).

    Raises:
        ValueError: a name, tensor or module that is not the model's, or an empty selection.
        TypeError: a list entry that is neither a name nor a tensor.
    """
    if spec is None:
        sel = trainable_parameters(model)
        if not sel:
            raise ValueError("the model has no parameters with requires_grad=True")
        return sel
    ids = _wanted_ids(model, spec)
    sel = {n: p for n, p in model.named_parameters() if id(p) in ids}
    if not sel:
        raise ValueError("params selects no parameter of the model")
    return sel


class ParameterSubset(nn.Module):
    """``model`` seen through only some of its parameters.

    ``parameters()``/``named_parameters()`` list the selected ones (names prefixed ``model.``), everything else
    (forward, buffers, the other parameters as constants) is the model's own. Every tool that differentiates "all
    parameters" of a module then differentiates just the selection.

    Args:
        model: the network; its train/eval mode is mirrored, never changed.
        selected: ``{name: parameter}`` from [`select_parameters`][lamda_ext.params.select_parameters]; None: every
            parameter.
    """

    def __init__(self, model: nn.Module, selected: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.model = model
        self.training = model.training
        self.keep = None if selected is None else frozenset(id(p) for p in selected.values())

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The selected parameters (all of them with ``remove_duplicate=False``).

        ``remove_duplicate=False`` is how ``torch.func.functional_call`` finds tied weights: every parameter is listed
        then, so that a substituted weight reaches all modules that share it.
        """
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if self.keep is None or id(p) in self.keep or not remove_duplicate:
                yield name, p

    def forward(self, *args, **kwargs):
        """Call the wrapped model."""
        return self.model(*args, **kwargs)


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
    for name, p in nn.Module.named_parameters(model):      # all of them, also past a ParameterSubset's selection
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
    """``f(params) = fn(params, *args)``.

    A function of the parameters whose other inputs (the model's fixed parameters and buffers, the batch) are kept as
    explicit arguments rather than closed over, so that a transform can treat them as inputs.

    Args:
        fn: ``(params, *args) -> value``. args: its other inputs.
    """

    def __init__(self, fn: Callable, *args):
        self.fn, self.args = fn, args

    def __call__(self, params):
        """``fn(params, *args)``."""
        return self.fn(params, *self.args)


def split_bound(f: Callable) -> tuple[Callable, tuple]:
    """``(fn, args)`` with ``f(params) = fn(params, *args)``: a `Bound`'s parts, else ``(f, ())``."""
    return (f.fn, f.args) if isinstance(f, Bound) else (f, ())


def model_loss_fn(model: nn.Module, x: torch.Tensor, y, loss_fn: Callable, names: list[str]) -> Bound:
    """``f(params_dict) -> batch-mean loss`` evaluated through ``functional_call``.

    A [`Bound`][lamda_ext.params.Bound] over the model's other parameters and buffers, ``x`` and ``y``; each call runs
    on a copy of ``x`` (the model may change its input in place; ``x`` stays as the caller passed it).
    """
    def f(params: dict[str, torch.Tensor], state, x, y) -> torch.Tensor:
        out = functional_call(model, (params, state), (fresh_input(x),))
        return loss_fn(out, y).mean()

    return Bound(f, functional_state(model, set(names)), x, y)
