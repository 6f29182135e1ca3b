"""The statistics of the four validation analyses, as pure functions of the saved λ arrays.

Definitions (the study's). The analyses work on ``log_abs_derivatives [M, 15, 6]`` (mean over points of log|d_n|
per shared direction): the λ of direction k for an order window ``lo-hi`` is the least-squares slope of log|d_n|
over n = lo..hi; for a direction count K:

- λ(K, w): mean over random K-subsets of the 15 directions (200 seeded draws; the full set for K = 15) of the
  subset's mean λ;
- CV(K, w) = std/|mean| of λ over the directions of a subset (sample std), averaged over the subsets
  (n/a for K = 1) — the spread of λ between directions relative to its size;
- standard error(K, w): measured, not assumed — the std over 500 bootstrap resamples (K directions drawn with
  replacement from the 15) of their mean λ; ``stderr_formula`` = std₁₅/√K is written beside it so the
  check "stderr ≈ std/√K" can fail;
- deviation(K, w): mean over subsets of |subset λ − λ_ref| / |λ_ref|, λ_ref = λ(K=15, orders 1-6).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ....measure import fit_lambda
from ....stats import bootstrap_stderr, cv
from ..runs import RunData, nearest_epoch_index, STUDY_EPOCHS

__all__ = ["K_GRID", "WINDOWS", "REF_WINDOW", "CRITERIA", "N_SUBSETS", "N_BOOT", "wname", "joint_metrics", "meets",
           "mean_over_runs", "direction_convergence", "OrderWindows", "order_windows", "FirstOrderBias", "first_order_bias",
           "cv_over_time", "lambda_at_study_epochs", "config_cost", "pareto_front", "Recommendation",
           "recommendation", "spaghetti_choice"]

K_GRID = (1, 2, 3, 5, 10, 15)
WINDOWS = ((1, 2), (1, 3), (1, 4), (2, 4), (2, 5), (1, 6))
REF_WINDOW = (1, 6)
CRITERIA = {"deviation": 0.05, "stderr": 0.1, "cv": 0.2}
N_SUBSETS = 200
N_BOOT = 500


def wname(w) -> str:
    """``"1-6"`` for the order window ``(1, 6)``."""
    return f"{w[0]}-{w[1]}"


def meets(metrics: dict, idx=...) -> np.ndarray:
    """Where every criterion of `CRITERIA` holds (deviation, standard error and CV below their limits)."""
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
                out["lambda"][:, ki, wi] = sm.mean(1)
                out["stderr"][:, ki, wi] = bootstrap_stderr(lw, K, n_boot, rng)
                out["stderr_formula"][:, ki, wi] = sd / math.sqrt(K)
                out["cv"][:, ki, wi] = np.nanmean(cv(vals, -1), 1) if K > 1 else np.nan
                out["deviation"][:, ki, wi] = np.mean(np.abs(sm - ref[:, None]), 1) / np.abs(ref)
    return out


# ------------------------------------------------------------------------------------------ direction convergence
def direction_convergence(runs: list[RunData]) -> tuple[tuple[int, ...], list[dict]]:
    """``(ks, metrics)``: K = 1..Kall and, per run, `joint_metrics` over those K at orders 1-6.

    The metrics are ``[M, len(ks), 1]`` arrays.
    """
    kall = runs[0].lam["log_abs_derivatives"].shape[1]
    ks = tuple(range(1, kall + 1))
    return ks, [joint_metrics(r.lam["log_abs_derivatives"], ks=ks, windows=(REF_WINDOW,)) for r in runs]


# ------------------------------------------------------------------------------------------ order sensitivity
@dataclass
class OrderWindows:
    """λ of every run per order window.

    ``per_run[i][wi]`` is ``[M, K]`` (per measurement and direction); ``final [runs, W]`` the final-epoch mean over
    directions; ``rel [runs, W]`` its relative difference from orders 1-6 (NaN where the reference is 0).
    """

    per_run: list[list[np.ndarray]]
    final: np.ndarray
    rel: np.ndarray


def order_windows(runs: list[RunData], windows=WINDOWS) -> OrderWindows:
    """λ per order window for every run ([`OrderWindows`][lamda.studies.diagnostic.validation.metrics.OrderWindows])."""
    n, W = len(runs), len(windows)
    per_run, lam_w, rel = [], np.full((n, W), np.nan), np.full((n, W), np.nan)
    for i, r in enumerate(runs):
        la = r.lam["log_abs_derivatives"]
        ref = np.nanmean(fit_lambda(la[-1], REF_WINDOW))
        per_run.append([fit_lambda(la, w) for w in windows])
        for wi, v in enumerate(per_run[-1]):
            lam_w[i, wi] = np.nanmean(v[-1])
            rel[i, wi] = (lam_w[i, wi] - ref) / abs(ref) if ref else np.nan
    return OrderWindows(per_run, lam_w, rel)


@dataclass
class FirstOrderBias:
    """Per measurement of one run.

    ``residual [M]`` of ln|d_1| from the line through orders 2..N extrapolated to n = 1, and ``dlambda [M]`` = λ(orders
    1..N) − λ(orders 2..N) (both means over directions).
    """

    residual: np.ndarray
    dlambda: np.ndarray


def first_order_bias(run: RunData) -> FirstOrderBias:
    """How far log|d_1| lies from the line fitted on the higher orders, and what including it does to λ."""
    la = run.lam["log_abs_derivatives"]                         # [M, K, N]
    N = la.shape[-1]
    s = fit_lambda(la, (2, N))                                  # [M, K]
    nn = np.arange(2, N + 1, dtype=float)
    with np.errstate(invalid="ignore"):
        icpt = np.nanmean(la[..., 1:], -1) - s * nn.mean()
        res = la[..., 0] - (icpt + s)                           # [M, K]
        full = fit_lambda(la, (1, N))
    return FirstOrderBias(np.nanmean(res, 1), np.nanmean(full - s, 1))


# ------------------------------------------------------------------------------------------ temporal stability
def cv_over_time(run: RunData) -> np.ndarray:
    """CV = std/|mean| of λ over the directions at every measurement, ``[M]``."""
    return cv(run.lambda_values, 1)


def spaghetti_choice(runs: list[RunData], family: str, target: float) -> RunData | None:
    """The run of ``family`` whose strength is nearest to ``target``.

    The smaller strength on a tie; None when the family has no run.
    """
    cand = [r for r in runs if r.family == family]
    if not cand:
        return None
    return min(cand, key=lambda r: (abs(float(r.strength) - target), float(r.strength)))


# ------------------------------------------------------------------------------------------ joint K × order
def mean_over_runs(arrays: list[np.ndarray]) -> np.ndarray:
    """Mean over runs of ``[K, W]`` arrays, finite values only (NaN where no run has one, without a warning)."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(arrays), 0)


def lambda_at_study_epochs(runs: list[RunData], joint: list[dict]) -> list[np.ndarray]:
    """The λ estimate ``[K, W]`` (mean over runs) at the measured epoch nearest to each of `STUDY_EPOCHS`."""
    out = []
    for target in STUDY_EPOCHS:
        idx = [nearest_epoch_index(r.epochs, target) for r in runs]
        out.append(mean_over_runs([jm["lambda"][j] for jm, j in zip(joint, idx)]))
    return out


def config_cost(ks=K_GRID, windows=WINDOWS) -> np.ndarray:
    """Cost of each (K, window) configuration: K × highest order, ``[len(ks), len(windows)]``."""
    return np.array([[K * w[1] for w in windows] for K in ks], float)


def pareto_front(cost: np.ndarray, mean_dev: np.ndarray) -> tuple[list, list]:
    """``(points, front)``: the configurations and the Pareto front of cost against deviation.

    ``points``: every configuration with a finite mean deviation as ``(cost, deviation, name)``; ``front``: those no
    other point beats in both cost and deviation.
    """
    pts = [(cost[i, j], mean_dev[i, j], f"K={K_GRID[i]},{wname(WINDOWS[j])}")
           for i in range(len(K_GRID)) for j in range(len(WINDOWS)) if np.isfinite(mean_dev[i, j])]
    front = [p for p in pts if not any((q[0] <= p[0] and q[1] <= p[1]) and (q[0] < p[0] or q[1] < p[1])
                                       for q in pts)]
    return pts, front


@dataclass
class Recommendation:
    """``frac_final [K, W]``: fraction of runs meeting every criterion at the final epoch.

    ``frac_all [K, W]``: of (run, epoch > 0) measurements; ``best``: ``(K index, window index)`` of the cheapest
    configuration meeting them for every run at the final epoch, else of the highest ``frac_final``; ``all_met``:
    whether such a configuration exists.
    """

    frac_final: np.ndarray
    frac_all: np.ndarray
    best: tuple[int, int]
    all_met: bool


def recommendation(joint: list[dict], cost: np.ndarray) -> Recommendation:
    """The fractions of runs meeting the criteria per configuration, and the configuration to recommend."""
    ok_final = np.stack([meets(jm, -1) for jm in joint])                                 # [runs, K, W]
    ok_all = np.concatenate([meets(jm, slice(1, None)).reshape(-1, len(K_GRID), len(WINDOWS)) for jm in joint])
    frac_final = ok_final.mean(0)
    frac_all = ok_all.mean(0) if ok_all.size else np.full_like(frac_final, np.nan)
    cand = [(cost[i, j], i, j) for i in range(len(K_GRID)) for j in range(len(WINDOWS)) if frac_final[i, j] == 1.0]
    if cand:
        _, i, j = min(cand)
        return Recommendation(frac_final, frac_all, (i, j), True)
    i, j = np.unravel_index(np.nanargmax(frac_final), frac_final.shape)
    return Recommendation(frac_final, frac_all, (int(i), int(j)), False)
