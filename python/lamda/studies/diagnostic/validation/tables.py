"""The validation analyses' tables: one CSV per analysis, the joint grid's npz, the recommendation text."""
from __future__ import annotations

import pathlib
from string import Template

import numpy as np

from ....result_files import write_csv, write_npz, write_text
from ..runs import RunData
from .metrics import CRITERIA, K_GRID, WINDOWS, FirstOrderBias, OrderWindows, Recommendation, cv_over_time, meets, wname

__all__ = ["write_direction_convergence", "write_order_sensitivity", "write_first_order_bias",
           "write_temporal_stability", "write_joint_grid", "write_recommendations"]


def write_direction_convergence(path: pathlib.Path, runs: list[RunData], ks, jms: list[dict]) -> None:
    """``direction_convergence.csv``: per run and K, the final-epoch metrics and the deviation's mean over time."""
    rows = []
    for r, jm in zip(runs, jms):
        for ki, K in enumerate(ks):
            rows.append({"method": r.label, "seed": r.seed, "K": K, "lambda_final": jm["lambda"][-1, ki, 0],
                         "stderr_final": jm["stderr"][-1, ki, 0], "stderr_formula_final": jm["stderr_formula"][-1, ki, 0],
                         "cv_final": jm["cv"][-1, ki, 0], "deviation_final": jm["deviation"][-1, ki, 0],
                         "deviation_mean_over_time": np.nanmean(jm["deviation"][:, ki, 0])})
    write_csv(path, rows)


def write_order_sensitivity(path: pathlib.Path, runs: list[RunData], ow: OrderWindows) -> None:
    """``order_sensitivity.csv``.

    Per run and order window, λ at the final epoch (mean, std over directions), its mean over time and its relative
    difference from orders 1-6.
    """
    rows = []
    for i, r in enumerate(runs):
        for wi, w in enumerate(WINDOWS):
            v = ow.per_run[i][wi]
            rows.append({"method": r.label, "seed": r.seed, "window": wname(w), "lambda_final": ow.final[i, wi],
                         "lambda_final_std": np.nanstd(v[-1], ddof=1), "lambda_mean_over_time": np.nanmean(v),
                         "rel_diff_vs_1-6": ow.rel[i, wi]})
    write_csv(path, rows)


def write_first_order_bias(path: pathlib.Path, runs: list[RunData], bias: list[FirstOrderBias]) -> None:
    """``first_order_bias.csv``: per run and measured epoch, the ln|d_1| residual and the λ difference."""
    rows = []
    for r, b in zip(runs, bias):
        for j, e in enumerate(r.epochs):
            rows.append({"method": r.label, "seed": r.seed, "epoch": int(e), "ln_d1_residual": b.residual[j],
                         "lambda_1-N_minus_lambda_2-N": b.dlambda[j]})
    write_csv(path, rows)


def write_temporal_stability(path: pathlib.Path, runs: list[RunData]) -> None:
    """``temporal_stability.csv``: per run and measured epoch, mean, std and CV of λ over the directions."""
    rows = []
    for r in runs:
        c = cv_over_time(r)
        for j, e in enumerate(r.epochs):
            lv = r.lambda_values[j]
            rows.append({"method": r.label, "seed": r.seed, "epoch": int(e), "lambda_mean": float(np.nanmean(lv)),
                         "lambda_std": float(np.nanstd(lv, ddof=1)) if lv.size > 1 else np.nan, "cv": float(c[j])})
    write_csv(path, rows)


def write_joint_grid(folder: pathlib.Path, runs: list[RunData], joint: list[dict]) -> None:
    """Write ``joint_grid_final_epoch.csv`` and ``joint_grid.npz``.

    The CSV holds every metric per run, K and window at the final epoch, and whether all criteria hold; the npz every
    metric ``[runs, M, K, W]`` over the measurements all runs have.
    """
    rows = []
    for r, jm in zip(runs, joint):
        ok = meets(jm, -1)
        for ki, K in enumerate(K_GRID):
            for wi, w in enumerate(WINDOWS):
                rows.append({"method": r.label, "seed": r.seed, "K": K, "window": wname(w),
                             **{m: jm[m][-1, ki, wi] for m in jm}, "meets_all_criteria": int(ok[ki, wi])})
    write_csv(folder / "joint_grid_final_epoch.csv", rows)
    M = min(jm["deviation"].shape[0] for jm in joint)
    write_npz(folder / "joint_grid.npz", **{m: np.stack([jm[m][:M] for jm in joint]) for m in joint[0]},
              K=np.array(K_GRID), windows=np.array(WINDOWS), methods=np.array([r.label for r in runs]))


RECOMMENDATIONS = Template("""\
Optimal (K, order window) for measuring λ — computed from the saved log|d_n| arrays

Reference: K = 15 directions, orders 1-6.  Criteria: |Δλ| < $dev_limit (mean relative deviation over random \
K-subsets), standard error < $stderr_limit, CV < $cv_limit.
Methods: $n; cost = K × highest order (derivative work per point is ~linear in both).

Fraction of methods meeting all criteria at the final epoch (rows K, columns window):
$final_table

Fraction of (method, epoch > 0) measurements meeting all criteria:
$all_table

$verdict
Pareto-optimal configurations (cost, mean deviation): $pareto
""")
ALL_MET = Template("Recommendation: K = $K, orders $window is the cheapest configuration (cost $cost vs $ref_cost for "
                   "the reference) that meets all three criteria for every method at the final epoch; over all epochs "
                   "> 0 it meets them in $frac_all of measurements.")
NONE_MET = Template("No configuration meets all three criteria for every method at the final epoch. The best, K = $K, "
                    "orders $window, meets them for $frac_final of methods.")


def _fraction_table(frac: np.ndarray) -> str:
    lines = ["K     " + "".join(f"{wname(w):>8s}" for w in WINDOWS)]
    for ki, K in enumerate(K_GRID):
        lines.append(f"{K:<6d}" + "".join(f"{frac[ki, wi]:8.2f}" for wi in range(len(WINDOWS))))
    return "\n".join(lines)


def recommendation_line(rec: Recommendation, cost: np.ndarray) -> str:
    """The recommendation sentence (the summary quotes it)."""
    i, j = rec.best
    if rec.all_met:
        return ALL_MET.substitute(K=K_GRID[i], window=wname(WINDOWS[j]), cost=f"{cost[i, j]:.0f}", ref_cost=15 * 6,
                                  frac_all=f"{rec.frac_all[i, j]:.0%}")
    return NONE_MET.substitute(K=K_GRID[i], window=wname(WINDOWS[j]), frac_final=f"{rec.frac_final[i, j]:.0%}")


def write_recommendations(path: pathlib.Path, n_runs: int, rec: Recommendation, cost: np.ndarray, pareto) -> None:
    """``optimal_config_recommendations.txt``.

    The fractions meeting the criteria, the recommendation and the Pareto-optimal configurations.
    """
    write_text(path, RECOMMENDATIONS.substitute(
        dev_limit=f"{CRITERIA['deviation']:.0%}", stderr_limit=CRITERIA["stderr"], cv_limit=CRITERIA["cv"],
        n=n_runs, final_table=_fraction_table(rec.frac_final), all_table=_fraction_table(rec.frac_all),
        verdict=recommendation_line(rec, cost),
        pareto="; ".join(f"{p[2]} ({p[0]:.0f}, {p[1]:.1%})" for p in sorted(pareto))))
