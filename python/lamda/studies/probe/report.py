"""The probe study's ``summary.md``: a template filled with the per-optimizer table and the paired differences."""
from __future__ import annotations

from string import Template

import numpy as np

from ...stats import fmt, fmt_ci
from ..tables import markdown_table
from .config import MIN_SCALE

__all__ = ["summary", "statements", "caveat"]

SUMMARY = Template("""\
# Curvature-probe optimizer vs SGD, Adam, SAM (`lamda run probe --preset $preset`)

${caveat}Data: $data; MNIST CNN; $epochs epoch(s), batch $batch; seeds $seeds (n = $n_seeds). SGD lr $sgd_lr \
(momentum 0.9), Adam lr $adam_lr, SAM ρ $rho around that SGD; probe every $probe_every batches, N = $probe_dirs random \
unit parameter directions, ε = $eps.

Definitions. Curvature c = mean over the N directions of ‖g(θ + εu) − g(θ)‖ / ε on the current batch (≈ mean ‖H u‖), \
probed every k batches for every optimizer (passively for all but `probe`). `probe` sets lr = base · clip(√(c_ref / \
c), $min_scale, $max_scale), with c_ref a running reference: the exponential moving average (decay $ref_decay) of log \
c over the earlier probes, i.e. c_ref ← c_ref^β · c^(1−β) (the first probe gives scale 1). `sgd_matched` = SGD at a \
constant lr equal to the same seed's probe run's mean lr over its steps. Mean curvature = mean over all probes of a \
run; final curvature = mean over the probes of the last epoch. ± = 95 % Student-t CI over seeds ('± n/a' for n = 1); \
probe − X differences are paired by seed.

## Per optimizer (mean ± 95 % CI over seeds)

$table

## Findings (computed from the table)

$findings

Files: `results.csv`, `summary_table.csv`, `probe_data.npz`, `curvature_over_training.png`, `lr_scale.png`, \
`accuracy_over_training.png`, `runs/<optimizer>/seed_<s>/{steps,epochs}.csv`.
""")
CAVEAT = Template("> **Caveat: `$preset` preset** — $train_size training images, $epochs epoch(s), $n_seeds seed(s). It "
                  "checks that the pipeline runs and writes every file; its numbers are not evidence for or against "
                  "the study's claim (run `--preset full` for that).\n\n")
SCALE = Template("- The probe's lr scale (running reference, decay $decay): mean $mean, range $lo–$hi; above 1 on "
                 "$above % of steps, below 1 on $below %, at the cap $cap on $at_cap %, at the floor $floor on "
                 "$at_floor % (mean over $n seed(s)).")
DIFFERENCE = Template("- probe − $other$control: Δ final test accuracy = $delta (paired over n = $n seed(s)) — $verdict.")


def caveat(cfg: dict) -> str:
    """The caveat paragraph of the smoke and quick presets ("" for full)."""
    if cfg["preset"] == "full":
        return ""
    return CAVEAT.substitute(preset=cfg["preset"], train_size=cfg["train_size"], epochs=cfg["settings"]["epochs"],
                             n_seeds=len(cfg["seeds"]))


def _probe_lines(rows: list[dict], p: dict, cfg: dict, matched: bool) -> list[str]:
    probe_rows = [r for r in rows if r["optimizer"] == "probe"]
    scale = SCALE.substitute(
        decay=cfg["settings"]["ref_decay"], mean=fmt_ci(p["scale_mean_mean"], p["scale_mean_ci95"], p["n"], ".3f"),
        lo=fmt(min(r["scale_min"] for r in probe_rows), ".3f"), hi=fmt(max(r["scale_max"] for r in probe_rows), ".3f"),
        above=fmt(100 * p["frac_scale_above_1_mean"], ".0f"), below=fmt(100 * p["frac_scale_below_1_mean"], ".0f"),
        cap=cfg["max_scale"], at_cap=fmt(100 * p["frac_scale_at_max_mean"], ".0f"), floor=MIN_SCALE,
        at_floor=fmt(100 * p["frac_scale_at_min_mean"], ".0f"), n=p["n"])
    lr = (f"- Mean lr: probe {fmt_ci(p['mean_lr_mean'], p['mean_lr_ci95'], p['n'], '.4g')} vs the SGD base "
          f"{cfg['settings']['sgd_lr']}" + ("; `sgd_matched` ran at that mean lr, per seed" if matched else "") + ".")
    return [scale, lr]


def _difference(diffs: dict, other: str) -> str:
    m, h, n = diffs["final_test_acc", other]
    if n < 2:
        verdict = "one seed, no CI: no conclusion"
    elif m - h > 0 or m + h < 0:
        verdict = "the 95 % CI excludes 0"
    else:
        verdict = "the 95 % CI includes 0: no difference shown (null result at this n)"
    control = " (the matched-lr control: same mean lr, constant)" if other == "sgd_matched" else ""
    return DIFFERENCE.substitute(other=other, control=control, delta=fmt_ci(m, h, n, "+.4f"), n=n, verdict=verdict)


def statements(rows: list[dict], table: list[dict], cfg: dict, diffs: dict) -> list[str]:
    """The findings, from the runs, the per-optimizer table and the paired differences ``diffs``.

    ``diffs``: ``(column, other optimizer) → MeanCI`` of probe − other.
    """
    by = {r["optimizer"]: r for r in table}
    best = max(table, key=lambda r: r["final_test_acc_mean"])
    lines = [f"- Highest final test accuracy: `{best['optimizer']}` "
             f"({fmt_ci(best['final_test_acc_mean'], best['final_test_acc_ci95'], best['n'], '.4f')}, n = {best['n']})."]
    if "probe" in by:
        lines += _probe_lines(rows, by["probe"], cfg, "sgd_matched" in by)
    lines += [_difference(diffs, other) for other in ("sgd_matched", "sgd", "adam", "sam")
              if "probe" in by and other in by]
    for col, what in (("mean_curvature", "mean over training"), ("final_curvature", "mean over the last epoch")):
        order = sorted(table, key=lambda r: r[f"{col}_mean"] if np.isfinite(r[f"{col}_mean"]) else np.inf)
        lines.append(f"- Probe curvature ({what}), lowest first: " + ", ".join(
            f"`{r['optimizer']}` {fmt_ci(r[f'{col}_mean'], r[f'{col}_ci95'], r[f'{col}_n'], '.4g')}" for r in order)
            + ".")
    if "probe" in by and "sgd_matched" in by:
        m, h, n = diffs["final_curvature", "sgd_matched"]
        lines.append(f"- probe − sgd_matched, final curvature: {fmt_ci(m, h, n, '+.4g')} (paired, n = {n}).")
    return lines


def summary(cfg: dict, rows: list[dict], table: list[dict], diffs: dict) -> str:
    """The text of ``summary.md``."""
    s = cfg["settings"]
    data = f"{cfg['dataset']} ({cfg['train_size']} train / {cfg['test_size']} test)"
    if cfg.get("dataset_note"):
        data += f" — {cfg['dataset_note']}"
    body = [[r["optimizer"], r["n"], fmt_ci(r["mean_lr_mean"], r["mean_lr_ci95"], r["n"], ".4g"),
             fmt_ci(r["final_test_acc_mean"], r["final_test_acc_ci95"], r["n"], ".4f"),
             fmt_ci(r["final_test_loss_mean"], r["final_test_loss_ci95"], r["n"], ".4f"),
             fmt_ci(r["mean_curvature_mean"], r["mean_curvature_ci95"], r["mean_curvature_n"], ".4g"),
             fmt_ci(r["final_curvature_mean"], r["final_curvature_ci95"], r["final_curvature_n"], ".4g")]
            for r in table]
    table_md = markdown_table(["optimizer", "seeds", "mean lr", "test acc", "test loss", "mean curvature",
                               "final curvature"], body)
    return SUMMARY.substitute(
        preset=cfg["preset"], caveat=caveat(cfg), data=data, epochs=s["epochs"], batch=s["batch"], seeds=cfg["seeds"],
        n_seeds=len(cfg["seeds"]), sgd_lr=s["sgd_lr"], adam_lr=s["adam_lr"], rho=s["rho"],
        probe_every=s["probe_every"], probe_dirs=s["probe_dirs"], eps=s["eps"], min_scale=MIN_SCALE,
        max_scale=cfg["max_scale"], ref_decay=s["ref_decay"], table=table_md,
        findings="\n".join(statements(rows, table, cfg, diffs)))
