"""The figures of ``validation_analysis/order_sensitivity/``: how λ depends on the order window of the fit."""
from __future__ import annotations

import pathlib
import warnings

import numpy as np

from .... import plots
from ..figures import LAMBDA_LABEL
from ..runs import RunData
from .metrics import WINDOWS, FirstOrderBias, OrderWindows, wname

__all__ = ["lambda_vs_order_config_figure", "per_method_order_figure", "order_difference_figure",
           "first_order_bias_figure"]


def lambda_vs_order_config_figure(path: pathlib.Path, runs: list[RunData], ow: OrderWindows) -> None:
    """Final λ per run and order window (bars), and mean ln|d_n| against n at the final epoch (lines)."""
    n, W = len(runs), len(WINDOWS)
    fig, axes = plots.new_figure(2, 1, (5.4, 4.0))
    width = 0.8 / W
    for wi, w in enumerate(WINDOWS):
        axes[0, 0].bar(np.arange(n) + wi * width, ow.final[:, wi], width, label=f"orders {wname(w)}")
    axes[0, 0].set_xticks(np.arange(n) + 0.4 - width / 2, labels=[r.label for r in runs], rotation=70, fontsize=6)
    axes[0, 0].set(ylabel="final " + LAMBDA_LABEL, title="λ by order window (final epoch)")
    axes[0, 0].legend(fontsize=6)
    for r, c in zip(runs, plots.color_cycle(n)):
        la = np.nanmean(r.lam["log_abs_derivatives"][-1], 0)
        axes[0, 1].plot(np.arange(1, len(la) + 1), la, marker="o", color=c, label=r.label, lw=1)
    axes[0, 1].set(xlabel="order n", ylabel="mean ln|d_n| over directions", title="ln|d_n| vs n (final epoch)")
    axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)


def per_method_order_figure(path: pathlib.Path, runs: list[RunData], ow: OrderWindows) -> None:
    """One panel per run: λ (mean over directions) of every order window over training, one y scale."""
    with warnings.catch_warnings():         # a measurement without any finite λ: a NaN point
        warnings.simplefilter("ignore", RuntimeWarning)
        curves = [[np.nanmean(v, 1) for v in per_window] for per_window in ow.per_run]
    ylim = plots.value_range(*[c for per_window in curves for c in per_window])
    pad = 0.05 * (ylim[1] - ylim[0])
    colors = plots.color_cycle(len(WINDOWS))
    fig, axs = plots.grid(len(runs), size=(3.4, 2.9))
    for ax, r, per_window in zip(axs, runs, curves):
        for w, c, lam in zip(WINDOWS, colors, per_window):
            ax.plot(r.epochs, lam, color=c, marker=".", ms=3, lw=1.4 if w == (1, 6) else 0.9,
                    label=f"orders {wname(w)}")
        ax.set(xlabel="epoch", ylabel=LAMBDA_LABEL, ylim=(ylim[0] - pad, ylim[1] + pad))
        ax.xaxis.set_major_locator(plots.plt.MaxNLocator(integer=True))
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(6)
        ax.tick_params(labelsize=6)
        ax.set_title(r.label, fontsize=8)
        ax.grid(alpha=0.3)
    axs[0].legend(fontsize=5)
    fig.suptitle("λ by order window over training, per method (mean over directions, one y scale)", fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)


def order_difference_figure(path: pathlib.Path, runs: list[RunData], ow: OrderWindows) -> None:
    """Heatmap (run × window) of λ relative to orders 1-6 at the final epoch, in %."""
    fig, axes = plots.new_figure(1, 1, (6.0, 0.8 + 0.35 * len(runs)))
    vr = plots.value_range(100 * ow.rel, symmetric=True)
    plots.heatmap(axes[0, 0], 100 * ow.rel, [r.label for r in runs], [wname(w) for w in WINDOWS],
                  "λ(window) relative to λ(orders 1-6), final epoch", fmt="{:+.0f}", cmap="RdBu_r",
                  xlabel="order window", ylabel="method", vmin=vr[0], vmax=vr[1], colorbar="difference (%)")
    plots.save(fig, path)


def first_order_bias_figure(path: pathlib.Path, runs: list[RunData], bias: list[FirstOrderBias]) -> None:
    """The ln|d_1| residual from the orders 2-6 line, and λ(1-6) − λ(2-6), over training."""
    fig, axes = plots.new_figure(2, 1, (4.6, 3.6))
    for r, c, b in zip(runs, plots.color_cycle(len(runs)), bias):
        axes[0, 0].plot(r.epochs, b.residual, color=c, marker=".", ms=3, label=r.label)
        axes[0, 1].plot(r.epochs, b.dlambda, color=c, marker=".", ms=3)
    axes[0, 0].axhline(0, color="k", lw=0.8)
    axes[0, 1].axhline(0, color="k", lw=0.8)
    axes[0, 0].set(xlabel="epoch", ylabel="ln|d_1| − line through orders 2-6 at n=1",
                   title="first-order residual (mean over directions)")
    axes[0, 1].set(xlabel="epoch", ylabel="λ(orders 1-6) − λ(orders 2-6)", title="bias of λ from including n = 1")
    axes[0, 1].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)
