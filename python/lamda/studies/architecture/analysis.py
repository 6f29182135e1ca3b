"""Post-hoc analysis of the landscape study from its run and pair folders.

The per-model table (Hessian extremes over converged pairs only, κ̂, sharpness), the connectivity table, correlations
with test accuracy, the mean ± 95 % CI per architecture, figures and ``summary.md``.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ...result_files import read_csv, read_json, write_csv, write_npz, write_text
from ...stats import MeanCI, mean_ci, pearson_ci
from ..runner import require_complete
from . import figures, report
from .config import COMPARED, CONNECTIVITY_COLUMNS, RESULT_COLUMNS, model_cells, pair_cells, seed_pairs

__all__ = ["analyze", "condition_number", "model_row", "correlations", "per_architecture"]

CORRELATED = ("sharpness", "lambda_max", "condition_number")


def condition_number(lambda_max: float, lambda_min: float) -> float:
    """κ̂ = λ_max / |λ_min| over the computed eigenvalues (NaN when either is missing or λ_min = 0)."""
    if not (np.isfinite(lambda_max) and np.isfinite(lambda_min)) or lambda_min == 0:
        return float("nan")
    return float(lambda_max / abs(lambda_min))


def model_row(a: str, sd: int, h: list[dict], an: dict) -> dict:
    """One ``results.csv`` row from a model's training metrics and ``analysis.json`` (converged pairs only)."""
    top, neg = np.asarray(an["top_eigenvalues"], float), np.asarray(an["negative_eigenvalues"], float)
    tc, nc = np.asarray(an["top_converged"], bool), np.asarray(an["negative_converged"], bool)
    conv = np.concatenate([top[tc], neg[nc]])
    lam_max = float(top[tc].max()) if tc.any() else float("nan")
    lam_min = float(conv.min()) if conv.size else float("nan")
    return {"arch": a, "seed": sd, "test_acc": h[-1]["test_acc"], "train_acc": h[-1]["train_acc"],
            "test_loss": h[-1]["test_loss"], "train_loss": h[-1]["train_loss"], "lambda_max": lam_max,
            "lambda_min": lam_min, "condition_number": condition_number(lam_max, lam_min),
            "n_negative": int((conv < 0).sum()), "n_eigs_converged": int(conv.size),
            "n_eigs_computed": int(top.size + neg.size), "lanczos_converged": int(bool(tc.all() and nc.all())),
            "sharpness": an["sharpness"], "sharpness_random": an["sharpness_random"], "n_params": an["n_params"],
            "hessian_hvps": an.get("hessian_hvps"), "train_time_s": float(sum(r.get("epoch_time_s") or 0 for r in h)),
            "hessian_time_s": an["hessian_time_s"]}


def correlations(rows: list[dict]) -> dict:
    """Pearson r (with a bootstrap CI) over every model of sharpness, λ_max and κ̂ with test accuracy."""
    acc = [r["test_acc"] for r in rows]
    return {f"{q}_vs_test_acc": pearson_ci([r[q] for r in rows], acc, seed=0) for q in CORRELATED}


def per_architecture(rows: list[dict], conn: list[dict], archs: list[str]) -> dict[tuple[str, str], list]:
    """The values of every quantity of `COMPARED` per architecture, keyed ``(arch, quantity)``.

    One per model, or one per seed pair for the barrier.
    """
    out = {}
    for a in archs:
        for k in COMPARED:
            out[a, k] = ([c["barrier"] for c in conn if c["arch"] == a] if k == "barrier"
                         else [r[k] for r in rows if r["arch"] == a])
    return out


def _read(out: pathlib.Path, archs: list[str], seeds: list[int]):
    """Per-model rows, training histories and analyses, and the connectivity records."""
    rows, hist, an_all, conn = [], {}, {}, []
    for a in archs:
        for sd in seeds:
            rd = out / "runs" / a / f"seed_{sd}"
            hist[(a, sd)], an_all[(a, sd)] = read_csv(rd / "training_metrics.csv"), read_json(rd / "analysis.json")
            rows.append(model_row(a, sd, hist[(a, sd)], an_all[(a, sd)]))
    for a in archs:
        for sa, sb in seed_pairs(seeds):
            conn.append(read_json(out / "pairs" / f"connectivity_{a}_{sa}-{sb}.json"))
    return rows, hist, an_all, conn


def _write_tables(out: pathlib.Path, rows, an_all, conn, corrs) -> None:
    """``results.csv``, ``connectivity.csv``, ``correlations.csv`` and ``landscape_data.npz``."""
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    write_csv(out / "connectivity.csv", [{k: int(c[k]) if k == "bn_reestimated" else c[k]
                                          for k in CONNECTIVITY_COLUMNS} for c in conn], CONNECTIVITY_COLUMNS)
    write_csv(out / "correlations.csv", [{"quantity": k, "pearson_r": c.corr.r, "p_value": c.corr.p,
                                          "ci_low": c.lo, "ci_high": c.hi, "n": c.corr.n,
                                          "note": c.corr.reason} for k, c in corrs.items()],
              ["quantity", "pearson_r", "p_value", "ci_low", "ci_high", "n", "note"])
    npz = {}
    for (a, sd), an in an_all.items():
        for part in ("top", "negative"):
            npz[f"{a}_seed{sd}_{part}"] = np.asarray(an[f"{part}_eigenvalues"], float)
            npz[f"{a}_seed{sd}_{part}_rel_residual"] = np.asarray(an[f"{part}_rel_residual"], float)
            npz[f"{a}_seed{sd}_{part}_converged"] = np.asarray(an[f"{part}_converged"], bool)
    for c in conn:
        for k in ("alphas", "losses", "accuracies"):
            npz[f"connectivity_{c['arch']}_{c['seed_a']}-{c['seed_b']}_{k}"] = np.asarray(c[k])
    write_npz(out / "landscape_data.npz", **npz)


def analyze(out) -> int:
    """Regenerate every table, figure and ``summary.md`` of a landscape results folder from disk."""
    out = pathlib.Path(out)
    cfg = read_json(out / "experiment_config.json")
    archs, seeds = cfg["archs"], cfg["seeds"]
    require_complete(out, model_cells(archs, seeds) + pair_cells(archs, seeds))
    rows, hist, an_all, conn = _read(out, archs, seeds)
    corrs = correlations(rows)
    _write_tables(out, rows, an_all, conn, corrs)
    vals = per_architecture(rows, conn, archs)
    cis: dict[tuple[str, str], MeanCI] = {key: mean_ci(v) for key, v in vals.items()}
    figures.training_curves_figure(out / "training_curves.png", hist, seeds)
    figures.hessian_spectrum_figure(out / "hessian_spectrum.png", an_all, seeds, cfg["settings"])
    figures.mode_connectivity_figure(out / "mode_connectivity.png", conn, seeds, cfg["test_size"])
    figures.metrics_comparison_figure(out / "metrics_comparison.png", archs, vals, cis)
    figures.correlation_figure(out / "correlation_analysis.png", rows, corrs)
    figures.surface_figures(out, archs, seeds, cfg["settings"])
    figures.summary_table_figure(out / "summary_table.png", report.model_table(rows))
    write_text(out / "summary.md", report.summary(cfg, rows, conn, corrs, cis))
    return 0
