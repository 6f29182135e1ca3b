"""Post-hoc analyses of the diagnostic study, computed from the files on disk alone.

Reads every run's ``training_metrics.csv`` and ``lambda_data.npz`` and writes the per-run and per-family figures,
``00_summary/``, ``validation_analysis/`` ([`validation`][lamda.studies.diagnostic.validation]) and the top-level
``summary.md`` ([`report`][lamda.studies.diagnostic.report]). All statements in ``summary.md`` are computed from the
numbers; a statistic that cannot be computed is reported as "not enough data".

Tables give mean ± 95 % t-interval over seeds (``± n/a`` for one seed); correlations are over methods (seed
means) with n, p and a bootstrap CI. With several seeds, the validation analyses use the first seed's runs.
"""
from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass, field

import numpy as np

from ...result_files import read_json, remove_stale_temp_files, write_csv, write_text
from ...stats import Correlation, cv, fmt, mean_ci, pearson
from ..runner import recorded_cells, require_complete
from . import figures, report
from .config import ACC_DROP, LAMBDA_SE_MULT
from .runs import RunData, load_runs
from .validation import Validation, run_validation

__all__ = ["analyze", "analyze_experiment", "analyze_dataset", "DatasetResult", "final_stats", "method_table",
           "STAT_KEYS", "accuracy_degradation_onset", "convergence_epoch", "lambda_onset", "Hypotheses", "hypotheses",
           "caveats", "MeasurementChecks", "measurement_checks", "figure_folders", "MIN_CORRELATION_N"]

MIN_CORRELATION_N = 10
STAT_KEYS = ("test_acc", "train_acc", "gap", "ece", "lambda_final", "lambda_final_std", "lambda_final_cv",
             "lambda_change")


def figure_folders(out: pathlib.Path) -> list[pathlib.Path]:
    """The folders holding a results tree's summary figures and validation analyses (for the closing log lines)."""
    cfg = read_json(pathlib.Path(out) / "experiment_config.json")
    res = []
    for ds in cfg["datasets"]:
        d = pathlib.Path(out) / cfg["dataset_dirs"][ds]
        res += [d / "00_summary", d / "validation_analysis"]
    return res


# ---------------------------------------------------------------------------------------------- per run, per method
def final_stats(run: RunData) -> dict:
    """One run's final metrics and the summary of its λ.

    The λ summary: the mean over directions at the first and last measurement, the spread over directions at the last.
    """
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


def method_table(runs: list[RunData]) -> list[dict]:
    """One row per method (in run order).

    ``<q>_mean``, ``<q>_ci95`` (t-interval half-width over seeds, NaN for one seed) and ``n_seeds`` for every quantity
    of [`STAT_KEYS`][lamda.studies.diagnostic.analysis.STAT_KEYS].
    """
    order = list(dict.fromkeys(r.label for r in runs))
    out = []
    for lab in order:
        st = [final_stats(r) for r in runs if r.label == lab]
        row = {"method": lab, "family": st[0]["family"], "strength": st[0]["strength"], "n_seeds": len(st),
               "seeds": ",".join(str(s["seed"]) for s in st)}
        for k in STAT_KEYS:
            m = mean_ci([s[k] for s in st])
            row[f"{k}_mean"], row[f"{k}_ci95"] = m.mean, m.half
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- onsets (H4)
def accuracy_degradation_onset(rows: list[dict], drop: float = ACC_DROP):
    """Start of a sustained degradation.

    The first epoch after the test-accuracy peak from which the accuracy stays at least ``drop`` below the peak until
    the end of the run; None when there is none (one-epoch dips that recover do not count).
    """
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
    """First measured epoch after ``ref_epoch`` where the mean λ moved by more than ``mult`` standard errors.

    Compared with its value at ``ref_epoch`` (the last measurement at or before it), in standard errors over directions;
    None if never.

    ``epochs [M]``, ``lam [M, K]``.
    """
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


# ---------------------------------------------------------------------------------------------- hypotheses
@dataclass
class Hypotheses:
    """The numbers behind the summary's four hypotheses (`report.hypothesis_lines` words them).

    Attributes:
        acc: the Pearson correlation over methods of final λ with test accuracy (H1).
        gap: the Pearson correlation over methods of final λ with the generalisation gap (H1).
        spread_gap: of the std of final λ over directions with the gap (H3).
        base: the baseline's table row (None when there is none or its λ is not finite).
        family_deltas: per non-baseline family, the final-λ differences of its methods from the baseline (H2).
        sam: the SAM rows of the table (H2).
        leads: ``(run name, degradation epoch − λ epoch)`` of the runs with both events (H4);
        no_degradation: the runs without a degradation.
        no_move: the runs degrading without λ moving.
    """

    acc: Correlation
    gap: Correlation
    spread_gap: Correlation
    base: dict | None
    family_deltas: dict[str, np.ndarray] = field(default_factory=dict)
    sam: list[dict] = field(default_factory=list)
    leads: list[tuple[str, int]] = field(default_factory=list)
    no_degradation: list[str] = field(default_factory=list)
    no_move: list[str] = field(default_factory=list)
    n_runs: int = 0


def _onsets(runs: list[RunData], multi_seed: bool) -> tuple[list, list, list]:
    leads, no_deg, no_move = [], [], []
    for r in runs:
        a = accuracy_degradation_onset(r.rows)
        l_ = lambda_onset(r.epochs, r.lambda_values, convergence_epoch(r.rows))
        name = f"{r.label}/seed_{r.seed}" if multi_seed else r.label
        if a is None:
            no_deg.append(name)
        elif l_ is None:
            no_move.append(name)
        else:
            leads.append((name, a - l_))
    return leads, no_deg, no_move


def hypotheses(runs: list[RunData], table: list[dict]) -> Hypotheses:
    """The statistics of the four hypotheses, from the runs and their method table."""
    lam = [t["lambda_final_mean"] for t in table]
    gap = [t["gap_mean"] for t in table]
    base = next((t for t in table if t["family"] == "baseline"), None)
    if base is not None and not np.isfinite(base["lambda_final_mean"]):
        base = None
    deltas: dict[str, np.ndarray] = {}
    if base is not None:
        for t in table:
            if t["family"] != "baseline":
                deltas.setdefault(t["family"], []).append(t["lambda_final_mean"] - base["lambda_final_mean"])
    leads, no_deg, no_move = _onsets(runs, max(t["n_seeds"] for t in table) > 1)
    return Hypotheses(pearson(lam, [t["test_acc_mean"] for t in table]), pearson(lam, gap),
                      pearson([t["lambda_final_std_mean"] for t in table], gap), base,
                      {f: np.array(d) for f, d in deltas.items()}, [t for t in table if t["family"] == "sam"],
                      leads, no_deg, no_move, len(runs))


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


@dataclass
class MeasurementChecks:
    """The final-epoch CV of λ per run, and the ratio of the bootstrap standard error to std/√K.

    The CV is over directions; the ratio over all runs (K = 2..15, orders 1-6; finite values only).
    """

    cvs: np.ndarray
    se_ratio: np.ndarray
    n_directions: int


def measurement_checks(jms: list[dict], runs: list[RunData]) -> MeasurementChecks:
    """The two measurement checks of the summary, from the direction-convergence metrics ``jms``."""
    cvs = np.array([cv(r.lambda_values[-1]) for r in runs], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.concatenate([(jm["stderr"][-1, 1:, 0] / jm["stderr_formula"][-1, 1:, 0]) for jm in jms])
    return MeasurementChecks(cvs, ratio[np.isfinite(ratio)], runs[0].lambda_values.shape[1])


# ---------------------------------------------------------------------------------------------- orchestration
@dataclass
class DatasetResult:
    """What the summary reports for one data set."""

    runs: list[RunData]
    table: list[dict]
    hypotheses: Hypotheses
    caveats: list[str]
    validation_seed: int
    checks: MeasurementChecks
    validation: Validation


def _summary_figures(ds_dir: pathlib.Path, runs: list[RunData], table: list[dict], dataset: str) -> None:
    for r in runs:
        figures.lambda_evolution_figure(ds_dir / r.dir, r.label)
    families: dict[str, list[str]] = {}
    for r in runs:
        if r.label not in families.setdefault(r.family_dir, []):
            families[r.family_dir].append(r.label)
    for fdir, labels in families.items():
        figures.family_figure(ds_dir, fdir, labels, runs, table)
    sdir = ds_dir / "00_summary"
    figures.all_methods_figure(sdir / "all_methods_comparison.png", runs, table, dataset)
    lam = [t["lambda_final_mean"] for t in table]
    for key in figures.SCATTER_FILES:
        figures.scatter_vs_lambda_figure(sdir, key, table, pearson(lam, [t[f"{key}_mean"] for t in table]), dataset)


def analyze_dataset(ds_dir: pathlib.Path, dataset: str, run_list: list[dict], acc_target: float | None = None,
                    preset: str = "") -> DatasetResult:
    """Every table and figure of one data set's tree (the first seed's runs for the validation analyses)."""
    runs = load_runs(ds_dir, run_list)
    table = method_table(runs)
    _summary_figures(ds_dir, runs, table, dataset)
    sdir = ds_dir / "00_summary"
    write_csv(sdir / "summary_statistics.csv", [{"dataset": dataset, **t} for t in table])
    write_csv(sdir / "run_statistics.csv", [{"dataset": dataset, **final_stats(r)} for r in runs])
    first = min(r.seed for r in runs)
    vruns = [r for r in runs if r.seed == first]
    val = run_validation(ds_dir / "validation_analysis", vruns)
    return DatasetResult(runs, table, hypotheses(runs, table), caveats(runs, table, acc_target, preset), first,
                         measurement_checks(val.convergence, vruns), val)


def analyze_experiment(out: pathlib.Path) -> None:
    """Regenerate every analysis of a diagnostic results folder from disk and write ``summary.md``."""
    cfg = read_json(out / "experiment_config.json")
    remove_stale_temp_files(out, recursive=True)   # every run is finished: nothing else writes here
    results = {}
    for ds in cfg["datasets"]:
        st = cfg["settings"][ds]
        results[ds] = analyze_dataset(out / cfg["dataset_dirs"][ds], ds, cfg["runs"][ds], st.get("acc_target"),
                                      cfg["preset"])
    write_text(out / "summary.md", report.summary(out, cfg, results))


def analyze(out) -> int:
    """``lamda analyze``: regenerate every analysis from disk; refuses a folder whose runs are not all complete."""
    out = pathlib.Path(out)
    cells = recorded_cells(out)
    if cells is not None:
        require_complete(out, cells)
    analyze_experiment(out)
    return 0
