"""The spectrum study's figures.

The top eigenvalues against L2, λ_max against test accuracy, and the Hessian and GGN spectra side by side.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ... import plots
from .config import COLLAPSE_ACC, CURVATURE_LABEL, NUM_CLASSES

__all__ = ["spectrum_vs_l2_figure", "lambda_max_vs_accuracy_figure", "hessian_vs_ggn_figure"]

SEED_MARKERS = "osD^v<>ph*"        # run ID i of a figure: marker i (cycled)


def _eigenvalue_panel(ax, sp, k: int, which: str) -> None:
    """The converged eigenvalues of every model against L2, the outliers in red.

    Markers, since the j-th largest is not one eigen-direction across L2; the outliers are the typical outlier count.
    """
    grid, n_top = sp.grid, max(sp.n_typ, 1)
    for ii in range(len(sp.ids)):
        e = -np.sort(-sp.eig_c[ii], axis=1)                                  # descending; NaN last
        for j in range(e.shape[1]):
            ax.plot(grid, e[:, j], ".", color="tab:red" if j < n_top else "tab:blue",
                    ms=3 if len(grid) < 40 else 1.5, alpha=0.7,
                    label=(f"top {n_top} (outliers)" if j == 0 else "rest of the top-k (bulk edge)"
                           if j == n_top else None) if ii == 0 else None)
    finite = sp.eig_c[np.isfinite(sp.eig_c)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    elif finite.size:
        ax.set_yscale("symlog", linthresh=max(1e-6, float(np.abs(finite).min()) or 1e-6))
    ax.set_xlabel("L2 strength (coefficient of Σθ²)")
    label = CURVATURE_LABEL[sp.kind]
    ax.set_ylabel(f"{label} eigenvalue (mean CE)")
    ax.set_title(f"top-{k} ({which}) {label} eigenvalues vs L2; {int((~sp.conv).sum())} unconverged omitted",
                 fontsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)


def _magnitude_heatmap(fig, ax, sp, k: int, which: str) -> None:
    """|eigenvalue| of the first ID's models (index × L2) on a log colour scale; negative ones marked."""
    from matplotlib.colors import LogNorm
    grid = sp.grid
    A = np.abs(sp.eig_c[0]).T                                                # [k, M], row i = eigenvalue i + 1
    pos = A[np.isfinite(A) & (A > 0)]
    cmap = plots.plt.get_cmap("magma").with_extremes(bad="lightgrey")
    x_hi = grid[-1] if grid[-1] > grid[0] else grid[0] + 1e-9
    dx = (x_hi - grid[0]) / max(1, len(grid) - 1) / 2
    im = ax.imshow(np.ma.masked_invalid(np.where(A > 0, A, np.nan)), aspect="auto", origin="upper", cmap=cmap,
                   norm=LogNorm(vmin=float(pos.min()), vmax=float(pos.max())) if pos.size else None,
                   extent=[grid[0] - dx, x_hi + dx, k + 0.5, 0.5], interpolation="nearest")
    fig.colorbar(im, ax=ax, label="|eigenvalue| (log colour scale)")
    neg_j, neg_m = np.nonzero(sp.eig_c[0].T < 0)
    if neg_j.size:
        ax.plot(grid[neg_m], neg_j + 1, "x", color="cyan", ms=4, mew=0.8, label="negative eigenvalue")
        ax.legend(fontsize=6, loc="lower right")
    ax.set_xlabel("L2 strength (coefficient of Σθ²)")
    ax.set_ylabel(f"eigenvalue index ({which} order)")
    ax.set_title(f"|spectrum| of ID {sp.ids[0]} (grey: unconverged)", fontsize=8)


def spectrum_vs_l2_figure(path: pathlib.Path, sp, k: int, which: str) -> None:
    """The converged top-k eigenvalues against L2, and the heatmap of |λ| on a log colour scale."""
    fig, axes = plots.new_figure(2, 1, (5.4, 4.0))
    _eigenvalue_panel(axes[0, 0], sp, k, which)
    _magnitude_heatmap(fig, axes[0, 1], sp, k, which)
    fig.tight_layout()
    plots.save(fig, path)


def lambda_max_vs_accuracy_figure(path: pathlib.Path, sp, corr) -> None:
    """λ_max against test accuracy, coloured by L2.

    Collapsed models apart (excluded from ``corr``), the models that hit the epoch cap ringed.
    """
    grid, lam_max, acc, keep = sp.grid, sp.lam_max, sp.acc, ~sp.collapsed
    fig, axes = plots.new_figure(1, 1, (5.4, 4.0))
    ax = axes[0, 0]
    sc = ax.scatter(lam_max[keep], acc[keep], c=sp.l2[keep], cmap="viridis", s=16, alpha=0.7, edgecolor="k",
                    linewidth=0.2, vmin=float(grid.min()), vmax=float(grid.max()) if grid.max() > grid.min() else
                    float(grid.min()) + 1e-9, label=f"models (n = {int(keep.sum())})")
    if keep.any():
        fig.colorbar(sc, ax=ax, label="L2 strength")
    if sp.capped.any():
        ax.scatter(lam_max[sp.capped], acc[sp.capped], s=60, facecolor="none", edgecolor="tab:red", linewidth=0.8,
                   label=f"hit the epoch cap (n = {int(sp.capped.sum())})")
    if sp.collapsed.any():
        n_col = int(sp.collapsed.sum())
        ax.scatter(lam_max[sp.collapsed], acc[sp.collapsed], marker="x", color="grey", s=18,
                   label=f"collapsed, < {COLLAPSE_ACC:g} % (excluded, n = {n_col})")
        cx, cy = np.nanmedian(lam_max[sp.collapsed]), np.nanmedian(acc[sp.collapsed])
        ax.annotate(f"{n_col} collapsed models here", (cx, cy), xytext=(0, 18), textcoords="offset points",
                    ha="center", fontsize=7, color="dimgrey", arrowprops=dict(arrowstyle="-", color="grey", lw=0.6))
    lm = lam_max[np.isfinite(lam_max)]
    if lm.size and (lm > 0).all() and lm.max() / lm.min() > 30:
        ax.set_xscale("log")
    ax.set_xlabel(f"λ_max (largest converged {CURVATURE_LABEL[sp.kind]} eigenvalue)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(corr.text() + " — collapsed models excluded", fontsize=7)
    ax.legend(fontsize=6, loc="best")
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def _set_shared_scale(ax, values: np.ndarray) -> None:
    """Log y when every value is positive, else symlog.

    The symlog scale is linear within 1e-4 of the largest magnitude, ticked at 0 and at every decade above the linear
    range (on each side that holds values).
    """
    finite = values[np.isfinite(values)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    elif finite.size:
        big = float(np.abs(finite).max()) or 1.0
        small = np.abs(finite[finite != 0])
        lin = max(float(small.min()) if small.size else big, 1e-4 * big)
        ax.set_yscale("symlog", linthresh=lin)
        def decades(side: np.ndarray) -> list[float]:
            top = float(side.max()) if side.size else 0.0
            return [10.0 ** e for e in range(int(np.floor(np.log10(lin))) + 1, int(np.floor(np.log10(top))) + 1)
                    ] if top > lin else []

        ax.set_yticks([-d for d in decades(-finite[finite < 0])[::-1]] + [0.0] + decades(finite[finite > 0]))


def _spectrum_lines(ax, sp, norm, cmap) -> None:
    """Every model's converged eigenvalues (descending) against their rank.

    Colour = L2, marker = run ID, collapsed models grey and dashed.
    """
    from matplotlib.ticker import MaxNLocator
    x = np.arange(1, sp.eig_c.shape[-1] + 1)
    for ii in range(len(sp.ids)):
        for j, l2 in enumerate(sp.grid):
            e = -np.sort(-sp.eig_c[ii, j])                                   # descending; NaN last
            grey = bool(sp.collapsed[ii, j])
            ax.plot(x, e, ls="--" if grey else "-", lw=0.8, marker=SEED_MARKERS[ii % len(SEED_MARKERS)], ms=2.5,
                    color="grey" if grey else cmap(norm(l2)), alpha=0.8)
    ax.axvline(NUM_CLASSES - 0.5, color="k", ls=":", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, x[-1] + 0.5)
    ax.set_xlabel("eigenvalue rank (descending)")
    ax.set_title(f"{CURVATURE_LABEL[sp.kind]}\nlargest ratio gap after rank {sp.n_typ} (median); "
                 f"{int((~sp.conv).sum())} unconverged omitted", fontsize=7)
    ax.grid(alpha=0.3)


def _comparison_legend(fig, sps) -> None:
    """The legend of :func:`hessian_vs_ggn_figure`, below both panels."""
    from matplotlib.lines import Line2D
    sp = sps[0]
    handles = [Line2D([], [], color="k", ls=":", lw=0.8, label=f"between C − 1 = {NUM_CLASSES - 1} and {NUM_CLASSES}")]
    if sp.collapsed.any():
        handles.append(Line2D([], [], color="grey", ls="--", lw=0.8,
                              label=f"collapsed model (test acc. < {COLLAPSE_ACC:g} %)"))
    for ii, ident in enumerate(sp.ids if len(sp.ids) > 1 else []):
        handles.append(Line2D([], [], color="dimgrey", ls="", marker=SEED_MARKERS[ii % len(SEED_MARKERS)], ms=4,
                              label=f"run ID {ident}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False)


def hessian_vs_ggn_figure(path: pathlib.Path, hess, ggn, k: int, which: str) -> None:
    """The converged top-k eigenvalues of the Hessian (left) and the GGN (right) of every model against their rank.

    Both panels share one y scale.

    One line per model coloured by its L2 strength (one colour scale, one colourbar), every run ID's models drawn
    (marker = run ID), collapsed models grey; a dotted line between ranks C − 1 and C.
    """
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    grid = hess.grid
    norm = Normalize(vmin=float(grid.min()), vmax=float(grid.max()) if grid.max() > grid.min() else
                     float(grid.min()) + 1e-9)
    cmap = plt.get_cmap("viridis")
    fig, axes = plots.new_figure(2, 1, (4.6, 3.8), sharey=True, layout="constrained")
    for ax, sp in zip(axes[0], (hess, ggn)):
        _spectrum_lines(ax, sp, norm, cmap)
    _set_shared_scale(axes[0, 0], np.concatenate([hess.eig_c.ravel(), ggn.eig_c.ravel()]))
    axes[0, 0].set_ylabel("eigenvalue of the mean-CE curvature")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), label="L2 strength (coefficient of Σθ²)")
    fig.suptitle(f"top-{k} ({which}) spectra: Hessian vs generalised Gauss–Newton, one line per model", fontsize=9)
    _comparison_legend(fig, (hess, ggn))
    plots.save(fig, path)
