"""Post-hoc analyses of the diagnostic experiment, computed from the files on disk alone.

Reads every run's ``training_metrics.csv`` and ``lambda_data.npz`` and writes the per-run and per-family
plots, ``00_summary/``, ``validation_analysis/`` and the top-level ``summary.md`` (see
:mod:`lamda.experiments.diagnostic` for the tree).  All statements in ``summary.md`` are computed from the
numbers; a statistic that cannot be computed is reported as "not enough data".

Validation analyses work on ``log_abs_derivatives [M, 15, 6]`` (mean over points of log|d_n|):
λ for a direction subset of size K and an order window ``lo-hi`` is the mean over the subset of the
per-direction least-squares slopes over orders lo..hi.  For each (K, window):

- λ(K, w): the mean over random K-subsets (200 seeded draws; the single full set for K = 15);
- standard error: (std over the 15 directions of the window's slopes, ddof=1) / √K;
- CV: standard error / |λ(K, w)|;
- deviation: mean over subsets of |subset λ − λ_ref| / |λ_ref|, λ_ref = λ(K=15, orders 1-6).
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np

from .. import io as lio
from .. import plots
from ..measure import fit_lambda
from .stats import fmt, pearson

__all__ = ["RunData", "load_runs", "write_run_plot", "analyze_dataset", "analyze_experiment", "K_GRID", "WINDOWS",
           "joint_metrics", "CRITERIA", "lambda_onset", "accuracy_degradation_onset", "convergence_epoch"]

K_GRID = (1, 2, 3, 5, 10, 15)
WINDOWS = ((1, 2), (1, 3), (1, 4), (2, 4), (2, 5), (1, 6))
REF_WINDOW = (1, 6)
CRITERIA = {"deviation": 0.05, "stderr": 0.1, "cv": 0.2}
N_SUBSETS = 200
ACC_DROP = 0.01       # test-accuracy degradation: 1 percentage point below its peak, sustained to the end
LAMBDA_SE_MULT = 2.0  # λ "moves": rises above its running minimum by more than 2 standard errors


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

    @property
    def final(self) -> dict:
        return self.rows[-1]

    @property
    def lambda_values(self) -> np.ndarray:
        return np.asarray(self.lam["lambda_values"], float)

    @property
    def epochs(self) -> np.ndarray:
        return np.asarray(self.lam["epochs"])


# ---------------------------------------------------------------------------------------------- loading
def load_runs(ds_dir: pathlib.Path, run_list: list[dict]) -> list[RunData]:
    runs = []
    for r in run_list:
        d = ds_dir / r["rel"]
        for f in ("training_metrics.csv", "lambda_data.npz"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d / f} is missing; the run has not finished (rerun `lamda run diagnostic` "
                                        f"with the same --out to complete it)")
        runs.append(RunData(r["label"], r["family"], r["family_dir"], r["strength"], r["rel"],
                            lio.read_csv(d / "training_metrics.csv"), lio.read_npz(d / "lambda_data.npz")))
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
    return {"method": run.label, "family": run.family, "strength": run.strength,
            "test_acc": f.get("test_acc"), "train_acc": f.get("train_acc"), "gap": f.get("gap"), "ece": f.get("ece"),
            "test_loss": f.get("test_loss"), "train_loss": f.get("train_loss"),
            "lambda_final": float(means[-1]), "lambda_final_std": float(np.nanstd(lam[-1])) if lam.size else np.nan,
            "lambda_initial": float(means[0]), "lambda_change": float(means[-1] - means[0]),
            "lambda_min": float(np.nanmin(means)), "lambda_max": float(np.nanmax(means)),
            "n_measurements": int(lam.shape[0]), "epochs": int(f.get("epoch", 0))}


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


def joint_metrics(log_abs: np.ndarray, ks=K_GRID, windows=WINDOWS, n_subsets: int = N_SUBSETS, seed: int = 0):
    """λ, standard error, CV and deviation over ``ks × windows`` for every measurement.

    ``log_abs [M, Kall, N]`` → dict of arrays ``[M, len(ks), len(windows)]`` (see the module docstring).
    """
    log_abs = np.asarray(log_abs, float)
    M, Kall, N = log_abs.shape
    rng = np.random.default_rng(seed)
    ref = np.nanmean(fit_lambda(log_abs, REF_WINDOW if N >= 6 else (1, N)), 1)        # [M]
    out = {k: np.full((M, len(ks), len(windows)), np.nan) for k in ("lambda", "stderr", "cv", "deviation")}
    for wi, w in enumerate(windows):
        if w[1] > N:
            continue
        lw = fit_lambda(log_abs, w)                                                      # [M, Kall]
        sd = np.nanstd(lw, 1, ddof=1) if Kall > 1 else np.full(M, np.nan)
        for ki, K in enumerate(ks):
            if K > Kall:
                continue
            subs = (np.arange(Kall)[None] if K == Kall
                    else np.argsort(rng.random((n_subsets, Kall)), 1)[:, :K])              # [R, K]
            sm = np.nanmean(lw[:, subs], -1)                                                # [M, R]
            lam = sm.mean(1)
            out["lambda"][:, ki, wi] = lam
            out["stderr"][:, ki, wi] = sd / math.sqrt(K)
            with np.errstate(divide="ignore", invalid="ignore"):
                out["cv"][:, ki, wi] = out["stderr"][:, ki, wi] / np.abs(lam)
                out["deviation"][:, ki, wi] = np.mean(np.abs(sm - ref[:, None]), 1) / np.abs(ref)
    return out


def meets(metrics: dict, idx=...) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ((metrics["deviation"][idx] < CRITERIA["deviation"]) & (metrics["stderr"][idx] < CRITERIA["stderr"])
                & (metrics["cv"][idx] < CRITERIA["cv"]))


# ---------------------------------------------------------------------------------------------- figures
def _family_name(family_dir: str) -> str:
    return family_dir.split("_", 1)[1] if "_" in family_dir else family_dir


def family_plots(ds_dir: pathlib.Path, runs: list[RunData]) -> None:
    base = next((r for r in runs if r.family == "baseline"), None)
    fams: dict[str, list[RunData]] = {}
    for r in runs:
        fams.setdefault(r.family_dir, []).append(r)
    for fdir, members in fams.items():
        fig, axes = plots.new_figure(3, 1, (4.6, 3.4))
        show = members if (base is None or base in members) else [base] + members
        cols = plots.color_cycle(len(show))
        for r, c in zip(show, cols):
            ls = "--" if (r is base and r not in members) else "-"
            lam = r.lambda_values
            axes[0, 0].plot(r.epochs, np.nanmean(lam, 1), ls, color=c, label=r.label, marker=".")
            axes[0, 1].plot([x["epoch"] for x in r.rows], [x["test_acc"] for x in r.rows], ls, color=c, label=r.label)
        axes[0, 0].set(xlabel="epoch", ylabel="λ (mean over directions)", title="λ during training")
        axes[0, 1].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
        st = [final_stats(r) for r in show]
        plots.scatter_labeled(axes[0, 2], [s["lambda_final"] for s in st], [s["test_acc"] for s in st],
                              [s["method"] for s in st], cols, "final λ", "final test accuracy", "final λ vs accuracy")
        for ax in axes[0, :2]:
            ax.legend(fontsize=6)
            ax.grid(alpha=0.3)
        fig.suptitle(f"{_family_name(fdir)}: comparison with the baseline", fontsize=10)
        fig.tight_layout()
        plots.save(fig, ds_dir / fdir / f"{_family_name(fdir)}_comparison.png")


def summary_plots(sdir: pathlib.Path, runs: list[RunData], stats: list[dict], title: str) -> dict:
    fams = sorted({r.family for r in runs}, key=[r.family for r in runs].index)
    fcol = dict(zip(fams, plots.color_cycle(len(fams))))
    cols = [fcol[r.family] for r in runs]
    fig, axes = plots.new_figure(3, 1, (5.0, 3.8))
    for r, c in zip(runs, cols):
        axes[0, 0].plot(r.epochs, np.nanmean(r.lambda_values, 1), color=c, lw=1, label=r.label)
        axes[0, 1].plot([x["epoch"] for x in r.rows], [x["test_acc"] for x in r.rows], color=c, lw=1)
    axes[0, 0].set(xlabel="epoch", ylabel="λ (mean over directions)", title=f"{title}: λ during training")
    axes[0, 0].legend(fontsize=5, ncol=2)
    axes[0, 1].set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    y = np.arange(len(stats))
    axes[0, 2].barh(y, [s["lambda_final"] for s in stats], xerr=[s["lambda_final_std"] for s in stats], color=cols)
    axes[0, 2].set_yticks(y, labels=[s["method"] for s in stats], fontsize=6)
    axes[0, 2].set(xlabel="final λ (± std over directions)", title="final λ per method")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, sdir / "all_methods_comparison.png")
    lam = [s["lambda_final"] for s in stats]
    labels = [s["method"] for s in stats]
    corr = {}
    for key, fname, ylab in (("test_acc", "performance_vs_lambda.png", "final test accuracy"),
                             ("gap", "generalization_gap_vs_lambda.png", "generalisation gap (train − test acc)"),
                             ("ece", "calibration_vs_lambda.png", "ECE (test, 15 bins)")):
        c = pearson(lam, [s[key] for s in stats])
        corr[key] = c
        fig, axes = plots.new_figure(1, 1, (5.5, 4.2))
        plots.scatter_labeled(axes[0, 0], lam, [s[key] for s in stats], labels, cols, "final λ", ylab,
                              f"{title}: {ylab} vs λ — {c.text()}")
        plots.save(fig, sdir / fname)
    return corr


def validation_plots(vdir: pathlib.Path, runs: list[RunData]) -> dict:
    """Writes the four validation sub-folders; returns the joint metrics per run."""
    n = len(runs)
    # --- direction convergence (K = 1..15, window 1-6)
    dd = vdir / "direction_convergence"
    kall = runs[0].lam["log_abs_derivatives"].shape[1]
    ks_all = tuple(range(1, kall + 1))
    rows, fig_data = [], []
    for r in runs:
        jm = joint_metrics(r.lam["log_abs_derivatives"], ks=ks_all, windows=(REF_WINDOW,))
        fig_data.append(jm)
        for ki, K in enumerate(ks_all):
            rows.append({"method": r.label, "K": K, "lambda_final": jm["lambda"][-1, ki, 0],
                         "stderr_final": jm["stderr"][-1, ki, 0], "deviation_final": jm["deviation"][-1, ki, 0],
                         "deviation_mean_over_time": np.nanmean(jm["deviation"][:, ki, 0])})
    lio.write_csv(dd / "direction_convergence.csv", rows)
    fig, axes = plots.new_figure(2, 1, (5.0, 3.8))
    for r, jm, c in zip(runs, fig_data, plots.color_cycle(n)):
        axes[0, 0].plot(ks_all, 100 * jm["deviation"][-1, :, 0], marker=".", color=c, label=r.label)
        axes[0, 1].plot(ks_all, jm["stderr"][-1, :, 0], marker=".", color=c)
    axes[0, 0].axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8)
    axes[0, 1].axhline(CRITERIA["stderr"], color="k", ls="--", lw=0.8)
    axes[0, 0].set(xlabel="directions K", ylabel="|λ_K − λ_15| / |λ_15|  (%)", title="convergence in K (final epoch)")
    axes[0, 1].set(xlabel="directions K", ylabel="standard error of λ", title="standard error vs K")
    axes[0, 0].legend(fontsize=5, ncol=2)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, dd / "direction_convergence.png")

    # --- order sensitivity
    od = vdir / "order_sensitivity"
    rows = []
    W = len(WINDOWS)
    lam_w = np.full((n, W), np.nan)
    for i, r in enumerate(runs):
        la = r.lam["log_abs_derivatives"]
        ref = np.nanmean(fit_lambda(la[-1], REF_WINDOW))
        for wi, w in enumerate(WINDOWS):
            v = fit_lambda(la, w)                                   # [M, K]
            lam_w[i, wi] = np.nanmean(v[-1])
            rows.append({"method": r.label, "window": wname(w), "lambda_final": lam_w[i, wi],
                         "lambda_final_std": np.nanstd(v[-1]), "lambda_mean_over_time": np.nanmean(v),
                         "rel_diff_vs_1-6": (lam_w[i, wi] - ref) / abs(ref) if ref else np.nan})
    lio.write_csv(od / "order_sensitivity.csv", rows)
    fig, axes = plots.new_figure(2, 1, (5.5, 4.0))
    width = 0.8 / W
    for wi, w in enumerate(WINDOWS):
        axes[0, 0].bar(np.arange(n) + wi * width, lam_w[:, wi], width, label=f"orders {wname(w)}")
    axes[0, 0].set_xticks(np.arange(n) + 0.4 - width / 2, labels=[r.label for r in runs], rotation=70, fontsize=6)
    axes[0, 0].set(ylabel="final λ (mean over directions)", title="λ by order window")
    axes[0, 0].legend(fontsize=6)
    for r, c in zip(runs, plots.color_cycle(n)):
        la = np.nanmean(r.lam["log_abs_derivatives"][-1], 0)
        axes[0, 1].plot(np.arange(1, len(la) + 1), la, marker="o", color=c, label=r.label, lw=1)
    axes[0, 1].set(xlabel="order n", ylabel="mean log|d_n|", title="log|d_n| vs n (final epoch)")
    axes[0, 1].legend(fontsize=5, ncol=2)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, od / "order_sensitivity.png")

    # --- temporal directional stability
    td = vdir / "temporal_directional_stability"
    rows = []
    fig, axs = plots.grid(n)
    for ax, r in zip(axs, runs):
        ax.plot(r.epochs, r.lambda_values, lw=0.7, alpha=0.7)
        ax.plot(r.epochs, np.nanmean(r.lambda_values, 1), "k", lw=1.5)
        ax.set_title(r.label, fontsize=8)
        ax.tick_params(labelsize=6)
        for j, e in enumerate(r.epochs):
            lv = r.lambda_values[j]
            mu, sd = np.nanmean(lv), np.nanstd(lv, ddof=1) if lv.size > 1 else np.nan
            rows.append({"method": r.label, "epoch": int(e), "lambda_mean": mu, "lambda_std": sd,
                         "cv": sd / abs(mu) if mu else np.nan})
    fig.suptitle("per-direction λ over training (spaghetti; black = mean)", fontsize=10)
    fig.tight_layout()
    plots.save(fig, td / "spaghetti_plots.png")
    lio.write_csv(td / "temporal_stability.csv", rows)
    fig, axs = plots.grid(n)
    for ax, r in zip(axs, runs):
        M = len(r.epochs)
        sel = np.unique(np.linspace(0, M - 1, min(M, 6)).round().astype(int))
        data = [r.lambda_values[j][np.isfinite(r.lambda_values[j])] for j in sel]
        ok = [j for j, d in zip(sel, data) if d.size > 1]
        if ok:
            ax.violinplot([r.lambda_values[j][np.isfinite(r.lambda_values[j])] for j in ok], positions=range(len(ok)),
                          showmeans=True)
            ax.set_xticks(range(len(ok)), labels=[str(int(r.epochs[j])) for j in ok], fontsize=6)
        ax.set_title(r.label, fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle("distribution of λ over directions at selected epochs (violins)", fontsize=10)
    fig.tight_layout()
    plots.save(fig, td / "violin_evolution.png")
    fig, axes = plots.new_figure(1, 1, (6.0, 4.0))
    for r, c in zip(runs, plots.color_cycle(n)):
        lv = r.lambda_values
        with np.errstate(invalid="ignore", divide="ignore"):
            cv = np.nanstd(lv, 1, ddof=1) / np.abs(np.nanmean(lv, 1))
        axes[0, 0].plot(r.epochs, cv, marker=".", color=c, label=r.label)
    axes[0, 0].axhline(CRITERIA["cv"], color="k", ls="--", lw=0.8)
    axes[0, 0].set(xlabel="epoch", ylabel="CV of λ across directions", title="coefficient of variation over time")
    axes[0, 0].legend(fontsize=5, ncol=2)
    axes[0, 0].grid(alpha=0.3)
    plots.save(fig, td / "cv_over_time.png")
    fig, axs = plots.grid(n, size=(3.0, 2.8))
    for ax, r in zip(axs, runs):
        lv = r.lambda_values
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(lv.T) if lv.shape[0] > 2 else np.full((lv.shape[1],) * 2, np.nan)
        ax.imshow(c, vmin=-1, vmax=1, cmap="coolwarm")
        off = c[~np.eye(len(c), dtype=bool)]
        off = off[np.isfinite(off)]
        ax.set_title(f"{r.label}\nmean off-diag r = {fmt(off.mean() if off.size else np.nan, '.2f')}", fontsize=7)
        ax.tick_params(labelsize=5)
    fig.suptitle("correlation between directions of the λ time series", fontsize=10)
    fig.tight_layout()
    plots.save(fig, td / "direction_correlation_matrix.png")

    # --- joint K × order
    jd = vdir / "joint_K_order_optimization"
    joint = [joint_metrics(r.lam["log_abs_derivatives"]) for r in runs]
    rows = []
    for r, jm in zip(runs, joint):
        ok = meets(jm, -1)
        for ki, K in enumerate(K_GRID):
            for wi, w in enumerate(WINDOWS):
                rows.append({"method": r.label, "K": K, "window": wname(w),
                             **{m: jm[m][-1, ki, wi] for m in ("lambda", "stderr", "cv", "deviation")},
                             "meets_all_criteria": int(ok[ki, wi])})
    lio.write_csv(jd / "joint_grid_final_epoch.csv", rows)
    lio.write_npz(jd / "joint_grid.npz", **{f"{m}": np.stack([jm[m] for jm in joint]) for m in joint[0]},
                  K=np.array(K_GRID), windows=np.array(WINDOWS), methods=np.array([r.label for r in runs]))
    rl, cl = [str(k) for k in K_GRID], [wname(w) for w in WINDOWS]
    for m, fname, f in (("lambda", "lambda_heatmap.png", "{:.2f}"), ("stderr", "stderr_heatmap.png", "{:.3f}"),
                        ("cv", "cv_heatmap.png", "{:.3f}"), ("deviation", "deviation_heatmap.png", "{:.1%}")):
        fig, axes = plots.new_figure(1, 1, (5.5, 4.2))
        with np.errstate(invalid="ignore"):
            v = np.nanmean(np.stack([jm[m][-1] for jm in joint]), 0)
        plots.heatmap(axes[0, 0], v, rl, cl, f"{m} (mean over {n} methods, final epoch)", fmt=f,
                      xlabel="order window", ylabel="directions K")
        plots.save(fig, jd / fname)
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
    ax.plot([p[0] for p in pp], [100 * p[1] for p in pp], "r-o", ms=4, label="Pareto frontier")
    for p in pp:
        ax.annotate(p[2], (p[0], 100 * p[1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(100 * CRITERIA["deviation"], color="k", ls="--", lw=0.8, label="5 % deviation")
    ax.set(xlabel="cost: K × highest order", ylabel="mean deviation from K=15, orders 1-6 (%)",
           title="cost vs accuracy of the λ estimate (final epoch)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    plots.save(fig, jd / "pareto_frontier.png")
    fig, axs = plots.grid(n, size=(3.4, 2.8))
    for ax, r, jm in zip(axs, runs, joint):
        plots.heatmap(ax, 100 * jm["deviation"][-1], rl, cl, r.label, fmt="{:.0f}", xlabel="window", ylabel="K")
    fig.suptitle("deviation from K=15, orders 1-6 (%), final epoch, per method", fontsize=10)
    fig.tight_layout()
    plots.save(fig, jd / "per_method_grid.png")
    M = min(jm["deviation"].shape[0] for jm in joint)
    frames = []
    for j in range(M):
        fig, axes = plots.new_figure(1, 1, (5.0, 4.0))
        v = np.nanmean(np.stack([jm["deviation"][j] for jm in joint]), 0)
        plots.heatmap(axes[0, 0], 100 * v, rl, cl, f"mean deviation (%) at epoch {int(runs[0].epochs[j])}",
                      fmt="{:.0f}", xlabel="order window", ylabel="directions K")
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
def hypotheses(runs: list[RunData], stats: list[dict]) -> list[str]:
    lam = [s["lambda_final"] for s in stats]
    out = []
    c_acc, c_gap = pearson(lam, [s["test_acc"] for s in stats]), pearson(lam, [s["gap"] for s in stats])
    out.append("**H1 — λ vs generalisation.** Final λ (mean over directions) against final test accuracy: "
               f"{c_acc.text()}; against the generalisation gap: {c_gap.text()}."
               + (f" {_significance(c_acc, 'higher (less negative) λ', 'test accuracy')}" if c_acc.ok else "")
               + (f" {_significance(c_gap, 'higher (less negative) λ', 'generalisation gap')}" if c_gap.ok else ""))
    base = next((s for s in stats if s["family"] == "baseline"), None)
    fam_lines = []
    if base is None or not np.isfinite(base["lambda_final"]):
        out.append("**H2 — λ for flat-minimum methods.** not enough data (no baseline run with a finite λ).")
    else:
        fams: dict[str, list] = {}
        for s in stats:
            if s["family"] != "baseline":
                fams.setdefault(s["family"], []).append(s)
        for f, ss in fams.items():
            d = np.array([s["lambda_final"] - base["lambda_final"] for s in ss])
            fam_lines.append(f"{f}: Δλ = {fmt(np.nanmean(d), '+.3f')} (lower in {int(np.sum(d < 0))} of {len(d)})")
        sam = fams.get("sam", [])
        if sam:
            d = np.array([s["lambda_final"] - base["lambda_final"] for s in sam])
            verdict = ("lower (flatter by this measure) than" if np.all(d < 0) else
                       "higher than" if np.all(d > 0) else "mixed relative to")
            out.append(f"**H2 — λ for flat-minimum methods.** SAM (built to find flat minima) ends with λ {verdict} the "
                       f"baseline ({fmt(base['lambda_final'])}): " + ", ".join(
                           f"{s['method']} {fmt(s['lambda_final'])}" for s in sam)
                       + ". Mean final λ change vs baseline per family: " + "; ".join(fam_lines) + ".")
        else:
            out.append("**H2 — λ for flat-minimum methods.** not enough data (no SAM run). Mean final λ change vs "
                       "baseline per family: " + "; ".join(fam_lines) + ".")
    c_var = pearson([s["lambda_final_std"] for s in stats], [s["gap"] for s in stats])
    out.append("**H3 — λ variance vs gap.** Std of final λ over directions against the generalisation gap: "
               f"{c_var.text()}." + (f" {_significance(c_var, 'a larger spread of λ over directions', 'gap')}"
                                   if c_var.ok else ""))
    leads, no_deg, no_move = [], [], []
    for r in runs:
        a = accuracy_degradation_onset(r.rows)
        l_ = lambda_onset(r.epochs, r.lambda_values, convergence_epoch(r.rows))
        if a is None:
            no_deg.append(r.label)
        elif l_ is None:
            no_move.append(r.label)
        else:
            leads.append((r.label, a - l_))
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
    return (f"Against {what}, the correlation is {sig} at the 5 % level; its sign says {xname} goes with "
            f"{'higher' if c.r > 0 else 'lower'} {what}.")


def analyze_dataset(ds_dir: pathlib.Path, dataset: str, run_list: list[dict]) -> dict:
    runs = load_runs(ds_dir, run_list)
    for r in runs:
        write_run_plot(ds_dir / r.rel, r.label)
    family_plots(ds_dir, runs)
    stats = [final_stats(r) for r in runs]
    sdir = ds_dir / "00_summary"
    lio.write_csv(sdir / "summary_statistics.csv", [{"dataset": dataset, **s} for s in stats])
    summary_plots(sdir, runs, stats, dataset)
    validation_plots(ds_dir / "validation_analysis", runs)
    return {"runs": runs, "stats": stats, "hypotheses": hypotheses(runs, stats)}


def analyze_experiment(out: pathlib.Path) -> None:
    """Regenerate every analysis of a diagnostic results folder from disk."""
    cfg = lio.read_json(out / "experiment_config.json")
    lio.remove_stale_temp_files(out, recursive=True)   # every run is finished: nothing else writes here
    parts = [f"# λ as a training diagnostic — summary", "",
             f"Preset `{cfg['preset']}`, seed {cfg['seed']}, data sets: {', '.join(cfg['datasets'])}. "
             f"λ = least-squares slope of mean-over-points log|d_n| against n = 1..{cfg['order']}, per direction, "
             f"{cfg['directions']} random input directions; 'final λ ± std' = mean ± std over directions at the last "
             "epoch. Every statement below is computed from the saved arrays (`lamda analyze` regenerates it).", ""]
    for ds in cfg["datasets"]:
        ddir = out / cfg["dataset_dirs"][ds]
        res = analyze_dataset(ddir, ds, cfg["runs"][ds])
        st = cfg["settings"][ds]
        parts += [f"## {ds}", "",
                  f"{st['train']} training / {st['test']} test images, {st['epochs']} epochs, batch {st['batch']}, "
                  f"Adam lr {st['lr']}, schedule {st['schedule']}, model {st['model']}, "
                  f"{st['points']} measurement points.", "",
                  "| method | test acc | train acc | gap | ECE | final λ ± std |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for s in res["stats"]:
            parts.append(f"| {s['method']} | {fmt(s['test_acc'], '.4f')} | {fmt(s['train_acc'], '.4f')} | "
                         f"{fmt(s['gap'], '+.4f')} | {fmt(s['ece'], '.4f')} | "
                         f"{fmt(s['lambda_final'], '.3f')} ± {fmt(s['lambda_final_std'], '.3f')} |")
        parts += ["", "### Hypotheses", ""] + [f"- {h}" for h in res["hypotheses"]]
        rec = (ddir / "validation_analysis" / "joint_K_order_optimization" / "optimal_config_recommendations.txt")
        last = [ln for ln in rec.read_text().splitlines() if ln.startswith(("Recommendation", "No configuration"))]
        parts += ["", "### Measurement settings (post-hoc)", ""] + [f"- {ln}" for ln in last] + [""]
    lio.write_text(out / "summary.md", "\n".join(parts) + "\n")
