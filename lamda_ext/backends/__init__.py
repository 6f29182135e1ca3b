"""Backends computing directional derivatives; see DESIGN.md §2.

Each backend exposes ``input_derivs(model, x, y, u, order, loss, label_smoothing)`` → ``[B, K, N]``
and ``params_derivs(model, x, y, v, order, loss, label_smoothing)`` → ``[K, N]``.
"""
from . import autograd, func, taylor

BACKENDS = {"autograd": autograd, "func": func, "taylor": taylor.composite, "fused": taylor.fused}
NAMES = ("auto",) + tuple(BACKENDS)
