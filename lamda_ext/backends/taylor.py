"""Taylor-mode backends: ``taylor`` (composite torch rules) and ``fused`` (C++/CUDA kernels)."""
from __future__ import annotations

from types import SimpleNamespace

from ..taylor import engine
from ..taylor.impl import Composite, Fused


def _backend(make_impl):
    return SimpleNamespace(
        input_derivs=lambda model, x, y, u, order, loss, label_smoothing=0.0:
            engine.input_derivs(model, x, y, u, order, loss, label_smoothing, make_impl()),
        params_derivs=lambda model, x, y, v, order, loss, label_smoothing=0.0:
            engine.params_derivs(model, x, y, v, order, loss, label_smoothing, make_impl()),
    )


composite = _backend(Composite)
fused = _backend(Fused)
