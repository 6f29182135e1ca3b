"""Post-hoc analysis of the selective study from its run folders.

Per-run rows, the selectivity index and its CI over seeds, the tables, figures and ``summary.md``.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ...result_files import read_csv, read_json, write_csv, write_npz, write_text
from ...stats import mean_ci
from ..runner import require_complete
from ..tables import group_mean_ci
from . import figures, report
from .config import PAIR_NAMES, TARGET, grid_cells

__all__ = ["analyze", "collect_runs", "selectivity_rows", "selectivity_table", "SHARE_COLUMN"]

SHARE_COLUMN = "penalty_share_lambda_penalty"       # the λ penalty's share of the training loss, per epoch
TABLE_COLUMNS = ["test_acc", *[f"lambda_{p}" for p in PAIR_NAMES], *[f"n_boundary_{p}" for p in PAIR_NAMES],
                 "train_time_s", "penalty_share_mean"]


def _run_row(c: str, sd: int, hist: list[dict], bl: dict) -> dict:
    last = hist[-1]
    shares = [r[SHARE_COLUMN] for r in hist if r.get(SHARE_COLUMN) is not None]
    row = {"condition": c, "seed": sd, "test_acc": last["test_acc"], "test_loss": last["test_loss"],
           "train_acc": last["train_acc"]}
    for p in PAIR_NAMES:
        row[f"lambda_{p}"] = bl[p]["lambda"]
    for p in PAIR_NAMES:
        row[f"n_boundary_{p}"] = bl[p]["n_points"]
    for p in PAIR_NAMES:
        row[f"n_candidates_{p}"] = bl[p].get("n_candidates")
    row["train_time_s"] = float(sum(r.get("epoch_time_s") or 0.0 for r in hist))
    # the share is logged for the training epochs (epoch 0 is the untrained evaluation)
    row["penalty_share_mean"] = float(np.mean(shares)) if shares else None
    row["penalty_share_final"] = float(shares[-1]) if shares else None
    return row


def collect_runs(out: pathlib.Path, cfg: dict) -> tuple[list[dict], dict]:
    """``(rows, shares)``: the ``results.csv`` rows and the penalty shares per run.

    One row per (seed, condition), and per ``(condition, seed)`` the epochs and penalty shares (%) of its training
    epochs.
    """
    rows, shares = [], {}
    for sd in cfg["seeds"]:
        for c in cfg["conditions"]:
            rd = out / "runs" / c / f"seed_{sd}"
            hist = read_csv(rd / "training_metrics.csv")
            rows.append(_run_row(c, sd, hist, read_json(rd / "boundary_lambda.json")))
            logged = [r for r in hist if r.get(SHARE_COLUMN) is not None]
            shares[c, sd] = ([r["epoch"] for r in logged], [100 * r[SHARE_COLUMN] for r in logged])
    return rows, shares


def _delta(row: dict, base: dict, pair: str) -> float:
    """λ of ``pair`` in ``row`` minus the baseline's (NaN when either is missing)."""
    v, v0 = row.get(f"lambda_{pair}"), base.get(f"lambda_{pair}")
    return float(v) - float(v0) if v is not None and v0 is not None else float("nan")


def selectivity_rows(rows: list[dict]) -> list[dict]:
    """Per (condition, seed) with a target pair: ``Δλ_target − mean Δλ_others`` against the same seed's baseline.

    Selective conditions are scored on their own pair; ``global`` is scored on both targets as a control.
    Missing λ values give a missing index (NaN).
    """
    base = {r["seed"]: r for r in rows if r["condition"] == "baseline"}
    out = []
    for r in rows:
        targets = [TARGET[r["condition"]]] if r["condition"] in TARGET else (
            list(TARGET.values()) if r["condition"] == "global" else [])
        b = base.get(r["seed"]) or {}
        for t in targets:
            others = [_delta(r, b, p) for p in PAIR_NAMES if p != t]
            d_t = _delta(r, b, t)
            d_o = float(np.mean(others)) if all(np.isfinite(others)) else float("nan")
            out.append({"condition": r["condition"], "seed": r["seed"], "target_pair": t, "delta_target": d_t,
                        "delta_others": d_o, "selectivity_index": d_t - d_o})
    return out


def selectivity_table(sel: list[dict]) -> list[dict]:
    """Per (condition, target): mean, 95 % CI half-width and n over seeds of the index and its two parts."""
    keys = list(dict.fromkeys((r["condition"], r["target_pair"]) for r in sel))
    table = []
    for c, t in keys:
        rs = [r for r in sel if r["condition"] == c and r["target_pair"] == t]
        row = {"condition": c, "target_pair": t}
        for col in ("selectivity_index", "delta_target", "delta_others"):
            row[f"{col}_mean"], row[f"{col}_ci95"], row[f"{col}_n"] = mean_ci(r[col] for r in rs)
        table.append(row)
    return table


def _write_arrays(out: pathlib.Path, rows: list[dict], cfg: dict) -> None:
    """``selective_data.npz``: λ ``[conditions, seeds, pairs]``, boundary counts, test accuracy."""
    C, S = cfg["conditions"], cfg["seeds"]
    by = {(r["condition"], r["seed"]): r for r in rows}
    lam = np.array([[[by[c, s][f"lambda_{p}"] if by[c, s][f"lambda_{p}"] is not None else np.nan
                      for p in PAIR_NAMES] for s in S] for c in C], dtype=np.float64)
    cnt = np.array([[[by[c, s][f"n_boundary_{p}"] for p in PAIR_NAMES] for s in S] for c in C], dtype=np.int64)
    acc = np.array([[by[c, s]["test_acc"] for s in S] for c in C], dtype=np.float64)
    write_npz(out / "selective_data.npz", lambda_per_pair=lam, boundary_counts=cnt, test_acc=acc,
              conditions=np.array(C), seeds=np.array(S), pairs=np.array(PAIR_NAMES))


def analyze(out) -> int:
    """Regenerate every table, figure and ``summary.md`` of a selective results folder from its run folders."""
    out = pathlib.Path(out)
    cfg = read_json(out / "experiment_config.json")
    require_complete(out, grid_cells(cfg))            # refuses a torn or partial run, naming the cells to resume
    rows, shares = collect_runs(out, cfg)
    write_csv(out / "results.csv", rows)
    table = group_mean_ci(rows, "condition", TABLE_COLUMNS, order=cfg["conditions"])
    write_csv(out / "summary_table.csv", table)
    sel = selectivity_rows(rows)
    write_csv(out / "selectivity.csv", sel, ["condition", "seed", "target_pair", "delta_target", "delta_others",
                                             "selectivity_index"])
    st = selectivity_table(sel)
    write_csv(out / "selectivity_table.csv", st,
              ["condition", "target_pair", *[f"{c}_{s}" for c in ("selectivity_index", "delta_target",
                                                                  "delta_others") for s in ("mean", "ci95", "n")]])
    _write_arrays(out, rows, cfg)
    figures.lambda_per_pair_figure(out / "lambda_per_pair.png", rows, table, len(cfg["seeds"]))
    figures.selectivity_index_figure(out / "selectivity_index.png", sel, st, len(cfg["seeds"]))
    figures.penalty_share_figure(out / "penalty_share.png", shares, cfg)
    write_text(out / "summary.md", report.summary(cfg, table, st))
    return 0
