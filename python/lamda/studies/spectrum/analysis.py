"""Post-hoc analysis of the spectrum study from its cell records.

The study's ``Model-{ID}.csv`` tables, the eigenvalue arrays of every computed curvature (unconverged pairs left out),
collapse and epoch-cap flags, the outlier count, the trend of λ_max with L2 and its correlation with test accuracy (from
the primary curvature: the Hessian when computed), and with both curvatures the Hessian and GGN spectra side by side.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from ...result_files import read_json, write_csv, write_npz, write_text
from ...stats import CorrelationCI, pearson_ci
from ..runner import require_complete
from . import figures, report
from .config import (COLLAPSE_ACC, COMPARE_FIGURE, DATA_DIR, MODEL_COLUMNS, curvatures, grid_cells, key_prefix,
                     l2_label)

__all__ = ["analyze", "is_collapsed", "outlier_count", "Spectra", "spectra", "Trend", "l2_trend"]


def is_collapsed(test_accuracy_pct) -> np.ndarray:
    """True where the test accuracy (%) is at chance level: < `COLLAPSE_ACC`."""
    return np.asarray(test_accuracy_pct, float) < COLLAPSE_ACC


def outlier_count(vals: np.ndarray) -> int:
    """Position of the largest ratio gap λ_i / λ_{i+1} among the positive top eigenvalues (0 when < 2)."""
    v = np.sort(np.asarray(vals, float))[::-1]
    v = v[v > 0]
    if v.size < 2:
        return 0
    return int(np.argmax(v[:-1] / v[1:]) + 1)


def _column(rows: dict, ids: list, key: str, dtype=float) -> np.ndarray:
    """The record column ``key`` of every model, ``[ids, L2 values, ...]``."""
    return np.array([[r[key] for r in rows[i]] for i in ids], dtype)


@dataclass
class Spectra:
    """Every model's numbers for the curvature ``kind``, ``[ids, L2 values]``.

    Eigenvalue arrays are ``[ids, L2 values, k]`` in the order of ``which``.
    ``eig`` as computed, ``eig_c`` with unconverged pairs as NaN; ``lam_max`` the largest converged eigenvalue;
    ``n_out`` the outlier count per model and ``n_typ`` its median; ``products`` the curvature-vector products per
    model; ``get(key)`` any record column.
    """

    grid: np.ndarray
    rows: dict
    ids: list
    eig: np.ndarray
    conv: np.ndarray
    res: np.ndarray
    acc: np.ndarray
    eig_c: np.ndarray
    lam_max: np.ndarray
    collapsed: np.ndarray
    capped: np.ndarray
    n_out: np.ndarray
    n_typ: int
    kind: str = "hessian"

    def get(self, key: str, dtype=float) -> np.ndarray:
        """The record column ``key`` as an array ``[ids, L2 values]`` of ``dtype``."""
        return _column(self.rows, self.ids, key, dtype)

    @property
    def l2(self) -> np.ndarray:
        """The L2 strength of every model, ``[ids, L2 values]``."""
        return np.tile(self.grid, (len(self.ids), 1))

    @property
    def products(self) -> np.ndarray:
        """The curvature-vector products (Lanczos and check) of every model, ``[ids, L2 values]``."""
        return self.get(f"{key_prefix(self.kind)}hvps", int)


def spectra(rows: dict, ids: list, grid: np.ndarray, kind: str = "hessian") -> Spectra:
    """The arrays of ``Spectra`` of the curvature ``kind`` from the cell records ``rows[id]``.

    ``rows[id]`` holds one record per L2 value, in grid order.
    """
    pre = key_prefix(kind)
    eig, conv = _column(rows, ids, f"{pre}eigenvalues"), _column(rows, ids, f"{pre}converged", bool)
    acc = _column(rows, ids, "Test_Accuracy")
    eig_c = np.where(conv, eig, np.nan)                                      # unconverged → NaN (never plotted)
    lam_max = np.array([[np.nanmax(e) if np.isfinite(e).any() else np.nan for e in row] for row in eig_c])
    n_out = np.array([[outlier_count(v[np.isfinite(v)]) for v in e] for e in eig_c])
    return Spectra(grid, rows, ids, eig, conv, _column(rows, ids, f"{pre}rel_residual"), acc, eig_c, lam_max,
                   is_collapsed(acc), _column(rows, ids, "epoch_cap", bool), n_out,
                   int(np.median(n_out)) if n_out.size else 0, kind)


@dataclass
class Trend:
    """Spearman ρ and p of λ_max against L2 over the non-collapsed models (None: too few for a trend)."""

    rho: float | None
    p: float | None
    n: int


def l2_trend(sp: Spectra) -> Trend:
    """The monotone trend of λ_max with L2 over the non-collapsed models (needs ≥ 3 L2 values and models)."""
    from scipy import stats
    keep = ~sp.collapsed
    if sp.grid.size >= 3 and keep.sum() >= 3 and np.ptp(sp.lam_max[keep]) > 0:
        r = stats.spearmanr(sp.l2[keep], sp.lam_max[keep])
        return Trend(float(r.statistic), float(r.pvalue), int(keep.sum()))
    return Trend(None, None, int(keep.sum()))


def _write_arrays(path: pathlib.Path, sps: dict[str, Spectra]) -> None:
    """``spectrum.npz``: the models' numbers, and every curvature's arrays under its :func:`key_prefix`."""
    sp = next(iter(sps.values()))
    curv = {}
    for kind, c in sps.items():
        pre = key_prefix(kind)
        curv.update({f"{pre}eigenvalues": c.eig, f"{pre}converged": c.conv, f"{pre}rel_residual": c.res,
                     f"{pre}lambda_max_converged": c.lam_max, f"{pre}hvps": c.products})
    write_npz(path, ids=np.array(sp.ids), l2=sp.grid, curvatures=np.array(list(sps)), test_accuracy=sp.acc,
              collapsed=sp.collapsed, epoch_cap=sp.capped, train_loss=sp.get("Train_Loss"),
              test_loss=sp.get("Test_Loss"), epochs=sp.get("Epochs", int), gradient_norm=sp.get("gradient_norm"),
              **curv)


def analyze(out) -> int:
    """Regenerate ``Model-{ID}.csv``, ``spectrum.npz``, the figures and ``summary.md`` from the cell records.

    A folder whose config names no curvature holds the Hessian's spectra.
    """
    out = pathlib.Path(out)
    cfg = read_json(out / "experiment_config.json")
    grid = np.asarray(cfg["l2_grid"], float)
    s, ids, kinds = cfg["settings"], cfg["ids"], curvatures(cfg.get("curvature"))
    dd = out / cfg.get("data_dir", DATA_DIR)
    require_complete(out, grid_cells(ids, grid, s["eigvec_format"], kinds))
    rows = {}
    for ident in ids:
        rows[ident] = [read_json(out / "cells" / f"{ident}-{l2_label(l2)}.json") for l2 in grid]
        write_csv(dd / f"Model-{ident}.csv", [{c: r[c] for c in MODEL_COLUMNS} for r in rows[ident]], MODEL_COLUMNS)
    sps = {kind: spectra(rows, ids, grid, kind) for kind in kinds}
    sp = sps[kinds[0]]                                                      # the primary curvature
    _write_arrays(out / "spectrum.npz", sps)
    keep = ~sp.collapsed
    corr: CorrelationCI = pearson_ci(sp.lam_max[keep], sp.acc[keep])
    figures.spectrum_vs_l2_figure(out / "spectrum_vs_l2.png", sp, s["k"], cfg["which"])
    figures.lambda_max_vs_accuracy_figure(out / "lambda_max_vs_test_accuracy.png", sp, corr)
    if len(sps) > 1:
        figures.hessian_vs_ggn_figure(out / COMPARE_FIGURE, sps["hessian"], sps["ggn"], s["k"], cfg["which"])
    write_text(out / "summary.md", report.summary(cfg, sps, corr, l2_trend(sp)))
    return 0
