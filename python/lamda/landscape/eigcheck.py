"""Hessian (or other curvature) eigenpairs with a per-pair convergence check, for the landscape and spectrum studies.

``lamda_ext.hessian.hessian_eigs`` returns the Ritz pairs and only warns when Lanczos stops above its
tolerance. [`checked_eigs`][lamda.landscape.eigcheck.checked_eigs] adds, for every returned pair ``(θ_i, y_i)``, the
relative residual ``‖H y_i − θ_i y_i‖ / max_j |θ_j|`` (one extra Hessian-vector product per pair, computed here, not
taken from Lanczos) and the flag ``residual ≤ tol``, so an analysis can leave unconverged Ritz values out.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CheckedEigs", "checked_eigs"]


@dataclass
class CheckedEigs:
    """Checked eigenpairs of a Hessian solve.

    ``values [k]`` (float64, the order of ``which``), ``vectors [k, P]`` (the parameters' dtype), ``rel_residual [k]``,
    ``converged [k]`` (bool), ``tol``, ``which``, ``hvps`` (Hessian-vector products evaluated, including the check) and
    ``notes`` (the solver's warnings).
    """
    values: np.ndarray
    vectors: torch.Tensor
    rel_residual: np.ndarray
    converged: np.ndarray
    tol: float
    which: str
    hvps: int
    notes: list

    @property
    def all_converged(self) -> bool:
        """Whether every pair converged."""
        return bool(self.converged.all())


def checked_eigs(model, loss=None, data=None, *, k: int, which: str, tol: float, max_iter: int | None = None,
                 method: str = "lanczos", generator: torch.Generator | None = None, **operator_kw) -> CheckedEigs:
    """``hessian_eigs`` of the mean ``loss`` over ``data`` plus the residual check described above.

    ``model`` may be a [`HessianOperator`][lamda_ext.hessian.HessianOperator] already (``loss`` and ``data`` then
    stay None): several solves on one operator trace its tangent graph once. Otherwise ``operator_kw`` (e.g.
    ``curvature="ggn"``) go to the operator built here, and ``H`` above is then that curvature matrix.
    """
    from lamda_ext.hessian import HessianOperator, hessian_eigs
    if isinstance(model, HessianOperator):
        if loss is not None or data is not None or operator_kw:
            raise ValueError("checked_eigs of a HessianOperator takes no loss, data or operator arguments")
        op = model
    else:
        op = HessianOperator(model, loss, data, **operator_kw)
    start = op.n_products
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        vals, vecs = hessian_eigs(op, k=k, which=which, method=method, tol=tol, max_iter=max_iter,
                                  generator=generator)
    notes = [str(w.message) for w in caught if "hessian_eigs" in str(w.message)]
    Y = vecs.detach()
    HY = op.matvec(Y)                                                        # rows [k, P]
    theta = vals.to(Y.device, Y.dtype)
    res = torch.linalg.vector_norm(HY - theta[:, None] * Y, dim=1).double().cpu().numpy()
    scale = float(vals.abs().max()) or 1.0
    rel = res / scale
    return CheckedEigs(values=vals.double().cpu().numpy(), vectors=Y, rel_residual=rel, converged=rel <= tol,
                       tol=float(tol), which=which, hvps=int(op.n_products - start), notes=notes)
