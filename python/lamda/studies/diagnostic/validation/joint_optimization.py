"""The figures of ``validation_analysis/joint_K_order_optimization/``: every metric over K × order window."""
from __future__ import annotations

import pathlib

import numpy as np

from .... import plots
from ..figures import LAMBDA_LABEL
from ..runs import RunData, epoch_title
from .metrics import CRITERIA, K_GRID, WINDOWS, mean_over_runs, wname

__all__ = ["METRIC_HEATMAPS", "metric_heatmap_figure", "lambda_at_epoch_figure", "pareto_figure",
           "per_method_grid_figure", "temporal_evolution_gif"]

ROWS, COLS = [str(k) for k in K_GRID], [wname(w) for w in WINDOWS]
# metric → (file, cell format, colourbar label) of its final-epoch heatmap
METRIC_HEATMAPS = {
    "lambda": ("lambda_heatmap.png", "{:.2f}", LAMBDA_LABEL),
    "stderr": ("heatmap_standard_error.png", "{:.3f}", "bootstrap standard error (λ units)"),
    "cv": ("heatmap_coefficient_variation.png", "{:.3f}", "CV = std/|mean| over directions"),
    "deviation": ("heatmap_deviation_from_truth.png", "{:.1%}", "deviation from K=15, 1-6"),
}


def metric_heatmap_figure(folder: pathlib.Path, metric: str, joint: list[dict]) -> None:
    """The final-epoch heatmap of one metric (mean over runs) into its file of `METRIC_HEATMAPS`."""
    fname, cell, unit = METRIC_HEATMAPS[metric]
    fig, axes = plots.new_figure(1, 1, (5.5, 4.2))
    v = mean_over_runs([jm[metric][-1] for jm in joint])
    plots.heatmap(axes[0, 0], v, ROWS, COLS, f"{metric} (mean over {len(joint)} methods, final epoch)", fmt=cell,
                  xlabel="order window", ylabel="directions K", colorbar=unit)
    plots.save(fig, folder / fname)


def lambda_at_epoch_figure(path: pathlib.Path, runs: list[RunData], target: int, lam: np.ndarray, vrange) -> None:
    """The λ estimate ``lam [K, W]`` (mean over runs) at the epoch nearest to ``target``.

    On the colour range ``vrange`` shared by the study's epochs.
    """
    _, what = epoch_title(runs[0], target)
    fig, axes = plots.new_figure(1, 1, (5.5, 4.2))
    plots.heatmap(axes[0, 0], lam, ROWS, COLS, f"λ estimate (mean over {len(runs)} methods), {what}", fmt="{:.2f}",
                  xlabel="order window", ylabel="directions K", vmin=vrange[0], vmax=vrange[1], colorbar=LAMBDA_LABEL)
    plots.save(fig, path)


def pareto_figure(path: pathlib.Path, points: list, front: list) -> None:
    """Cost against mean deviation of every configuration, with the Pareto frontier (each point named)."""
    fig, axes = plots.new_figure(1, 1, (6.0, 4.4))
    ax = axes[0, 0]
    ax.scatter([p[0] for p in points], [100 * p[1] for p in points], s=14, color="0.6", label="configurations")
    pp = sorted(front)
    ax.plot([p[0] for p in pp], [100 * p[1] for p in pp], "r-", lw=1, label="Pareto frontier")
    for i, p in enumerate(pp):        # each frontier point named in the legend (labels never overlap)
        ax.plot(p[0], 100 * p[1], plots.MARKERS[i % len(plots.MARKERS)], color=plots.color_cycle(len(pp))[i],
                mec="k", mew=0.5, ms=6, ls="none", label=f"{p[2]} (cost {p[0]:.0f}, {100 * p[1]:.1f} %)")
    ax.axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8, label="5 % deviation")
    ax.set(xlabel="cost: K × highest order (derivative evaluations per point)",
           ylabel="mean deviation from K=15, orders 1-6 (%)", title="cost vs accuracy of the λ estimate (final epoch)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="K, order window", title_fontsize=6)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def per_method_grid_figure(path: pathlib.Path, runs: list[RunData], joint: list[dict]) -> None:
    """One heatmap per run of the final-epoch deviation over K × window, on one colour scale."""
    vr = plots.value_range(*[100 * jm["deviation"][-1] for jm in joint])
    fig, axs = plots.grid(len(runs), size=(3.4, 2.8))
    im = None
    for ax, r, jm in zip(axs, runs, joint):
        im = plots.heatmap(ax, 100 * jm["deviation"][-1], ROWS, COLS, r.label, fmt="{:.0f}", xlabel="order window",
                           ylabel="directions K", vmin=vr[0], vmax=vr[1], colorbar=None)
    fig.suptitle("deviation from K=15, orders 1-6 (%), final epoch, per method (one colour scale)", fontsize=10)
    fig.tight_layout()
    if im is not None:
        fig.colorbar(im, ax=list(axs), fraction=0.02, pad=0.02).set_label("deviation (%)", fontsize=7)
    plots.save(fig, path)


def temporal_evolution_gif(path: pathlib.Path, runs: list[RunData], joint: list[dict]) -> None:
    """One frame per measurement (those all runs have): the mean deviation over K × window, one colour scale."""
    M = min(jm["deviation"].shape[0] for jm in joint)
    frames_v = [100 * mean_over_runs([jm["deviation"][j] for jm in joint]) for j in range(M)]
    vr = plots.value_range(*frames_v)
    frames = []
    for j, v in enumerate(frames_v):
        fig, axes = plots.new_figure(1, 1, (5.0, 4.0))
        plots.heatmap(axes[0, 0], v, ROWS, COLS, f"mean deviation (%) at epoch {int(runs[0].epochs[j])}",
                      fmt="{:.0f}", xlabel="order window", ylabel="directions K", vmin=vr[0], vmax=vr[1],
                      colorbar="deviation (%), one scale for all frames")
        frames.append(fig)
    plots.save_gif(frames, path)
