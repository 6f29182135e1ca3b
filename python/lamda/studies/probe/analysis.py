"""Post-hoc analysis of the probe study from its run folders.

Per-run rows, the per-optimizer table, the curvature and lr series, figures and ``summary.md``.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ...result_files import read_csv, read_json, write_csv, write_npz, write_text
from ...stats import MeanCI, mean_ci
from ..runner import require_complete
from ..tables import group_mean_ci
from . import figures, report
from .config import MIN_SCALE, grid_cells
from .series import series

__all__ = ["analyze", "run_row", "paired_difference", "probe_differences", "SCALE_COLUMNS"]

SCALE_COLUMNS = ["scale_mean", "scale_min", "scale_max", "frac_scale_above_1", "frac_scale_below_1",
                 "frac_scale_at_max", "frac_scale_at_min"]
BASE_COLUMNS = ["optimizer", "seed", "final_test_acc", "final_test_loss", "final_train_loss", "mean_curvature",
                "final_curvature", "mean_lr", "final_lr", "train_time_s"]
TABLE_COLUMNS = ["final_test_acc", "final_test_loss", "mean_curvature", "final_curvature", "mean_lr",
                 "train_time_s", *SCALE_COLUMNS]


def run_row(o: str, sd: int, st: list[dict], ep: list[dict], rc: dict, max_scale: float) -> dict:
    """One ``results.csv`` row from a run's steps, epochs and config (the probe's lr-scale columns for ``probe``)."""
    pr = [r for r in st if r["probed"] and r["curvature"] is not None]
    c = np.array([r["curvature"] for r in pr], float)
    last = np.array([r["curvature"] for r in pr if r["epoch"] == ep[-1]["epoch"]], float)
    lrs = np.array([r["lr"] for r in st], float)
    row = {"optimizer": o, "seed": sd, "final_test_acc": ep[-1]["test_acc"], "final_test_loss": ep[-1]["test_loss"],
           "final_train_loss": ep[-1]["train_loss"],
           "mean_curvature": float(c.mean()) if c.size else float("nan"),
           "final_curvature": float(last.mean()) if last.size else float("nan"),
           "mean_lr": float(lrs.mean()), "final_lr": float(lrs[-1]), "train_time_s": rc["train_time_s"]}
    sc = np.array([r["scale"] for r in st if r.get("scale") is not None], float)
    if o == "probe" and sc.size:
        row.update({"scale_mean": float(sc.mean()), "scale_min": float(sc.min()), "scale_max": float(sc.max()),
                    "frac_scale_above_1": float(np.mean(sc > 1)), "frac_scale_below_1": float(np.mean(sc < 1)),
                    "frac_scale_at_max": float(np.mean(np.isclose(sc, max_scale))),
                    "frac_scale_at_min": float(np.mean(np.isclose(sc, MIN_SCALE)))})
    return row


def paired_difference(rows: list[dict], a: str, b: str, column: str) -> MeanCI:
    """Mean, 95 % CI half-width and n over seeds of ``column(a) − column(b)`` (seeds present in both, finite)."""
    va = {r["seed"]: r[column] for r in rows if r["optimizer"] == a}
    vb = {r["seed"]: r[column] for r in rows if r["optimizer"] == b}
    return mean_ci(float(va[s]) - float(vb[s]) for s in va if s in vb and va[s] is not None and vb[s] is not None)


def probe_differences(rows: list[dict], optimizers: list[str]) -> dict[tuple[str, str], MeanCI]:
    """``(column, other) → MeanCI`` of probe − other over seeds.

    Final test accuracy against every other optimizer, final curvature against sgd_matched (empty without probe).
    """
    if "probe" not in optimizers:
        return {}
    out = {("final_test_acc", o): paired_difference(rows, "probe", o, "final_test_acc")
           for o in ("sgd_matched", "sgd", "adam", "sam") if o in optimizers}
    if "sgd_matched" in optimizers:
        out["final_curvature", "sgd_matched"] = paired_difference(rows, "probe", "sgd_matched", "final_curvature")
    return out


def analyze(out) -> int:
    """Regenerate every table, figure and ``summary.md`` of a probe results folder from its run folders."""
    out = pathlib.Path(out)
    cfg = read_json(out / "experiment_config.json")
    require_complete(out, grid_cells(cfg))            # refuses a torn or partial run, naming the cells to resume
    rows, raw = [], {}
    for sd in cfg["seeds"]:
        for o in cfg["optimizers"]:
            rd = out / "runs" / o / f"seed_{sd}"
            st, ep = read_csv(rd / "steps.csv"), read_csv(rd / "epochs.csv")
            rows.append(run_row(o, sd, st, ep, read_json(rd / "config.json"), cfg["max_scale"]))
            raw.update(series(o, sd, st, ep))
    write_csv(out / "results.csv", rows, BASE_COLUMNS + (SCALE_COLUMNS if "probe" in cfg["optimizers"] else []))
    table = group_mean_ci(rows, "optimizer", TABLE_COLUMNS, order=cfg["optimizers"])
    write_csv(out / "summary_table.csv", table)
    write_npz(out / "probe_data.npz", optimizers=np.array(cfg["optimizers"]), seeds=np.array(cfg["seeds"]), **raw)
    figures.curvature_figure(out / "curvature_over_training.png", raw, cfg)
    figures.lr_scale_figure(out / "lr_scale.png", raw, cfg)
    figures.accuracy_figure(out / "accuracy_over_training.png", raw, cfg)
    write_text(out / "summary.md", report.summary(cfg, rows, table, probe_differences(rows, cfg["optimizers"])))
    return 0
