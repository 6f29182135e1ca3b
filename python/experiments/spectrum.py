"""``lamda run spectrum``: weight-decay sweep vs Hessian spectrum (issue 6, experiment 3).

The sigmoid MLP 784-128-128-10 is trained on MNIST once per L2 strength on a linear grid from 0 to
``--l2-max`` (0.09) in ``--steps`` points (full: 451, i.e. steps of 0.0002) with Adam (lr 1.5e-3, batch 64),
loss = cross-entropy + L2 · Σ θ² over all parameters, and early stopping on the (unregularised) training
loss with patience 5 (the best epoch's weights are kept). Then the top-k (30) eigenpairs of the Hessian of
the mean cross-entropy over the training data (float64, eval mode; the L2 term would add 2·L2 to every
eigenvalue and is left out, as in the study) come from forward-over-reverse HVPs + Lanczos
(``lamda_ext.hessian.hessian_eigs``; ``--method eigsh`` uses scipy's ARPACK). Every L2 value starts from the
same initialisation (seed = the run ID), so cells are independent, resumable and shardable.

Files (names as in the study; ``{ID}`` = the run seed, ``{L2}`` formatted ``%.5f``)::

    Model-{ID}.csv                     L2_strength, Train_Loss, Train_Reg_Loss, Test_Loss, Test_Accuracy (%),
                                       Train_Accuracy (%), Epochs, Lambda_Max — one row per model
    gradients-{ID}-{L2}.csv            parameter, flat_index, gradient (mean CE over the training data)
    Hessian-eigenvalues-{ID}-{L2}.csv  index, eigenvalue (index 1 = largest)
    Hessian-eigenvectors-{ID}-{L2}.csv param_index, eigvec_1 … eigvec_k (column i ↔ eigenvalue i)
    model_weights-{ID}-{L2}.pth        the model's state dict
    config.json experiment_config.json summary.md spectrum.npz
    spectrum_vs_l2.png lambda_max_vs_test_accuracy.png
    cells/{ID}-{L2}.json               written last for a finished model (resume marker)
"""
from __future__ import annotations

import copy
import math
import pathlib
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .. import io as lio
from .. import plots
from ..analysis.stats import pearson
from ..data import batches
from ..models import SigmoidMLP
from ..trainer import resolve_device
from . import Experiment, register
from .experiment_support import (add_mnist_like_argument, fmt, load_mnist_like, markdown_table, my_cells,
                                 open_results_folder, parse_seeds)

__all__ = ["PRESETS", "l2_grid", "l2_label", "train_model", "hessian_data", "run", "analyze", "MODEL_COLUMNS"]

NAME = "spectrum"
MODEL_COLUMNS = ["L2_strength", "Train_Loss", "Train_Reg_Loss", "Test_Loss", "Test_Accuracy", "Train_Accuracy",
                 "Epochs", "Lambda_Max"]

PRESETS = {
    "full": dict(train=None, test=None, steps=451, l2_max=0.09, max_epochs=50, patience=5, batch=64, lr=1.5e-3,
                 k=30, hessian_samples=None, seeds=1, hidden=(128, 128), tol=None),
    "quick": dict(train=2000, test=2000, steps=10, l2_max=0.09, max_epochs=25, patience=5, batch=64, lr=1.5e-3,
                  k=30, hessian_samples=1000, seeds=1, hidden=(128, 128), tol=1e-6),
    "smoke": dict(train=256, test=256, steps=2, l2_max=0.09, max_epochs=3, patience=5, batch=64, lr=1.5e-3,
                  k=10, hessian_samples=128, seeds=1, hidden=(128, 128), tol=1e-5),
}


def l2_grid(l2_max: float, steps: int) -> np.ndarray:
    """``steps`` L2 strengths on a linear grid from 0 to ``l2_max`` (one point, 0, when steps = 1)."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if not l2_max >= 0:
        raise ValueError(f"--l2-max must be >= 0, got {l2_max}")
    return np.linspace(0.0, l2_max, steps) if steps > 1 else np.zeros(1)


def l2_label(l2: float) -> str:
    return f"{l2:.5f}"


def _l2_term(model) -> torch.Tensor:
    return sum(p.pow(2).sum() for p in model.parameters())


def train_model(model, data, l2: float, s: dict, seed: int) -> dict:
    """Adam + L2 penalty, early stopping on the epoch-mean training CE (patience); keeps the best weights."""
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    gen = torch.Generator().manual_seed(seed)
    best, best_state, bad, epochs = math.inf, None, 0, 0
    n = data.x_train.shape[0]
    for epoch in range(1, s["max_epochs"] + 1):
        model.train()
        tot, cnt = 0.0, 0
        for idx in batches(n, s["batch"], gen):
            idx = idx.to(data.x_train.device)
            x, y = data.x_train[idx], data.y_train[idx]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            (loss + l2 * _l2_term(model) if l2 > 0 else loss).backward()
            opt.step()
            tot += float(loss.detach()) * y.shape[0]
            cnt += y.shape[0]
        epochs = epoch
        train_loss = tot / cnt
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training diverged at L2={l2} epoch {epoch}")
        if train_loss < best:
            best, best_state, bad = train_loss, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= s["patience"]:
                break
    model.load_state_dict(best_state)
    model.eval()
    return {"epochs": epochs, "best_epoch_train_loss": best}


@torch.no_grad()
def _eval(model, x, y, bs=2000):
    loss, correct = 0.0, 0
    for i in range(0, x.shape[0], bs):
        out = model(x[i:i + bs])
        loss += float(F.cross_entropy(out, y[i:i + bs], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + bs]).sum())
    return loss / x.shape[0], correct / x.shape[0]


def hessian_data(data, n: int | None, dtype=torch.float64, batch: int = 10000) -> list:
    """The Hessian's data: the first ``n`` training samples (all when None) as ``(x, y)`` batches in ``dtype``."""
    x, y = data.x_train, data.y_train
    if n is not None:
        x, y = x[:n], y[:n]
    return [(x[i:i + batch].to(dtype), y[i:i + batch]) for i in range(0, x.shape[0], batch)]


def _full_gradient(model, hdata) -> dict[str, torch.Tensor]:
    """Gradient of the sample-weighted mean CE over ``hdata`` (per parameter)."""
    model.zero_grad(set_to_none=True)
    n = sum(x.shape[0] for x, _ in hdata)
    for x, y in hdata:
        (F.cross_entropy(model(x), y, reduction="sum") / n).backward()
    g = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return g


def _write_csv_array(path, header: list[str], columns: list[np.ndarray], fmts: list[str]) -> None:
    """Fast CSV of column arrays (np.savetxt into an atomic temp file)."""
    with lio.atomic_path(path) as tmp:
        arr = np.column_stack(columns)
        np.savetxt(tmp, arr, delimiter=",", header=",".join(header), comments="", fmt=fmts)


def _cell(out: pathlib.Path, ident: int, l2: float, data, s: dict, args, dev) -> dict:
    from lamda_ext.hessian import hessian_eigs
    lab = l2_label(l2)
    torch.manual_seed(ident)
    model = SigmoidMLP(in_features=data.x_train[0].numel(), hidden=tuple(s["hidden"]),
                       num_classes=data.num_classes).to(dev)
    t0 = time.perf_counter()
    info = train_model(model, data, float(l2), s, ident)
    train_time = time.perf_counter() - t0
    tr_loss, tr_acc = _eval(model, data.x_train, data.y_train)
    te_loss, te_acc = _eval(model, data.x_test, data.y_test)
    reg = float(_l2_term(model).detach())
    # float64 copy for the gradient and the Hessian
    m64 = copy.deepcopy(model).double().eval()
    hdata = hessian_data(data, s["hessian_samples"])
    grads = _full_gradient(m64, hdata)
    names = np.concatenate([np.full(g.numel(), k, dtype=object) for k, g in grads.items()])
    flat_idx = np.concatenate([np.arange(g.numel()) for g in grads.values()])
    gvec = torch.cat([g.reshape(-1) for g in grads.values()]).cpu().numpy()
    _write_csv_array(out / f"gradients-{ident}-{lab}.csv", ["parameter", "flat_index", "gradient"],
                     [names, flat_idx, gvec], ["%s", "%d", "%.12e"])
    t1 = time.perf_counter()
    gen = torch.Generator().manual_seed(ident * 1000 + 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        vals, vecs = hessian_eigs(m64, "cross_entropy", hdata, k=s["k"], which=args.which, method=args.method,
                                  tol=s["tol"], generator=gen)
    notes = [str(w.message) for w in caught if "hessian_eigs" in str(w.message)]
    hess_time = time.perf_counter() - t1
    vals = vals.numpy()
    _write_csv_array(out / f"Hessian-eigenvalues-{ident}-{lab}.csv", ["index", "eigenvalue"],
                     [np.arange(1, len(vals) + 1), vals], ["%d", "%.17g"])
    V = vecs.detach().cpu().numpy().T                                   # [P, k]
    _write_csv_array(out / f"Hessian-eigenvectors-{ident}-{lab}.csv",
                     ["param_index"] + [f"eigvec_{i + 1}" for i in range(V.shape[1])],
                     [np.arange(V.shape[0])] + [V[:, i] for i in range(V.shape[1])], ["%d"] + ["%.9g"] * V.shape[1])
    with lio.atomic_path(out / f"model_weights-{ident}-{lab}.pth") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    row = {"L2_strength": float(l2), "Train_Loss": tr_loss, "Train_Reg_Loss": tr_loss + float(l2) * reg,
           "Test_Loss": te_loss, "Test_Accuracy": 100.0 * te_acc, "Train_Accuracy": 100.0 * tr_acc,
           "Epochs": info["epochs"], "Lambda_Max": float(vals.max()),
           "eigenvalues": vals.tolist(), "gradient_norm": float(np.linalg.norm(gvec)),
           "train_time_s": train_time, "hessian_time_s": hess_time, "id": ident, "eig_notes": notes}
    lio.write_json(out / "cells" / f"{ident}-{lab}.json", row)
    return row


def run(args) -> int:
    out = pathlib.Path(args.out)
    s = dict(PRESETS[args.preset])
    for key in ("steps", "l2_max", "k", "hessian_samples", "max_epochs", "tol"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if args.hidden:
        try:
            s["hidden"] = tuple(int(h) for h in args.hidden.split(","))
        except ValueError:
            raise ValueError(f"--hidden must be comma-separated widths like 128,128, got {args.hidden!r}") from None
    if s["k"] < 1:
        raise ValueError(f"--k must be >= 1, got {s['k']}")
    grid = l2_grid(s["l2_max"], s["steps"])
    ids = parse_seeds(args.seeds, args.seed, s["seeds"])
    dev = resolve_device(args.device)
    data, dname, note = load_mnist_like(args.dataset, args.data_root, train_size=s["train"], test_size=s["test"],
                                        seed=args.seed, download=args.download)
    data = data.to(dev)
    config = {"experiment": NAME, "preset": args.preset, "seed": args.seed, "ids": ids, "dataset": dname,
              "dataset_note": note, "data_root": args.data_root, "device": args.device, "settings": s,
              "which": args.which, "method": args.method, "l2_grid": grid,
              "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0]),
              "hessian": "mean cross-entropy over the first hessian_samples training samples (all when null), "
                         "float64, eval mode; the L2 term (adds 2·L2 to every eigenvalue) is excluded",
              "l2_penalty": "L2 · sum of squares of all parameters, added to the batch-mean cross-entropy"}
    open_results_folder(out, config, ("experiment", "preset", "seed", "ids", "dataset", "settings", "which",
                                      "method"))
    cells = [(i, float(l2)) for i in ids for l2 in grid]
    t0 = time.perf_counter()
    for ident, l2 in my_cells(cells, args.shard):
        if (out / "cells" / f"{ident}-{l2_label(l2)}.json").exists():
            print(f"[spectrum] ID {ident} L2={l2_label(l2)} finished earlier, skipped", flush=True)
            continue
        t = time.perf_counter()
        row = _cell(out, ident, l2, data, s, args, dev)
        print(f"[spectrum] ID {ident} L2={l2_label(l2)}: test acc {row['Test_Accuracy']:.2f} %, "
              f"λ_max {row['Lambda_Max']:.4g}, {row['Epochs']} epochs, {time.perf_counter() - t:.1f} s", flush=True)
    missing = [c for c in cells if not (out / "cells" / f"{c[0]}-{l2_label(c[1])}.json").exists()]
    if missing:
        print(f"[spectrum] {len(missing)} model(s) of other shards are not finished; run `lamda analyze {out}` "
              f"when every shard is done", flush=True)
        return 0
    analyze(out)
    print(f"[spectrum] done in {time.perf_counter() - t0:.1f} s; see {out / 'summary.md'}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------ analysis
def _outlier_count(vals: np.ndarray) -> int:
    """Position of the largest ratio gap λ_i / λ_{i+1} among the positive top eigenvalues (0 when < 2)."""
    v = np.sort(np.asarray(vals, float))[::-1]
    v = v[v > 0]
    if v.size < 2:
        return 0
    return int(np.argmax(v[:-1] / v[1:]) + 1)


def analyze(out) -> int:
    from scipy import stats
    out = pathlib.Path(out)
    cfg = lio.read_json(out / "experiment_config.json")
    grid = np.asarray(cfg["l2_grid"], float)
    k = cfg["settings"]["k"]
    all_rows = {}
    for ident in cfg["ids"]:
        rows = [lio.read_json(out / "cells" / f"{ident}-{l2_label(l2)}.json") for l2 in grid]
        all_rows[ident] = rows
        lio.write_csv(out / f"Model-{ident}.csv", [{c: r[c] for c in MODEL_COLUMNS} for r in rows], MODEL_COLUMNS)
    ids = cfg["ids"]
    eig = np.array([[r["eigenvalues"] for r in all_rows[i]] for i in ids], float)          # [I, M, k]
    acc = np.array([[r["Test_Accuracy"] for r in all_rows[i]] for i in ids], float)
    lam_max = eig.max(-1)
    lio.write_npz(out / "spectrum.npz", ids=np.array(ids), l2=grid, eigenvalues=eig, test_accuracy=acc,
                  train_loss=np.array([[r["Train_Loss"] for r in all_rows[i]] for i in ids]),
                  test_loss=np.array([[r["Test_Loss"] for r in all_rows[i]] for i in ids]),
                  epochs=np.array([[r["Epochs"] for r in all_rows[i]] for i in ids]),
                  gradient_norm=np.array([[r["gradient_norm"] for r in all_rows[i]] for i in ids]))
    n_out = np.array([[_outlier_count(v) for v in e] for e in eig])
    s_tol = cfg["settings"].get("tol") or 1e-8
    n_typ = int(np.median(n_out)) if n_out.size else 0

    fig, axes = plots.new_figure(2, 1, (5.2, 3.8))
    ax = axes[0, 0]
    for ii, ident in enumerate(ids):
        e = np.sort(eig[ii], axis=1)[:, ::-1]
        for j in range(e.shape[1]):
            c = "tab:red" if j < max(n_typ, 1) else "tab:blue"
            ax.plot(grid, e[:, j], ".-" if len(grid) < 40 else "-", color=c, lw=0.6, ms=3, alpha=0.8,
                    label=(f"top {max(n_typ, 1)} (outliers)" if j == 0 else "rest of the top-k (bulk edge)"
                           if j == max(n_typ, 1) else None) if ii == 0 else None)
    if (eig > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("L2 strength")
    ax.set_ylabel("Hessian eigenvalue")
    ax.set_title(f"top-{k} Hessian eigenvalues vs L2", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    im = ax.imshow(np.sort(eig[0], axis=1)[:, ::-1].T, aspect="auto", origin="upper", cmap="magma",
                   extent=[grid[0], grid[-1] if grid[-1] > grid[0] else grid[0] + 1e-9, k + 0.5, 0.5])
    fig.colorbar(im, ax=ax, label="eigenvalue")
    ax.set_xlabel("L2 strength")
    ax.set_ylabel("eigenvalue index")
    ax.set_title(f"spectrum of ID {ids[0]}", fontsize=9)
    fig.tight_layout()
    plots.save(fig, out / "spectrum_vs_l2.png")

    corr = pearson(lam_max.ravel(), acc.ravel())
    fig, axes = plots.new_figure(1, 1, (5.0, 3.8))
    ax = axes[0, 0]
    sc = ax.scatter(lam_max.ravel(), acc.ravel(), c=np.tile(grid, len(ids)), cmap="viridis", s=18, edgecolor="k",
                    linewidth=0.3)
    fig.colorbar(sc, ax=ax, label="L2 strength")
    ax.set_xlabel("λ_max (largest Hessian eigenvalue)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(corr.text(), fontsize=8)
    ax.grid(alpha=0.3)
    plots.save(fig, out / "lambda_max_vs_test_accuracy.png")

    lines = []
    if grid.size >= 3 and np.ptp(lam_max) > 0:
        rho = stats.spearmanr(np.tile(grid, len(ids)), lam_max.ravel())
        trend = ("falls" if rho.statistic < 0 else "rises") if rho.pvalue < 0.05 else "shows no significant monotone trend"
        lines.append(f"- λ_max {trend} with L2 (Spearman ρ = {rho.statistic:+.3f}, p = {rho.pvalue:.3g}, "
                     f"n = {lam_max.size}); from {fmt(lam_max[:, 0].mean(), '.4g')} at L2 = 0 to "
                     f"{fmt(lam_max[:, -1].mean(), '.4g')} at L2 = {grid[-1]:g}.")
    else:
        lines.append(f"- {grid.size} L2 value(s): too few for a trend (λ_max {', '.join(fmt(v, '.4g') for v in lam_max.ravel())}).")
    lines.append(f"- λ_max vs test accuracy: {corr.text()}.")
    lines.append(f"- Outliers vs bulk: the largest ratio gap λ_i/λ_(i+1) among the top-{k} lies after eigenvalue "
                 f"{n_typ} (median over models; per model {sorted(set(n_out.ravel().tolist()))}); "
                 f"{'this matches' if n_typ == 9 else 'this differs from'} the C − 1 = 9 outliers expected for "
                 "10 classes.")
    chance = [l2_label(grid[j]) for j in range(len(grid)) if np.all(acc[:, j] < 150.0 / 10)]
    if chance:
        tl = np.mean([r["Test_Loss"] for i in ids for r in all_rows[i] if l2_label(r["L2_strength"]) in chance])
        lines.append(f"- {len(chance)} of {len(grid)} L2 values give models at chance level (test accuracy < 15 %; "
                     f"mean test loss {tl:.4f} vs ln 10 = {np.log(10):.4f} for a constant uniform output): "
                     f"L2 = {', '.join(chance)}.")
    loose = [f"{r['id']}/{l2_label(r['L2_strength'])}" for i in ids for r in all_rows[i] if r.get("eig_notes")]
    if loose:
        lines.append(f"- Lanczos stopped at its step limit above the tolerance {s_tol:g} for {len(loose)} model(s) "
                     f"({', '.join(loose[:8])}{' …' if len(loose) > 8 else ''}): those eigenvalues are approximate "
                     "(residuals in `cells/*.json`).")
    neg = int((eig < 0).sum())
    if neg:
        lines.append(f"- {neg} of the {eig.size} computed top eigenvalues are negative (which={cfg['which']}).")
    step = max(1, len(grid) // 20)
    body = []
    for ident in ids:
        for j in range(0, len(grid), step):
            r = all_rows[ident][j]
            body.append([ident, l2_label(r["L2_strength"]), r["Epochs"], fmt(r["Train_Loss"], ".4f"),
                         fmt(r["Test_Loss"], ".4f"), fmt(r["Test_Accuracy"], ".2f"), fmt(r["Lambda_Max"], ".4g"),
                         fmt(sorted(r["eigenvalues"])[-min(k, 10)], ".4g"), fmt(r["hessian_time_s"], ".1f")])
    data_line = f"{cfg['dataset']} ({cfg['train_size']} train / {cfg['test_size']} test)"
    if cfg.get("dataset_note"):
        data_line += f" — {cfg['dataset_note']}"
    s = cfg["settings"]
    text = [f"# Weight-decay sweep vs Hessian spectrum (`lamda run spectrum --preset {cfg['preset']}`)", "",
            f"Data: {data_line}. Sigmoid MLP {'-'.join(str(h) for h in [784, *s['hidden'], 10])}; "
            f"{len(grid)} L2 values in [0, {s['l2_max']}]; Adam lr {s['lr']}, batch {s['batch']}, ≤ {s['max_epochs']} "
            f"epochs, early stopping patience {s['patience']}; top-{k} eigenpairs ({cfg['which']}, {cfg['method']}) "
            f"of the mean cross-entropy Hessian on {s['hessian_samples'] or cfg['train_size']} training samples, float64, "
            f"relative residual tolerance {s['tol'] or 1e-8:g}.",
            "", "## Models" + (f" (every {step}th L2 value)" if step > 1 else ""), "",
            markdown_table(["ID", "L2", "epochs", "train loss", "test loss", "test acc (%)", "λ_max",
                            f"λ_{min(k, 10)}", "Hessian time (s)"], body), "",
            "## Findings (computed from the numbers)", "", *lines, "",
            "Files: `Model-{ID}.csv`, `gradients-{ID}-{L2}.csv`, `Hessian-eigenvalues-{ID}-{L2}.csv`, "
            "`Hessian-eigenvectors-{ID}-{L2}.csv`, `model_weights-{ID}-{L2}.pth`, `spectrum.npz`, "
            "`spectrum_vs_l2.png`, `lambda_max_vs_test_accuracy.png`.", ""]
    lio.write_text(out / "summary.md", "\n".join(text))
    return 0


def add_arguments(p) -> None:
    add_mnist_like_argument(p)
    p.add_argument("--seeds", default=None, help="comma-separated run IDs/seeds (default: --seed)")
    p.add_argument("--steps", type=int, default=None, help="number of L2 values on the grid (full: 451)")
    p.add_argument("--l2-max", type=float, default=None, help="largest L2 strength (default 0.09)")
    p.add_argument("--k", type=int, default=None, help="number of Hessian eigenpairs (default 30)")
    p.add_argument("--hessian-samples", type=int, default=None,
                   help="training samples the Hessian is taken over (default: preset; full = all)")
    p.add_argument("--max-epochs", type=int, default=None, help="epoch cap before early stopping")
    p.add_argument("--hidden", default=None, help="hidden widths of the sigmoid MLP (default 128,128)")
    p.add_argument("--tol", type=float, default=None,
                   help="relative residual tolerance of the eigenpairs (default: preset; full = 1e-8)")
    p.add_argument("--which", choices=("LA", "LM", "SA"), default="LA", help="which eigenvalues (default LA)")
    p.add_argument("--method", choices=("lanczos", "eigsh"), default="lanczos", help="eigen-solver (default lanczos)")


register(Experiment(name=NAME, help="weight-decay sweep vs top-k Hessian spectrum of a sigmoid MLP",
                    add_arguments=add_arguments, run=run, analyze=analyze))
