"""The landscape study's figures.

Training curves, Hessian extremes, linear paths, the per-architecture comparison, correlations with test accuracy, loss
surfaces and the model table as an image.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ... import plots
from ...landscape import SurfaceResult, plot_contour_panels, plot_surface_3d
from ...result_files import read_npz
from .config import RHO

__all__ = ["COLORS", "training_curves_figure", "hessian_spectrum_figure", "mode_connectivity_figure",
           "metrics_comparison_figure", "correlation_figure", "surface_figures", "summary_table_figure"]

COLORS = {"cnn": "tab:blue", "resnet": "tab:orange"}
SEED_LINES = ["-", "--", ":", "-."]
# quantity → axis label of the per-architecture comparison
METRIC_LABELS = {"test_acc": "test accuracy (fraction)", "test_loss": "test loss (nats)", "lambda_max": "λ_max",
                 "lambda_min": "λ_min (most negative computed)", "condition_number": "κ̂ = λ_max / |λ_min|",
                 "n_negative": "# negative among computed", "sharpness": f"ρ-sharpness (ρ = {RHO}, nats)",
                 "barrier": "barrier (nats)"}


def _legend_right(ax) -> None:
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def training_curves_figure(path: pathlib.Path, hist: dict, seeds: list[int]) -> None:
    """Train and test loss, and test accuracy, per epoch for every model."""
    fig, axes = plots.new_figure(2, 1, (5.0, 3.6))
    for (a, sd), h in hist.items():
        ep = [r["epoch"] for r in h]
        ls = SEED_LINES[seeds.index(sd) % 4]
        axes[0, 0].plot(ep, [r["train_loss"] for r in h], ls, marker="o", ms=3, color=COLORS[a],
                        label=f"{a} s{sd} train")
        axes[0, 0].plot(ep, [r["test_loss"] for r in h], ls, marker="s", ms=3, color=COLORS[a], alpha=0.45,
                        label=f"{a} s{sd} test")
        axes[0, 1].plot(ep, [r["test_acc"] for r in h], ls, marker="o", ms=3, color=COLORS[a], label=f"{a} s{sd}")
    axes[0, 0].set_ylabel("cross-entropy loss (nats)")
    axes[0, 1].set_ylabel("test accuracy (fraction)")
    for ax in axes.ravel():
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _legend_right(axes[0, 0])
    _legend_right(axes[0, 1])
    fig.tight_layout()
    plots.save(fig, path)


def hessian_spectrum_figure(path: pathlib.Path, an_all: dict, seeds: list[int], s: dict) -> None:
    """The converged top eigenvalues (filled) and most negative ones (hollow) of every model, symlog scale."""
    fig, axes = plots.new_figure(1, 1, (6.2, 4.0))
    ax = axes[0, 0]
    n_left_out = 0
    for (a, sd), an in an_all.items():
        top, tc = np.asarray(an["top_eigenvalues"], float), np.asarray(an["top_converged"], bool)
        neg, nc = np.asarray(an["negative_eigenvalues"], float), np.asarray(an["negative_converged"], bool)
        n_left_out += int((~tc).sum() + (~nc).sum())
        r_top = np.arange(1, top.size + 1)
        r_neg = np.arange(top.size + 2, top.size + 2 + neg.size)
        mk = ["o", "s", "^", "D"][seeds.index(sd) % 4]
        ax.plot(r_top[tc], top[tc], mk, ls="none", ms=3.5, color=COLORS[a], alpha=0.8, label=f"{a} seed {sd}")
        ax.plot(r_neg[nc], neg[nc], mk, ms=5, color=COLORS[a], mfc="none")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(s["k"] + 1, color="grey", lw=0.5, ls=":")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.margins(y=0.08)
    ax.xaxis.set_major_locator(plots.plt.MaxNLocator(integer=True))
    ax.set_xlabel(f"eigenvalue rank: 1–{s['k']} largest (filled), then the {s['k_neg']} most negative (hollow)")
    ax.set_ylabel("Hessian eigenvalue (symlog scale)")
    ax.set_title(f"Hessian extremes, converged pairs only (residual ≤ {s['eig_tol']:g}·max|θ|); "
                 f"{n_left_out} unconverged Ritz value(s) not shown", fontsize=8)
    _legend_right(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)


def mode_connectivity_figure(path: pathlib.Path, conn: list[dict], seeds: list[int], test_size: int) -> None:
    """Test loss and accuracy along every linear path between two seeds."""
    fig, axes = plots.new_figure(2, 1, (4.6, 3.6))
    for c in conn:
        lab = f"{c['arch']} {c['seed_a']}→{c['seed_b']}"
        ls = "-" if c["seed_a"] == seeds[0] else "--"
        axes[0, 0].plot(c["alphas"], c["losses"], ls, marker="o", ms=3, color=COLORS[c["arch"]], label=lab)
        axes[0, 1].plot(c["alphas"], c["accuracies"], ls, marker="o", ms=3, color=COLORS[c["arch"]], label=lab)
    n_eval = conn[0]["n_eval"] if conn else test_size
    axes[0, 0].set_ylabel("test loss (nats)")
    axes[0, 1].set_ylabel("test accuracy (fraction)")
    for ax in axes.ravel():
        ax.set_xlabel("α (interpolation weight, seed a → seed b)")
        ax.grid(alpha=0.3)
    _legend_right(axes[0, 1])
    fig.suptitle(f"linear paths on the {n_eval} test images of the model table; BN statistics re-estimated at "
                 "every α (ResNet)", fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def metrics_comparison_figure(path: pathlib.Path, archs: list[str], vals: dict, cis: dict) -> None:
    """One panel per compared quantity.

    Bars = mean per architecture (``cis``), error bars = 95 % CI, dots = the values ``vals`` (seeds; seed pairs for the
    barrier).
    """
    fig, axes = plots.new_figure(4, 2, (2.6, 2.5))
    for ax, (key, label) in zip(axes.ravel(), METRIC_LABELS.items()):
        for i, a in enumerate(archs):
            m = cis[(a, key)]
            ax.bar(i, m.mean if np.isfinite(m.mean) else 0, color=COLORS[a], alpha=0.55, width=0.6,
                   yerr=m.half if np.isfinite(m.half) else None, capsize=4)
            v = np.asarray(vals[(a, key)], float)
            ax.plot(i + np.linspace(-0.12, 0.12, max(1, v.size))[:v.size], v, "k.", ms=4)
        ax.set_xticks(range(len(archs)), archs)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("CNN vs ResNet: bars = mean, error bars = 95 % CI over seeds (n/a for n < 2), dots = seeds "
                 "(barrier: seed pairs)", fontsize=8)
    fig.tight_layout()
    plots.save(fig, path)


def _scatter(ax, rows, key, xlabel, corr) -> None:
    """Test accuracy against ``key``, one marker per model, no fit line (n is small)."""
    for a in COLORS:
        sel = [r for r in rows if r["arch"] == a and np.isfinite(r[key])]
        if sel:
            ax.scatter([r[key] for r in sel], [r["test_acc"] for r in sel], s=34, color=COLORS[a], edgecolor="k",
                       linewidth=0.5, alpha=0.85, label=f"{a} (n = {len(sel)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (fraction)")
    ax.set_title(corr.text().replace(", 95 %", "\n95 %"), fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")


def correlation_figure(path: pathlib.Path, rows: list[dict], corrs: dict) -> None:
    """Test accuracy against sharpness, λ_max and κ̂, with each correlation in its panel's title."""
    fig, axes = plots.new_figure(3, 1, (3.3, 3.1))
    for ax, q in zip(axes.ravel(), ("sharpness", "lambda_max", "condition_number")):
        _scatter(ax, rows, q, METRIC_LABELS[q], corrs[f"{q}_vs_test_acc"])
    fig.tight_layout()
    plots.save(fig, path)


def surface_figures(out: pathlib.Path, archs: list[str], seeds: list[int], s: dict) -> None:
    """``surface_contour.png`` (the architectures side by side) and ``surface_3d_<arch>.png``, one colour scale."""
    surf = {}
    for a in archs:
        z = read_npz(out / "pairs" / f"surface_{a}.npz")
        surf[a] = SurfaceResult(z["alphas"], z["losses"], z["accuracies"], z["betas"])
    plot_contour_panels({f"{a} (seed {seeds[0]})": r for a, r in surf.items()}, out / "surface_contour.png",
                        dpi=plots.current_dpi(), title=f"filter-normalised loss surfaces on {s['surface_samples']} test images, "
                                       f"{s['surface_res']}×{s['surface_res']} grid")
    zall = np.concatenate([r.losses.ravel() for r in surf.values()])
    for a, r in surf.items():
        plot_surface_3d(r, out / f"surface_3d_{a}.png", dpi=plots.current_dpi(), vmin=float(zall.min()), vmax=float(zall.max()),
                        title=f"{a}: filter-normalised loss surface (z and colour shared across architectures)")


def summary_table_figure(path: pathlib.Path, table: tuple[list[str], list[list]]) -> None:
    """The per-model table ``(header, body)`` as an image."""
    header, body = table
    fig, axes = plots.new_figure(1, 1, (1.05 * len(header), 0.42 * (len(body) + 2)))
    ax = axes[0, 0]
    ax.axis("off")
    tab = ax.table(cellText=[[str(c) for c in r] for r in body], colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.scale(1.0, 1.3)
    ax.set_title("CNN vs ResNet on CIFAR-10 (per model; * = some Lanczos pairs unconverged, left out)", fontsize=9)
    plots.save(fig, path)
