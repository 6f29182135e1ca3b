"""Linearised maps shared by the HVPs and the Gauss–Newton-type products: ``torch.func.linearize`` with the
cheap-tangent op formulations active, the bytes such a map keeps, and how many rows one vmapped call takes.

A linearised map evaluates the primal part of a function once and keeps what its tangent part needs (the
activations, as constants of a traced graph); every later call replays only the tangent part.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from ._hvp_ops import ForwardOverReverseOps

__all__ = ["default_chunk", "linearize_map", "linearized_nbytes", "storage_bytes"]


def default_chunk(device: torch.device) -> int | None:
    """Rows per vmapped evaluation: all of them on a GPU; one at a time on the CPU, where the tangent passes
    are bound by memory traffic (K-batched activations ``[K·B, ...]`` leave the cache)."""
    return 1 if device.type == "cpu" else None


def linearize_map(g: Callable, primal, args: tuple = ()):
    """``torch.func.linearize`` of ``p ↦ g(p, *args)`` at ``primal``, functionalised and with ReLU's cheap-tangent
    formulation active: ``(primal output, tangent map)``.

    Functionalisation turns the in-place ops of a model (``out += x`` in a residual block) into out-of-place ones;
    traced as they are, they would update the kept primal values on every replay of the map. It reaches the values
    computed from ``primal`` and ``args``: pass every tensor ``g`` depends on (fixed parameters, buffers, the
    batch) in ``args`` rather than closing over it (see :class:`lamda_ext.params.Bound`)."""
    with ForwardOverReverseOps(), warnings.catch_warnings():
        # torch's constant folding warns about its own get_attr nodes
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        fg = torch.func.functionalize(g)
        return torch.func.linearize(lambda p: fg(p, *args), primal)


def storage_bytes(tensors, seen: set | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (those already in ``seen`` not counted; ``seen`` is
    updated)."""
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        try:
            st = t.untyped_storage()
            key, nbytes = st.data_ptr(), st.nbytes()
        except RuntimeError:      # a constant without a plain storage (e.g. a folded view): count its elements
            key, nbytes = ("tensor", id(t)), t.numel() * t.element_size()
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total


def linearized_nbytes(tangent_map: Callable, seen: set | None = None) -> int:
    """Bytes held by the constants of a linearised graph (distinct storages), 0 when none are found."""
    tensors = []
    for cell in getattr(tangent_map, "__closure__", None) or ():
        mod = cell.cell_contents
        if isinstance(mod, torch.nn.Module):
            tensors += list(mod.parameters()) + list(mod.buffers())
    return storage_bytes(tensors, seen)
