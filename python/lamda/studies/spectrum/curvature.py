"""The curvature whose top eigenpairs the spectrum study takes, and the data and gradient it is taken on.

The curvature is the Hessian of the mean cross-entropy over the first ``hessian_samples`` training samples, in
float64, with the model in eval mode (the L2 term, which would add 2·L2 to every eigenvalue, is left out, as in
the study). [`CURVATURES`][lamda.studies.spectrum.curvature.CURVATURES] maps a curvature's name to the function that
returns its checked top eigenpairs; [`top_eigenpairs`][lamda.studies.spectrum.curvature.top_eigenpairs] is what a cell
calls.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ...landscape.eigcheck import CheckedEigs, checked_eigs

__all__ = ["CURVATURES", "hessian_data", "full_gradient", "top_eigenpairs"]


def hessian_data(data, n: int | None, dtype=torch.float64, batch: int = 10000) -> list:
    """The curvature's data: the first ``n`` training samples (all when None) as ``(x, y)`` batches in ``dtype``."""
    x, y = data.x_train, data.y_train
    if n is not None:
        x, y = x[:n], y[:n]
    return [(x[i:i + batch].to(dtype), y[i:i + batch]) for i in range(0, x.shape[0], batch)]


def full_gradient(model, hdata) -> dict[str, torch.Tensor]:
    """Gradient of the sample-weighted mean CE over ``hdata`` (per parameter)."""
    model.zero_grad(set_to_none=True)
    n = sum(x.shape[0] for x, _ in hdata)
    for x, y in hdata:
        (F.cross_entropy(model(x), y, reduction="sum") / n).backward()
    g = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return g


def _hessian(model, hdata, *, k: int, which: str, method: str, tol: float, max_iter, generator) -> CheckedEigs:
    return checked_eigs(model, "cross_entropy", hdata, k=k, which=which, method=method, tol=tol, max_iter=max_iter,
                        generator=generator)


# curvature name → its checked top-k eigenpairs (model, data, k, which, method, tol, max_iter, generator)
CURVATURES: dict[str, Callable[..., CheckedEigs]] = {"hessian": _hessian}


def top_eigenpairs(model, hdata, s: dict, cfg: dict, generator: torch.Generator) -> CheckedEigs:
    """The top ``s["k"]`` eigenpairs of the study's curvature of ``model`` on ``hdata``, each checked by its residual.

    Order ``cfg["which"]``, solver ``cfg["method"]``, curvature ``cfg["curvature"]`` (default the Hessian).
    """
    kind = cfg.get("curvature", "hessian")
    if kind not in CURVATURES:
        raise ValueError(f"curvature must be one of {', '.join(CURVATURES)}, got {kind!r}")
    return CURVATURES[kind](model, hdata, k=s["k"], which=cfg["which"], method=cfg["method"],
                            tol=s["tol"] if s["tol"] is not None else 1e-8, max_iter=s["max_iter"],
                            generator=generator)
