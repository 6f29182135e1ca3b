"""What the directional-derivative benchmarks time, in one place."""
from __future__ import annotations

from typing import Callable

import torch

import lamda_ext


def derivs_fn(model, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, order: int, backend: str) -> Callable[[], None]:
    """The timed call: ``directional_derivs`` with ``backend``, or for ``backend="floor"`` one plain forward of the
    primal batch and the K·B tangent batch together (x ``[B, *S]``, u ``[K, B, *S]``); synchronised on CUDA."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    if backend == "floor":
        xs = torch.cat([x, u.reshape((-1,) + tuple(x.shape[1:]))])

        def fn():
            with torch.no_grad():
                model(xs)
            sync()
    else:
        def fn():
            with torch.no_grad():
                lamda_ext.directional_derivs(model, x, y, order=order, directions=u, backend=backend)
            sync()
    return fn
