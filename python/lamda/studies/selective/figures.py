"""The selective study's figures: λ per class pair, the selectivity index, the penalty's share of the loss."""
from __future__ import annotations

import pathlib

import numpy as np

from ... import plots
from ...stats import fmt
from .config import CONDITIONS, PAIR_NAMES

__all__ = ["condition_colors", "lambda_per_pair_figure", "selectivity_index_figure", "penalty_share_figure"]



def condition_colors() -> dict:
    """One colour per condition, the same in every figure."""
    return dict(zip(CONDITIONS, plots.color_cycle(len(CONDITIONS))))


def _legend_right(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def lambda_per_pair_figure(path: pathlib.Path, rows: list[dict], table: list[dict], n_seeds: int) -> None:
    """λ per class pair and condition: markers = mean over seeds, error bars = 95 % CI (n ≥ 2), dots = seeds."""
    conds = [r["condition"] for r in table]
    colors = condition_colors()
    fig, axes = plots.new_figure(1, 1, (7.5, 4.0))
    ax = axes[0, 0]
    w = 0.8 / max(1, len(conds))
    for i, r in enumerate(table):
        xs = np.arange(len(PAIR_NAMES)) + (i - (len(conds) - 1) / 2) * w
        m = np.array([r[f"lambda_{p}_mean"] for p in PAIR_NAMES], float)
        e = np.array([r[f"lambda_{p}_ci95"] for p in PAIR_NAMES], float)
        ok = np.isfinite(m)
        ax.errorbar(xs[ok], m[ok], yerr=np.where(np.isfinite(e), e, 0.0)[ok], fmt="o", ms=6, capsize=3, lw=1.2,
                    color=colors[r["condition"]], label=r["condition"], zorder=3)
        for x, p in zip(xs, PAIR_NAMES):
            v = [q[f"lambda_{p}"] for q in rows if q["condition"] == r["condition"] and q[f"lambda_{p}"] is not None]
            ax.scatter(np.full(len(v), x + 0.04), v, s=8, color="k", alpha=0.6, zorder=4)
        for x in xs[~ok]:
            ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=6,
                    transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(PAIR_NAMES)), labels=PAIR_NAMES)
    ax.set_xlim(-0.6, len(PAIR_NAMES) - 0.4)
    ax.set_xlabel("class pair (boundary test points)")
    ax.set_ylabel("λ (slope of ln|d_n| per order n)")
    _legend_right(ax)
    ax.set_title(f"λ per class pair (markers: mean over {n_seeds} seed(s); black dots: seeds; "
                 + ("bars: 95 % CI)" if n_seeds > 1 else "no CI for one seed)"), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)


def selectivity_index_figure(path: pathlib.Path, sel: list[dict], st: list[dict], n_seeds: int) -> None:
    """The selectivity index per (condition, target): dots = seeds, mean ± 95 % CI."""
    fig, axes = plots.new_figure(1, 1, (6.0, 3.8))
    ax = axes[0, 0]
    for i, r in enumerate(st):
        v = np.array([x["selectivity_index"] for x in sel if x["condition"] == r["condition"]
                      and x["target_pair"] == r["target_pair"]], float)
        v = v[np.isfinite(v)]
        ax.scatter(np.full(len(v), i) + 0.12, v, color="gray", s=15, zorder=3, label="seed" if i == 0 else None)
        m, h = r["selectivity_index_mean"], r["selectivity_index_ci95"]
        if np.isfinite(m):
            ax.errorbar(i, m, yerr=h if np.isfinite(h) else None, fmt="o", color="tab:red", capsize=4, zorder=4,
                        label=("mean ± 95 % CI" if n_seeds > 1 else "mean (one seed: no CI)") if i == 0 else None)
        else:
            ax.text(i, 0, "missing", ha="center", va="bottom", fontsize=7)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(st)), labels=[f"{r['condition']}\n(target {r['target_pair']})" for r in st], fontsize=7)
    ax.set_ylabel("selectivity index\nΔλ target − mean Δλ others")
    ax.set_title("selectivity vs the same seed's baseline (< 0: target flattened more)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        _legend_right(ax)
    fig.tight_layout()
    plots.save(fig, path)


def penalty_share_figure(path: pathlib.Path, shares: dict, cfg: dict) -> None:
    """The λ penalty's share (%) of the training loss per epoch, one line per (condition, seed)."""
    colors = condition_colors()
    fig, axes = plots.new_figure(1, 1, (6.0, 3.6))
    ax = axes[0, 0]
    for c in cfg["conditions"]:
        for j, sd in enumerate(cfg["seeds"]):
            ep, sh = shares[c, sd]
            if ep:
                ax.plot(ep, sh, "o-", color=colors[c], ms=3, lw=1, label=c if j == 0 else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(plots.plt.MaxNLocator(integer=True))
    ax.set_ylabel("λ penalty / total training loss (%)")
    ax.set_title(f"share of the λ penalty in the training loss (scale {fmt(cfg['scale'], 'g')}; one line per seed)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        _legend_right(ax)
    else:
        ax.text(0.5, 0.5, "no penalised condition in this run", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    plots.save(fig, path)
