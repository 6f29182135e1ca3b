"""The figures of ``validation_analysis/direction_convergence/``: how λ settles as K directions are added."""
from __future__ import annotations

import pathlib
import warnings

import numpy as np

from .... import plots
from ..runs import STUDY_EPOCHS, RunData, epoch_title, nearest_epoch_index
from .metrics import CRITERIA

__all__ = ["convergence_figure", "convergence_at_epoch_figure", "cv_vs_k_figure", "per_method_convergence_figure"]

DEVIATION_LABEL = "|λ_K − λ_15| / |λ_15|  (%)"


def convergence_figure(path: pathlib.Path, runs: list[RunData], ks, jms: list[dict]) -> None:
    """Deviation, standard error (bootstrap against std/√K) and CV against K at the final epoch, one line per run."""
    fig, axes = plots.new_figure(3, 1, (4.2, 3.6))
    for r, jm, c in zip(runs, jms, plots.color_cycle(len(runs))):
        axes[0, 0].plot(ks, 100 * jm["deviation"][-1, :, 0], marker=".", color=c, label=r.label)
        axes[0, 1].plot(ks, jm["stderr"][-1, :, 0], marker=".", color=c)
        axes[0, 1].plot(ks, jm["stderr_formula"][-1, :, 0], ls=":", color=c)
        axes[0, 2].plot(ks, jm["cv"][-1, :, 0], marker=".", color=c)
    axes[0, 0].axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8)
    axes[0, 1].axhline(CRITERIA["stderr"], color="k", ls="--", lw=0.8)
    axes[0, 2].axhline(CRITERIA["cv"], color="k", ls="--", lw=0.8)
    axes[0, 0].set(xlabel="directions K", ylabel=DEVIATION_LABEL, title="deviation (final epoch)")
    axes[0, 1].set(xlabel="directions K", ylabel="standard error of λ (λ units)",
                   title="standard error: bootstrap (solid) vs std/√K (dotted)")
    axes[0, 2].set(xlabel="directions K", ylabel="CV = std/|mean| over directions", title="CV (final epoch)")
    axes[0, 2].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)


def deviation_ylim(jms: list[dict]) -> tuple[float, float]:
    """One y range (%) for every deviation-vs-K figure."""
    return plots.value_range(*[100 * jm["deviation"][:, :, 0] for jm in jms])


def convergence_at_epoch_figure(path: pathlib.Path, runs: list[RunData], ks, jms: list[dict], target: int) -> None:
    """Deviation against K at the measured epoch nearest to ``target``, one line per run."""
    ylim = deviation_ylim(jms)
    fig, axes = plots.new_figure(1, 1, (5.6, 3.8))
    ax = axes[0, 0]
    for r, jm, c in zip(runs, jms, plots.color_cycle(len(runs))):
        j, what = epoch_title(r, target)
        ax.plot(ks, 100 * jm["deviation"][j, :, 0], marker=".", color=c, label=r.label)
    ax.axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8, label="5 % criterion")
    ax.set(xlabel="directions K", ylabel=DEVIATION_LABEL, ylim=(0, ylim[1] * 1.05 + 1e-9),
           title=f"convergence in K — {what}")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def cv_vs_k_figure(path: pathlib.Path, runs: list[RunData], ks, jms: list[dict]) -> None:
    """CV against K at every measured epoch (mean over runs), coloured by epoch."""
    ep = runs[0].epochs
    M = min(len(r.epochs) for r in runs)
    with warnings.catch_warnings():         # K = 1 has no CV: an all-NaN column
        warnings.simplefilter("ignore", RuntimeWarning)
        cvm = np.nanmean(np.stack([jm["cv"][:M, :, 0] for jm in jms]), 0) if M else np.zeros((0, len(ks)))
    fig, axes = plots.new_figure(1, 1, (5.6, 3.8))
    cmap = plots.plt.get_cmap("viridis")
    norm = plots.matplotlib.colors.Normalize(vmin=float(ep[0]), vmax=float(ep[M - 1]) if M > 1 else float(ep[0]) + 1)
    for j in range(M):
        axes[0, 0].plot(ks, cvm[j], color=cmap(norm(float(ep[j]))), lw=1, marker=".", ms=3)
    sm = plots.plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=axes[0, 0]).set_label("epoch", fontsize=7)
    axes[0, 0].axhline(CRITERIA["cv"], color="k", ls="--", lw=0.8)
    axes[0, 0].set(xlabel="directions K", ylabel=f"CV = std/|mean| (mean over {len(runs)} methods)",
                   title="CV of λ over directions vs K, across training")
    axes[0, 0].grid(alpha=0.3)
    plots.save(fig, path)


def per_method_convergence_figure(path: pathlib.Path, runs: list[RunData], ks, jms: list[dict]) -> None:
    """One panel per run: deviation against K at the study's epochs (one y scale)."""
    ylim = deviation_ylim(jms)
    fig, axs = plots.grid(len(runs), size=(3.2, 2.8))
    for ax, r, jm in zip(axs, runs, jms):
        picks: dict[int, list[int]] = {}            # measured index -> the study epochs it stands for
        for target in STUDY_EPOCHS:
            picks.setdefault(nearest_epoch_index(r.epochs, target), []).append(target)
        for (j, targets), c in zip(sorted(picks.items()), plots.color_cycle(len(STUDY_EPOCHS))):
            e = int(r.epochs[j])
            note = "" if targets == [e] else f" (for {', '.join(map(str, targets))})"
            ax.plot(ks, 100 * jm["deviation"][j, :, 0], color=c, marker=".", ms=3, label=f"epoch {e}{note}")
        ax.set(xlabel="directions K", ylabel="deviation (%)", ylim=(0, ylim[1] * 1.05 + 1e-9))
        ax.set_title(r.label, fontsize=8)
        ax.legend(fontsize=5)
        ax.grid(alpha=0.3)
    fig.suptitle("convergence in K per method (deviation from λ_15, orders 1-6)", fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)
