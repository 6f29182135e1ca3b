"""The curvatures whose top eigenpairs the spectrum study takes, and the data and gradient they are taken on.

Each curvature is a matrix of the mean cross-entropy over the first ``hessian_samples`` training samples, in
float64, with the model in eval mode (the L2 term, which would add 2·L2 to every eigenvalue, is left out, as in
the study): ``"hessian"``, the loss Hessian (the study's), or ``"ggn"``, the generalised Gauss–Newton matrix
``Jᵀ ∇²ℓ J`` (J: the Jacobian of the logits; positive semi-definite). :data:`CURVATURES` maps a curvature's name
to the function that returns its checked top eigenpairs; :func:`top_eigenpairs` is what a cell calls.
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


def _curvature(kind: str) -> Callable[..., CheckedEigs]:
    """The checked top-k eigenpairs of the curvature ``kind`` of ``lamda_ext.hessian.HessianOperator``."""
    def eigenpairs(model, hdata, *, k: int, which: str, method: str, tol: float, max_iter, generator) -> CheckedEigs:
        return checked_eigs(model, "cross_entropy", hdata, k=k, which=which, method=method, tol=tol,
                            max_iter=max_iter, generator=generator, curvature=kind)
    return eigenpairs


# curvature name → its checked top-k eigenpairs (model, data, k, which, method, tol, max_iter, generator)
CURVATURES: dict[str, Callable[..., CheckedEigs]] = {"hessian": _curvature("hessian"), "ggn": _curvature("ggn")}


def top_eigenpairs(model, hdata, s: dict, cfg: dict, generator: torch.Generator, kind: str = "hessian") -> CheckedEigs:
    """The top ``s["k"]`` eigenpairs of the curvature ``kind`` of ``model`` on ``hdata``, each checked by its residual.

    Order ``cfg["which"]``, solver ``cfg["method"]``; ``kind`` is a key of ``CURVATURES``.

    Raises:
        ValueError: ``kind`` is not a key of :data:`CURVATURES`.

    """
    if kind not in CURVATURES:
        raise ValueError(f"curvature must be one of {', '.join(CURVATURES)}, got {kind!r}")
    return CURVATURES[kind](model, hdata, k=s["k"], which=cfg["which"], method=cfg["method"],
                            tol=s["tol"] if s["tol"] is not None else 1e-8, max_iter=s["max_iter"],
                            generator=generator)
