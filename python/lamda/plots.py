"""Plot helpers shared by the experiments (matplotlib, Agg backend, atomic PNG and GIF writes).

Figures are written at the resolution of the enclosing [`figure_dpi`][lamda.plots.figure_dpi] block: 300 dpi
([`DPI`][lamda.plots.DPI], the studies' resolution) outside any block; ``lamda run/analyze --dpi`` sets it for a
command.

Heatmaps always carry a colourbar and take an explicit colour range, so one figure family shares one scale;
labelled scatter plots name their points in a legend (no overlapping text) and draw a least-squares line only
through at least ``MIN_FIT_POINTS`` points.
"""
from __future__ import annotations

import contextlib
import contextvars
import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from .result_files import atomic_path
from .stats import MIN_FIT_POINTS

__all__ = ["plt", "new_figure", "save", "grid", "heatmap", "scatter_labeled", "lambda_evolution_figure",
           "save_gif", "DPI", "DPI_RANGE", "check_dpi", "figure_dpi", "current_dpi", "color_cycle", "value_range",
           "MARKERS"]

DPI = 300                   # the studies' figure resolution
DPI_RANGE = (150, 300)      # the resolutions a figure may be written at
_dpi = contextvars.ContextVar("lamda_figure_dpi", default=DPI)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h", "p")


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6), **kw):
    """A figure with ``nrows × ncols`` axes, each ``size`` inches; returns ``(fig, axes)``."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, **kw)
    return fig, axes


def grid(n: int, size=(3.2, 2.6), max_cols: int = 5):
    """A figure with at least ``n`` axes in a near-square grid; unused axes are hidden."""
    n = max(1, n)
    ncols = min(max_cols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = new_figure(ncols, nrows, size)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def check_dpi(dpi) -> int:
    """``dpi`` as an int; ValueError outside [`DPI_RANGE`][lamda.plots.DPI_RANGE]."""
    lo, hi = DPI_RANGE
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or not lo <= dpi <= hi or int(dpi) != dpi:
        raise ValueError(f"dpi must be an integer in [{lo}, {hi}], got {dpi!r}")
    return int(dpi)


@contextlib.contextmanager
def figure_dpi(dpi: int):
    """Write figures saved without an explicit ``dpi`` at ``dpi`` within the block.

    ``dpi`` is checked by [`check_dpi`][lamda.plots.check_dpi].
    """
    token = _dpi.set(check_dpi(dpi))
    try:
        yield
    finally:
        _dpi.reset(token)


def current_dpi() -> int:
    """The resolution [`save`][lamda.plots.save] uses without an explicit ``dpi``."""
    return _dpi.get()


def save(fig, path, dpi: int | None = None) -> None:
    """Write ``fig`` atomically (format from the suffix; PNG at ``dpi``, fast zlib level) and close it.

    ``dpi`` defaults to [`current_dpi`][lamda.plots.current_dpi].
    """
    path = pathlib.Path(path)
    fmt = path.suffix.lstrip(".") or "png"
    try:
        dpi = current_dpi() if dpi is None else check_dpi(dpi)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight",
                        **({"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}))
    finally:
        plt.close(fig)


def color_cycle(n: int):
    """``n`` distinct colours of the shared palette."""
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def value_range(*arrays, symmetric: bool = False) -> tuple[float, float]:
    """(min, max) over the finite values of all ``arrays`` (one colour scale for a figure family).

    Symmetric about 0 when asked; (0, 1) when nothing is finite; a constant range is widened so the colour map stays
    defined.
    """
    vals = np.concatenate([np.asarray(a, float).ravel() for a in arrays]) if arrays else np.array([])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = float(vals.min()), float(vals.max())
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return -m, m
    if hi == lo:
        d = abs(lo) * 0.05 or 0.5
        return lo - d, hi + d
    return lo, hi


def heatmap(ax, values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "",
            fmt: str = "{:.3g}", cmap: str = "viridis", xlabel: str = "", ylabel: str = "",
            vmin: float | None = None, vmax: float | None = None, colorbar: str | None = "",
            annotate: bool = True):
    """Annotated heatmap of ``values [R, C]`` (NaN shown blank) with a colourbar labelled ``colorbar``.

    ``colorbar`` None: no colourbar here (the caller draws one shared colourbar for several axes). ``vmin``/``vmax`` fix
    the colour scale (default: this array's finite range).
    """
    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    if vmin is None or vmax is None:
        lo, hi = value_range(v)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    im = ax.imshow(np.where(finite, v, np.nan), cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), fontsize=7)
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels), fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if annotate and finite.any():
        cm = plt.get_cmap(cmap)
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                if finite[i, j]:
                    r, g, b, _ = cm(float(np.clip((v[i, j] - vmin) / ((vmax - vmin) or 1.0), 0, 1)))
                    ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    if colorbar is not None:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.set_label(colorbar, fontsize=7)
        cb.ax.tick_params(labelsize=6)
    return im


def scatter_labeled(ax, x, y, labels, colors=None, xlabel="", ylabel="", title="", xerr=None, yerr=None,
                    legend: str = "outside"):
    """One marker per point, named in a legend, with optional error bars and a least-squares line.

    The legend is ``"outside"`` right of the axes, ``"inside"`` or ``"none"``, so labels never overlap; error bars
    ``xerr``/``yerr`` (NaN = none); a dashed least-squares line only through ≥ ``MIN_FIT_POINTS`` finite points.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    colors = list(colors) if colors is not None else color_cycle(n)
    xe = np.asarray(xerr, float) if xerr is not None else np.full(n, np.nan)
    ye = np.asarray(yerr, float) if yerr is not None else np.full(n, np.nan)
    for i, (xi, yi, lab) in enumerate(zip(x, y, labels)):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        ax.errorbar(xi, yi, xerr=xe[i] if np.isfinite(xe[i]) else None, yerr=ye[i] if np.isfinite(ye[i]) else None,
                    fmt=MARKERS[i % len(MARKERS)], color=colors[i], mec="k", mew=0.5, ms=6, capsize=2, lw=0.8,
                    label=lab)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() >= MIN_FIT_POINTS and np.ptp(x[ok]) > 0:
        a, b = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 10)
        ax.plot(xs, a * xs + b, "k--", lw=0.8, label="least-squares fit")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    if legend == "outside":
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    elif legend == "inside":
        ax.legend(fontsize=6)


def lambda_evolution_figure(epochs: np.ndarray, lambda_values: np.ndarray, metric_rows: list[dict], title: str):
    """λ per direction (thin), mean ± std (bold) against epoch; and train/test accuracy per epoch.

    ``epochs [M]``, ``lambda_values [M, K]``; ``metric_rows`` the rows of ``training_metrics.csv``.
    """
    fig, axes = new_figure(2, 1, (5.0, 3.6))
    ax = axes[0, 0]
    lam = np.asarray(lambda_values, float)
    if lam.size:
        ax.plot(epochs, lam, color="tab:blue", alpha=0.2, lw=0.7)
        m, s = np.nanmean(lam, 1), np.nanstd(lam, 1)
        ax.plot(epochs, m, color="tab:blue", lw=2, label="mean over directions")
        ax.fill_between(epochs, m - s, m + s, color="tab:blue", alpha=0.2, label="± std")
        ax.legend(fontsize=7)
    ax.set_xlabel("epoch")
    ax.set_ylabel("λ (slope of log|d_n| vs n)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    ep = [r["epoch"] for r in metric_rows]
    for key, c in (("train_acc", "tab:green"), ("test_acc", "tab:red")):
        ax.plot(ep, [r.get(key) for r in metric_rows], color=c, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (fraction)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_gif(frames: list, path, duration_ms: int = 600, dpi: int = 120) -> None:
    """Write matplotlib figures as an animated GIF (atomic; figures are closed).

    Frames should share one colour scale (pass the same vmin/vmax to every frame's heatmap).
    """
    import io

    from PIL import Image
    images = []
    for fig in frames:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        plt.close(fig)
        buf.seek(0)
        images.append(Image.open(buf).convert("RGB"))
    if not images:
        raise ValueError("save_gif needs at least one frame")
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
