"""The diagnostic's figures outside ``validation_analysis/``: per run, per method family, and ``00_summary/``."""
from __future__ import annotations

import pathlib

import numpy as np

from ... import plots
from ...result_files import read_csv, read_npz
from .runs import RunData, accuracy_curve, by_method, seed_mean_curve

__all__ = ["LAMBDA_LABEL", "COMPARISON_FILES", "SCATTER_FILES", "lambda_evolution_figure", "family_figure",
           "all_methods_figure", "scatter_vs_lambda_figure"]

LAMBDA_LABEL = "λ (slope of ln|d_n| per order)"
# the family comparison figure of each method family, as the study names it
COMPARISON_FILES = {"baseline": "baseline_comparison.png", "dropout": "dropout_comparison.png",
                    "weight_decay": "wd_comparison.png", "augmentation": "augmentation_comparison.png",
                    "label_smoothing": "smooth_comparison.png", "sam": "sam_comparison.png",
                    "input_gradient_penalty": "igp_comparison.png"}
# quantity → (file, axis label) of the ``00_summary/`` scatter plots against final λ
SCATTER_FILES = {"test_acc": ("performance_vs_lambda.png", "final test accuracy (fraction)"),
                 "gap": ("generalization_gap_vs_lambda.png", "generalisation gap (train − test accuracy)"),
                 "ece": ("calibration_vs_lambda.png", "ECE (test, 15 bins)")}


def lambda_evolution_figure(run_dir: pathlib.Path, label: str) -> None:
    """``lambda_evolution.png`` of one run from its CSV and npz."""
    rows = read_csv(run_dir / "training_metrics.csv")
    lam = read_npz(run_dir / "lambda_data.npz")
    fig = plots.lambda_evolution_figure(lam["epochs"], lam["lambda_values"], rows, f"{label}: λ during training")
    plots.save(fig, run_dir / "lambda_evolution.png")


def _curves(axes, bym: dict[str, list[RunData]], show: list[str], cols, base: str | None, dashed_base: bool) -> None:
    """λ (mean over seeds) and test accuracy against epoch, one line per method; the baseline in black."""
    for lab, c in zip(show, cols):
        ls = "--" if (lab == base and dashed_base) else "-"
        lw = 2.0 if lab == base else 1.0
        e, m = seed_mean_curve(bym[lab])
        axes[0, 0].plot(e, m, ls, color=c if lab != base else "k", lw=lw, label=lab, marker=".", ms=3)
        ea, acc = accuracy_curve(bym[lab])
        axes[0, 1].plot(ea, acc, ls, color=c if lab != base else "k", lw=lw, label=lab)


def _delta_bars(ax, show: list[str], cols, base: str | None, trow: dict, nseed: int) -> None:
    """Final λ of every other method minus the baseline's, with the 95 % CI over seeds when there are several."""
    others = [lab for lab in show if lab != base]
    b = trow[base]["lambda_final_mean"] if base else np.nan
    d = [trow[lab]["lambda_final_mean"] - b for lab in others]
    err = [trow[lab]["lambda_final_ci95"] for lab in others]
    y = np.arange(len(others))
    ax.barh(y, d, xerr=[e if np.isfinite(e) else 0 for e in err] if nseed > 1 else None,
            color=cols[1:len(others) + 1], capsize=2)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, labels=others, fontsize=6)
    ax.set(xlabel="final λ − baseline final λ", title="final λ relative to the baseline"
           + (" (± 95 % CI)" if nseed > 1 else " (one seed: no CI)"))


def family_figure(ds_dir: pathlib.Path, fdir: str, labels: list[str], runs: list[RunData], table: list[dict]) -> None:
    """``<family folder>/<COMPARISON_FILES[family]>``.

    The family's methods against the baseline (dashed); the baseline's figure compares it with every other method (Δ
    final λ with 95 % CI over seeds).
    """
    bym = by_method(runs)
    base = next((lab for lab, ms in bym.items() if ms[0].family == "baseline"), None)
    trow = {t["method"]: t for t in table}
    family = bym[labels[0]][0].family
    show = list(bym) if family == "baseline" else ([base] if base is not None else []) + labels
    cols = plots.color_cycle(len(show))
    nseed = max(len(v) for v in bym.values())
    fig, axes = plots.new_figure(3, 1, (4.4, 3.4))
    _curves(axes, bym, show, cols, base, family != "baseline")
    axes[0, 0].set(xlabel="epoch", ylabel=LAMBDA_LABEL, title="λ during training" + (
        f" (mean of {nseed} seeds)" if nseed > 1 else ""))
    axes[0, 1].set(xlabel="epoch", ylabel="test accuracy (fraction)", title="test accuracy")
    axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if family == "baseline":
        _delta_bars(axes[0, 2], show, cols, base, trow, nseed)
    else:
        plots.scatter_labeled(axes[0, 2], [trow[lab]["lambda_final_mean"] for lab in show],
                              [trow[lab]["test_acc_mean"] for lab in show], show, cols,
                              "final " + LAMBDA_LABEL, "final test accuracy (fraction)", "final λ vs accuracy",
                              xerr=[trow[lab]["lambda_final_ci95"] for lab in show],
                              yerr=[trow[lab]["test_acc_ci95"] for lab in show], legend="none")
    for a in axes[0, :2]:
        a.grid(alpha=0.3)
    fig.suptitle(f"{fdir.split('_', 1)[-1].replace('_', ' ')}: comparison "
                 + ("with every other method" if family == "baseline" else "with the baseline (dashed)"),
                 fontsize=10)
    fig.tight_layout()
    plots.save(fig, ds_dir / fdir / COMPARISON_FILES[family])


def all_methods_figure(path: pathlib.Path, runs: list[RunData], table: list[dict], title: str) -> None:
    """λ and test accuracy during training for every method, and the final λ per method (bars)."""
    bym = by_method(runs)
    labels = [t["method"] for t in table]
    cols = plots.color_cycle(len(labels))
    nseed = max(t["n_seeds"] for t in table)
    fig, axes = plots.new_figure(3, 1, (4.6, 3.8))
    for lab, c in zip(labels, cols):
        e, m = seed_mean_curve(bym[lab])
        axes[0, 0].plot(e, m, color=c, lw=1, label=lab)
        ea, acc = accuracy_curve(bym[lab])
        axes[0, 1].plot(ea, acc, color=c, lw=1, label=lab)
    axes[0, 0].set(xlabel="epoch", ylabel=LAMBDA_LABEL, title=f"{title}: λ during training")
    axes[0, 1].set(xlabel="epoch", ylabel="test accuracy (fraction)", title="test accuracy")
    axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    y = np.arange(len(table))
    if nseed > 1:
        err, what = [t["lambda_final_ci95"] for t in table], "± 95 % CI over seeds"
    else:
        err, what = [t["lambda_final_std_mean"] for t in table], "± std over directions"
    axes[0, 2].barh(y, [t["lambda_final_mean"] for t in table], xerr=[e if np.isfinite(e) else 0 for e in err],
                    color=cols, capsize=2)
    axes[0, 2].set_yticks(y, labels=labels, fontsize=6)
    axes[0, 2].set(xlabel=f"final λ ({what})", title="final λ per method")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, path)


def scatter_vs_lambda_figure(sdir: pathlib.Path, key: str, table: list[dict], corr, title: str) -> None:
    """One method per point: the quantity ``key`` (mean over seeds) against final λ, with 95 % CIs.

    The correlation ``corr`` goes in the title; the figure into its file of
    [`SCATTER_FILES`][lamda.studies.diagnostic.figures.SCATTER_FILES].
    """
    fname, ylab = SCATTER_FILES[key]
    labels = [t["method"] for t in table]
    lam = [t["lambda_final_mean"] for t in table]
    fig, axes = plots.new_figure(1, 1, (5.2, 4.0))
    plots.scatter_labeled(axes[0, 0], lam, [t[f"{key}_mean"] for t in table], labels, plots.color_cycle(len(labels)),
                          "final " + LAMBDA_LABEL, ylab, f"{title}: {ylab} vs λ\n{corr.text()}",
                          xerr=[t["lambda_final_ci95"] for t in table], yerr=[t[f"{key}_ci95"] for t in table])
    plots.save(fig, sdir / fname)
