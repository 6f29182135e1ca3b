"""Plot helpers shared by the experiments (matplotlib, Agg backend, atomic 150-dpi PNG/GIF writes)."""
from __future__ import annotations

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import io as lio  # noqa: E402

__all__ = ["plt", "new_figure", "save", "grid", "heatmap", "scatter_labeled", "lambda_evolution_figure",
           "save_gif", "DPI", "color_cycle"]

DPI = 150


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6), **kw):
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


def save(fig, path, dpi: int = DPI) -> None:
    lio.save_figure(fig, path, dpi=dpi)


def color_cycle(n: int):
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def heatmap(ax, values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str = "",
            fmt: str = "{:.3g}", cmap: str = "viridis", xlabel: str = "", ylabel: str = ""):
    """Annotated heatmap of ``values [R, C]`` (NaN shown blank)."""
    v = np.asarray(values, dtype=float)
    finite = np.isfinite(v)
    im = ax.imshow(np.where(finite, v, np.nan), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), fontsize=7)
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels), fontsize=7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if finite.any():
        lo, hi = np.nanmin(v), np.nanmax(v)
        mid = (lo + hi) / 2
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                if finite[i, j]:
                    ax.text(j, i, fmt.format(v[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if v[i, j] < mid else "black")
    return im


def scatter_labeled(ax, x, y, labels, colors=None, xlabel="", ylabel="", title=""):
    x, y = np.asarray(x, float), np.asarray(y, float)
    ax.scatter(x, y, c=colors, s=30, edgecolor="k", linewidth=0.5)
    for xi, yi, lab in zip(x, y, labels):
        if np.isfinite(xi) and np.isfinite(yi):
            ax.annotate(lab, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() >= 2 and np.ptp(x[ok]) > 0:
        a, b = np.polyfit(x[ok], y[ok], 1)
        xs = np.linspace(x[ok].min(), x[ok].max(), 10)
        ax.plot(xs, a * xs + b, "k--", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


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
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_gif(frames: list, path, duration_ms: int = 600) -> None:
    """Write matplotlib figures as an animated GIF (atomic; figures are closed)."""
    from PIL import Image
    import io as _io
    images = []
    for fig in frames:
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        buf.seek(0)
        images.append(Image.open(buf).convert("RGB"))
    if not images:
        raise ValueError("save_gif needs at least one frame")
    path = pathlib.Path(path)
    with lio.atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
