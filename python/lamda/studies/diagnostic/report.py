"""The diagnostic's ``summary.md``: templates filled with the numbers of `analysis`."""
from __future__ import annotations

import math
import pathlib
from string import Template

import numpy as np

from ...stats import Correlation, fmt, fmt_ci
from .config import ACC_DROP, LAMBDA_SE_MULT, STUDY_SPAGHETTI
from .validation import spaghetti_file
from .validation.metrics import CRITERIA

__all__ = ["summary", "hypothesis_lines", "check_lines", "spaghetti_note"]

HEAD = Template("""\
# λ as a training diagnostic — summary

Preset `$preset`, seed(s) $seeds, data sets: $datasets. λ = least-squares slope of ln|d_n| (mean over the \
measurement points) against n = 1..$order, per direction; $directions random unit input directions $protocol. \
Table cells: mean ± 95 % t-interval over seeds (± n/a: one seed). 'final λ' = mean over directions at the last \
epoch; 'λ std over dirs' and 'CV' = std and std/|mean| of the final λ over the directions. Correlations are over \
methods (seed means), with n, p and a 95 % bootstrap CI. Every statement below is computed from the saved arrays \
(`lamda analyze` regenerates it).

""")
PROTOCOL = {"shared": "drawn once per run and shared by every point and measurement (`--direction-mode shared`, "
                      "the study's protocol)",
            "per-point": "drawn per point (`--direction-mode per-point`: 'direction k' averages unrelated vectors)"}
DATASET = Template("""\
## $dataset

$train training / $test test images, $epochs epochs, batch $batch, Adam lr $lr, schedule $schedule, model $model, \
$points measurement points.

$caveat\
| method | seeds | test acc | train acc | gap | ECE | final λ | λ std over dirs | CV over dirs |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
$rows

### Hypotheses

$hypotheses

### Measurement settings (post-hoc$validation_note)

$checks

Figures: `$summary_dir/`, `$validation_dir/`, and one `lambda_evolution.png` per run. $spaghetti

""")
ROW = Template("| $method | $n_seeds | $test_acc | $train_acc | $gap | $ece | $lambda_final | $lambda_final_std | "
               "$lambda_final_cv |")
ROW_SPECS = {"test_acc": ".4f", "train_acc": ".4f", "gap": "+.4f", "ece": ".4f", "lambda_final": ".3f",
             "lambda_final_std": ".3f", "lambda_final_cv": ".3f"}

H1 = Template("**H1 — λ vs generalisation.** Final λ (mean over directions and seeds, per method) against final test "
              "accuracy: $acc; against the generalisation gap: $gap.$acc_sig$gap_sig")
H2_SAM = Template("**H2 — λ for flat-minimum methods.** SAM (built to find flat minima) ends with λ $verdict the "
                  "baseline ($base): $sam.$ci_note Mean final λ change vs baseline per family: $families.")
H2_NO_SAM = Template("**H2 — λ for flat-minimum methods.** not enough data (no SAM run). Mean final λ change vs "
                     "baseline per family: $families.")
H2_NO_BASE = "**H2 — λ for flat-minimum methods.** not enough data (no baseline run with a finite λ)."
H3 = Template("**H3 — λ variance vs gap.** Std of final λ over the 15 directions against the generalisation gap: "
              "$spread.$sig")
H4_RULE = Template("(test accuracy 'degrades' from the first epoch after its peak from which it stays ≥ $drop below the "
                   "peak to the end of the run; λ 'moves' at the first measured epoch after convergence — the first "
                   "epoch within $drop of the peak accuracy — where its mean differs from its value at convergence by "
                   "> $mult standard errors over directions; lead = degradation epoch − λ epoch)")
H4_NONE = Template("**H4 — does λ move before test accuracy degrades?** not enough data: $no_deg of $n runs show no "
                   "degradation and $no_move degrade without λ moving $rule.")
H4 = Template("**H4 — does λ move before test accuracy degrades?** In $n_leads run(s) with both events, λ moved first "
              "in $first, at the same epoch in $same, later in $later; median lead $median epochs (mean $mean). "
              "$no_deg run(s) show no degradation, $no_move degrade without λ moving $rule. Leads per run: $leads.")
SIGNIFICANCE = Template("Against $what, the correlation is $sig at the 5 % level (n = $n)$ci0; its sign says $xname "
                        "goes with $direction $what.")
CV_CHECK = Template("Spread of λ over the $k directions at the final epoch: CV = std/|mean| median $median (range "
                    "$lo–$hi) over $n methods (criterion < $limit).")
SE_CHECK = Template("Measured (bootstrap) standard error of λ against std/√K, K = 2..15, final epoch: ratio median "
                    "$median (range $lo–$hi). For directions drawn independently the bootstrap expects √(14/15) = "
                    "$expected: agreement confirms the formula's use here; it adds no independent estimate of the "
                    "direction-to-direction variance.")
SPAGHETTI = Template("`$file` shows `$label` ($strength$nearest)")
# how the summary names a family's strength
STRENGTH = {"weight_decay": "weight decay {:g}", "sam": "SAM ρ = {:g}"}


def _significance(c: Correlation, xname: str, what: str) -> str:
    ci0 = (" but its bootstrap CI includes 0" if np.isfinite(c.ci_lo) and c.ci_lo <= 0 <= c.ci_hi and c.p < 0.05
           else "")
    return " " + SIGNIFICANCE.substitute(what=what, sig="significant" if c.p < 0.05 else "not significant", n=c.n,
                                         ci0=ci0, xname=xname, direction="higher" if c.r > 0 else "lower")


def _h2(h) -> str:
    if h.base is None:
        return H2_NO_BASE
    b = h.base["lambda_final_mean"]
    families = "; ".join(f"{f}: Δλ = {fmt(np.nanmean(d), '+.3f')} (lower in {int(np.sum(d < 0))} of {len(d)})"
                         for f, d in h.family_deltas.items())
    if not h.sam:
        return H2_NO_SAM.substitute(families=families)
    d = h.family_deltas["sam"]
    verdict = ("lower (flatter by this measure) than" if np.all(d < 0) else
               "higher than" if np.all(d > 0) else "mixed relative to")
    base = h.base
    sep = [t for t in h.sam if np.isfinite(t["lambda_final_ci95"]) and np.isfinite(base["lambda_final_ci95"])
           and abs(t["lambda_final_mean"] - b) > t["lambda_final_ci95"] + base["lambda_final_ci95"]]
    ci_note = (f" {len(sep)} of {len(h.sam)} SAM run(s) differ from the baseline by more than the two 95 % CIs "
               "together." if base["n_seeds"] > 1 else " With one seed there is no interval to say whether the "
               "difference exceeds seed-to-seed variation.")
    sam = ", ".join(f"{t['method']} {fmt_ci(t['lambda_final_mean'], t['lambda_final_ci95'], t['n_seeds'])}"
                    for t in h.sam)
    return H2_SAM.substitute(verdict=verdict, base=fmt_ci(b, base["lambda_final_ci95"], base["n_seeds"]), sam=sam,
                             ci_note=ci_note, families=families)


def _h4(h) -> str:
    rule = H4_RULE.substitute(drop=f"{ACC_DROP:.0%}", mult=f"{LAMBDA_SE_MULT:g}")
    if not h.leads:
        return H4_NONE.substitute(no_deg=len(h.no_degradation), n=h.n_runs, no_move=len(h.no_move), rule=rule)
    lv = np.array([x[1] for x in h.leads], float)
    return H4.substitute(n_leads=len(h.leads), first=int(np.sum(lv > 0)), same=int(np.sum(lv == 0)),
                         later=int(np.sum(lv < 0)), median=f"{np.median(lv):+.1f}", mean=f"{lv.mean():+.1f}",
                         no_deg=len(h.no_degradation), no_move=len(h.no_move), rule=rule,
                         leads=", ".join(f"{k} {v:+d}" for k, v in h.leads))


def hypothesis_lines(h) -> list[str]:
    """The four hypotheses in words (`.analysis.Hypotheses`)."""
    lam_x = "higher (less negative) λ"
    h1 = H1.substitute(acc=h.acc.text(), gap=h.gap.text(),
                       acc_sig=_significance(h.acc, lam_x, "test accuracy") if h.acc.ok else "",
                       gap_sig=_significance(h.gap, lam_x, "generalisation gap") if h.gap.ok else "")
    h3 = H3.substitute(spread=h.spread_gap.text(), sig=_significance(h.spread_gap, "a larger spread of λ over "
                                                                     "directions", "gap") if h.spread_gap.ok else "")
    return [h1, _h2(h), h3, _h4(h)]


def check_lines(c) -> list[str]:
    """The measurement checks in words (`.analysis.MeasurementChecks`)."""
    out = []
    if np.isfinite(c.cvs).any():
        out.append(CV_CHECK.substitute(k=c.n_directions, median=fmt(np.nanmedian(c.cvs), ".3f"),
                                       lo=fmt(np.nanmin(c.cvs), ".3f"), hi=fmt(np.nanmax(c.cvs), ".3f"),
                                       n=len(c.cvs), limit=CRITERIA["cv"]))
    if c.se_ratio.size:
        out.append(SE_CHECK.substitute(median=f"{np.median(c.se_ratio):.2f}", lo=f"{c.se_ratio.min():.2f}",
                                       hi=f"{c.se_ratio.max():.2f}", expected=f"{math.sqrt(14 / 15):.2f}"))
    return out


def spaghetti_note(chosen: dict) -> str:
    """Which run each of the study's named spaghetti figures shows (the one nearest to the named strength)."""
    parts = []
    for family, strength in STUDY_SPAGHETTI:
        name = spaghetti_file(family, strength)
        r = chosen.get(name)
        if r is None:
            parts.append(f"`{name}` is not written (no {family.replace('_', ' ')} run)")
            continue
        exact = float(r.strength) == strength
        parts.append(SPAGHETTI.substitute(file=name, label=r.label,
                                          strength=STRENGTH.get(family, family + " {:g}").format(float(r.strength)),
                                          nearest="" if exact else f", the run nearest to {strength:g}"))
    return "The study's per-method spaghetti figures: " + "; ".join(parts) + "."


def _dataset_section(out: pathlib.Path, cfg: dict, ds: str, res) -> str:
    st = cfg["settings"][ds]
    ddir = out / cfg["dataset_dirs"][ds]
    rows = [ROW.substitute(method=t["method"], n_seeds=t["n_seeds"],
                           **{k: fmt_ci(t[f"{k}_mean"], t[f"{k}_ci95"], t["n_seeds"], spec)
                              for k, spec in ROW_SPECS.items()}) for t in res.table]
    multi = len(cfg.get("seeds", [cfg["seed"]])) > 1
    checks = check_lines(res.checks) + [res.validation.recommendation]
    return DATASET.substitute(
        dataset=ds, train=st["train"], test=st["test"], epochs=st["epochs"], batch=st["batch"], lr=st["lr"],
        schedule=st["schedule"], model=st["model"], points=st["points"],
        caveat="**Caveat:** " + "; ".join(res.caveats) + ".\n\n" if res.caveats else "",
        rows="\n".join(rows), hypotheses="\n".join(f"- {h}" for h in hypothesis_lines(res.hypotheses)),
        validation_note=f" (runs of seed {res.validation_seed})" if multi else "",
        checks="\n".join(f"- {ln}" for ln in checks),
        summary_dir=(ddir / "00_summary").relative_to(out), validation_dir=(ddir / "validation_analysis").relative_to(out),
        spaghetti=spaghetti_note(res.validation.spaghetti))


def summary(out: pathlib.Path, cfg: dict, results: dict) -> str:
    """The text of ``summary.md`` for the experiment config ``cfg`` and the per-data-set results."""
    seeds = cfg.get("seeds", [cfg["seed"]])
    head = HEAD.substitute(preset=cfg["preset"], seeds=", ".join(map(str, seeds)), datasets=", ".join(cfg["datasets"]),
                           order=cfg["order"], directions=cfg["directions"],
                           protocol=PROTOCOL["shared" if cfg.get("direction_mode", "per-point") == "shared"
                                             else "per-point"])
    return head + "".join(_dataset_section(out, cfg, ds, results[ds]) for ds in cfg["datasets"])
