"""Post-hoc analyses of the diagnostic experiment, computed from the files on disk alone.

Reads every run's ``training_metrics.csv`` and ``lambda_data.npz`` and writes the per-run and per-family
plots, ``00_summary/``, ``validation_analysis/`` and the top-level ``summary.md`` (see
:mod:`lamda.experiments.diagnostic` for the tree; :func:`validation_files` lists the validation files).
All statements in ``summary.md`` are computed from the numbers; a statistic that cannot be computed is
reported as "not enough data".

Definitions (the study's). Validation analyses work on ``log_abs_derivatives [M, 15, 6]`` (mean over points of
log|d_n| per shared direction): the λ of direction k for an order window ``lo-hi`` is the least-squares slope
of log|d_n| over n = lo..hi; for a direction count K:

- λ(K, w): mean over random K-subsets of the 15 directions (200 seeded draws; the full set for K = 15) of the
  subset's mean λ;
- CV(K, w) = std/|mean| of λ over the directions of a subset (sample std), averaged over the subsets
  (n/a for K = 1) — the spread of λ between directions relative to its size;
- standard error(K, w): measured, not assumed — the std over 500 bootstrap resamples (K directions drawn with
  replacement from the 15) of their mean λ; ``stderr_formula`` = std₁₅/√K is written beside it so the
  check "stderr ≈ std/√K" can fail;
- deviation(K, w): mean over subsets of |subset λ − λ_ref| / |λ_ref|, λ_ref = λ(K=15, orders 1-6).

Tables give mean ± 95 % t-interval over seeds (``± n/a`` for one seed); correlations are over methods (seed
means) with n, p and a bootstrap CI. Per-epoch figures are drawn at epochs {0, 10, 25, 50} or the nearest
measured epoch, which the title states. With several seeds, the validation analyses use the first seed's runs.
"""
from __future__ import annotations

import math
import pathlib
import warnings
from dataclasses import dataclass

import numpy as np

from ... import result_files as lio
from ... import plots
from ...measure import fit_lambda
from ...stats import bootstrap_stderr, cv, fmt, fmt_ci, mean_ci, pearson

__all__ = ["RunData", "load_runs", "write_run_plot", "analyze_dataset", "analyze_experiment", "K_GRID", "WINDOWS",
           "joint_metrics", "CRITERIA", "lambda_onset", "accuracy_degradation_onset", "convergence_epoch",
           "COMPARISON_FILES", "STUDY_EPOCHS", "validation_files", "figure_folders", "method_table",
           "direction_convergence_analysis", "order_sensitivity_analysis", "temporal_stability_analysis",
           "joint_optimization_analysis", "nearest_epoch_index"]

K_GRID = (1, 2, 3, 5, 10, 15)
WINDOWS = ((1, 2), (1, 3), (1, 4), (2, 4), (2, 5), (1, 6))
REF_WINDOW = (1, 6)
CRITERIA = {"deviation": 0.05, "stderr": 0.1, "cv": 0.2}
N_SUBSETS = 200
N_BOOT = 500
ACC_DROP = 0.01       # test-accuracy degradation: 1 percentage point below its peak, sustained to the end
LAMBDA_SE_MULT = 2.0  # λ "moves": rises above its running minimum by more than 2 standard errors
STUDY_EPOCHS = (0, 10, 25, 50)
MIN_CORRELATION_N = 10
LAMBDA_LABEL = "λ (slope of ln|d_n| per order)"
# the family comparison figure of each method family, as the study names it
COMPARISON_FILES = {"baseline": "baseline_comparison.png", "dropout": "dropout_comparison.png",
                    "weight_decay": "wd_comparison.png", "augmentation": "augmentation_comparison.png",
                    "label_smoothing": "smooth_comparison.png", "sam": "sam_comparison.png",
                    "input_gradient_penalty": "igp_comparison.png"}


def validation_files(labels) -> list[str]:
    """Every file of ``validation_analysis/`` (relative paths) for runs with these method labels."""
    ep = [f"{e}" for e in STUDY_EPOCHS]
    return ([f"direction_convergence/{f}" for f in
             ["direction_convergence.png", "direction_convergence.csv", "cv_vs_K_across_training.png",
              "per_method_convergence.png"] + [f"convergence_epoch_{e}.png" for e in ep]]
            + [f"order_sensitivity/{f}" for f in
               ["order_sensitivity.png", "order_sensitivity.csv", "order_difference_heatmap.png",
                "first_order_bias_analysis.png", "first_order_bias.csv"]]
            + [f"temporal_directional_stability/{f}" for f in
               ["spaghetti_plots.png", "violin_evolution.png", "cv_over_time.png", "direction_correlation_matrix.png",
                "temporal_stability.csv"] + [f"spaghetti_{lab}.png" for lab in labels]]
            + [f"joint_K_order_optimization/{f}" for f in
               ["lambda_heatmap.png", "stderr_heatmap.png", "cv_heatmap.png", "deviation_heatmap.png",
                "pareto_frontier.png", "per_method_grid.png", "temporal_evolution.gif",
                "optimal_config_recommendations.txt", "joint_grid_final_epoch.csv", "joint_grid.npz"]
               + [f"heatmap_lambda_estimate_epoch_{e}.png" for e in ep]])


def figure_folders(out: pathlib.Path) -> list[pathlib.Path]:
    """The folders holding a results tree's summary figures and validation analyses (for the closing log lines)."""
    cfg = lio.read_json(pathlib.Path(out) / "experiment_config.json")
    res = []
    for ds in cfg["datasets"]:
        d = pathlib.Path(out) / cfg["dataset_dirs"][ds]
        res += [d / "00_summary", d / "validation_analysis"]
    return res


def wname(w) -> str:
    return f"{w[0]}-{w[1]}"


@dataclass
class RunData:
    label: str
    family: str
    family_dir: str
    strength: object
    rel: str
    rows: list
    lam: dict
    seed: int = 0
    dir: str = ""

    @property
    def final(self) -> dict:
        return self.rows[-1]

    @property
    def lambda_values(self) -> np.ndarray:
        return np.asarray(self.lam["lambda_values"], float)

    @property
    def epochs(self) -> np.ndarray:
        return np.asarray(self.lam["epochs"])


def nearest_epoch_index(epochs, target: int) -> int:
    """Index of the measured epoch nearest to ``target`` (the earlier one on a tie)."""
    e = np.asarray(epochs)
    return int(np.argmin(np.abs(e - target) + 1e-9 * (e > target)))


# ---------------------------------------------------------------------------------------------- loading
def load_runs(ds_dir: pathlib.Path, run_list: list[dict]) -> list[RunData]:
    runs = []
    for r in run_list:
        d = ds_dir / r.get("dir", r["rel"])
        for f in ("training_metrics.csv", "lambda_data.npz"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d / f} is missing; the run has not finished (rerun `lamda run diagnostic` "
                                        f"with the same --out to complete it)")
        runs.append(RunData(r["label"], r["family"], r["family_dir"], r["strength"], r["rel"],
                            lio.read_csv(d / "training_metrics.csv"), lio.read_npz(d / "lambda_data.npz"),
                            int(r.get("seed", 0)), r.get("dir", r["rel"])))
    return runs


def write_run_plot(run_dir: pathlib.Path, label: str) -> None:
    """``lambda_evolution.png`` of one run from its CSV and npz."""
    rows = lio.read_csv(run_dir / "training_metrics.csv")
    lam = lio.read_npz(run_dir / "lambda_data.npz")
    fig = plots.lambda_evolution_figure(lam["epochs"], lam["lambda_values"], rows, f"{label}: λ during training")
    plots.save(fig, run_dir / "lambda_evolution.png")


# ---------------------------------------------------------------------------------------------- metrics
def final_stats(run: RunData) -> dict:
    lam = run.lambda_values
    f = run.final
    means = np.nanmean(lam, 1) if lam.size else np.array([np.nan])
    return {"method": run.label, "family": run.family, "strength": run.strength, "seed": run.seed,
            "test_acc": f.get("test_acc"), "train_acc": f.get("train_acc"), "gap": f.get("gap"), "ece": f.get("ece"),
            "test_loss": f.get("test_loss"), "train_loss": f.get("train_loss"),
            "lambda_final": float(means[-1]),
            "lambda_final_std": float(np.nanstd(lam[-1], ddof=1)) if lam.shape[-1] > 1 else np.nan,
            "lambda_final_cv": float(cv(lam[-1])),
            "lambda_initial": float(means[0]), "lambda_change": float(means[-1] - means[0]),
            "lambda_min": float(np.nanmin(means)), "lambda_max": float(np.nanmax(means)),
            "n_measurements": int(lam.shape[0]), "epochs": int(f.get("epoch", 0))}


STAT_KEYS = ("test_acc", "train_acc", "gap", "ece", "lambda_final", "lambda_final_std", "lambda_final_cv",
             "lambda_change")


def method_table(runs: list[RunData]) -> list[dict]:
    """One row per method (in run order): ``<q>_mean``, ``<q>_ci95`` (t-interval half-width over seeds, NaN for
    one seed) and ``n_seeds`` for every quantity of :data:`STAT_KEYS`."""
    order = list(dict.fromkeys(r.label for r in runs))
    out = []
    for lab in order:
        st = [final_stats(r) for r in runs if r.label == lab]
        row = {"method": lab, "family": st[0]["family"], "strength": st[0]["strength"], "n_seeds": len(st),
               "seeds": ",".join(str(s["seed"]) for s in st)}
        for k in STAT_KEYS:
            m, h, _ = mean_ci([s[k] for s in st])
            row[f"{k}_mean"], row[f"{k}_ci95"] = m, h
        out.append(row)
    return out


def accuracy_degradation_onset(rows: list[dict], drop: float = ACC_DROP):
    """Start of a sustained degradation: the first epoch after the test-accuracy peak from which the accuracy stays
    at least ``drop`` below the peak until the end of the run; None when there is none (one-epoch dips that recover
    do not count)."""
    acc = np.array([r["test_acc"] for r in rows], float)
    ep = np.array([r["epoch"] for r in rows])
    i = int(np.nanargmax(acc))
    below = acc[i + 1:] <= acc[i] - drop
    if below.size == 0 or not below[-1]:
        return None
    k = below.size - 1
    while k > 0 and below[k - 1]:
        k -= 1
    return int(ep[i + 1 + k])


def convergence_epoch(rows: list[dict], tol: float = ACC_DROP):
    """First epoch whose test accuracy is within ``tol`` of the run's peak test accuracy."""
    acc = np.array([r["test_acc"] for r in rows], float)
    i = int(np.nonzero(acc >= np.nanmax(acc) - tol)[0][0])
    return int(rows[i]["epoch"])


def lambda_onset(epochs: np.ndarray, lam: np.ndarray, ref_epoch: int, mult: float = LAMBDA_SE_MULT):
    """First measured epoch after ``ref_epoch`` where the mean λ differs from its value at ``ref_epoch``
    (the last measurement at or before it) by more than ``mult`` standard errors over directions; None if never."""
    epochs = np.asarray(epochs)
    m = np.nanmean(lam, 1)
    K = lam.shape[1]
    se = np.nanstd(lam, 1, ddof=1) / math.sqrt(K) if K > 1 else np.zeros(len(m))
    before = np.nonzero(epochs <= ref_epoch)[0]
    if before.size == 0:
        return None
    j0 = int(before[-1])
    for j in range(j0 + 1, len(m)):
        if abs(m[j] - m[j0]) > mult * max(se[j], se[j0]):
            return int(epochs[j])
    return None


def meets(metrics: dict, idx=...) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ((metrics["deviation"][idx] < CRITERIA["deviation"]) & (metrics["stderr"][idx] < CRITERIA["stderr"])
                & (metrics["cv"][idx] < CRITERIA["cv"]))


def joint_metrics(log_abs: np.ndarray, ks=K_GRID, windows=WINDOWS, n_subsets: int = N_SUBSETS, seed: int = 0,
                  n_boot: int = N_BOOT):
    """λ, standard error (bootstrap and formula), CV and deviation over ``ks × windows`` for every measurement.

    ``log_abs [M, Kall, N]`` → dict of arrays ``[M, len(ks), len(windows)]`` with keys ``lambda``, ``stderr``
    (bootstrap), ``stderr_formula`` (std/√K), ``cv``, ``deviation`` (definitions in the module docstring). Seeded:
    the same input gives the same numbers.
    """
    log_abs = np.asarray(log_abs, float)
    M, Kall, N = log_abs.shape
    rng = np.random.default_rng(seed)
    ref = np.nanmean(fit_lambda(log_abs, REF_WINDOW if N >= 6 else (1, N)), 1)        # [M]
    keys = ("lambda", "stderr", "stderr_formula", "cv", "deviation")
    out = {k: np.full((M, len(ks), len(windows)), np.nan) for k in keys}
    for wi, w in enumerate(windows):
        if w[1] > N:
            continue
        lw = fit_lambda(log_abs, w)                                                      # [M, Kall]
        with np.errstate(invalid="ignore"):
            sd = np.nanstd(lw, 1, ddof=1) if Kall > 1 else np.full(M, np.nan)
        for ki, K in enumerate(ks):
            if K > Kall:
                continue
            subs = (np.arange(Kall)[None] if K == Kall
                    else np.argsort(rng.random((n_subsets, Kall)), 1)[:, :K])              # [R, K]
            vals = lw[:, subs]                                                              # [M, R, K]
            with np.errstate(invalid="ignore", divide="ignore"):
                sm = np.nanmean(vals, -1)                                                   # [M, R]
                lam = sm.mean(1)
                out["lambda"][:, ki, wi] = lam
                out["stderr"][:, ki, wi] = bootstrap_stderr(lw, K, n_boot, rng)
                out["stderr_formula"][:, ki, wi] = sd / math.sqrt(K)
                out["cv"][:, ki, wi] = np.nanmean(cv(vals, -1), 1) if K > 1 else np.nan
                out["deviation"][:, ki, wi] = np.mean(np.abs(sm - ref[:, None]), 1) / np.abs(ref)
    return out


# ---------------------------------------------------------------------------------------------- figures
def _by_method(runs: list[RunData]) -> dict[str, list[RunData]]:
    out: dict[str, list[RunData]] = {}
    for r in runs:
        out.setdefault(r.label, []).append(r)
    return out


def _seed_mean_curve(members: list[RunData]):
    """Epochs and the mean over seeds of the mean-over-directions λ (epochs common to all seeds)."""
    ep = members[0].epochs
    common = [e for e in ep if all(e in m.epochs for m in members)]
    vals = np.array([[np.nanmean(m.lambda_values[list(m.epochs).index(e)]) for e in common] for m in members])
    return np.array(common), vals.mean(0)


def _acc_curve(members: list[RunData]):
    ep = [x["epoch"] for x in members[0].rows]
    acc = np.mean([[x["test_acc"] for x in m.rows[:len(ep)]] for m in members], 0)
    return ep, acc


def family_plots(ds_dir: pathlib.Path, runs: list[RunData], table: list[dict]) -> None:
    """``<family>/<COMPARISON_FILES[family]>``: each family against the baseline; the baseline's figure compares
    it with every other method (Δ final λ with 95 % CI over seeds)."""
    bym = _by_method(runs)
    base = next((lab for lab, ms in bym.items() if ms[0].family == "baseline"), None)
    fams: dict[str, list[str]] = {}
    for lab, ms in bym.items():
        fams.setdefault(ms[0].family_dir, []).append(lab)
    trow = {t["method"]: t for t in table}
    for fdir, labels in fams.items():
        family = bym[labels[0]][0].family
        fig, axes = plots.new_figure(3, 1, (4.4, 3.4))
        if family == "baseline":
            show = list(bym)
        else:
            show = ([base] if base is not None else []) + labels
        cols = plots.color_cycle(len(show))
        for lab, c in zip(show, cols):
            ls = "--" if (lab == base and family != "baseline") else "-"
            lw = 2.0 if lab == base else 1.0
            e, m = _seed_mean_curve(bym[lab])
            axes[0, 0].plot(e, m, ls, color=c if lab != base else "k", lw=lw, label=lab, marker=".", ms=3)
            ea, acc = _acc_curve(bym[lab])
            axes[0, 1].plot(ea, acc, ls, color=c if lab != base else "k", lw=lw, label=lab)
        nseed = max(len(v) for v in bym.values())
        axes[0, 0].set(xlabel="epoch", ylabel=LAMBDA_LABEL, title="λ during training" + (
            f" (mean of {nseed} seeds)" if nseed > 1 else ""))
        axes[0, 1].set(xlabel="epoch", ylabel="test accuracy (fraction)", title="test accuracy")
        axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        ax = axes[0, 2]
        if family == "baseline":
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
        else:
            plots.scatter_labeled(ax, [trow[lab]["lambda_final_mean"] for lab in show],
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


def summary_plots(sdir: pathlib.Path, runs: list[RunData], table: list[dict], title: str) -> dict:
    bym = _by_method(runs)
    labels = [t["method"] for t in table]
    cols = plots.color_cycle(len(labels))
    nseed = max(t["n_seeds"] for t in table)
    fig, axes = plots.new_figure(3, 1, (4.6, 3.8))
    for lab, c in zip(labels, cols):
        e, m = _seed_mean_curve(bym[lab])
        axes[0, 0].plot(e, m, color=c, lw=1, label=lab)
        ea, acc = _acc_curve(bym[lab])
        axes[0, 1].plot(ea, acc, color=c, lw=1, label=lab)
    axes[0, 0].set(xlabel="epoch", ylabel=LAMBDA_LABEL, title=f"{title}: λ during training")
    axes[0, 1].set(xlabel="epoch", ylabel="test accuracy (fraction)", title="test accuracy")
    axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    y = np.arange(len(table))
    if nseed > 1:
        err, what = [t["lambda_final_ci95"] for t in table], "± 95 % CI over seeds"
    else:
        err, what = [r_std for r_std in (t["lambda_final_std_mean"] for t in table)], "± std over directions"
    axes[0, 2].barh(y, [t["lambda_final_mean"] for t in table], xerr=[e if np.isfinite(e) else 0 for e in err],
                    color=cols, capsize=2)
    axes[0, 2].set_yticks(y, labels=labels, fontsize=6)
    axes[0, 2].set(xlabel=f"final λ ({what})", title="final λ per method")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, sdir / "all_methods_comparison.png")
    lam = [t["lambda_final_mean"] for t in table]
    lam_err = [t["lambda_final_ci95"] for t in table]
    corr = {}
    for key, fname, ylab in (("test_acc", "performance_vs_lambda.png", "final test accuracy (fraction)"),
                             ("gap", "generalization_gap_vs_lambda.png", "generalisation gap (train − test accuracy)"),
                             ("ece", "calibration_vs_lambda.png", "ECE (test, 15 bins)")):
        c = pearson(lam, [t[f"{key}_mean"] for t in table])
        corr[key] = c
        fig, axes = plots.new_figure(1, 1, (5.2, 4.0))
        plots.scatter_labeled(axes[0, 0], lam, [t[f"{key}_mean"] for t in table], labels, cols,
                              "final " + LAMBDA_LABEL, ylab, f"{title}: {ylab} vs λ\n{c.text()}",
                              xerr=lam_err, yerr=[t[f"{key}_ci95"] for t in table])
        plots.save(fig, sdir / fname)
    return corr


def _epoch_title(run: RunData, target: int) -> tuple[int, str]:
    j = nearest_epoch_index(run.epochs, target)
    e = int(run.epochs[j])
    return j, (f"epoch {e}" if e == target else f"epoch {target} requested, nearest measured epoch {e}")


def direction_convergence_analysis(vdir: pathlib.Path, runs: list[RunData]) -> dict:
    """``direction_convergence/``: λ estimate, bootstrap and formula standard error, CV and deviation for
    K = 1..15 directions (orders 1-6), at the final epoch, at the study's epochs and across training."""
    dd = vdir / "direction_convergence"
    kall = runs[0].lam["log_abs_derivatives"].shape[1]
    ks = tuple(range(1, kall + 1))
    jms = [joint_metrics(r.lam["log_abs_derivatives"], ks=ks, windows=(REF_WINDOW,)) for r in runs]
    rows = []
    for r, jm in zip(runs, jms):
        for ki, K in enumerate(ks):
            rows.append({"method": r.label, "seed": r.seed, "K": K, "lambda_final": jm["lambda"][-1, ki, 0],
                         "stderr_final": jm["stderr"][-1, ki, 0], "stderr_formula_final": jm["stderr_formula"][-1, ki, 0],
                         "cv_final": jm["cv"][-1, ki, 0], "deviation_final": jm["deviation"][-1, ki, 0],
                         "deviation_mean_over_time": np.nanmean(jm["deviation"][:, ki, 0])})
    lio.write_csv(dd / "direction_convergence.csv", rows)
    n = len(runs)
    cols = plots.color_cycle(n)
    fig, axes = plots.new_figure(3, 1, (4.2, 3.6))
    for r, jm, c in zip(runs, jms, cols):
        axes[0, 0].plot(ks, 100 * jm["deviation"][-1, :, 0], marker=".", color=c, label=r.label)
        axes[0, 1].plot(ks, jm["stderr"][-1, :, 0], marker=".", color=c)
        axes[0, 1].plot(ks, jm["stderr_formula"][-1, :, 0], ls=":", color=c)
        axes[0, 2].plot(ks, jm["cv"][-1, :, 0], marker=".", color=c)
    axes[0, 0].axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8)
    axes[0, 1].axhline(CRITERIA["stderr"], color="k", ls="--", lw=0.8)
    axes[0, 2].axhline(CRITERIA["cv"], color="k", ls="--", lw=0.8)
    axes[0, 0].set(xlabel="directions K", ylabel="|λ_K − λ_15| / |λ_15|  (%)", title="deviation (final epoch)")
    axes[0, 1].set(xlabel="directions K", ylabel="standard error of λ (λ units)",
                   title="standard error: bootstrap (solid) vs std/√K (dotted)")
    axes[0, 2].set(xlabel="directions K", ylabel="CV = std/|mean| over directions", title="CV (final epoch)")
    axes[0, 2].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, dd / "direction_convergence.png")
    ylim = plots.value_range(*[100 * jm["deviation"][:, :, 0] for jm in jms])
    for target in STUDY_EPOCHS:
        fig, axes = plots.new_figure(1, 1, (5.6, 3.8))
        ax = axes[0, 0]
        for r, jm, c in zip(runs, jms, cols):
            j, what = _epoch_title(r, target)
            ax.plot(ks, 100 * jm["deviation"][j, :, 0], marker=".", color=c, label=r.label)
        ax.axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8, label="5 % criterion")
        ax.set(xlabel="directions K", ylabel="|λ_K − λ_15| / |λ_15|  (%)", ylim=(0, ylim[1] * 1.05 + 1e-9),
               title=f"convergence in K — {what}")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
        ax.grid(alpha=0.3)
        plots.save(fig, dd / f"convergence_epoch_{target}.png")
    # CV vs K at every measured epoch (mean over methods), colour = epoch
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
    axes[0, 0].set(xlabel="directions K", ylabel=f"CV = std/|mean| (mean over {n} methods)",
                   title="CV of λ over directions vs K, across training")
    axes[0, 0].grid(alpha=0.3)
    plots.save(fig, dd / "cv_vs_K_across_training.png")
    # per method: deviation vs K at the study's epochs (one y scale)
    fig, axs = plots.grid(n, size=(3.2, 2.8))
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
    plots.save(fig, dd / "per_method_convergence.png")
    return {"metrics": jms, "K": ks}


def order_sensitivity_analysis(vdir: pathlib.Path, runs: list[RunData]) -> dict:
    """``order_sensitivity/``: λ per order window, its relative difference from orders 1-6, and the first-order
    bias (how far log|d_1| lies from the line fitted on orders 2-6)."""
    od = vdir / "order_sensitivity"
    n, W = len(runs), len(WINDOWS)
    rows, lam_w, rel = [], np.full((n, W), np.nan), np.full((n, W), np.nan)
    for i, r in enumerate(runs):
        la = r.lam["log_abs_derivatives"]
        ref = np.nanmean(fit_lambda(la[-1], REF_WINDOW))
        for wi, w in enumerate(WINDOWS):
            v = fit_lambda(la, w)                                   # [M, K]
            lam_w[i, wi] = np.nanmean(v[-1])
            rel[i, wi] = (lam_w[i, wi] - ref) / abs(ref) if ref else np.nan
            rows.append({"method": r.label, "seed": r.seed, "window": wname(w), "lambda_final": lam_w[i, wi],
                         "lambda_final_std": np.nanstd(v[-1], ddof=1), "lambda_mean_over_time": np.nanmean(v),
                         "rel_diff_vs_1-6": rel[i, wi]})
    lio.write_csv(od / "order_sensitivity.csv", rows)
    cols = plots.color_cycle(n)
    fig, axes = plots.new_figure(2, 1, (5.4, 4.0))
    width = 0.8 / W
    for wi, w in enumerate(WINDOWS):
        axes[0, 0].bar(np.arange(n) + wi * width, lam_w[:, wi], width, label=f"orders {wname(w)}")
    axes[0, 0].set_xticks(np.arange(n) + 0.4 - width / 2, labels=[r.label for r in runs], rotation=70, fontsize=6)
    axes[0, 0].set(ylabel="final " + LAMBDA_LABEL, title="λ by order window (final epoch)")
    axes[0, 0].legend(fontsize=6)
    for r, c in zip(runs, cols):
        la = np.nanmean(r.lam["log_abs_derivatives"][-1], 0)
        axes[0, 1].plot(np.arange(1, len(la) + 1), la, marker="o", color=c, label=r.label, lw=1)
    axes[0, 1].set(xlabel="order n", ylabel="mean ln|d_n| over directions", title="ln|d_n| vs n (final epoch)")
    axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, od / "order_sensitivity.png")
    fig, axes = plots.new_figure(1, 1, (6.0, 0.8 + 0.35 * n))
    vr = plots.value_range(100 * rel, symmetric=True)
    plots.heatmap(axes[0, 0], 100 * rel, [r.label for r in runs], [wname(w) for w in WINDOWS],
                  "λ(window) relative to λ(orders 1-6), final epoch", fmt="{:+.0f}", cmap="RdBu_r",
                  xlabel="order window", ylabel="method", vmin=vr[0], vmax=vr[1], colorbar="difference (%)")
    plots.save(fig, od / "order_difference_heatmap.png")
    # first-order bias: residual of ln|d_1| from the orders 2-6 line, extrapolated to n = 1
    brow, resid, dlam = [], [], []
    for r in runs:
        la = r.lam["log_abs_derivatives"]                       # [M, K, N]
        N = la.shape[-1]
        s = fit_lambda(la, (2, N))                              # [M, K]
        nn = np.arange(2, N + 1, dtype=float)
        with np.errstate(invalid="ignore"):
            icpt = np.nanmean(la[..., 1:], -1) - s * nn.mean()
            res = la[..., 0] - (icpt + s)                       # [M, K]
            full = fit_lambda(la, (1, N))
        resid.append(np.nanmean(res, 1))
        dlam.append(np.nanmean(full - s, 1))
        for j, e in enumerate(r.epochs):
            brow.append({"method": r.label, "seed": r.seed, "epoch": int(e), "ln_d1_residual": resid[-1][j],
                         "lambda_1-N_minus_lambda_2-N": dlam[-1][j]})
    lio.write_csv(od / "first_order_bias.csv", brow)
    fig, axes = plots.new_figure(2, 1, (4.6, 3.6))
    for r, c, rs, dl in zip(runs, cols, resid, dlam):
        axes[0, 0].plot(r.epochs, rs, color=c, marker=".", ms=3, label=r.label)
        axes[0, 1].plot(r.epochs, dl, color=c, marker=".", ms=3)
    axes[0, 0].axhline(0, color="k", lw=0.8)
    axes[0, 1].axhline(0, color="k", lw=0.8)
    axes[0, 0].set(xlabel="epoch", ylabel="ln|d_1| − line through orders 2-6 at n=1",
                   title="first-order residual (mean over directions)")
    axes[0, 1].set(xlabel="epoch", ylabel="λ(orders 1-6) − λ(orders 2-6)", title="bias of λ from including n = 1")
    axes[0, 1].legend(*axes[0, 0].get_legend_handles_labels(), fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, od / "first_order_bias_analysis.png")
    return {"lambda_window": lam_w, "rel": rel}


def temporal_stability_analysis(vdir: pathlib.Path, runs: list[RunData]) -> dict:
    """``temporal_directional_stability/``: every direction's λ over training (spaghetti, all methods and one file
    per method, one y scale), violins at selected epochs, CV = std/|mean| over time, and the correlation between
    directions of the λ time series."""
    td = vdir / "temporal_directional_stability"
    n = len(runs)
    rows = []
    for r in runs:
        c = cv(r.lambda_values, 1)
        for j, e in enumerate(r.epochs):
            lv = r.lambda_values[j]
            rows.append({"method": r.label, "seed": r.seed, "epoch": int(e), "lambda_mean": float(np.nanmean(lv)),
                         "lambda_std": float(np.nanstd(lv, ddof=1)) if lv.size > 1 else np.nan, "cv": float(c[j])})
    lio.write_csv(td / "temporal_stability.csv", rows)
    ylim = plots.value_range(*[r.lambda_values for r in runs])
    pad = 0.05 * (ylim[1] - ylim[0])
    ylim = (ylim[0] - pad, ylim[1] + pad)

    def spaghetti(ax, r):
        ax.plot(r.epochs, r.lambda_values, lw=0.7, alpha=0.7)
        ax.plot(r.epochs, np.nanmean(r.lambda_values, 1), "k", lw=1.8, label="mean over directions")
        ax.set(xlabel="epoch", ylabel=LAMBDA_LABEL, ylim=ylim)
        ax.set_title(f"{r.label}: {r.lambda_values.shape[1]} directions", fontsize=8)
        ax.grid(alpha=0.3)

    fig, axs = plots.grid(n, size=(3.4, 2.9))
    for ax, r in zip(axs, runs):
        spaghetti(ax, r)
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(6)
        ax.tick_params(labelsize=6)
    fig.suptitle("λ of every direction over training (thin; black = mean), one y scale", fontsize=10)
    fig.tight_layout()
    plots.save(fig, td / "spaghetti_plots.png")
    for r in runs:
        fig, axes = plots.new_figure(1, 1, (5.6, 3.8))
        spaghetti(axes[0, 0], r)
        axes[0, 0].legend(fontsize=7)
        plots.save(fig, td / f"spaghetti_{r.label}.png")
    fig, axs = plots.grid(n, size=(3.4, 2.9))
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
    plots.save(fig, td / "violin_evolution.png")
    fig, axes = plots.new_figure(1, 1, (6.0, 4.0))
    for r, c in zip(runs, plots.color_cycle(n)):
        axes[0, 0].plot(r.epochs, cv(r.lambda_values, 1), marker=".", color=c, label=r.label)
    axes[0, 0].axhline(CRITERIA["cv"], color="k", ls="--", lw=0.8, label=f"criterion {CRITERIA['cv']}")
    axes[0, 0].set(xlabel="epoch", ylabel="CV = std/|mean| of λ over directions",
                   title="coefficient of variation over time")
    axes[0, 0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    axes[0, 0].grid(alpha=0.3)
    plots.save(fig, td / "cv_over_time.png")
    fig, axs = plots.grid(n, size=(3.0, 2.8))
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
    plots.save(fig, td / "direction_correlation_matrix.png")
    return {}


def joint_optimization_analysis(vdir: pathlib.Path, runs: list[RunData]) -> dict:
    """``joint_K_order_optimization/``: every metric over K × order window (final epoch, at the study's epochs,
    and as a GIF over training with one colour scale), the Pareto frontier, and the recommendation."""
    jd = vdir / "joint_K_order_optimization"
    n = len(runs)
    joint = [joint_metrics(r.lam["log_abs_derivatives"]) for r in runs]
    rows = []
    for r, jm in zip(runs, joint):
        ok = meets(jm, -1)
        for ki, K in enumerate(K_GRID):
            for wi, w in enumerate(WINDOWS):
                rows.append({"method": r.label, "seed": r.seed, "K": K, "window": wname(w),
                             **{m: jm[m][-1, ki, wi] for m in jm}, "meets_all_criteria": int(ok[ki, wi])})
    lio.write_csv(jd / "joint_grid_final_epoch.csv", rows)
    M = min(jm["deviation"].shape[0] for jm in joint)
    lio.write_npz(jd / "joint_grid.npz", **{m: np.stack([jm[m][:M] for jm in joint]) for m in joint[0]},
                  K=np.array(K_GRID), windows=np.array(WINDOWS), methods=np.array([r.label for r in runs]))
    rl, cl = [str(k) for k in K_GRID], [wname(w) for w in WINDOWS]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for m, fname, f, unit in (("lambda", "lambda_heatmap.png", "{:.2f}", LAMBDA_LABEL),
                                  ("stderr", "stderr_heatmap.png", "{:.3f}", "bootstrap standard error (λ units)"),
                                  ("cv", "cv_heatmap.png", "{:.3f}", "CV = std/|mean| over directions"),
                                  ("deviation", "deviation_heatmap.png", "{:.1%}", "deviation from K=15, 1-6")):
            fig, axes = plots.new_figure(1, 1, (5.5, 4.2))
            v = np.nanmean(np.stack([jm[m][-1] for jm in joint]), 0)
            plots.heatmap(axes[0, 0], v, rl, cl, f"{m} (mean over {n} methods, final epoch)", fmt=f,
                          xlabel="order window", ylabel="directions K", colorbar=unit)
            plots.save(fig, jd / fname)
        # λ estimate at the study's epochs: one colour scale for the four files
        lam_at = []
        for target in STUDY_EPOCHS:
            idx = [nearest_epoch_index(r.epochs, target) for r in runs]
            lam_at.append(np.nanmean(np.stack([jm["lambda"][j] for jm, j in zip(joint, idx)]), 0))
        vr = plots.value_range(*lam_at)
        for target, v in zip(STUDY_EPOCHS, lam_at):
            _, what = _epoch_title(runs[0], target)
            fig, axes = plots.new_figure(1, 1, (5.5, 4.2))
            plots.heatmap(axes[0, 0], v, rl, cl, f"λ estimate (mean over {n} methods), {what}", fmt="{:.2f}",
                          xlabel="order window", ylabel="directions K", vmin=vr[0], vmax=vr[1], colorbar=LAMBDA_LABEL)
            plots.save(fig, jd / f"heatmap_lambda_estimate_epoch_{target}.png")
        dev = np.stack([jm["deviation"][-1] for jm in joint])               # [runs, K, W]
        mean_dev = np.nanmean(dev, 0)
    cost = np.array([[K * w[1] for w in WINDOWS] for K in K_GRID], float)
    pts = [(cost[i, j], mean_dev[i, j], f"K={K_GRID[i]},{wname(WINDOWS[j])}")
           for i in range(len(K_GRID)) for j in range(len(WINDOWS)) if np.isfinite(mean_dev[i, j])]
    pareto = [p for p in pts if not any((q[0] <= p[0] and q[1] <= p[1]) and (q[0] < p[0] or q[1] < p[1]) for q in pts)]
    fig, axes = plots.new_figure(1, 1, (6.0, 4.4))
    ax = axes[0, 0]
    ax.scatter([p[0] for p in pts], [100 * p[1] for p in pts], s=14, color="0.6", label="configurations")
    pp = sorted(pareto)
    ax.plot([p[0] for p in pp], [100 * p[1] for p in pp], "r-", lw=1, label="Pareto frontier")
    for i, p in enumerate(pp):        # each frontier point named in the legend (labels never overlap)
        ax.plot(p[0], 100 * p[1], plots.MARKERS[i % len(plots.MARKERS)], color=plots.color_cycle(len(pp))[i],
                mec="k", mew=0.5, ms=6, ls="none", label=f"{p[2]} (cost {p[0]:.0f}, {100 * p[1]:.1f} %)")
    ax.axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8, label="5 % deviation")
    ax.set(xlabel="cost: K × highest order (derivative evaluations per point)",
           ylabel="mean deviation from K=15, orders 1-6 (%)", title="cost vs accuracy of the λ estimate (final epoch)")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="K, order window", title_fontsize=6)
    ax.grid(alpha=0.3)
    plots.save(fig, jd / "pareto_frontier.png")
    vr = plots.value_range(*[100 * jm["deviation"][-1] for jm in joint])
    fig, axs = plots.grid(n, size=(3.4, 2.8))
    im = None
    for ax, r, jm in zip(axs, runs, joint):
        im = plots.heatmap(ax, 100 * jm["deviation"][-1], rl, cl, r.label, fmt="{:.0f}", xlabel="order window",
                           ylabel="directions K", vmin=vr[0], vmax=vr[1], colorbar=None)
    fig.suptitle("deviation from K=15, orders 1-6 (%), final epoch, per method (one colour scale)", fontsize=10)
    fig.tight_layout()
    if im is not None:
        fig.colorbar(im, ax=list(axs), fraction=0.02, pad=0.02).set_label("deviation (%)", fontsize=7)
    plots.save(fig, jd / "per_method_grid.png")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        frames_v = [100 * np.nanmean(np.stack([jm["deviation"][j] for jm in joint]), 0) for j in range(M)]
    vr = plots.value_range(*frames_v)
    frames = []
    for j, v in enumerate(frames_v):
        fig, axes = plots.new_figure(1, 1, (5.0, 4.0))
        plots.heatmap(axes[0, 0], v, rl, cl, f"mean deviation (%) at epoch {int(runs[0].epochs[j])}",
                      fmt="{:.0f}", xlabel="order window", ylabel="directions K", vmin=vr[0], vmax=vr[1],
                      colorbar="deviation (%), one scale for all frames")
        frames.append(fig)
    plots.save_gif(frames, jd / "temporal_evolution.gif")
    _recommendations(jd / "optimal_config_recommendations.txt", runs, joint, cost, pareto)
    return {"joint": joint}


def _recommendations(path, runs, joint, cost, pareto) -> None:
    n = len(runs)
    ok_final = np.stack([meets(jm, -1) for jm in joint])                                 # [runs, K, W]
    ok_all = np.concatenate([meets(jm, slice(1, None)).reshape(-1, len(K_GRID), len(WINDOWS)) for jm in joint])
    frac_final = ok_final.mean(0)
    frac_all = ok_all.mean(0) if ok_all.size else np.full_like(frac_final, np.nan)
    lines = ["Optimal (K, order window) for measuring λ — computed from the saved log|d_n| arrays",
             "",
             f"Reference: K = 15 directions, orders 1-6.  Criteria: |Δλ| < {CRITERIA['deviation']:.0%} "
             f"(mean relative deviation over random K-subsets), standard error < {CRITERIA['stderr']}, "
             f"CV < {CRITERIA['cv']}.",
             f"Methods: {n}; cost = K × highest order (derivative work per point is ~linear in both).", "",
             "Fraction of methods meeting all criteria at the final epoch (rows K, columns window):",
             "K     " + "".join(f"{wname(w):>8s}" for w in WINDOWS)]
    for ki, K in enumerate(K_GRID):
        lines.append(f"{K:<6d}" + "".join(f"{frac_final[ki, wi]:8.2f}" for wi in range(len(WINDOWS))))
    lines += ["", "Fraction of (method, epoch > 0) measurements meeting all criteria:",
              "K     " + "".join(f"{wname(w):>8s}" for w in WINDOWS)]
    for ki, K in enumerate(K_GRID):
        lines.append(f"{K:<6d}" + "".join(f"{frac_all[ki, wi]:8.2f}" for wi in range(len(WINDOWS))))
    lines.append("")
    cand = [(cost[i, j], i, j) for i in range(len(K_GRID)) for j in range(len(WINDOWS)) if frac_final[i, j] == 1.0]
    if cand:
        c, i, j = min(cand)
        lines.append(f"Recommendation: K = {K_GRID[i]}, orders {wname(WINDOWS[j])} is the cheapest configuration "
                     f"(cost {c:.0f} vs {15 * 6} for the reference) that meets all three criteria for every method "
                     f"at the final epoch; over all epochs > 0 it meets them in {frac_all[i, j]:.0%} of measurements.")
    else:
        i, j = np.unravel_index(np.nanargmax(frac_final), frac_final.shape)
        lines.append(f"No configuration meets all three criteria for every method at the final epoch. The best, "
                     f"K = {K_GRID[i]}, orders {wname(WINDOWS[j])}, meets them for {frac_final[i, j]:.0%} of methods.")
    lines.append("Pareto-optimal configurations (cost, mean deviation): " +
                 "; ".join(f"{p[2]} ({p[0]:.0f}, {p[1]:.1%})" for p in sorted(pareto)))
    lio.write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------- summary
def caveats(runs: list[RunData], table: list[dict], acc_target: float | None, preset: str) -> list[str]:
    """Reasons to read the hypotheses as exploratory (empty when there is none)."""
    out = []
    if len(table) < MIN_CORRELATION_N:
        out.append(f"correlations are over n = {len(table)} methods (< {MIN_CORRELATION_N}): read them as exploratory")
    if acc_target is not None:
        miss = [f"{r.label} (seed {r.seed}: {fmt(r.final.get('test_acc'), '.3f')})" for r in runs
                if not (float(r.final.get("test_acc", np.nan)) >= acc_target)]
        if miss:
            out.append(f"{len(miss)} run(s) did not reach the test-accuracy target {acc_target:.2f}: " + ", ".join(miss))
    if max(t["n_seeds"] for t in table) < 2:
        out.append("one seed per method: no interval over seeds (± n/a)")
    if preset in ("smoke", "quick"):
        out.append(f"`{preset}` preset: fewer epochs/runs than the study (`--preset full --dataset both`)")
    return out


def hypotheses(runs: list[RunData], table: list[dict]) -> list[str]:
    lam = [t["lambda_final_mean"] for t in table]
    out = []
    c_acc, c_gap = pearson(lam, [t["test_acc_mean"] for t in table]), pearson(lam, [t["gap_mean"] for t in table])
    out.append("**H1 — λ vs generalisation.** Final λ (mean over directions and seeds, per method) against final "
               f"test accuracy: {c_acc.text()}; against the generalisation gap: {c_gap.text()}."
               + (f" {_significance(c_acc, 'higher (less negative) λ', 'test accuracy')}" if c_acc.ok else "")
               + (f" {_significance(c_gap, 'higher (less negative) λ', 'generalisation gap')}" if c_gap.ok else ""))
    base = next((t for t in table if t["family"] == "baseline"), None)
    fam_lines = []
    if base is None or not np.isfinite(base["lambda_final_mean"]):
        out.append("**H2 — λ for flat-minimum methods.** not enough data (no baseline run with a finite λ).")
    else:
        b = base["lambda_final_mean"]
        fams: dict[str, list] = {}
        for t in table:
            if t["family"] != "baseline":
                fams.setdefault(t["family"], []).append(t)
        for f, ts in fams.items():
            d = np.array([t["lambda_final_mean"] - b for t in ts])
            fam_lines.append(f"{f}: Δλ = {fmt(np.nanmean(d), '+.3f')} (lower in {int(np.sum(d < 0))} of {len(d)})")
        sam = fams.get("sam", [])
        if sam:
            d = np.array([t["lambda_final_mean"] - b for t in sam])
            verdict = ("lower (flatter by this measure) than" if np.all(d < 0) else
                       "higher than" if np.all(d > 0) else "mixed relative to")
            sep = [t for t in sam if np.isfinite(t["lambda_final_ci95"]) and np.isfinite(base["lambda_final_ci95"])
                   and abs(t["lambda_final_mean"] - b) > t["lambda_final_ci95"] + base["lambda_final_ci95"]]
            ci_note = (f" {len(sep)} of {len(sam)} SAM run(s) differ from the baseline by more than the two 95 % CIs "
                       "together." if base["n_seeds"] > 1 else " With one seed there is no interval to say whether "
                       "the difference exceeds seed-to-seed variation.")
            out.append(f"**H2 — λ for flat-minimum methods.** SAM (built to find flat minima) ends with λ {verdict} the "
                       f"baseline ({fmt_ci(b, base['lambda_final_ci95'], base['n_seeds'])}): " + ", ".join(
                           f"{t['method']} {fmt_ci(t['lambda_final_mean'], t['lambda_final_ci95'], t['n_seeds'])}"
                           for t in sam) + "." + ci_note
                       + " Mean final λ change vs baseline per family: " + "; ".join(fam_lines) + ".")
        else:
            out.append("**H2 — λ for flat-minimum methods.** not enough data (no SAM run). Mean final λ change vs "
                       "baseline per family: " + "; ".join(fam_lines) + ".")
    c_var = pearson([t["lambda_final_std_mean"] for t in table], [t["gap_mean"] for t in table])
    out.append("**H3 — λ variance vs gap.** Std of final λ over the 15 directions against the generalisation gap: "
               f"{c_var.text()}." + (f" {_significance(c_var, 'a larger spread of λ over directions', 'gap')}"
                                   if c_var.ok else ""))
    leads, no_deg, no_move = [], [], []
    for r in runs:
        a = accuracy_degradation_onset(r.rows)
        l_ = lambda_onset(r.epochs, r.lambda_values, convergence_epoch(r.rows))
        name = r.label if max(t["n_seeds"] for t in table) == 1 else f"{r.label}/seed_{r.seed}"
        if a is None:
            no_deg.append(name)
        elif l_ is None:
            no_move.append(name)
        else:
            leads.append((name, a - l_))
    rule = (f"(test accuracy 'degrades' from the first epoch after its peak from which it stays ≥ {ACC_DROP:.0%} below "
            f"the peak to the end of the run; "
            f"λ 'moves' at the first measured epoch after convergence — the first epoch within {ACC_DROP:.0%} of the "
            f"peak accuracy — where its mean differs from its value at convergence by > {LAMBDA_SE_MULT:g} standard "
            f"errors over directions; lead = degradation epoch − λ epoch)")
    if not leads:
        out.append(f"**H4 — does λ move before test accuracy degrades?** not enough data: "
                   f"{len(no_deg)} of {len(runs)} runs show no degradation and {len(no_move)} degrade without λ moving "
                   f"{rule}.")
    else:
        lv = np.array([x[1] for x in leads], float)
        out.append(f"**H4 — does λ move before test accuracy degrades?** In {len(leads)} run(s) with both events, λ "
                   f"moved first in {int(np.sum(lv > 0))}, at the same epoch in {int(np.sum(lv == 0))}, later in "
                   f"{int(np.sum(lv < 0))}; median lead {np.median(lv):+.1f} epochs (mean {lv.mean():+.1f}). "
                   f"{len(no_deg)} run(s) show no degradation, {len(no_move)} degrade without λ moving {rule}. "
                   "Leads per run: " + ", ".join(f"{k} {v:+d}" for k, v in leads) + ".")
    return out


def _significance(c, xname, what) -> str:
    sig = "significant" if c.p < 0.05 else "not significant"
    ci0 = (" but its bootstrap CI includes 0" if np.isfinite(c.ci_lo) and c.ci_lo <= 0 <= c.ci_hi and c.p < 0.05
           else "")
    return (f"Against {what}, the correlation is {sig} at the 5 % level (n = {c.n}){ci0}; its sign says {xname} goes "
            f"with {'higher' if c.r > 0 else 'lower'} {what}.")


def analyze_dataset(ds_dir: pathlib.Path, dataset: str, run_list: list[dict], acc_target: float | None = None,
                    preset: str = "") -> dict:
    runs = load_runs(ds_dir, run_list)
    for r in runs:
        write_run_plot(ds_dir / r.dir, r.label)
    table = method_table(runs)
    family_plots(ds_dir, runs, table)
    sdir = ds_dir / "00_summary"
    lio.write_csv(sdir / "summary_statistics.csv", [{"dataset": dataset, **t} for t in table])
    lio.write_csv(sdir / "run_statistics.csv", [{"dataset": dataset, **final_stats(r)} for r in runs])
    summary_plots(sdir, runs, table, dataset)
    first = min(r.seed for r in runs)
    vruns = [r for r in runs if r.seed == first]
    vdir = ds_dir / "validation_analysis"
    dc = direction_convergence_analysis(vdir, vruns)
    order_sensitivity_analysis(vdir, vruns)
    temporal_stability_analysis(vdir, vruns)
    joint_optimization_analysis(vdir, vruns)
    return {"runs": runs, "table": table, "hypotheses": hypotheses(runs, table),
            "caveats": caveats(runs, table, acc_target, preset), "validation_seed": first,
            "checks": _measurement_checks(dc["metrics"], vruns)}


def _measurement_checks(jms: list[dict], runs: list[RunData]) -> list[str]:
    """Two lines for the summary: the spread of λ over directions (CV) and the measured standard error against
    std/√K, both at the final epoch, orders 1-6."""
    cvs = np.array([cv(r.lambda_values[-1]) for r in runs], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.concatenate([(jm["stderr"][-1, 1:, 0] / jm["stderr_formula"][-1, 1:, 0]) for jm in jms])
    ratio = ratio[np.isfinite(ratio)]
    out = []
    if np.isfinite(cvs).any():
        out.append(f"Spread of λ over the {runs[0].lambda_values.shape[1]} directions at the final epoch: CV = std/|mean| "
                   f"median {fmt(np.nanmedian(cvs), '.3f')} (range {fmt(np.nanmin(cvs), '.3f')}–"
                   f"{fmt(np.nanmax(cvs), '.3f')}) over {len(runs)} methods (criterion < {CRITERIA['cv']}).")
    if ratio.size:
        out.append(f"Measured (bootstrap) standard error of λ against std/√K, K = 2..15, final epoch: ratio median "
                   f"{np.median(ratio):.2f} (range {ratio.min():.2f}–{ratio.max():.2f}). For directions drawn "
                   f"independently the bootstrap expects √(14/15) = {math.sqrt(14 / 15):.2f}: agreement confirms the "
                   "formula's use here; it adds no independent estimate of the direction-to-direction variance.")
    return out


def _cell(t: dict, key: str, spec: str) -> str:
    return fmt_ci(t[f"{key}_mean"], t[f"{key}_ci95"], t["n_seeds"], spec)


def analyze_experiment(out: pathlib.Path) -> None:
    """Regenerate every analysis of a diagnostic results folder from disk."""
    cfg = lio.read_json(out / "experiment_config.json")
    lio.remove_stale_temp_files(out, recursive=True)   # every run is finished: nothing else writes here
    seeds = cfg.get("seeds", [cfg["seed"]])
    mode = cfg.get("direction_mode", "per-point")
    parts = ["# λ as a training diagnostic — summary", "",
             f"Preset `{cfg['preset']}`, seed(s) {', '.join(map(str, seeds))}, data sets: {', '.join(cfg['datasets'])}. "
             f"λ = least-squares slope of ln|d_n| (mean over the measurement points) against n = 1..{cfg['order']}, "
             f"per direction; {cfg['directions']} random unit input directions "
             + ("drawn once per run and shared by every point and measurement (`--direction-mode shared`, the study's "
                "protocol)" if mode == "shared" else
                "drawn per point (`--direction-mode per-point`: 'direction k' averages unrelated vectors)")
             + ". Table cells: mean ± 95 % t-interval over seeds (± n/a: one seed). 'final λ' = mean over directions "
             "at the last epoch; 'λ std over dirs' and 'CV' = std and std/|mean| of the final λ over the directions. "
             "Correlations are over methods (seed means), with n, p and a 95 % bootstrap CI. Every statement below is "
             "computed from the saved arrays (`lamda analyze` regenerates it).", ""]
    for ds in cfg["datasets"]:
        ddir = out / cfg["dataset_dirs"][ds]
        st = cfg["settings"][ds]
        res = analyze_dataset(ddir, ds, cfg["runs"][ds], st.get("acc_target"), cfg["preset"])
        parts += [f"## {ds}", "",
                  f"{st['train']} training / {st['test']} test images, {st['epochs']} epochs, batch {st['batch']}, "
                  f"Adam lr {st['lr']}, schedule {st['schedule']}, model {st['model']}, "
                  f"{st['points']} measurement points.", ""]
        if res["caveats"]:
            parts += ["**Caveat:** " + "; ".join(res["caveats"]) + ".", ""]
        parts += ["| method | seeds | test acc | train acc | gap | ECE | final λ | λ std over dirs | CV over dirs |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in res["table"]:
            parts.append(f"| {t['method']} | {t['n_seeds']} | {_cell(t, 'test_acc', '.4f')} | "
                         f"{_cell(t, 'train_acc', '.4f')} | {_cell(t, 'gap', '+.4f')} | {_cell(t, 'ece', '.4f')} | "
                         f"{_cell(t, 'lambda_final', '.3f')} | {_cell(t, 'lambda_final_std', '.3f')} | "
                         f"{_cell(t, 'lambda_final_cv', '.3f')} |")
        parts += ["", "### Hypotheses", ""] + [f"- {h}" for h in res["hypotheses"]]
        rec = (ddir / "validation_analysis" / "joint_K_order_optimization" / "optimal_config_recommendations.txt")
        last = [ln for ln in rec.read_text().splitlines() if ln.startswith(("Recommendation", "No configuration"))]
        vnote = (f" (runs of seed {res['validation_seed']})" if len(seeds) > 1 else "")
        parts += ["", f"### Measurement settings (post-hoc{vnote})", ""] + [f"- {ln}" for ln in res["checks"] + last]
        parts += ["", f"Figures: `{(ddir / '00_summary').relative_to(out)}/`, "
                  f"`{(ddir / 'validation_analysis').relative_to(out)}/`, and one `lambda_evolution.png` per run.", ""]
    lio.write_text(out / "summary.md", "\n".join(parts) + "\n")
