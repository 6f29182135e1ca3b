"""The figures of ``validation_analysis/temporal_directional_stability/``: every direction's λ over training."""
from __future__ import annotations

import pathlib

import numpy as np

from .... import plots
from ....stats import fmt
from ..figures import LAMBDA_LABEL
from ..runs import RunData
from .metrics import CRITERIA, cv_over_time

__all__ = ["lambda_ylim", "spaghetti_grid_figure", "spaghetti_figure", "violin_figure", "cv_over_time_figure",
           "direction_correlation_figure"]


def lambda_ylim(runs: list[RunData]) -> tuple[float, float]:
    """One y range for every λ-per-direction figure (the finite range of all runs, 5 % margin)."""
    ylim = plots.value_range(*[r.lambda_values for r in runs])
    pad = 0.05 * (ylim[1] - ylim[0])
    return ylim[0] - pad, ylim[1] + pad


def _spaghetti(ax, r: RunData, ylim) -> None:
    ax.plot(r.epochs, r.lambda_values, lw=0.7, alpha=0.7)
    ax.plot(r.epochs, np.nanmean(r.lambda_values, 1), "k", lw=1.8, label="mean over directions")
    ax.set(xlabel="epoch", ylabel=LAMBDA_LABEL, ylim=ylim)
    ax.set_title(f"{r.label}: {r.lambda_values.shape[1]} directions", fontsize=8)
    ax.grid(alpha=0.3)


def spaghetti_grid_figure(path: pathlib.Path, runs: list[RunData], ylim) -> None:
    """One panel per run: λ of every direction over training (thin) and their mean (black)."""
    fig, axs = plots.grid(len(runs), size=(3.4, 2.9))
    for ax, r in zip(axs, runs):
        _spaghetti(ax, r, ylim)
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(6)
        ax.tick_params(labelsize=6)
    fig.suptitle("λ of every direction over training (thin; black = mean), one y scale", fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)


def spaghetti_figure(path: pathlib.Path, run: RunData, ylim) -> None:
    """λ of every direction of one run over training, with their mean."""
    fig, axes = plots.new_figure(1, 1, (5.6, 3.8))
    _spaghetti(axes[0, 0], run, ylim)
    axes[0, 0].legend(fontsize=7)
    plots.save(fig, path)


def violin_figure(path: pathlib.Path, runs: list[RunData], ylim) -> None:
    """One panel per run: the distribution of λ over the directions at up to six measured epochs."""
    fig, axs = plots.grid(len(runs), size=(3.4, 2.9))
    for ax, r in zip(axs, runs):
        M = len(r.epochs)
        sel = np.unique(np.linspace(0, M - 1, min(M, 6)).round().astype(int))
        ok = [j for j in sel if np.isfinite(r.lambda_values[j]).sum() > 1]
        if ok:
            ax.violinplot([r.lambda_values[j][np.isfinite(r.lambda_values[j])] for j in ok], positions=range(len(ok)),
                          showmeans=True)
            ax.set_xticks(range(len(ok)), labels=[str(int(r.epochs[j])) for j in ok], fontsize=6)
        ax.set(xlabel="epoch", ylabel=LAMBDA_LABEL, ylim=ylim)
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(6)
        ax.set_title(r.label, fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.suptitle("distribution of λ over directions at selected epochs, one y scale", fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)


def cv_over_time_figure(path: pathlib.Path, runs: list[RunData]) -> None:
    """CV of λ over the directions against epoch, one line per run, with the criterion."""
    fig, axes = plots.new_figure(1, 1, (6.0, 4.0))
    for r, c in zip(runs, plots.color_cycle(len(runs))):
        axes[0, 0].plot(r.epochs, cv_over_time(r), marker=".", color=c, label=r.label)
    axes[0, 0].axhline(CRITERIA["cv"], color="k", ls="--", lw=0.8, label=f"criterion {CRITERIA['cv']}")
    axes[0, 0].set(xlabel="epoch", ylabel="CV = std/|mean| of λ over directions",
                   title="coefficient of variation over time")
    axes[0, 0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    axes[0, 0].grid(alpha=0.3)
    plots.save(fig, path)


def direction_correlation_figure(path: pathlib.Path, runs: list[RunData]) -> None:
    """One panel per run: the correlation matrix between directions of their λ time series (one colourbar)."""
    fig, axs = plots.grid(len(runs), size=(3.0, 2.8))
    im = None
    for ax, r in zip(axs, runs):
        lv = r.lambda_values
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(lv.T) if lv.shape[0] > 2 else np.full((lv.shape[1],) * 2, np.nan)
        im = plots.heatmap(ax, c, [str(k + 1) for k in range(len(c))], [str(k + 1) for k in range(len(c))],
                           vmin=-1, vmax=1, cmap="coolwarm", colorbar=None, annotate=False,
                           xlabel="direction k", ylabel="direction k")
        off = c[~np.eye(len(c), dtype=bool)]
        off = off[np.isfinite(off)]
        ax.set_title(f"{r.label}\nmean off-diagonal r = {fmt(off.mean() if off.size else np.nan, '.2f')}", fontsize=7)
        ax.tick_params(labelsize=4)
    fig.suptitle("correlation between directions of the λ time series", fontsize=10)
    fig.tight_layout()
    if im is not None:
        fig.colorbar(im, ax=list(axs), fraction=0.02, pad=0.02).set_label("Pearson r over measurements", fontsize=7)
    plots.save(fig, path)
