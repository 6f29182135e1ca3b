"""The Hessian against the GGN, model by model.

How far apart their top eigenvalues are rank by rank (the C − 1 outliers and the rest of the top-k apart), and the gap
after C − 1 in each.

Both spectra are the converged top-k eigenvalues of a model sorted in descending order (unconverged pairs left
out), compared rank by rank; only non-collapsed models are compared.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import NUM_CLASSES

__all__ = ["Comparison", "compare", "OUTLIER_RTOL"]

OUTLIER_RTOL = 0.10     # "the Hessian's outliers are the GGN's": median relative difference of the top C − 1 ≤ this


def _descending(e: np.ndarray) -> np.ndarray:
    """The converged values of one model's ``[k]`` array, descending, NaN (unconverged) last."""
    return -np.sort(-e)


def _rel_diff(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``|h − g| / |g|`` rank by rank, NaN where either is missing or ``g`` is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.abs(h - g) / np.abs(g)
    return np.where(np.isfinite(d), d, np.nan)


def _gap(e: np.ndarray, c: int) -> float:
    """λ_(C−1) / λ_C of a descending array (NaN when either is missing or not positive)."""
    if e.size < c or not (np.isfinite(e[c - 2:c]).all() and (e[c - 2:c] > 0).all()):
        return np.nan
    return float(e[c - 2] / e[c - 1])


def _nanstat(f, a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(f(a)) if a.size else np.nan


@dataclass
class Comparison:
    """Per compared model (``n`` non-collapsed ones).

    ``top_diff`` the median over ranks 1…C − 1 of ``|λ_H − λ_G| / |λ_G|`` and ``top_max`` its largest; ``bulk_diff`` the
    median over ranks C…k (NaN when k < C); ``gap_hessian``, ``gap_ggn`` the ratio λ_(C−1)/λ_C of each; ``n_out_*`` the
    position of each one's largest ratio gap (:func:`~lamda.studies.spectrum.analysis.outlier_count`). ``c`` = the
    number of classes.
    """

    n: int
    c: int
    top_diff: np.ndarray
    top_max: np.ndarray
    bulk_diff: np.ndarray
    gap_hessian: np.ndarray
    gap_ggn: np.ndarray
    n_out_hessian: np.ndarray
    n_out_ggn: np.ndarray

    def median(self, name: str) -> float:
        """The median over the compared models of the per-model array ``name`` (NaN entries left out)."""
        return _nanstat(np.median, getattr(self, name))

    @property
    def outliers_shared(self) -> bool:
        """The Hessian's top C − 1 lie within :data:`OUTLIER_RTOL` of the GGN's (median over models)."""
        return bool(self.median("top_diff") <= OUTLIER_RTOL)

    @property
    def bulk_departs(self) -> bool:
        """The ranks after C − 1 differ more than the top C − 1 (medians over models; False when unknown)."""
        return bool(self.median("bulk_diff") > self.median("top_diff"))


def compare(hess, ggn, c: int = NUM_CLASSES) -> Comparison:
    """The :class:`Comparison` of two :class:`~lamda.studies.spectrum.analysis.Spectra` of the same models."""
    keep = ~hess.collapsed
    rows = {name: [] for name in ("top_diff", "top_max", "bulk_diff", "gap_hessian", "gap_ggn")}
    for h_row, g_row in zip(hess.eig_c[keep], ggn.eig_c[keep]):
        h, g = _descending(h_row), _descending(g_row)
        d = _rel_diff(h, g)
        rows["top_diff"].append(_nanstat(np.median, d[:c - 1]))
        rows["top_max"].append(_nanstat(np.max, d[:c - 1]))
        rows["bulk_diff"].append(_nanstat(np.median, d[c - 1:]))
        rows["gap_hessian"].append(_gap(h, c))
        rows["gap_ggn"].append(_gap(g, c))
    arrays = {name: np.array(v, float) for name, v in rows.items()}
    return Comparison(n=int(keep.sum()), c=c, n_out_hessian=hess.n_out[keep], n_out_ggn=ggn.n_out[keep], **arrays)
