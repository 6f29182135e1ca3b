"""Linearised maps shared by the HVPs and the Gauss–Newton-type products.

The tangent map of a function at a point ([`lamda_ext.linearize.linearize`][lamda_ext.linearize.linearize], with the
cheap-tangent op formulations active), the bytes such a map keeps, and how many rows one vmapped call takes.

A linearised map evaluates the primal part of a function once and keeps what its tangent part needs (the
activations, as constants of a traced graph); every later call replays only the tangent part. A function whose
graph cannot be replayed consistently, or cannot be traced (Python control flow on tensor values), gets a map that
runs one ``jvp`` per call instead.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp

from ._hvp_ops import ForwardOverReverseOps
from .linearize import TangentMap, linearize
from .routing import torch_jvp_warning_filtered

__all__ = ["default_chunk", "tangent_map", "replays", "linearize_map", "linearized_nbytes", "storage_bytes"]


def default_chunk(device: torch.device) -> int | None:
    """Rows per vmapped evaluation.

    All of them on a GPU; one at a time on the CPU, where the tangent passes are bound by memory traffic (K-batched
    activations ``[K·B, ...]`` leave the cache).
    """
    return 1 if device.type == "cpu" else None


class _EagerMap:
    """The tangent map of ``f`` at ``primal`` evaluated afresh on every call (one ``jvp``)."""

    def __init__(self, f: Callable, primal):
        self.f, self.primal = f, primal

    def __call__(self, tangent):
        with ForwardOverReverseOps(), torch_jvp_warning_filtered():
            return jvp(self.f, (self.primal,), (tangent,))[1]


def tangent_map(g: Callable, primal, args: tuple = ()) -> Callable:
    """The tangent map of ``p ↦ g(p, *args)`` at ``primal``, with ReLU's cheap-tangent formulation active.

    A [`lamda_ext.linearize.TangentMap`][lamda_ext.linearize.TangentMap] (traced once, replayed per call; in-place
    writes of the model functionalised), or, where no consistent replay exists or the function cannot be traced, a map
    that runs one ``jvp`` per call ([`replays`][lamda_ext.linearization.replays] tells which).
    """
    def f(p):
        return g(p, *args)

    with ForwardOverReverseOps():
        try:
            kept = linearize(f, primal)
        except RuntimeError as err:       # Python control flow on tensor values: no trace
            if "data-dependent" not in str(err):
                raise
            kept = None
    return kept if kept is not None else _EagerMap(f, primal)


def replays(tangent: Callable) -> bool:
    """Whether a map of `tangent_map` replays a kept graph (else each call runs its own ``jvp``)."""
    return isinstance(tangent, TangentMap)


def linearize_map(g: Callable, primal, args: tuple = ()):
    """``(output, tangent map)`` of ``p ↦ g(p, *args)`` at ``primal``.

    The tangent map from [`tangent_map`][lamda_ext.linearization.tangent_map], the output from one more plain
    evaluation.
    """
    with ForwardOverReverseOps():
        out = g(primal, *args)
    return out, tangent_map(g, primal, args)


def storage_bytes(tensors, seen: set | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors``.

    Those already in ``seen`` are not counted; ``seen`` is updated; forward-mode AD's symbolic zeros have none.
    """
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        if t._is_zerotensor():
            continue
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
    """Bytes held by the constants of a linearised map (distinct storages), 0 for a map that keeps nothing."""
    if not isinstance(tangent_map, TangentMap):
        return 0
    gm = tangent_map.graph_module
    return storage_bytes(list(gm.parameters()) + list(gm.buffers()), seen)
