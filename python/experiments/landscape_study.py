"""``lamda run landscape``: architecture vs loss landscape, plain CNN vs ResNet on CIFAR-10 (issue 6, experiment 2).

Two architectures — ``cnn`` (:class:`lamda.models.CifarCNN`, 3 conv 64→128→256 + 2 FC) and ``resnet``
(:class:`lamda.models.CifarResNet`, 6 residual blocks with batch norm) — are trained on CIFAR-10 with two seeds
each (Adam, cosine schedule, crop + flip augmentation). For every trained model (eval mode):

- the top-k Hessian eigenvalues (``which="LA"``, k ≥ 15) and the most negative ones (``which="SA"``) of the
  mean cross-entropy over a fixed training subset (HVP + Lanczos, ``lamda_ext.hessian.hessian_eigs``);
- ρ-sharpness with ρ = 0.05 (adversarial, and random for reference; ``lamda.landscape.sharpness``).

Per architecture: linear mode connectivity between its two seeds (barrier, minimum accuracy and where;
batch-norm statistics re-estimated at every point), and the filter-normalised 2-D loss surface around the
first seed's model (contour and 3-D plots). Across all trained models: correlation of sharpness and of λ_max
with test accuracy.

Output tree under ``--out``::

    config.json experiment_config.json summary.md summary_table.png
    results.csv          arch, seed, test_acc, train_acc, test_loss, lambda_max, lambda_min, sharpness, ...
    connectivity.csv     arch, barrier, barrier_alpha, min_acc, min_acc_alpha, acc_a, acc_b
    correlations.csv     quantity, pearson_r, p_value, n
    landscape_data.npz   eigenvalues per model, connectivity paths
    training_curves.png hessian_spectrum.png mode_connectivity.png sharpness_vs_accuracy.png
    surface_contour_<arch>.png surface_3d_<arch>.png
    runs/<arch>/seed_<s>/ training_metrics.csv config.json final_model.pt analysis.json hessian.npz
    pairs/connectivity_<arch>.json  pairs/surface_<arch>.npz
"""
from __future__ import annotations

import copy
import pathlib
import time
import warnings

import numpy as np
import torch

from .. import io as lio
from .. import plots
from ..analysis.stats import pearson
from ..data import load_dataset
from ..landscape import SurfaceResult, loss_surface, mode_connectivity, plot_contour, plot_surface_3d, sharpness
from ..models import build_model
from ..regularizers import Augmentation, RegularizerSet
from ..trainer import Trainer, TrainConfig, resolve_device, run_is_complete, train_run
from . import Experiment, register
from .experiment_support import fmt, markdown_table, my_cells, open_results_folder, parse_seeds

__all__ = ["PRESETS", "ARCHS", "RESULT_COLUMNS", "CONNECTIVITY_COLUMNS", "run", "analyze"]

NAME = "landscape"
ARCHS = {"cnn": "cifar_cnn", "resnet": "cifar_resnet"}
RHO = 0.05
RESULT_COLUMNS = ["arch", "seed", "test_acc", "train_acc", "test_loss", "train_loss", "lambda_max", "lambda_min",
                  "sharpness", "sharpness_random", "n_params", "train_time_s", "hessian_time_s"]
CONNECTIVITY_COLUMNS = ["arch", "seed_a", "seed_b", "barrier", "barrier_alpha", "min_acc", "min_acc_alpha", "acc_a",
                        "acc_b"]

PRESETS = {
    "full": dict(train=None, test=None, epochs=30, batch=128, lr=1e-3, seeds=2, k=20, k_neg=5, hessian_samples=2048,
                 eig_tol=1e-3, eig_max_iter=None, sharp_samples=2048, surface_res=31, surface_span=1.0,
                 surface_samples=2048, conn_steps=21, conn_samples=None, augment=True, model_kwargs={}),
    "quick": dict(train=2000, test=500, epochs=3, batch=128, lr=1e-3, seeds=2, k=15, k_neg=1, hessian_samples=64,
                  eig_tol=1e-2, eig_max_iter=30, sharp_samples=500, surface_res=7, surface_span=1.0,
                  surface_samples=256, conn_steps=7, conn_samples=500, augment=True, model_kwargs={}),
    "smoke": dict(train=256, test=128, epochs=1, batch=64, lr=1e-3, seeds=2, k=15, k_neg=1, hessian_samples=16,
                  eig_tol=1e-1, eig_max_iter=16, sharp_samples=64, surface_res=4, surface_span=1.0,
                  surface_samples=64, conn_steps=4, conn_samples=64, augment=True,
                  model_kwargs={"cnn": {"width": 16}, "resnet": {"widths": (8, 16, 32)}}),
}


def _batched(x, y, n, bs=256):
    if n is not None:
        x, y = x[:n], y[:n]
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)]


def _build(arch: str, s: dict) -> torch.nn.Module:
    """The architecture with the preset's size (the smoke preset shrinks the widths)."""
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
    """Hessian extremes and sharpness of one trained model → ``hessian.npz`` + ``analysis.json`` (last)."""
    from lamda_ext.hessian import hessian_eigs
    model = _load_model(arch, run_dir, dev, s)
    hdata = _batched(data.x_train, data.y_train, s["hessian_samples"])
    gen = torch.Generator().manual_seed(seed * 31 + 1)
    t0 = time.perf_counter()
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        top, _ = hessian_eigs(model, "cross_entropy", hdata, k=s["k"], which="LA", tol=s["eig_tol"],
                              max_iter=s["eig_max_iter"], generator=gen)
        neg, _ = hessian_eigs(model, "cross_entropy", hdata, k=s["k_neg"], which="SA", tol=s["eig_tol"],
                              max_iter=s["eig_max_iter"], generator=gen)
    notes += [str(w.message) for w in caught if "hessian_eigs" in str(w.message)]
    h_time = time.perf_counter() - t0
    sdata = _batched(data.x_train, data.y_train, s["sharp_samples"])
    sh = sharpness(model, "cross_entropy", sdata, rho=RHO, kind="adversarial")
    sh_r = sharpness(model, "cross_entropy", sdata, rho=RHO, kind="random", n_random=5,
                     generator=torch.Generator().manual_seed(seed))
    lio.write_npz(run_dir / "hessian.npz", top_eigenvalues=top.numpy(), negative_eigenvalues=neg.numpy())
    lio.write_json(run_dir / "analysis.json", {
        "lambda_max": float(top.max()), "lambda_min": float(neg.min()), "top_eigenvalues": top.tolist(),
        "negative_eigenvalues": neg.tolist(), "sharpness": sh, "sharpness_random": sh_r, "rho": RHO,
        "hessian_samples": s["hessian_samples"], "hessian_time_s": h_time, "eig_tol": s["eig_tol"],
        "eig_notes": notes, "n_params": sum(p.numel() for p in model.parameters())})


def _pair_outputs(out: pathlib.Path, arch: str, seeds: list[int], data, s: dict, dev) -> None:
    pdir = out / "pairs"
    ra = out / "runs" / arch / f"seed_{seeds[0]}"
    if not (pdir / f"connectivity_{arch}.json").exists() and len(seeds) >= 2:
        ma, mb = _load_model(arch, ra, dev, s), _load_model(arch, out / "runs" / arch / f"seed_{seeds[1]}", dev, s)
        cdata = _batched(data.x_test, data.y_test, s["conn_samples"])
        bn = _batched(data.x_train, data.y_train, s["hessian_samples"] * 4 if s["hessian_samples"] else None)
        res = mode_connectivity(ma, mb, cdata, steps=s["conn_steps"], bn_data=bn)
        i = int(np.argmin(res.accuracies))
        lio.write_json(pdir / f"connectivity_{arch}.json", {
            **res.as_dict(), "arch": arch, "seed_a": seeds[0], "seed_b": seeds[1], "min_acc": float(res.accuracies[i]),
            "min_acc_alpha": float(res.alphas[i]), "acc_a": float(res.accuracies[0]),
            "acc_b": float(res.accuracies[-1])})
    if not (pdir / f"surface_{arch}.npz").exists():
        m = _load_model(arch, ra, dev, s)
        sd = _batched(data.x_test, data.y_test, s["surface_samples"])
        res = loss_surface(m, sd, directions=2, span=s["surface_span"], resolution=s["surface_res"],
                           generator=torch.Generator().manual_seed(seeds[0] + 123))
        lio.write_npz(pdir / f"surface_{arch}.npz", alphas=res.alphas, betas=res.betas, losses=res.losses,
                      accuracies=res.accuracies)


def run(args) -> int:
    out = pathlib.Path(args.out)
    s = dict(PRESETS[args.preset])
    for key in ("epochs", "k"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if s["k"] < 15:
        raise ValueError(f"--k must be >= 15 (the issue asks for at least 15 eigenvalues), got {s['k']}")
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
    cells = [(a, sd) for a in archs for sd in seeds]
    t0 = time.perf_counter()
    for a, sd in my_cells(cells, args.shard):
        rd = out / "runs" / a / f"seed_{sd}"
        if run_is_complete(rd) and (rd / "analysis.json").exists():
            print(f"[landscape] {a}/seed_{sd} finished earlier, skipped", flush=True)
            continue
        t = time.perf_counter()
        if not run_is_complete(rd):
            _train(a, sd, data, s, args, rd)
        _analyse_model(a, sd, data, s, dev, rd)
        print(f"[landscape] {a}/seed_{sd} done in {time.perf_counter() - t:.1f} s", flush=True)
    done = lambda c: (out / "runs" / c[0] / f"seed_{c[1]}" / "analysis.json").exists()
    if not all(done(c) for c in cells):
        print(f"[landscape] models of other shards are not finished; rerun without --shard (or any shard) when "
              f"they are to compute the pair analyses", flush=True)
        return 0
    for a in archs:
        t = time.perf_counter()
        _pair_outputs(out, a, seeds, data, s, dev)
        print(f"[landscape] {a}: connectivity + surface in {time.perf_counter() - t:.1f} s", flush=True)
    analyze(out)
    print(f"[landscape] done in {time.perf_counter() - t0:.1f} s; see {out / 'summary.md'}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ analysis
def _table_image(path, header, body, title):
    fig, axes = plots.new_figure(1, 1, (1.15 * len(header), 0.45 * (len(body) + 2)))
    ax = axes[0, 0]
    ax.axis("off")
    tab = ax.table(cellText=[[str(c) for c in r] for r in body], colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.scale(1.0, 1.3)
    ax.set_title(title, fontsize=9)
    plots.save(fig, path, dpi=200)


def analyze(out) -> int:
    out = pathlib.Path(out)
    cfg = lio.read_json(out / "experiment_config.json")
    archs, seeds = cfg["archs"], cfg["seeds"]
    rows, hist, eigs = [], {}, {}
    for a in archs:
        for sd in seeds:
            rd = out / "runs" / a / f"seed_{sd}"
            h = lio.read_csv(rd / "training_metrics.csv")
            an = lio.read_json(rd / "analysis.json")
            hist[(a, sd)] = h
            eigs[(a, sd)] = (np.asarray(an["top_eigenvalues"]), np.asarray(an["negative_eigenvalues"]))
            rows.append({"arch": a, "seed": sd, "test_acc": h[-1]["test_acc"], "train_acc": h[-1]["train_acc"],
                         "test_loss": h[-1]["test_loss"], "train_loss": h[-1]["train_loss"],
                         "lambda_max": an["lambda_max"], "lambda_min": an["lambda_min"], "sharpness": an["sharpness"],
                         "sharpness_random": an["sharpness_random"], "n_params": an["n_params"],
                         "train_time_s": float(sum(r.get("epoch_time_s") or 0 for r in h)),
                         "hessian_time_s": an["hessian_time_s"]})
    lio.write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    conn = []
    for a in archs:
        p = out / "pairs" / f"connectivity_{a}.json"
        if p.exists():
            c = lio.read_json(p)
            conn.append({k: c[k] for k in CONNECTIVITY_COLUMNS} | {"alphas": c["alphas"], "losses": c["losses"],
                                                                 "accuracies": c["accuracies"]})
    lio.write_csv(out / "connectivity.csv", [{k: c[k] for k in CONNECTIVITY_COLUMNS} for c in conn],
                  CONNECTIVITY_COLUMNS)
    acc = [r["test_acc"] for r in rows]
    corrs = {"sharpness_vs_test_acc": pearson([r["sharpness"] for r in rows], acc),
             "lambda_max_vs_test_acc": pearson([r["lambda_max"] for r in rows], acc)}
    lio.write_csv(out / "correlations.csv", [{"quantity": k, "pearson_r": c.r, "p_value": c.p, "n": c.n,
                                              "note": c.reason} for k, c in corrs.items()],
                  ["quantity", "pearson_r", "p_value", "n", "note"])
    npz = {}
    for (a, sd), (top, neg) in eigs.items():
        npz[f"{a}_seed{sd}_top"], npz[f"{a}_seed{sd}_negative"] = top, neg
    for c in conn:
        for k in ("alphas", "losses", "accuracies"):
            npz[f"connectivity_{c['arch']}_{k}"] = np.asarray(c[k])
    lio.write_npz(out / "landscape_data.npz", **npz)

    colors = dict(zip(ARCHS, ["tab:blue", "tab:orange"]))
    fig, axes = plots.new_figure(2, 1, (5.0, 3.6))
    for (a, sd), h in hist.items():
        ep = [r["epoch"] for r in h]
        ls = "-" if sd == seeds[0] else "--"
        axes[0, 0].plot(ep, [r["train_loss"] for r in h], ls, color=colors[a], label=f"{a} s{sd} train")
        axes[0, 0].plot(ep, [r["test_loss"] for r in h], ls, color=colors[a], alpha=0.5, label=f"{a} s{sd} test")
        axes[0, 1].plot(ep, [r["test_acc"] for r in h], ls, color=colors[a], label=f"{a} s{sd}")
    axes[0, 0].set_ylabel("loss (dark: train, light: test)")
    axes[0, 1].set_ylabel("test accuracy")
    for ax in axes.ravel():
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    plots.save(fig, out / "training_curves.png")

    fig, axes = plots.new_figure(1, 1, (5.5, 3.8))
    ax = axes[0, 0]
    for (a, sd), (top, neg) in eigs.items():
        ax.plot(np.arange(1, len(top) + 1), np.sort(top)[::-1], "o-" if sd == seeds[0] else "s--", ms=3,
                color=colors[a], label=f"{a} seed {sd} (top {len(top)})")
        ax.plot(np.arange(len(top) + 2, len(top) + 2 + len(neg)), np.sort(neg)[::-1], "v", ms=5, color=colors[a])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("eigenvalue rank (right of the gap: most negative)")
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title("Hessian extremes per trained model", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    plots.save(fig, out / "hessian_spectrum.png")

    fig, axes = plots.new_figure(2, 1, (4.6, 3.4))
    for c in conn:
        axes[0, 0].plot(c["alphas"], c["losses"], "o-", ms=3, color=colors[c["arch"]], label=c["arch"])
        axes[0, 1].plot(c["alphas"], c["accuracies"], "o-", ms=3, color=colors[c["arch"]], label=c["arch"])
    axes[0, 0].set_ylabel("test loss")
    axes[0, 1].set_ylabel("test accuracy")
    for ax in axes.ravel():
        ax.set_xlabel("α (seed a → seed b)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, out / "mode_connectivity.png")

    fig, axes = plots.new_figure(2, 1, (4.4, 3.4))
    for j, (key, name) in enumerate((("sharpness", f"ρ-sharpness (ρ = {RHO})"), ("lambda_max", "λ_max"))):
        ax = axes[0, j]
        plots.scatter_labeled(ax, [r[key] for r in rows], acc, [f"{r['arch']}{r['seed']}" for r in rows],
                              colors=[colors[r["arch"]] for r in rows], xlabel=name, ylabel="test accuracy",
                              title=corrs[f"{key}_vs_test_acc"].text())
    fig.tight_layout()
    plots.save(fig, out / "sharpness_vs_accuracy.png")

    for a in archs:
        p = out / "pairs" / f"surface_{a}.npz"
        if p.exists():
            z = lio.read_npz(p)
            res = SurfaceResult(z["alphas"], z["losses"], z["accuracies"], z["betas"])
            plot_contour(res, out / f"surface_contour_{a}.png", title=f"{a}: filter-normalised loss contours")
            plot_surface_3d(res, out / f"surface_3d_{a}.png", title=f"{a}: filter-normalised loss surface")

    header = ["arch", "seed", "test acc", "λ_max", "λ_min", "sharpness", "params"]
    body = [[r["arch"], r["seed"], fmt(r["test_acc"], ".4f"), fmt(r["lambda_max"], ".4g"), fmt(r["lambda_min"], ".3g"),
             fmt(r["sharpness"], ".4g"), r["n_params"]] for r in rows]
    _table_image(out / "summary_table.png", header, body, "CNN vs ResNet on CIFAR-10")
    cheader = ["arch", "barrier (loss)", "barrier at α", "min acc", "min acc at α", "end-point accs"]
    cbody = [[c["arch"], fmt(c["barrier"], ".4f"), fmt(c["barrier_alpha"], ".2f"), fmt(c["min_acc"], ".4f"),
              fmt(c["min_acc_alpha"], ".2f"), f"{fmt(c['acc_a'], '.4f')} / {fmt(c['acc_b'], '.4f')}"] for c in conn]

    lines = []
    means = {a: {k: float(np.mean([r[k] for r in rows if r["arch"] == a])) for k in
                 ("test_acc", "lambda_max", "lambda_min", "sharpness")} for a in archs}
    if len(archs) == 2:
        a, b = archs
        for k, what in (("test_acc", "test accuracy"), ("lambda_max", "λ_max"), ("sharpness", "ρ-sharpness")):
            hi = a if means[a][k] > means[b][k] else b
            lo = b if hi == a else a
            lines.append(f"- {what}: `{hi}` {fmt(means[hi][k], '.4g')} > `{lo}` {fmt(means[lo][k], '.4g')} "
                         f"(mean over {len(seeds)} seeds; ratio {fmt(means[hi][k] / means[lo][k], '.2f') if means[lo][k] else 'n/a'}).")
        for x in archs:
            lines.append(f"- `{x}`: most negative eigenvalue found {fmt(means[x]['lambda_min'], '.3g')} "
                         f"({fmt(abs(means[x]['lambda_min']) / means[x]['lambda_max'], '.2%')} of λ_max in size).")
    for c in conn:
        kind = "a loss barrier" if c["barrier"] > 0.05 * max(1e-12, abs(min(c["losses"]))) + 1e-3 else "no clear barrier"
        lines.append(f"- linear path `{c['arch']}` seed {c['seed_a']} → {c['seed_b']}: {kind} of {c['barrier']:.4f} "
                     f"at α = {c['barrier_alpha']:.2f}; accuracy drops to {c['min_acc']:.4f} at α = "
                     f"{c['min_acc_alpha']:.2f} (end points {c['acc_a']:.4f} / {c['acc_b']:.4f}).")
    for k, c in corrs.items():
        sig = "" if not c.ok else (" — significant at 5 %" if c.p < 0.05 else " — not significant (null result)")
        lines.append(f"- {k.replace('_', ' ')}: {c.text()}{sig}.")
    warn = [f"{r['arch']}/seed {r['seed']}" for r in rows
            if lio.read_json(out / "runs" / r["arch"] / f"seed_{r['seed']}" / "analysis.json")["eig_notes"]]
    if warn:
        lines.append(f"- Lanczos stopped before the tolerance {cfg['settings']['eig_tol']:g} for {', '.join(warn)} "
                     "(max_iter of the preset): the eigenvalues there are approximate.")
    s = cfg["settings"]
    text = [f"# Architecture vs loss landscape (`lamda run landscape --preset {cfg['preset']}`)", "",
            f"CIFAR-10 ({cfg['train_size']} train / {cfg['test_size']} test); {s['epochs']} epoch(s), Adam lr {s['lr']}, "
            f"cosine, batch {s['batch']}, {'crop + flip augmentation' if s['augment'] else 'no augmentation'}; "
            f"seeds {seeds}. Hessian on {s['hessian_samples']} training samples (top {s['k']} + {s['k_neg']} most "
            f"negative, Lanczos tol {s['eig_tol']:g}); sharpness on {s['sharp_samples']} training samples; "
            f"surfaces {s['surface_res']}×{s['surface_res']} on {s['surface_samples']} test samples."
            + (f" Model sizes shrunk for this preset: {s['model_kwargs']}." if s.get("model_kwargs") else ""), "",
            "## Models", "", markdown_table(header, body), "", "## Mode connectivity", "",
            markdown_table(cheader, cbody) if cbody else "(not computed)", "",
            "## Findings (computed from the numbers)", "", *lines, "",
            "Files: `results.csv`, `connectivity.csv`, `correlations.csv`, `landscape_data.npz`, `training_curves.png`, "
            "`hessian_spectrum.png`, `mode_connectivity.png`, `sharpness_vs_accuracy.png`, "
            "`surface_contour_<arch>.png`, `surface_3d_<arch>.png`, `summary_table.png`.", ""]
    lio.write_text(out / "summary.md", "\n".join(text))
    return 0


def add_arguments(p) -> None:
    p.add_argument("--seeds", default=None, help="comma-separated seeds, at least two (default: --seed, --seed + 1)")
    p.add_argument("--archs", default=None, help=f"comma-separated subset of {', '.join(ARCHS)} (default both)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--k", type=int, default=None, help="number of top Hessian eigenvalues (>= 15)")


register(Experiment(name=NAME, help="plain CNN vs ResNet on CIFAR-10: Hessian, sharpness, connectivity, surfaces",
                    add_arguments=add_arguments, run=run, analyze=analyze, ddp=True))
