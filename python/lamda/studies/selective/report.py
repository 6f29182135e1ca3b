"""The selective study's ``summary.md``: a template filled with the tables of `analysis`."""
from __future__ import annotations

from string import Template

from ...stats import fmt, fmt_ci
from ..tables import markdown_table
from .config import MEASURE_K, MEASURE_ORDER, MIN_POINTS, PAIR_NAMES, PENALTY_K, PENALTY_ORDER, PROB_WINDOW

__all__ = ["summary", "statements", "verdict", "caveat"]

SUMMARY = Template("""\
# Class-selective λ control (`lamda run selective --preset $preset`)

${caveat}Data: $data; label noise $noise; seeds $seeds (n = $n_seeds); $epochs epoch(s), Adam lr $lr, batch $batch. \
Penalty: scale $scale · mean |d_n| over orders n ≤ $penalty_order and K = $penalty_k per-point input directions, on \
the condition's samples of each batch (≤ $penalty_points per batch).

Definitions (the study's). Boundary points of a pair: $rule; a pair with fewer than $min_points is reported as \
missing (n/a). λ: orders 1–$measure_order, K = $measure_k **per-point** directions — every boundary point draws its \
own K unit Gaussian input directions (seeded); for each k, λ_k is the least-squares slope over n of the mean over \
points of ln|d_n| (exact zeros masked), and the pair's λ is the mean over k. More negative λ = faster-decaying \
derivatives (flatter). Selectivity index of a seed: Δλ(target pair) − mean Δλ(other two pairs), Δ against the same \
seed's baseline; negative = the targeted pair was flattened more. ± = 95 % Student-t CI over seeds; '± n/a' when \
n = 1 (no CI from one seed).

## Per condition (mean ± 95 % CI over seeds)

$condition_table

## Selectivity index (mean ± 95 % CI over seeds)

$selectivity_table

## Findings (computed from the tables)

$findings

Files: `results.csv` (per run), `summary_table.csv`, `selectivity.csv`, `selectivity_table.csv`, \
`selective_data.npz`, `lambda_per_pair.png`, `selectivity_index.png`, `penalty_share.png`, \
`runs/<condition>/seed_<s>/` (`boundary_lambda.npz`: indices, per-point derivatives [P, K, N], λ_k).
""")
CAVEAT = Template("> **Caveat: `$preset` preset** — $train_size training images, $epochs epoch(s), $n_seeds seed(s). It "
                  "checks that the pipeline runs and writes every file; its numbers are not evidence for or against "
                  "the study's claim (run `--preset full` for that).\n\n")
RULES = {"label": Template("true label in the pair and top-class probability in [$lo, $hi]; at most $max of them "
                           "sampled at random (seeded)"),
         "top2": Template("the two most probable classes are the pair (labels not used) and top-class probability in "
                          "[$lo, $hi]; the $max smallest margins |p_a − p_b| (not the study's rule)")}
ACCURACY = Template("- `$condition`: test accuracy $acc vs baseline $base_acc (Δ = $delta, n = $n seed(s)); the λ term "
                    "was $share % of the training loss (mean over epochs).")
INDEX = Template("- `$condition` ($role: $target): selectivity index $index (n = $n; Δλ target $d_target, Δλ others "
                 "$d_others) — $verdict.")


def caveat(cfg: dict) -> str:
    """The caveat paragraph of the smoke and quick presets ("" for full)."""
    if cfg["preset"] == "full":
        return ""
    return CAVEAT.substitute(preset=cfg["preset"], train_size=cfg["train_size"], epochs=cfg["settings"]["epochs"],
                             n_seeds=len(cfg["seeds"]))


def verdict(m: float, h: float, n: int) -> str:
    """What a mean ± 95 % CI of the selectivity index says (negative = the targeted pair flattened more)."""
    if n == 0:
        return "missing (too few boundary points for some pair): no conclusion"
    if n == 1:
        return ("one seed, no CI: the sign alone (" + ("negative" if m < 0 else "not negative")
                + ") is no evidence either way")
    if m + h < 0:
        return "the 95 % CI lies below 0: the targeted pair's λ fell more than the other pairs' (selective effect)"
    if m - h > 0:
        return ("the 95 % CI lies above 0: the targeted pair's λ fell less (or rose more) than the other pairs' "
                "— the opposite of the intended effect")
    return "the 95 % CI includes 0: no selective effect shown (null result at this n)"


def _ci(r: dict, col: str, spec: str, n_key: str | None = None, scale: float = 1.0) -> str:
    return fmt_ci(scale * r[f"{col}_mean"], scale * r[f"{col}_ci95"], r[n_key or f"{col}_n"], spec)


def statements(table: list[dict], st: list[dict]) -> list[str]:
    """The findings, computed from the per-condition and selectivity tables."""
    lines = []
    base = next(r for r in table if r["condition"] == "baseline")
    for r in table:
        if r["condition"] == "baseline":
            continue
        lines.append(ACCURACY.substitute(condition=r["condition"], acc=_ci(r, "test_acc", ".4f"),
                                         base_acc=_ci(base, "test_acc", ".4f"),
                                         delta=f"{r['test_acc_mean'] - base['test_acc_mean']:+.4f}", n=r["n"],
                                         share=_ci(r, "penalty_share_mean", ".2f", scale=100)))
    for r in st:
        m, h, n = r["selectivity_index_mean"], r["selectivity_index_ci95"], r["selectivity_index_n"]
        control = r["condition"] == "global"
        lines.append(INDEX.substitute(
            condition=r["condition"], role="control, no targeted pair" if control else "targeted pair",
            target=r["target_pair"], index=fmt_ci(m, h, n, "+.3f"), n=n,
            d_target=_ci(r, "delta_target", "+.3f", "selectivity_index_n"),
            d_others=_ci(r, "delta_others", "+.3f", "selectivity_index_n"),
            verdict="the size a non-selective penalty produces" if control else verdict(m, h, n)))
    miss = [f"{r['condition']}/{p} ({r['n'] - r[f'lambda_{p}_n']} of {r['n']})" for r in table for p in PAIR_NAMES
            if r[f"lambda_{p}_n"] < r["n"]]
    if miss:
        lines.append(f"- λ missing (< {MIN_POINTS} boundary points) in some seeds for: {', '.join(miss)}.")
    else:
        lines.append(f"- λ measured for every condition, pair and seed (≥ {MIN_POINTS} boundary points each).")
    return lines


def _condition_table(table: list[dict]) -> str:
    header = ["condition", "n", "test acc", *[f"λ {p}" for p in PAIR_NAMES], *[f"points {p}" for p in PAIR_NAMES],
              "penalty share (%)"]
    body = [[r["condition"], r["n"], _ci(r, "test_acc", ".4f"), *[_ci(r, f"lambda_{p}", ".3f") for p in PAIR_NAMES],
             *[fmt(r[f"n_boundary_{p}_mean"], ".0f") for p in PAIR_NAMES],
             _ci(r, "penalty_share_mean", ".2f", scale=100) if r["penalty_share_mean_n"] else "—"] for r in table]
    return markdown_table(header, body)


def _selectivity_table(st: list[dict]) -> str:
    body = [[r["condition"], r["target_pair"], r["selectivity_index_n"], _ci(r, "delta_target", "+.3f"),
             _ci(r, "delta_others", "+.3f"), _ci(r, "selectivity_index", "+.3f")] for r in st]
    return markdown_table(["condition", "target", "n", "Δλ target", "Δλ others", "index"], body)


def summary(cfg: dict, table: list[dict], st: list[dict]) -> str:
    """The text of ``summary.md``."""
    s = cfg["settings"]
    data = f"{cfg['dataset']} ({cfg['train_size']} train / {cfg['test_size']} test)"
    if cfg.get("dataset_note"):
        data += f" — {cfg['dataset_note']}"
    rule = RULES[s.get("boundary_rule", "top2")].substitute(lo=PROB_WINDOW[0], hi=PROB_WINDOW[1],
                                                             max=s["max_boundary"])
    return SUMMARY.substitute(
        preset=cfg["preset"], caveat=caveat(cfg), data=data, noise=f"{cfg['label_noise']:.0%}", seeds=cfg["seeds"],
        n_seeds=len(cfg["seeds"]), epochs=s["epochs"], lr=s["lr"], batch=s["batch"], scale=fmt(cfg["scale"], "g"),
        penalty_order=PENALTY_ORDER, penalty_k=PENALTY_K, penalty_points=s["penalty_points"] or "all", rule=rule,
        min_points=MIN_POINTS, measure_order=MEASURE_ORDER, measure_k=MEASURE_K,
        condition_table=_condition_table(table), selectivity_table=_selectivity_table(st),
        findings="\n".join(statements(table, st)))
