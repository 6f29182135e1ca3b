"""The spectrum study's ``summary.md``.

A template filled with the numbers of :mod:`.analysis` (and, with both curvatures, of :mod:`.comparison`).
"""
from __future__ import annotations

from string import Template

import numpy as np

from ...stats import fmt
from ..tables import markdown_table
from .comparison import OUTLIER_RTOL, compare
from .config import COLLAPSE_ACC, COMPARE_FIGURE, CURVATURE_LABEL, DATA_DIR, NUM_CLASSES, l2_label

__all__ = ["summary", "findings", "caveat"]

SUMMARY = Template("""\
# Weight-decay sweep vs $title (`lamda run spectrum --preset $preset`)

${caveat}Data: $data. Sigmoid MLP $layers; $n_l2 L2 values in [0, $l2_max]; Adam lr $lr, batch $batch, ≤ $max_epochs \
epochs, early stopping patience $patience; top-$k eigenpairs (which = $which, $method$lanczos) of the mean \
cross-entropy $curv on $samples training samples, float64, relative residual tolerance $tol.

Definitions: λ_max = the largest converged $primary eigenvalue (the `Lambda_Max` column of `Model-{ID}.csv` is \
the largest computed one, as in the study); collapsed = test accuracy < $collapse %; epoch cap = training ended at max_epochs \
without early stopping.

## Models$every

$models

## Findings (computed from the numbers)

$findings

Files under `$data_dir/`: `Model-{ID}.csv`, `gradients-{ID}-{L2}.csv`, $eig_files, \
`model_weights-{ID}-{L2}.pth`; at the top: `spectrum.npz`, `spectrum_vs_l2.png`, \
`lambda_max_vs_test_accuracy.png`$compare_file, `cells/*.json`.
""")
CAVEAT = {"smoke": Template("**Caveat: smoke preset** — $what: it checks that every file is written; the numbers "
                            "mean nothing.\n\n"),
          "quick": Template("**Caveat: quick preset** — $what (the study's grid reaches 0.09, but on a quick run every "
                            "model above L2 ≈ 0.03 collapsed to chance): trends are indicative only.\n\n")}
WHAT = Template("$n_l2 L2 value(s) in [0, $l2_max], $train training images, ≤ $max_epochs epochs, curvature on "
                "$samples samples at tolerance $tol, $n_ids run ID(s)")
TREND = Template("- λ_max $trend with L2 (Spearman ρ = $rho, p = $p, n = $n non-collapsed models); from $first at "
                 "L2 = 0 to $last at L2 = $l2_max.")
CONVERGENCE = Template("- $label: Lanczos convergence (relative residual ‖Hy − θy‖/max|θ| ≤ $tol, checked with "
                       "one extra product per pair): $models_ok of $models models fully converged; $pairs_bad of "
                       "$pairs pairs did not (largest residual $worst) and are left out of λ_max, the plots and the "
                       "outlier count (kept in the eigenvalue CSVs and `spectrum.npz`).")


def _tol(s: dict) -> float:
    return s["tol"] if s["tol"] is not None else 1e-8


def caveat(cfg: dict, n_l2: int) -> str:
    """The caveat paragraph of the smoke and quick presets ("" for full)."""
    s = cfg["settings"]
    if cfg["preset"] not in CAVEAT:
        return ""
    what = WHAT.substitute(n_l2=n_l2, l2_max=f"{s['l2_max']:g}", train=cfg["train_size"], max_epochs=s["max_epochs"],
                           samples=s["hessian_samples"] or cfg["train_size"], tol=f"{_tol(s):g}", n_ids=len(cfg["ids"]))
    return CAVEAT[cfg["preset"]].substitute(what=what)


def _trend_line(sp, trend) -> str:
    if trend.rho is None:
        return (f"- {sp.grid.size} L2 value(s), {trend.n} non-collapsed model(s): too few for a trend "
                f"(λ_max {', '.join(fmt(v, '.4g') for v in sp.lam_max.ravel())}).")
    word = ("falls" if trend.rho < 0 else "rises") if trend.p < 0.05 else "shows no significant monotone trend"
    return TREND.substitute(trend=word, rho=f"{trend.rho:+.3f}", p=f"{trend.p:.3g}", n=trend.n,
                            first=fmt(np.nanmean(sp.lam_max[:, 0]), ".4g"), last=fmt(np.nanmean(sp.lam_max[:, -1]), ".4g"),
                            l2_max=f"{sp.grid[-1]:g}")


def _flagged(sp, mask) -> str:
    """``"L2 = a, b …"``: the L2 values of up to ten flagged models."""
    return f"L2 = {', '.join(l2_label(v) for v in sp.l2[mask][:10])}{' …' if int(mask.sum()) > 10 else ''}"


def _flag_lines(sp, s: dict) -> list[str]:
    n_col, n_cap, total = int(sp.collapsed.sum()), int(sp.capped.sum()), sp.acc.size
    collapsed = (f"- Collapsed models (test accuracy < {COLLAPSE_ACC:g} %, chance = 10 %): {n_col} of {total}, "
                 "excluded from every correlation and trend"
                 + (f" ({_flagged(sp, sp.collapsed)}; mean test loss "
                    f"{np.mean(sp.get('Test_Loss')[sp.collapsed]):.4f} vs ln 10 = {np.log(10):.4f})." if n_col else "."))
    capped = (f"- Epoch cap: {n_cap} of {total} model(s) reached max_epochs = {s['max_epochs']} before early stopping "
              f"(patience {s['patience']})" + (f": {_flagged(sp, sp.capped)} — their training had not converged "
                                               "by the study's rule." if n_cap else "."))
    return [collapsed, capped]


def _curvature_lines(cfg: dict, sp) -> list[str]:
    """The outlier, convergence and sign findings of one curvature's spectra."""
    s, k, c, label = cfg["settings"], cfg["settings"]["k"], NUM_CLASSES, CURVATURE_LABEL[sp.kind]
    lines = [f"- {label}: outliers vs bulk: the largest ratio gap λ_i/λ_(i+1) among the converged positive top-{k} "
             f"lies after eigenvalue {sp.n_typ} (median over models; per model "
             f"{sorted(set(sp.n_out.ravel().tolist()))}); "
             f"{'this matches' if sp.n_typ == c - 1 else 'this differs from'} the C − 1 = {c - 1} outliers expected for {c} classes.",
             CONVERGENCE.substitute(label=label, tol=f"{_tol(s):g}",
                                    models_ok=sp.acc.size - int((~sp.conv.all(-1)).sum()), models=sp.acc.size,
                                    pairs_bad=int((~sp.conv).sum()), pairs=sp.conv.size, worst=f"{sp.res.max():.2e}")]
    neg = int((sp.eig_c < 0).sum())
    if neg:
        lines.append(f"- {label}: {neg} of the {int(np.isfinite(sp.eig_c).sum())} converged top-{k} ({cfg['which']}) "
                     "eigenvalues are negative.")
    return lines


def _pct(v: float) -> str:
    return fmt(100 * v, ".1f") + " %" if np.isfinite(v) else "n/a"


def comparison_lines(hess, ggn, k: int) -> list[str]:
    """The Hessian-vs-GGN findings (the figure's numbers).

    The top C − 1 and the rest rank by rank, the gap after C − 1 in each, and what they show.
    """
    cmp = compare(hess, ggn)
    c = cmp.c
    if cmp.n == 0:
        return [f"- Hessian vs GGN (`{COMPARE_FIGURE}`): no non-collapsed model to compare."]
    ranks = f"rank {c}" if k == c else f"ranks {c}–{k}"
    bulk = (f"; {ranks}: median {_pct(cmp.median('bulk_diff'))}" if k >= c else
            f"; k = {k} < C = {c}: no rank after the outliers")
    if cmp.outliers_shared:
        verdict = ("the Hessian's top C − 1 are the GGN's while the ranks after them depart further: the outliers are "
                   "a GGN effect in these data" if cmp.bulk_departs else
                   "the Hessian's top-k follows the GGN's throughout: no separation of outliers and bulk in these data")
    else:
        verdict = (f"the Hessian's top C − 1 are not within {OUTLIER_RTOL:.0%} of the GGN's: these data do not show "
                   "the outliers as a GGN effect (null result)")
    gaps = {"Hessian": int(np.median(cmp.n_out_hessian)), "GGN": int(np.median(cmp.n_out_ggn))}
    return [f"- Hessian vs GGN (`{COMPARE_FIGURE}`, {cmp.n} non-collapsed model(s), converged eigenvalues "
            f"in descending order, rank by rank, |λ_H − λ_G|/|λ_G|): top C − 1 = {c - 1}: median "
            f"{_pct(cmp.median('top_diff'))} (largest {_pct(cmp.median('top_max'))}, median over models){bulk} — "
            f"{verdict}.",
            f"- Gap after C − 1 = {c - 1}: λ_{c - 1}/λ_{c} = {fmt(cmp.median('gap_hessian'), '.3g')} (Hessian) vs "
            f"{fmt(cmp.median('gap_ggn'), '.3g')} (GGN), medians over models; the largest ratio gap lies after "
            f"eigenvalue {gaps['Hessian']} (Hessian) and {gaps['GGN']} (GGN) (medians) — "
            + ("both at C − 1." if gaps["Hessian"] == gaps["GGN"] == c - 1 else
               "at C − 1 in neither." if c - 1 not in (gaps["Hessian"], gaps["GGN"]) else
               f"at C − 1 only in the {'Hessian' if gaps['Hessian'] == c - 1 else 'GGN'}.")]


def findings(cfg: dict, sps: dict, corr, trend) -> list[str]:
    """The findings, computed from the spectra of every curvature (``sps``.

    Name → Spectra, the primary first), the correlation and the trend of the primary curvature.
    """
    s, k = cfg["settings"], cfg["settings"]["k"]
    sp = next(iter(sps.values()))
    lines = [_trend_line(sp, trend),
             f"- λ_max vs test accuracy over the non-collapsed models: {corr.text()}"
             + (" — significant at 5 %" if corr.ok and corr.corr.p < 0.05 else
                " — not significant (null result)" if corr.ok else "") + ".", *_flag_lines(sp, s)]
    for c in sps.values():
        lines += _curvature_lines(cfg, c)
    if len(sps) > 1:
        lines += comparison_lines(sps["hessian"], sps["ggn"], k)
    work = " and ".join(f"{int(c.products.sum())} {CURVATURE_LABEL[c.kind]}-vector products" for c in sps.values())
    lines.append(f"- Work done (counts, not times): {int(sp.get('Epochs', int).sum())} training epochs over "
                 f"{sp.acc.size} models; {work} (Lanczos + check) on {s['hessian_samples'] or cfg['train_size']} "
                 "samples each.")
    return lines


def _models_table(sp, k: int, step: int) -> str:
    body = []
    for ii, ident in enumerate(sp.ids):
        for j in range(0, len(sp.grid), step):
            r = sp.rows[ident][j]
            flags = ", ".join(f for f, on in (("collapsed", sp.collapsed[ii, j]), ("epoch cap", sp.capped[ii, j]),
                                             (f"{int((~sp.conv[ii, j]).sum())} unconv.", not sp.conv[ii, j].all()))
                              if on)
            body.append([ident, l2_label(r["L2_strength"]), r["Epochs"], fmt(r["Train_Loss"], ".4f"),
                         fmt(r["Test_Loss"], ".4f"), fmt(r["Test_Accuracy"], ".2f"), fmt(sp.lam_max[ii, j], ".4g"),
                         fmt(sorted(np.abs(sp.eig[ii, j]))[-min(k, 10)], ".4g"), flags or "—"])
    return markdown_table(["ID", "L2", "epochs", "train loss", "test loss", "test acc (%)", "λ_max",
                           f"|λ|_{min(k, 10)}", "flags"], body)


CURVATURE_TEXT = {("hessian",): "Hessian", ("ggn",): "generalised Gauss–Newton matrix (GGN, Jᵀ∇²ℓJ)",
                  ("hessian", "ggn"): "Hessian and of its generalised Gauss–Newton matrix (GGN, Jᵀ∇²ℓJ)"}


def _file_names(kinds, eigvec_format: str) -> str:
    vec = "npy` (float32 [P, k])" if eigvec_format == "npy" else "csv`"
    return ", ".join(f"`{CURVATURE_LABEL[c]}-eigenvalues-{{ID}}-{{L2}}.csv`, `{CURVATURE_LABEL[c]}-eigenvectors-"
                     f"{{ID}}-{{L2}}.{vec}" for c in kinds)


def summary(cfg: dict, sps: dict, corr, trend) -> str:
    """The text of ``summary.md`` (``sps``: curvature name → Spectra, the primary curvature first)."""
    s, k, kinds = cfg["settings"], cfg["settings"]["k"], tuple(sps)
    sp = sps[kinds[0]]
    step = max(1, len(sp.grid) // 20)
    data = f"{cfg['dataset']} ({cfg['train_size']} train / {cfg['test_size']} test)"
    if cfg.get("dataset_note"):
        data += f" — {cfg['dataset_note']}"
    return SUMMARY.substitute(
        title=" and ".join(CURVATURE_LABEL[c] for c in kinds) + (" spectra" if len(kinds) > 1 else " spectrum"),
        curv=CURVATURE_TEXT[kinds], primary=CURVATURE_LABEL[kinds[0]],
        preset=cfg["preset"], caveat=caveat(cfg, len(sp.grid)), data=data,
        layers="-".join(str(h) for h in [784, *s["hidden"], 10]), n_l2=len(sp.grid), l2_max=s["l2_max"], lr=s["lr"],
        batch=s["batch"], max_epochs=s["max_epochs"], patience=s["patience"], k=k, which=cfg["which"],
        method=cfg["method"], lanczos=f", ≤ {s['max_iter']} Lanczos steps" if s.get("max_iter") else "",
        samples=s["hessian_samples"] or cfg["train_size"], tol=f"{_tol(s):g}", collapse=f"{COLLAPSE_ACC:g}",
        every=f" (every {step}th L2 value)" if step > 1 else "", models=_models_table(sp, k, step),
        findings="\n".join(findings(cfg, sps, corr, trend)), data_dir=cfg.get("data_dir", DATA_DIR),
        eig_files=_file_names(kinds, s["eigvec_format"]),
        compare_file=f", `{COMPARE_FIGURE}`" if len(kinds) > 1 else "")
