"""``lamda run landscape``: architecture vs loss landscape, plain CNN vs ResNet on CIFAR-10 (issue 6, experiment 2).

Two architectures of the study's sizes — ``cnn`` (:class:`lamda.models.CifarCNN`, 3 conv 64→128→256 + 2 FC,
≈ 1.8 M parameters) and ``resnet`` (:class:`lamda.models.CifarResNet`, 6 residual blocks with batch norm,
≈ 2.1 M; sizes in :data:`lamda.models.STUDY_SIZES`) — are trained on CIFAR-10 with several seeds (Adam, cosine
schedule, crop + flip augmentation; full preset 15 epochs). For every trained model (eval mode):

- the top-k Hessian eigenvalues (``which="LA"``, k ≥ 15) and the ``k_neg`` most negative ones (``which="SA"``)
  of the mean cross-entropy over a fixed training subset (HVP + Lanczos), each pair checked by its own
  residual ``‖Hy − θy‖ / max|θ|`` (:func:`lamda.landscape.eigcheck.checked_eigs`); unconverged pairs are kept in
  the files but left out of every eigenvalue statistic and plot;
- the condition-number estimate κ̂ = λ_max / |λ_min| over the computed (converged) eigenvalues, and the number
  of negative eigenvalues among them;
- ρ-sharpness with ρ = 0.05 (adversarial, and random for reference; ``lamda.landscape.sharpness``).

Per architecture: linear mode connectivity for every pair of seeds on the run's test set (the data of the
model table), with the study's barrier ``max_α L(α) − min(L(0), L(1))`` and the excess over the straight line;
batch-norm statistics re-estimated at every α on training data (ResNet; the plain CNN has none). The
filter-normalised 2-D loss surface around the first seed's model, on an odd grid (the trained point is the
centre node), plotted for both architectures side by side on one colour scale. Across all trained models:
correlations of sharpness, λ_max and κ̂ with test accuracy (Pearson r, p, bootstrap CI, n).

Output tree under ``--out``::

    config.json experiment_config.json summary.md summary_table.png
    results.csv          one row per model (RESULT_COLUMNS)
    connectivity.csv     one row per seed pair (CONNECTIVITY_COLUMNS)
    correlations.csv     quantity, pearson_r, p_value, ci_low, ci_high, n, note
    landscape_data.npz   eigenvalues (+ residuals, converged flags) per model, connectivity paths
    training_curves.png hessian_spectrum.png mode_connectivity.png metrics_comparison.png
    correlation_analysis.png surface_contour.png surface_3d_<arch>.png
    runs/<arch>/seed_<s>/ training_metrics.csv config.json final_model.pt analysis.json hessian.npz
    pairs/connectivity_<arch>_<a>-<b>.json  pairs/surface_<arch>.npz
"""
from __future__ import annotations

import copy
import itertools
import pathlib
import time

import numpy as np
import torch

from ... import result_files as lio
from ... import plots
from ...study_stats import mean_ci, pearson_ci
from ...data import load_dataset
from ...landscape import (
    SurfaceResult,
    loss_surface,
    mode_connectivity,
    plot_contour_panels,
    plot_surface_3d,
    sharpness,
)
from ...landscape.eigcheck import checked_eigs
from ...models import STUDY_SIZES, build_model
from ...regularizers import Augmentation, RegularizerSet
from ...trainer import TrainConfig, Trainer, resolve_device, run_is_complete, train_run
from .. import Experiment, register
from ..argtypes import int_at_least
from ..support import fmt, markdown_table, open_results_folder, parse_seeds
from ..runner import Cell, cell_is_complete, require_complete, run_grid

__all__ = ["PRESETS", "ARCHS", "RESULT_COLUMNS", "CONNECTIVITY_COLUMNS", "run", "analyze", "condition_number",
           "model_cells", "pair_cells"]

NAME = "landscape"
ARCHS = {"cnn": "cifar_cnn", "resnet": "cifar_resnet"}
RHO = 0.05
RESULT_COLUMNS = ["arch", "seed", "test_acc", "train_acc", "test_loss", "train_loss", "lambda_max", "lambda_min",
                  "condition_number", "n_negative", "n_eigs_converged", "n_eigs_computed", "lanczos_converged",
                  "sharpness", "sharpness_random", "n_params", "hessian_hvps", "train_time_s", "hessian_time_s"]
CONNECTIVITY_COLUMNS = ["arch", "seed_a", "seed_b", "barrier", "barrier_alpha", "excess", "excess_alpha",
                        "bn_reestimated", "min_acc", "min_acc_alpha", "acc_a", "acc_b", "n_eval"]
_STUDY = {"cnn": STUDY_SIZES["cifar_cnn"], "resnet": STUDY_SIZES["cifar_resnet"]}

PRESETS = {
    "full": dict(train=None, test=None, epochs=15, batch=128, lr=1e-3, seeds=3, k=20, k_neg=5, hessian_samples=2048,
                 eig_tol=1e-3, eig_max_iter=None, sharp_samples=2048, surface_res=31, surface_span=1.0,
                 surface_samples=2048, conn_steps=21, augment=True, model_kwargs=_STUDY),
    "quick": dict(train=2000, test=500, epochs=3, batch=128, lr=1e-3, seeds=2, k=15, k_neg=3, hessian_samples=64,
                  eig_tol=1e-2, eig_max_iter=40, sharp_samples=500, surface_res=13, surface_span=1.0,
                  surface_samples=128, conn_steps=11, augment=True, model_kwargs=_STUDY),
    "smoke": dict(train=256, test=128, epochs=1, batch=64, lr=1e-3, seeds=2, k=15, k_neg=2, hessian_samples=16,
                  eig_tol=1e-1, eig_max_iter=20, sharp_samples=64, surface_res=5, surface_span=1.0,
                  surface_samples=64, conn_steps=5, augment=True,
                  model_kwargs={"cnn": {"width": 16, "fc_width": 64}, "resnet": {"widths": (8, 16, 32)}}),
}


def condition_number(lambda_max: float, lambda_min: float) -> float:
    """κ̂ = λ_max / |λ_min| over the computed eigenvalues (NaN when either is missing or λ_min = 0)."""
    if not (np.isfinite(lambda_max) and np.isfinite(lambda_min)) or lambda_min == 0:
        return float("nan")
    return float(lambda_max / abs(lambda_min))


def _batched(x, y, n, bs=256):
    if n is not None:
        x, y = x[:n], y[:n]
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)]


def _build(arch: str, s: dict) -> torch.nn.Module:
    """The architecture with the preset's size."""
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in s.get("model_kwargs", {}).get(arch, {}).items()}
    return build_model(ARCHS[arch], in_channels=3, image_size=32, num_classes=10, **kw)


def _load_model(arch: str, run_dir: pathlib.Path, dev, s: dict) -> torch.nn.Module:
    model = _build(arch, s)
    model.load_state_dict(lio.load_checkpoint(run_dir / "final_model.pt")["model"])
    return model.to(dev).eval()


def _train(arch: str, seed: int, data, s: dict, args, run_dir: pathlib.Path) -> None:
    cfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch"], lr=s["lr"], optimizer="adam", schedule="cosine",
                      seed=seed, device=args.device, progress=not args.no_progress)
    regs = lambda: RegularizerSet([Augmentation.for_dataset("cifar10")] if s["augment"] else [])

    def build():
        torch.manual_seed(seed)
        model = _build(arch, s)
        return Trainer(model, copy.copy(data), regs(), cfg)

    train_run(build, run_dir, config={"experiment": NAME, "arch": arch, "model": ARCHS[arch], "seed": seed,
                                      "model_kwargs": s.get("model_kwargs", {}).get(arch, {}),
                                      "train": cfg.to_dict(), "regularizers": regs().describe()},
              desc=f"{arch}/seed_{seed}")


def _analyse_model(arch: str, seed: int, data, s: dict, dev, run_dir: pathlib.Path) -> None:
    """Hessian extremes (with residual checks) and sharpness of one trained model → ``hessian.npz`` +
    ``analysis.json`` (written last: it marks the model as analysed)."""
    model = _load_model(arch, run_dir, dev, s)
    hdata = _batched(data.x_train, data.y_train, s["hessian_samples"])
    gen = torch.Generator().manual_seed(seed * 31 + 1)
    t0 = time.perf_counter()
    top = checked_eigs(model, "cross_entropy", hdata, k=s["k"], which="LA", tol=s["eig_tol"],
                       max_iter=s["eig_max_iter"], generator=gen)
    neg = checked_eigs(model, "cross_entropy", hdata, k=s["k_neg"], which="SA", tol=s["eig_tol"],
                       max_iter=s["eig_max_iter"], generator=gen)
    h_time = time.perf_counter() - t0
    sdata = _batched(data.x_train, data.y_train, s["sharp_samples"])
    sh = sharpness(model, "cross_entropy", sdata, rho=RHO, kind="adversarial")
    sh_r = sharpness(model, "cross_entropy", sdata, rho=RHO, kind="random", n_random=5,
                     generator=torch.Generator().manual_seed(seed))
    lio.write_npz(run_dir / "hessian.npz", top_eigenvalues=top.values, top_rel_residual=top.rel_residual,
                  top_converged=top.converged, negative_eigenvalues=neg.values,
                  negative_rel_residual=neg.rel_residual, negative_converged=neg.converged)
    lio.write_json(run_dir / "analysis.json", {
        "top_eigenvalues": top.values.tolist(), "top_rel_residual": top.rel_residual.tolist(),
        "top_converged": top.converged.tolist(), "negative_eigenvalues": neg.values.tolist(),
        "negative_rel_residual": neg.rel_residual.tolist(), "negative_converged": neg.converged.tolist(),
        "sharpness": sh, "sharpness_random": sh_r, "rho": RHO, "hessian_samples": s["hessian_samples"],
        "hessian_time_s": h_time, "hessian_hvps": top.hvps + neg.hvps, "eig_tol": s["eig_tol"],
        "eig_notes": top.notes + neg.notes, "n_params": sum(p.numel() for p in model.parameters())})


def _pairs(seeds: list[int]) -> list[tuple[int, int]]:
    return list(itertools.combinations(seeds, 2))


def model_cells(archs: list[str], seeds: list[int]) -> list[Cell]:
    """Stage 1: one cell per trained model (training + Hessian + sharpness), output ``runs/<arch>/seed_<s>``."""
    return [Cell(f"{a}/seed_{sd}", {"kind": "model", "arch": a, "seed": int(sd)}, (f"runs/{a}/seed_{sd}",))
            for a in archs for sd in seeds]


def pair_cells(archs: list[str], seeds: list[int]) -> list[Cell]:
    """Stage 2 (needs every model of its architecture): connectivity of each seed pair and the surface."""
    cells = []
    for a in archs:
        for sa, sb in _pairs(seeds):
            cells.append(Cell(f"pairs/{a}/connectivity_{sa}-{sb}", {"kind": "connectivity", "arch": a,
                                                                     "seed_a": int(sa), "seed_b": int(sb)},
                              (f"pairs/connectivity_{a}_{sa}-{sb}.json",)))
        cells.append(Cell(f"pairs/{a}/surface", {"kind": "surface", "arch": a, "seed": int(seeds[0])},
                          (f"pairs/surface_{a}.npz",)))
    return cells


def _connectivity(out: pathlib.Path, arch: str, sa: int, sb: int, data, s: dict, dev) -> None:
    """Linear path between two seeds on the run's test set (the model table's data) → its JSON."""
    ma = _load_model(arch, out / "runs" / arch / f"seed_{sa}", dev, s)
    mb = _load_model(arch, out / "runs" / arch / f"seed_{sb}", dev, s)
    cdata = _batched(data.x_test, data.y_test, None)
    bn = _batched(data.x_train, data.y_train, s["hessian_samples"] * 4 if s["hessian_samples"] else None)
    res = mode_connectivity(ma, mb, cdata, steps=s["conn_steps"], bn_data=bn)
    i = int(np.argmin(res.accuracies))
    lio.write_json(out / "pairs" / f"connectivity_{arch}_{sa}-{sb}.json", {
        **res.as_dict(), "arch": arch, "seed_a": sa, "seed_b": sb, "min_acc": float(res.accuracies[i]),
        "min_acc_alpha": float(res.alphas[i]), "acc_a": float(res.accuracies[0]), "acc_b": float(res.accuracies[-1]),
        "n_eval": int(data.x_test.shape[0]), "n_bn": int(sum(x.shape[0] for x, _ in bn)) if res.bn_reestimated else 0})


def _surface(out: pathlib.Path, arch: str, seed: int, data, s: dict, dev) -> None:
    m = _load_model(arch, out / "runs" / arch / f"seed_{seed}", dev, s)
    sd = _batched(data.x_test, data.y_test, s["surface_samples"])
    res = loss_surface(m, sd, directions=2, span=s["surface_span"], resolution=s["surface_res"],
                       generator=torch.Generator().manual_seed(seed + 123))
    lio.write_npz(out / "pairs" / f"surface_{arch}.npz", alphas=res.alphas, betas=res.betas, losses=res.losses,
                  accuracies=res.accuracies)


def run(args) -> int:
    out = pathlib.Path(args.out)
    s = dict(PRESETS[args.preset])
    for key in ("epochs", "k"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    seeds = parse_seeds(args.seeds, args.seed, s["seeds"])
    if len(seeds) < 2:
        raise ValueError("landscape needs at least two seeds per architecture (mode connectivity)")
    archs = list(ARCHS) if not args.archs else [a.strip() for a in args.archs.split(",")]
    bad = sorted(set(archs) - set(ARCHS))
    if bad:
        raise ValueError(f"--archs: unknown {bad}; choose from {', '.join(ARCHS)}")
    dev = resolve_device(args.device)
    data = load_dataset("cifar10", root=args.data_root, train_size=s["train"], test_size=s["test"], seed=args.seed,
                        download=args.download)
    config = {"experiment": NAME, "preset": args.preset, "seed": args.seed, "seeds": seeds, "archs": archs,
              "data_root": args.data_root, "device": args.device, "settings": s, "rho": RHO,
              "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0])}
    open_results_folder(out, config, ("experiment", "preset", "seed", "seeds", "archs", "settings"))
    models, pairs = model_cells(archs, seeds), pair_cells(archs, seeds)

    def work(cell: Cell) -> None:
        p = cell.params
        if p["kind"] == "model":
            rd = out / "runs" / p["arch"] / f"seed_{p['seed']}"
            if not run_is_complete(rd):
                _train(p["arch"], p["seed"], data, s, args, rd)
            _analyse_model(p["arch"], p["seed"], data, s, dev, rd)
        elif p["kind"] == "connectivity":
            _connectivity(out, p["arch"], p["seed_a"], p["seed_b"], data, s, dev)
        else:
            _surface(out, p["arch"], p["seed"], data, s, dev)

    rc = run_grid(NAME, out, models, work, None, shard=args.shard)
    if rc or not all(cell_is_complete(out, c) for c in models):
        print(f"[{NAME}] models of other shards are not finished; rerun (any shard) when they are to compute the "
              "pair analyses and the summary", flush=True)
        return rc
    # stage 2 over the whole grid (the models are complete and skipped silently): every pair cell, dealt over
    # the ranks; then the analysis
    return run_grid(NAME, out, models + pairs, work, analyze, progress=False)


# ------------------------------------------------------------------------------------------ analysis
DPI = 300
COLORS = {"cnn": "tab:blue", "resnet": "tab:orange"}
TARGET_PARAMS = {"cnn": 1.8e6, "resnet": 2.1e6}
def _caveat(cfg: dict) -> str | None:
    """The caveat line of the smoke and quick presets (computed from the run's settings)."""
    s = cfg["settings"]
    what = (f"{cfg['train_size']} training images, {s['epochs']} epoch(s), Hessian on {s['hessian_samples']} samples "
            f"at tolerance {s['eig_tol']:g}, {len(cfg['seeds'])} seeds per architecture")
    if cfg["preset"] == "smoke":
        return (f"**Caveat: smoke preset** — {what}, shrunken models: it checks that every file is written; the "
                "numbers below mean nothing about the study.")
    if cfg["preset"] == "quick":
        return (f"**Caveat: quick preset** — {what}: the models are far from converged and n is tiny; read the "
                "comparisons as indicative only.")
    return None


def _table_image(path, header, body, title):
    fig, axes = plots.new_figure(1, 1, (1.05 * len(header), 0.42 * (len(body) + 2)))
    ax = axes[0, 0]
    ax.axis("off")
    tab = ax.table(cellText=[[str(c) for c in r] for r in body], colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.scale(1.0, 1.3)
    ax.set_title(title, fontsize=9)
    plots.save(fig, path, dpi=DPI)


def _model_row(a: str, sd: int, h: list[dict], an: dict) -> dict:
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


def _scatter(ax, rows, key, xlabel, corr):
    """Test accuracy against ``key``, one marker per model, no fit line (n is small)."""
    for a in COLORS:
        sel = [r for r in rows if r["arch"] == a and np.isfinite(r[key])]
        if sel:
            ax.scatter([r[key] for r in sel], [r["test_acc"] for r in sel], s=34, color=COLORS[a], edgecolor="k",
                       linewidth=0.5, alpha=0.85, label=f"{a} (n = {len(sel)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (fraction)")
    ax.set_title(corr.text().replace(", 95 %", "\n95 %"), fontsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")


def analyze(out) -> int:
    out = pathlib.Path(out)
    cfg = lio.read_json(out / "experiment_config.json")
    archs, seeds, s = cfg["archs"], cfg["seeds"], cfg["settings"]
    require_complete(out, model_cells(archs, seeds) + pair_cells(archs, seeds))
    rows, hist, an_all = [], {}, {}
    for a in archs:
        for sd in seeds:
            rd = out / "runs" / a / f"seed_{sd}"
            h = lio.read_csv(rd / "training_metrics.csv")
            an = lio.read_json(rd / "analysis.json")
            hist[(a, sd)], an_all[(a, sd)] = h, an
            rows.append(_model_row(a, sd, h, an))
    lio.write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    conn = []
    for a in archs:
        for sa, sb in _pairs(seeds):
            conn.append(lio.read_json(out / "pairs" / f"connectivity_{a}_{sa}-{sb}.json"))
    lio.write_csv(out / "connectivity.csv", [{k: int(c[k]) if k == "bn_reestimated" else c[k]
                                              for k in CONNECTIVITY_COLUMNS} for c in conn], CONNECTIVITY_COLUMNS)
    acc = [r["test_acc"] for r in rows]
    corrs = {f"{q}_vs_test_acc": pearson_ci([r[q] for r in rows], acc, seed=0)
             for q in ("sharpness", "lambda_max", "condition_number")}
    lio.write_csv(out / "correlations.csv", [{"quantity": k, "pearson_r": c.corr.r, "p_value": c.corr.p,
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
    lio.write_npz(out / "landscape_data.npz", **npz)

    # ---- training curves
    fig, axes = plots.new_figure(2, 1, (5.0, 3.6))
    for (a, sd), h in hist.items():
        ep = [r["epoch"] for r in h]
        ls = ["-", "--", ":", "-."][seeds.index(sd) % 4]
        axes[0, 0].plot(ep, [r["train_loss"] for r in h], ls, marker="o", ms=3, color=COLORS[a],
                        label=f"{a} s{sd} train")
        axes[0, 0].plot(ep, [r["test_loss"] for r in h], ls, marker="s", ms=3, color=COLORS[a], alpha=0.45,
                        label=f"{a} s{sd} test")
        axes[0, 1].plot(ep, [r["test_acc"] for r in h], ls, marker="o", ms=3, color=COLORS[a], label=f"{a} s{sd}")
    axes[0, 0].set_ylabel("cross-entropy loss (nats)")
    axes[0, 1].set_ylabel("test accuracy (fraction)")
    for ax in axes.ravel():
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    plots.save(fig, out / "training_curves.png", dpi=DPI)

    # ---- Hessian extremes: converged eigenvalues only
    fig, axes = plots.new_figure(1, 1, (6.2, 4.0))
    ax = axes[0, 0]
    n_left_out = 0
    for (a, sd), an in an_all.items():
        top, tc = np.asarray(an["top_eigenvalues"], float), np.asarray(an["top_converged"], bool)
        neg, nc = np.asarray(an["negative_eigenvalues"], float), np.asarray(an["negative_converged"], bool)
        n_left_out += int((~tc).sum() + (~nc).sum())
        r_top = np.arange(1, top.size + 1)
        r_neg = np.arange(top.size + 2, top.size + 2 + neg.size)
        mk = ["o", "s", "^", "D"][seeds.index(sd) % 4]
        ax.plot(r_top[tc], top[tc], mk, ls="none", ms=3.5, color=COLORS[a], alpha=0.8, label=f"{a} seed {sd}")
        ax.plot(r_neg[nc], neg[nc], mk, ms=5, color=COLORS[a], mfc="none")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(s["k"] + 1, color="grey", lw=0.5, ls=":")
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.margins(y=0.08)
    ax.xaxis.set_major_locator(plots.plt.MaxNLocator(integer=True))
    ax.set_xlabel(f"eigenvalue rank: 1–{s['k']} largest (filled), then the {s['k_neg']} most negative (hollow)")
    ax.set_ylabel("Hessian eigenvalue (symlog scale)")
    ax.set_title(f"Hessian extremes, converged pairs only (residual ≤ {s['eig_tol']:g}·max|θ|); "
                 f"{n_left_out} unconverged Ritz value(s) not shown", fontsize=8)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plots.save(fig, out / "hessian_spectrum.png", dpi=DPI)

    # ---- mode connectivity
    fig, axes = plots.new_figure(2, 1, (4.6, 3.6))
    for c in conn:
        lab = f"{c['arch']} {c['seed_a']}→{c['seed_b']}"
        ls = "-" if c["seed_a"] == seeds[0] else "--"
        axes[0, 0].plot(c["alphas"], c["losses"], ls, marker="o", ms=3, color=COLORS[c["arch"]], label=lab)
        axes[0, 1].plot(c["alphas"], c["accuracies"], ls, marker="o", ms=3, color=COLORS[c["arch"]], label=lab)
    n_eval = conn[0]["n_eval"] if conn else cfg["test_size"]
    axes[0, 0].set_ylabel("test loss (nats)")
    axes[0, 1].set_ylabel("test accuracy (fraction)")
    for ax in axes.ravel():
        ax.set_xlabel("α (interpolation weight, seed a → seed b)")
        ax.grid(alpha=0.3)
    axes[0, 1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.suptitle(f"linear paths on the {n_eval} test images of the model table; BN statistics re-estimated at "
                 "every α (ResNet)", fontsize=8)
    fig.tight_layout()
    plots.save(fig, out / "mode_connectivity.png", dpi=DPI)

    # ---- metrics comparison: mean ± 95 % CI per architecture, seeds as points
    barrier_by = {a: [c["barrier"] for c in conn if c["arch"] == a] for a in archs}
    metrics = [("test_acc", "test accuracy (fraction)"), ("test_loss", "test loss (nats)"),
               ("lambda_max", "λ_max"), ("lambda_min", "λ_min (most negative computed)"),
               ("condition_number", "κ̂ = λ_max / |λ_min|"), ("n_negative", "# negative among computed"),
               ("sharpness", f"ρ-sharpness (ρ = {RHO}, nats)"), ("barrier", "barrier (nats)")]
    fig, axes = plots.new_figure(4, 2, (2.6, 2.5))
    cis = {}
    for ax, (key, label) in zip(axes.ravel(), metrics):
        for i, a in enumerate(archs):
            vals = barrier_by[a] if key == "barrier" else [r[key] for r in rows if r["arch"] == a]
            m = mean_ci(vals)
            cis[(a, key)] = m
            ax.bar(i, m.mean if np.isfinite(m.mean) else 0, color=COLORS[a], alpha=0.55, width=0.6,
                   yerr=m.half if np.isfinite(m.half) else None, capsize=4)
            v = np.asarray(vals, float)
            ax.plot(i + np.linspace(-0.12, 0.12, max(1, v.size))[:v.size], v, "k.", ms=4)
        ax.set_xticks(range(len(archs)), archs)
        ax.set_ylabel(label, fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("CNN vs ResNet: bars = mean, error bars = 95 % CI over seeds (n/a for n < 2), dots = seeds "
                 "(barrier: seed pairs)", fontsize=8)
    fig.tight_layout()
    plots.save(fig, out / "metrics_comparison.png", dpi=DPI)

    # ---- correlations with test accuracy
    fig, axes = plots.new_figure(3, 1, (3.3, 3.1))
    for ax, (q, label) in zip(axes.ravel(), (("sharpness", f"ρ-sharpness (ρ = {RHO}, nats)"),
                                             ("lambda_max", "λ_max"), ("condition_number", "κ̂ = λ_max / |λ_min|"))):
        _scatter(ax, rows, q, label, corrs[f"{q}_vs_test_acc"])
    fig.tight_layout()
    plots.save(fig, out / "correlation_analysis.png", dpi=DPI)

    # ---- surfaces: side by side, one colour scale
    surf = {}
    for a in archs:
        z = lio.read_npz(out / "pairs" / f"surface_{a}.npz")
        surf[a] = SurfaceResult(z["alphas"], z["losses"], z["accuracies"], z["betas"])
    plot_contour_panels({f"{a} (seed {seeds[0]})": r for a, r in surf.items()}, out / "surface_contour.png",
                        dpi=DPI, title=f"filter-normalised loss surfaces on {s['surface_samples']} test images, "
                                       f"{s['surface_res']}×{s['surface_res']} grid")
    zall = np.concatenate([r.losses.ravel() for r in surf.values()])
    for a, r in surf.items():
        plot_surface_3d(r, out / f"surface_3d_{a}.png", dpi=DPI, vmin=float(zall.min()), vmax=float(zall.max()),
                        title=f"{a}: filter-normalised loss surface (z and colour shared across architectures)")

    # ---- tables and summary
    star = lambda r: "" if r["lanczos_converged"] else " *"
    header = ["arch", "seed", "params", "test acc", "test loss", "λ_max", "λ_min", "κ̂", "# neg / conv.",
              "sharpness"]
    body = [[r["arch"], r["seed"], f"{r['n_params']:,}", fmt(r["test_acc"], ".4f"), fmt(r["test_loss"], ".4f"),
             fmt(r["lambda_max"], ".4g") + star(r), fmt(r["lambda_min"], ".3g"), fmt(r["condition_number"], ".3g"),
             f"{r['n_negative']} / {r['n_eigs_converged']}", fmt(r["sharpness"], ".4g")] for r in rows]
    _table_image(out / "summary_table.png", header, body, "CNN vs ResNet on CIFAR-10 (per model; * = some Lanczos "
                 "pairs unconverged, left out)")
    aheader = ["arch", "n", "test acc", "test loss", "λ_max", "λ_min", "κ̂", "# negative", "sharpness", "barrier"]
    abody = [[a, len(seeds)] + [cis[(a, k)].text(".4g", short=True) for k, _ in metrics] for a in archs]
    cheader = ["arch", "seeds", "barrier (nats)", "at α", "excess over line", "at α", "BN re-estimated",
               "min acc", "at α", "end-point accs"]
    cbody = [[c["arch"], f"{c['seed_a']}→{c['seed_b']}", fmt(c["barrier"], ".4f"), fmt(c["barrier_alpha"], ".2f"),
              fmt(c["excess"], ".4f"), fmt(c["excess_alpha"], ".2f"),
              f"yes ({c.get('n_bn', 0)} train images)" if c["bn_reestimated"] else "no (no BN)",
              fmt(c["min_acc"], ".4f"), fmt(c["min_acc_alpha"], ".2f"),
              f"{fmt(c['acc_a'], '.4f')} / {fmt(c['acc_b'], '.4f')}"] for c in conn]

    lines = []
    if len(archs) == 2:
        a, b = archs
        for k, what in (("test_acc", "test accuracy"), ("lambda_max", "λ_max"), ("condition_number", "κ̂"),
                        ("sharpness", "ρ-sharpness"), ("barrier", "barrier")):
            ma, mb = cis[(a, k)], cis[(b, k)]
            if not (np.isfinite(ma.mean) and np.isfinite(mb.mean)):
                lines.append(f"- {what}: n/a for one architecture.")
                continue
            hi, lo = (a, b) if ma.mean > mb.mean else (b, a)
            overlap = ""
            if np.isfinite(ma.half) and np.isfinite(mb.half):
                sep = abs(ma.mean - mb.mean) > ma.half + mb.half
                overlap = (" — the 95 % CIs do not overlap" if sep else " — the 95 % CIs overlap: not a clear "
                           "difference at this n")
            else:
                overlap = " — n < 2 for a CI: no statement of significance"
            lines.append(f"- {what}: `{hi}` {cis[(hi, k)].text('.4g')} > `{lo}` {cis[(lo, k)].text('.4g')}{overlap}.")
    for c in conn:
        lines.append(f"- linear path `{c['arch']}` seed {c['seed_a']} → {c['seed_b']}: barrier {c['barrier']:.4f} "
                     f"nats at α = {c['barrier_alpha']:.2f} (excess over the straight line {c['excess']:.4f} at "
                     f"α = {c['excess_alpha']:.2f}); accuracy falls to {c['min_acc']:.4f} at α = "
                     f"{c['min_acc_alpha']:.2f} (end points {c['acc_a']:.4f} / {c['acc_b']:.4f}).")
    for k, c in corrs.items():
        sig = "" if not c.ok else (" — significant at 5 %" if c.corr.p < 0.05 else " — not significant (null result)")
        lines.append(f"- {k.replace('_', ' ')}: {c.text()}{sig}.")
    unconv = [(f"{r['arch']}/seed {r['seed']}", r["n_eigs_computed"] - r["n_eigs_converged"]) for r in rows
              if not r["lanczos_converged"]]
    if unconv:
        lines.append(f"- Lanczos did NOT converge to the residual tolerance {s['eig_tol']:g} for "
                     + ", ".join(f"{m} ({n} pair(s))" for m, n in unconv)
                     + ": those Ritz values are left out of λ_max, λ_min, κ̂, the negative count and the plots "
                       "(kept with their residuals in `hessian.npz`); λ_max marked * in the table.")
    else:
        lines.append(f"- Lanczos converged for every computed pair (residual ≤ {s['eig_tol']:g}·max|θ|, checked "
                     "with one extra Hessian-vector product per pair).")
    sizes = {a: sorted({r["n_params"] for r in rows if r["arch"] == a}) for a in archs}
    size_txt = "; ".join(
        f"`{a}` {', '.join(f'{n:,}' for n in sizes[a])} parameters ("
        + (f"{sizes[a][0] / TARGET_PARAMS[a] - 1:+.1%} vs the study's {TARGET_PARAMS[a] / 1e6:.1f} M"
           + (", within 10 %" if abs(sizes[a][0] / TARGET_PARAMS[a] - 1) <= 0.10 else ", NOT within 10 %"))
        + ")" for a in archs)
    shrunk = cfg["preset"] == "smoke"
    text = [f"# Architecture vs loss landscape (`lamda run landscape --preset {cfg['preset']}`)", ""]
    if _caveat(cfg):
        text += [_caveat(cfg), ""]
    text += [
        f"CIFAR-10 ({cfg['train_size']} train / {cfg['test_size']} test); {s['epochs']} epoch(s), Adam lr {s['lr']}, "
        f"cosine, batch {s['batch']}, {'crop + flip augmentation' if s['augment'] else 'no augmentation'}; "
        f"seeds {seeds}. Hessian on {s['hessian_samples']} training samples (top {s['k']} + {s['k_neg']} most "
        f"negative, Lanczos ≤ {s['eig_max_iter'] or 'default'} steps, residual tolerance {s['eig_tol']:g}); "
        f"sharpness on {s['sharp_samples']} training samples; surfaces {s['surface_res']}×{s['surface_res']} "
        f"(trained point on the centre node) on {s['surface_samples']} test samples.", "",
        f"Model sizes: {size_txt}." + (" (Shrunk for the smoke preset; quick and full train the study's sizes: "
                                        "1,808,276 and 2,127,618.)" if shrunk else ""), "",
        "## Definitions", "",
        "- λ_max: the largest converged Hessian eigenvalue; λ_min: the most negative converged eigenvalue among "
        f"the computed ones (top {s['k']} + {s['k_neg']} most negative).",
        "- Condition number estimate κ̂ = λ_max / |λ_min| over the computed (converged) eigenvalues. The Hessian "
        "is indefinite and its eigenvalues near 0 are not computed, so κ̂ is the ratio of the sharpest positive "
        "to the sharpest negative curvature, not ‖H‖·‖H⁻¹‖.",
        f"- # negative: the number of negative eigenvalues among the converged computed ones (at most "
        f"{s['k'] + s['k_neg']}; a lower bound on the Hessian's count).",
        f"- ρ-sharpness: L(θ + ρ g/‖g‖) − L(θ) with ρ = {RHO} on training data.",
        "- Barrier (the study's): max_α L(θ(α)) − min(L(θ_a), L(θ_b)) on θ(α) = (1 − α) θ_a + α θ_b; the excess "
        "over the straight line, max_α [L(θ(α)) − ((1 − α) L(θ_a) + α L(θ_b))], is the second column.",
        f"- Batch-norm statistics: {'re-estimated at every α on training images (ResNet); ' if any(c['bn_reestimated'] for c in conn) else ''}"
        "the plain CNN has no batch norm. Connectivity losses/accuracies use the same test images as the model "
        "table; at α = 0 and 1 the ResNet's accuracy can differ from the table because the table uses the "
        "running statistics from training.", "",
        "## Per architecture (mean ± 95 % CI over seeds)", "", markdown_table(aheader, abody), "",
        "## Models", "", markdown_table(header, body), "",
        "## Mode connectivity", "", markdown_table(cheader, cbody) if cbody else "(not computed)", "",
        "## Findings (computed from the numbers)", "", *lines, "",
        "Files: `results.csv`, `connectivity.csv`, `correlations.csv`, `landscape_data.npz`, `training_curves.png`, "
        "`hessian_spectrum.png`, `mode_connectivity.png`, `metrics_comparison.png`, `correlation_analysis.png`, "
        "`surface_contour.png`, `surface_3d_<arch>.png`, `summary_table.png`.", ""]
    lio.write_text(out / "summary.md", "\n".join(text))
    return 0


def _arch_list(text: str) -> str:
    import argparse
    names = [a.strip() for a in text.split(",")]
    bad = [a for a in names if a not in ARCHS]
    if bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"choose distinct names from {', '.join(ARCHS)}, got {text!r}")
    return text


def add_arguments(p) -> None:
    p.add_argument("--seeds", default=None, help="comma-separated seeds, at least two (default: --seed, --seed + 1)")
    p.add_argument("--archs", type=_arch_list, default=None,
                   help=f"comma-separated subset of {', '.join(ARCHS)} (default both)")
    p.add_argument("--epochs", type=int_at_least(1), default=None, help="override the preset's number of epochs (≥ 1)")
    p.add_argument("--k", type=int_at_least(15), default=None,
                   help="number of top Hessian eigenvalues (≥ 15, the study's minimum)")


register(Experiment(name=NAME, help="plain CNN vs ResNet on CIFAR-10: Hessian, sharpness, connectivity, surfaces",
                    add_arguments=add_arguments, run=run, analyze=analyze, ddp=True))
