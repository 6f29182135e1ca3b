"""The landscape study's ``summary.md``: a template filled with the tables and statistics of `analysis`."""
from __future__ import annotations

from string import Template

import numpy as np

from ...stats import fmt
from ..tables import markdown_table
from .config import COMPARED, RHO, TARGET_PARAMS

__all__ = ["summary", "model_table", "findings", "caveat"]

SUMMARY = Template("""\
# Architecture vs loss landscape (`lamda run landscape --preset $preset`)

${caveat}CIFAR-10 ($train_size train / $test_size test); $epochs epoch(s), Adam lr $lr, cosine, batch $batch, \
$augment; seeds $seeds. Hessian on $hessian_samples training samples (top $k + $k_neg most negative, Lanczos ≤ \
$max_iter steps, residual tolerance $tol); sharpness on $sharp_samples training samples; surfaces $res×$res \
(trained point on the centre node) on $surface_samples test samples.

Model sizes: $sizes.$shrunk

## Definitions

- λ_max: the largest converged Hessian eigenvalue; λ_min: the most negative converged eigenvalue among the computed \
ones (top $k + $k_neg most negative).
- Condition number estimate κ̂ = λ_max / |λ_min| over the computed (converged) eigenvalues. The Hessian is indefinite \
and its eigenvalues near 0 are not computed, so κ̂ is the ratio of the sharpest positive to the sharpest negative \
curvature, not ‖H‖·‖H⁻¹‖.
- # negative: the number of negative eigenvalues among the converged computed ones (at most $k_all; a lower bound \
on the Hessian's count).
- ρ-sharpness: L(θ + ρ g/‖g‖) − L(θ) with ρ = $rho on training data.
- Barrier (the study's): max_α L(θ(α)) − min(L(θ_a), L(θ_b)) on θ(α) = (1 − α) θ_a + α θ_b; the excess over the \
straight line, max_α [L(θ(α)) − ((1 − α) L(θ_a) + α L(θ_b))], is the second column.
- Batch-norm statistics: ${bn}the plain CNN has no batch norm. Connectivity losses/accuracies use the same test \
images as the model table; at α = 0 and 1 the ResNet's accuracy can differ from the table because the table uses \
the running statistics from training.

## Per architecture (mean ± 95 % CI over seeds)

$arch_table

## Models

$model_table

## Mode connectivity

$connectivity_table

## Findings (computed from the numbers)

$findings

Files: `results.csv`, `connectivity.csv`, `correlations.csv`, `landscape_data.npz`, `training_curves.png`, \
`hessian_spectrum.png`, `mode_connectivity.png`, `metrics_comparison.png`, `correlation_analysis.png`, \
`surface_contour.png`, `surface_3d_<arch>.png`, `summary_table.png`.
""")
CAVEAT = {"smoke": Template("**Caveat: smoke preset** — $what, shrunken models: it checks that every file is "
                            "written; the numbers below mean nothing about the study.\n\n"),
          "quick": Template("**Caveat: quick preset** — $what: the models are far from converged and n is tiny; read "
                            "the comparisons as indicative only.\n\n")}
WHAT = Template("$train_size training images, $epochs epoch(s), Hessian on $samples samples at tolerance $tol, "
                "$n_seeds seeds per architecture")
SHRUNK = (" (Shrunk for the smoke preset; quick and full train the study's sizes: 1,808,276 and 2,127,618.)")
PATH = Template("- linear path `$arch` seed $seed_a → $seed_b: barrier $barrier nats at α = $barrier_alpha (excess over "
                "the straight line $excess at α = $excess_alpha); accuracy falls to $min_acc at α = $min_acc_alpha "
                "(end points $acc_a / $acc_b).")
COMPARISON = Template("- $what: `$hi` $hi_ci > `$lo` $lo_ci$overlap.")
# the quantities the findings compare between two architectures, and how they are named
COMPARED_WORDS = (("test_acc", "test accuracy"), ("lambda_max", "λ_max"), ("condition_number", "κ̂"),
                  ("sharpness", "ρ-sharpness"), ("barrier", "barrier"))


def caveat(cfg: dict) -> str:
    """The caveat paragraph of the smoke and quick presets ("" for full)."""
    if cfg["preset"] not in CAVEAT:
        return ""
    s = cfg["settings"]
    what = WHAT.substitute(train_size=cfg["train_size"], epochs=s["epochs"], samples=s["hessian_samples"],
                           tol=f"{s['eig_tol']:g}", n_seeds=len(cfg["seeds"]))
    return CAVEAT[cfg["preset"]].substitute(what=what)


def model_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """``(header, body)`` of the per-model table (λ_max marked * where some Lanczos pairs did not converge)."""
    header = ["arch", "seed", "params", "test acc", "test loss", "λ_max", "λ_min", "κ̂", "# neg / conv.", "sharpness"]
    body = [[r["arch"], r["seed"], f"{r['n_params']:,}", fmt(r["test_acc"], ".4f"), fmt(r["test_loss"], ".4f"),
             fmt(r["lambda_max"], ".4g") + ("" if r["lanczos_converged"] else " *"), fmt(r["lambda_min"], ".3g"),
             fmt(r["condition_number"], ".3g"), f"{r['n_negative']} / {r['n_eigs_converged']}",
             fmt(r["sharpness"], ".4g")] for r in rows]
    return header, body


def _connectivity_table(conn: list[dict]) -> str:
    header = ["arch", "seeds", "barrier (nats)", "at α", "excess over line", "at α", "BN re-estimated", "min acc",
              "at α", "end-point accs"]
    body = [[c["arch"], f"{c['seed_a']}→{c['seed_b']}", fmt(c["barrier"], ".4f"), fmt(c["barrier_alpha"], ".2f"),
             fmt(c["excess"], ".4f"), fmt(c["excess_alpha"], ".2f"),
             f"yes ({c.get('n_bn', 0)} train images)" if c["bn_reestimated"] else "no (no BN)",
             fmt(c["min_acc"], ".4f"), fmt(c["min_acc_alpha"], ".2f"),
             f"{fmt(c['acc_a'], '.4f')} / {fmt(c['acc_b'], '.4f')}"] for c in conn]
    return markdown_table(header, body) if body else "(not computed)"


def _comparisons(archs: list[str], cis: dict) -> list[str]:
    """Each compared quantity: which architecture is higher, and whether the 95 % CIs separate them."""
    if len(archs) != 2:
        return []
    a, b = archs
    lines = []
    for k, what in COMPARED_WORDS:
        ma, mb = cis[(a, k)], cis[(b, k)]
        if not (np.isfinite(ma.mean) and np.isfinite(mb.mean)):
            lines.append(f"- {what}: n/a for one architecture.")
            continue
        hi, lo = (a, b) if ma.mean > mb.mean else (b, a)
        if np.isfinite(ma.half) and np.isfinite(mb.half):
            sep = abs(ma.mean - mb.mean) > ma.half + mb.half
            overlap = (" — the 95 % CIs do not overlap" if sep else " — the 95 % CIs overlap: not a clear difference "
                       "at this n")
        else:
            overlap = " — n < 2 for a CI: no statement of significance"
        lines.append(COMPARISON.substitute(what=what, hi=hi, hi_ci=cis[(hi, k)].text(".4g"), lo=lo,
                                           lo_ci=cis[(lo, k)].text(".4g"), overlap=overlap))
    return lines


def findings(archs: list[str], rows: list[dict], conn: list[dict], corrs: dict, cis: dict, tol: float) -> list[str]:
    """The findings: architecture comparisons, every linear path, the correlations and the Lanczos convergence."""
    lines = _comparisons(archs, cis)
    lines += [PATH.substitute(arch=c["arch"], seed_a=c["seed_a"], seed_b=c["seed_b"], barrier=f"{c['barrier']:.4f}",
                              barrier_alpha=f"{c['barrier_alpha']:.2f}", excess=f"{c['excess']:.4f}",
                              excess_alpha=f"{c['excess_alpha']:.2f}", min_acc=f"{c['min_acc']:.4f}",
                              min_acc_alpha=f"{c['min_acc_alpha']:.2f}", acc_a=f"{c['acc_a']:.4f}",
                              acc_b=f"{c['acc_b']:.4f}") for c in conn]
    for k, c in corrs.items():
        sig = "" if not c.ok else (" — significant at 5 %" if c.corr.p < 0.05 else " — not significant (null result)")
        lines.append(f"- {k.replace('_', ' ')}: {c.text()}{sig}.")
    unconv = [(f"{r['arch']}/seed {r['seed']}", r["n_eigs_computed"] - r["n_eigs_converged"]) for r in rows
              if not r["lanczos_converged"]]
    if unconv:
        lines.append(f"- Lanczos did NOT converge to the residual tolerance {tol:g} for "
                     + ", ".join(f"{m} ({n} pair(s))" for m, n in unconv)
                     + ": those Ritz values are left out of λ_max, λ_min, κ̂, the negative count and the plots "
                       "(kept with their residuals in `hessian.npz`); λ_max marked * in the table.")
    else:
        lines.append(f"- Lanczos converged for every computed pair (residual ≤ {tol:g}·max|θ|, checked with one extra "
                     "Hessian-vector product per pair).")
    return lines


def _sizes(rows: list[dict], archs: list[str]) -> str:
    """Each architecture's parameter count against the study's size."""
    sizes = {a: sorted({r["n_params"] for r in rows if r["arch"] == a}) for a in archs}
    parts = []
    for a in archs:
        rel = sizes[a][0] / TARGET_PARAMS[a] - 1
        parts.append(f"`{a}` {', '.join(f'{n:,}' for n in sizes[a])} parameters ({rel:+.1%} vs the study's "
                     f"{TARGET_PARAMS[a] / 1e6:.1f} M" + (", within 10 %" if abs(rel) <= 0.10 else ", NOT within 10 %")
                     + ")")
    return "; ".join(parts)


def summary(cfg: dict, rows: list[dict], conn: list[dict], corrs: dict, cis: dict) -> str:
    """The text of ``summary.md``."""
    s, archs, seeds = cfg["settings"], cfg["archs"], cfg["seeds"]
    arch_table = markdown_table(["arch", "n", "test acc", "test loss", "λ_max", "λ_min", "κ̂", "# negative",
                                 "sharpness", "barrier"],
                                [[a, len(seeds)] + [cis[(a, k)].text(".4g", short=True) for k in COMPARED]
                                 for a in archs])
    return SUMMARY.substitute(
        preset=cfg["preset"], caveat=caveat(cfg), train_size=cfg["train_size"], test_size=cfg["test_size"],
        epochs=s["epochs"], lr=s["lr"], batch=s["batch"],
        augment="crop + flip augmentation" if s["augment"] else "no augmentation", seeds=seeds,
        hessian_samples=s["hessian_samples"], k=s["k"], k_neg=s["k_neg"], max_iter=s["eig_max_iter"] or "default",
        tol=f"{s['eig_tol']:g}", sharp_samples=s["sharp_samples"], res=s["surface_res"],
        surface_samples=s["surface_samples"], sizes=_sizes(rows, archs),
        shrunk=SHRUNK if cfg["preset"] == "smoke" else "", k_all=s["k"] + s["k_neg"], rho=RHO,
        bn="re-estimated at every α on training images (ResNet); " if any(c["bn_reestimated"] for c in conn) else "",
        arch_table=arch_table, model_table=markdown_table(*model_table(rows)),
        connectivity_table=_connectivity_table(conn),
        findings="\n".join(findings(archs, rows, conn, corrs, cis, s["eig_tol"])))
