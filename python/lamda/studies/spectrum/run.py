"""``lamda run spectrum``: weight-decay sweep vs Hessian spectrum (issue 6, experiment 3).

The sigmoid MLP 784-128-128-10 is trained on MNIST once per L2 strength on a linear grid from 0 to
``--l2-max`` (0.09) in ``--steps`` points (full: 451, i.e. steps of 0.0002) with Adam (lr 1.5e-3, batch 64),
loss = cross-entropy + L2 · Σ θ² over all parameters, and early stopping on the (unregularised) training
loss with patience 5 (the best epoch's weights are kept; a model that reaches ``max_epochs`` without the
patience running out is flagged "epoch cap"). Then the top-k (30) eigenpairs of the Hessian of the mean
cross-entropy over the training data (float64, eval mode; the L2 term would add 2·L2 to every eigenvalue
and is left out, as in the study) — by largest magnitude (``--which LM``, the study's choice; ``LA`` is an
option) — come from forward-over-reverse HVPs + Lanczos (``--method eigsh``: scipy's ARPACK), each pair then
checked by its residual ``‖Hy − θy‖ / max|θ|`` (:func:`lamda.landscape.eigcheck.checked_eigs`). Every L2
value starts from the same initialisation (seed = the run ID), so cells are independent, resumable and
shardable.

Files (names as in the study, under ``test_data/``; ``{ID}`` = the run seed, ``{L2}`` formatted ``%.5f``)::

    test_data/Model-{ID}.csv                     L2_strength, Train_Loss, Train_Reg_Loss, Test_Loss,
                                                 Test_Accuracy (%), Train_Accuracy (%), Epochs, Lambda_Max
    test_data/gradients-{ID}-{L2}.csv            parameter, flat_index, gradient (mean CE over the Hessian data)
    test_data/Hessian-eigenvalues-{ID}-{L2}.csv  index, eigenvalue (index 1 = largest |λ| for LM)
    test_data/Hessian-eigenvectors-{ID}-{L2}.csv param_index, eigvec_1 … eigvec_k (column i ↔ eigenvalue i);
                                                 with ``--eigvec-format npy`` (the full preset's default)
    test_data/Hessian-eigenvectors-{ID}-{L2}.npy instead: float32 ``[P, k]``, column i ↔ eigenvalue i
    test_data/model_weights-{ID}-{L2}.pth        the model's state dict
    config.json experiment_config.json summary.md spectrum.npz
    spectrum_vs_l2.png lambda_max_vs_test_accuracy.png
    cells/{ID}-{L2}.json               per-model record (residuals, flags); the grid runner's completion
                                       markers live under .cells/
"""
from __future__ import annotations

import copy
import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from ... import result_files as lio
from ... import plots
from ...study_stats import pearson_ci
from ...data import batches
from ...landscape.eigcheck import checked_eigs
from ...models import SigmoidMLP
from ...trainer import resolve_device
from .. import Experiment, register
from ..argtypes import float_in, int_at_least, int_list
from ..support import (
    add_mnist_like_argument,
    fmt,
    load_mnist_like,
    markdown_table,
    open_results_folder,
    parse_seeds,
)
from ..runner import Cell, require_complete, run_grid

__all__ = ["PRESETS", "l2_grid", "l2_label", "train_model", "hessian_data", "run", "analyze", "MODEL_COLUMNS",
           "DATA_DIR", "COLLAPSE_ACC", "is_collapsed", "grid_cells"]

NAME = "spectrum"
DATA_DIR = "test_data"
MODEL_COLUMNS = ["L2_strength", "Train_Loss", "Train_Reg_Loss", "Test_Loss", "Test_Accuracy", "Train_Accuracy",
                 "Epochs", "Lambda_Max"]
COLLAPSE_ACC = 15.0   # % test accuracy: at most 1.5 × chance (10 classes) = a collapsed model

# quick: 10 models on [0, 0.03] (above, the 784-128-128-10 MLP collapses to chance: 7 of 10 models on [0, 0.09]
# in a quick run); the Hessian on 500 samples with ≤ 120 Lanczos steps at tol 1e-4 bounds the HVP work at
# 10 × (120 + 30 check) × 500 = 0.75 M per-sample HVPs (the former quick preset: up to 10 × 180 × 1000 = 1.8 M)
PRESETS = {
    "full": dict(train=None, test=None, steps=451, l2_max=0.09, max_epochs=50, patience=5, batch=64, lr=1.5e-3,
                 k=30, hessian_samples=None, seeds=1, hidden=(128, 128), tol=None, max_iter=None,
                 eigvec_format="npy"),
    "quick": dict(train=2000, test=2000, steps=10, l2_max=0.03, max_epochs=25, patience=5, batch=64, lr=1.5e-3,
                  k=30, hessian_samples=500, seeds=1, hidden=(128, 128), tol=1e-4, max_iter=120,
                  eigvec_format="csv"),
    "smoke": dict(train=256, test=256, steps=2, l2_max=0.09, max_epochs=3, patience=5, batch=64, lr=1.5e-3,
                  k=10, hessian_samples=128, seeds=1, hidden=(128, 128), tol=1e-5, max_iter=None,
                  eigvec_format="csv"),
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


def is_collapsed(test_accuracy_pct) -> np.ndarray:
    """True where the test accuracy (%) is at chance level: < :data:`COLLAPSE_ACC`."""
    return np.asarray(test_accuracy_pct, float) < COLLAPSE_ACC


def _l2_term(model) -> torch.Tensor:
    return sum(p.pow(2).sum() for p in model.parameters())


def train_model(model, data, l2: float, s: dict, seed: int) -> dict:
    """Adam + L2 penalty, early stopping on the epoch-mean training CE (patience); keeps the best weights.

    Returns ``{"epochs", "best_epoch_train_loss", "stopped_early"}``; ``stopped_early`` is False when the
    ``max_epochs`` cap ended training before the patience ran out."""
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    gen = torch.Generator().manual_seed(seed)
    best, best_state, bad, epochs, stopped = math.inf, None, 0, 0, False
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
                stopped = True
                break
    model.load_state_dict(best_state)
    model.eval()
    return {"epochs": epochs, "best_epoch_train_loss": best, "stopped_early": stopped}


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


def _write_npy(path, arr: np.ndarray) -> None:
    with lio.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)


def _cell(out: pathlib.Path, ident: int, l2: float, data, s: dict, cfg: dict, dev) -> dict:
    lab = l2_label(l2)
    dd = out / DATA_DIR
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
    _write_csv_array(dd / f"gradients-{ident}-{lab}.csv", ["parameter", "flat_index", "gradient"],
                     [names, flat_idx, gvec], ["%s", "%d", "%.12e"])
    t1 = time.perf_counter()
    gen = torch.Generator().manual_seed(ident * 1000 + 3)
    ce = checked_eigs(m64, "cross_entropy", hdata, k=s["k"], which=cfg["which"], method=cfg["method"],
                      tol=s["tol"] if s["tol"] is not None else 1e-8, max_iter=s["max_iter"], generator=gen)
    hess_time = time.perf_counter() - t1
    vals = ce.values
    _write_csv_array(dd / f"Hessian-eigenvalues-{ident}-{lab}.csv", ["index", "eigenvalue"],
                     [np.arange(1, len(vals) + 1), vals], ["%d", "%.17g"])
    V = ce.vectors.detach().cpu().numpy().T                                   # [P, k]
    if s["eigvec_format"] == "npy":
        _write_npy(dd / f"Hessian-eigenvectors-{ident}-{lab}.npy", V.astype(np.float32))
    else:
        _write_csv_array(dd / f"Hessian-eigenvectors-{ident}-{lab}.csv",
                         ["param_index"] + [f"eigvec_{i + 1}" for i in range(V.shape[1])],
                         [np.arange(V.shape[0])] + [V[:, i] for i in range(V.shape[1])],
                         ["%d"] + ["%.9g"] * V.shape[1])
    with lio.atomic_path(dd / f"model_weights-{ident}-{lab}.pth") as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    row = {"L2_strength": float(l2), "Train_Loss": tr_loss, "Train_Reg_Loss": tr_loss + float(l2) * reg,
           "Test_Loss": te_loss, "Test_Accuracy": 100.0 * te_acc, "Train_Accuracy": 100.0 * tr_acc,
           "Epochs": info["epochs"], "Lambda_Max": float(vals.max()),
           "eigenvalues": vals.tolist(), "rel_residual": ce.rel_residual.tolist(),
           "converged": ce.converged.tolist(), "hvps": ce.hvps, "stopped_early": info["stopped_early"],
           "epoch_cap": (not info["stopped_early"]) and info["epochs"] >= s["max_epochs"],
           "gradient_norm": float(np.linalg.norm(gvec)), "train_time_s": train_time, "hessian_time_s": hess_time,
           "id": ident, "eig_notes": ce.notes}
    lio.write_json(out / "cells" / f"{ident}-{lab}.json", row)
    return row


def grid_cells(ids: list[int], grid, eigvec_format: str) -> list[Cell]:
    """One cell per (run ID, L2 value); its outputs are the study's files of that model and its cell JSON."""
    cells = []
    for ident in ids:
        for l2 in grid:
            lab = l2_label(float(l2))
            files = [f"gradients-{ident}-{lab}.csv", f"Hessian-eigenvalues-{ident}-{lab}.csv",
                     f"Hessian-eigenvectors-{ident}-{lab}.{eigvec_format}", f"model_weights-{ident}-{lab}.pth"]
            cells.append(Cell(f"id_{ident}/l2_{lab}", {"id": int(ident), "l2": float(l2)},
                              tuple(f"{DATA_DIR}/{f}" for f in files) + (f"cells/{ident}-{lab}.json",)))
    return cells


def run(args) -> int:
    out = pathlib.Path(args.out)
    s = dict(PRESETS[args.preset])
    for key in ("steps", "l2_max", "k", "hessian_samples", "max_epochs", "tol", "hidden", "eigvec_format"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    grid = l2_grid(s["l2_max"], s["steps"])
    ids = parse_seeds(args.seeds, args.seed, s["seeds"])
    dev = resolve_device(args.device)
    data, dname, note = load_mnist_like(args.dataset, args.data_root, train_size=s["train"], test_size=s["test"],
                                        seed=args.seed, download=args.download)
    data = data.to(dev)
    config = {"experiment": NAME, "preset": args.preset, "seed": args.seed, "ids": ids, "dataset": dname,
              "dataset_note": note, "data_root": args.data_root, "device": args.device, "settings": s,
              "which": args.which, "method": args.method, "l2_grid": grid, "data_dir": DATA_DIR,
              "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0]),
              "hessian": "mean cross-entropy over the first hessian_samples training samples (all when null), "
                         "float64, eval mode; the L2 term (adds 2·L2 to every eigenvalue) is excluded",
              "l2_penalty": "L2 · sum of squares of all parameters, added to the batch-mean cross-entropy",
              "collapsed": f"test accuracy < {COLLAPSE_ACC:g} % (chance = 10 %): excluded from correlations"}
    open_results_folder(out, config, ("experiment", "preset", "seed", "ids", "dataset", "settings", "which",
                                      "method"))
    cells = grid_cells(ids, grid, s["eigvec_format"])

    def work(cell: Cell) -> None:
        t = time.perf_counter()
        row = _cell(out, cell.params["id"], cell.params["l2"], data, s, config, dev)
        print(f"[spectrum] ID {row['id']} L2={l2_label(row['L2_strength'])}: test acc {row['Test_Accuracy']:.2f} %, "
              f"λ_max {row['Lambda_Max']:.4g}, {row['Epochs']} epochs, {time.perf_counter() - t:.1f} s", flush=True)

    return run_grid(NAME, out, cells, work, analyze, shard=args.shard)


# ------------------------------------------------------------------------------------------ analysis
def _outlier_count(vals: np.ndarray) -> int:
    """Position of the largest ratio gap λ_i / λ_{i+1} among the positive top eigenvalues (0 when < 2)."""
    v = np.sort(np.asarray(vals, float))[::-1]
    v = v[v > 0]
    if v.size < 2:
        return 0
    return int(np.argmax(v[:-1] / v[1:]) + 1)


DPI = 300
def _caveat(cfg: dict, n_l2: int) -> str | None:
    """The caveat line of the smoke and quick presets (computed from the run's settings)."""
    s = cfg["settings"]
    what = (f"{n_l2} L2 value(s) in [0, {s['l2_max']:g}], {cfg['train_size']} training images, ≤ {s['max_epochs']} "
            f"epochs, Hessian on {s['hessian_samples'] or cfg['train_size']} samples at tolerance "
            f"{s['tol'] if s['tol'] is not None else 1e-8:g}, {len(cfg['ids'])} run ID(s)")
    if cfg["preset"] == "smoke":
        return f"**Caveat: smoke preset** — {what}: it checks that every file is written; the numbers mean nothing."
    if cfg["preset"] == "quick":
        return (f"**Caveat: quick preset** — {what} (the study's grid reaches 0.09, but on a quick run every model "
                "above L2 ≈ 0.03 collapsed to chance): trends are indicative only.")
    return None


def analyze(out) -> int:
    from matplotlib.colors import LogNorm
    from scipy import stats
    out = pathlib.Path(out)
    cfg = lio.read_json(out / "experiment_config.json")
    grid = np.asarray(cfg["l2_grid"], float)
    s = cfg["settings"]
    k = s["k"]
    ids = cfg["ids"]
    dd = out / cfg.get("data_dir", DATA_DIR)
    require_complete(out, grid_cells(ids, grid, s["eigvec_format"]))
    all_rows = {}
    for ident in ids:
        rows = [lio.read_json(out / "cells" / f"{ident}-{l2_label(l2)}.json") for l2 in grid]
        all_rows[ident] = rows
        lio.write_csv(dd / f"Model-{ident}.csv", [{c: r[c] for c in MODEL_COLUMNS} for r in rows], MODEL_COLUMNS)
    get = lambda key, dtype=float: np.array([[r[key] for r in all_rows[i]] for i in ids], dtype)   # noqa: E731
    eig = get("eigenvalues")                                                 # [I, M, k] in the order of `which`
    conv = get("converged", bool)
    res = get("rel_residual")
    acc = get("Test_Accuracy")
    eig_c = np.where(conv, eig, np.nan)                                      # unconverged → NaN (never plotted)
    lam_max = np.array([[np.nanmax(e) if np.isfinite(e).any() else np.nan for e in row] for row in eig_c])
    collapsed = is_collapsed(acc)
    capped = get("epoch_cap", bool)
    lio.write_npz(out / "spectrum.npz", ids=np.array(ids), l2=grid, eigenvalues=eig, converged=conv,
                  rel_residual=res, lambda_max_converged=lam_max, test_accuracy=acc, collapsed=collapsed,
                  epoch_cap=capped, train_loss=get("Train_Loss"), test_loss=get("Test_Loss"),
                  epochs=get("Epochs", int), gradient_norm=get("gradient_norm"), hvps=get("hvps", int))
    n_out = np.array([[_outlier_count(v[np.isfinite(v)]) for v in e] for e in eig_c])
    n_typ = int(np.median(n_out)) if n_out.size else 0
    n_unconv = int((~conv).sum())

    # ---- spectrum vs L2 (converged eigenvalues only) and the heatmap of |λ| on a log colour scale
    fig, axes = plots.new_figure(2, 1, (5.4, 4.0))
    ax = axes[0, 0]
    for ii in range(len(ids)):
        e = -np.sort(-eig_c[ii], axis=1)                                     # descending; NaN last
        for j in range(e.shape[1]):   # markers only: the j-th largest is not one eigen-direction across L2
            c = "tab:red" if j < max(n_typ, 1) else "tab:blue"
            ax.plot(grid, e[:, j], ".", color=c, ms=3 if len(grid) < 40 else 1.5, alpha=0.7,
                    label=(f"top {max(n_typ, 1)} (outliers)" if j == 0 else "rest of the top-k (bulk edge)"
                           if j == max(n_typ, 1) else None) if ii == 0 else None)
    finite = eig_c[np.isfinite(eig_c)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    elif finite.size:
        ax.set_yscale("symlog", linthresh=max(1e-6, float(np.abs(finite).min()) or 1e-6))
    ax.set_xlabel("L2 strength (coefficient of Σθ²)")
    ax.set_ylabel("Hessian eigenvalue (mean CE)")
    ax.set_title(f"top-{k} ({cfg['which']}) Hessian eigenvalues vs L2; {n_unconv} unconverged omitted", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    ax = axes[0, 1]
    A = np.abs(eig_c[0]).T                                                   # [k, M], row i = eigenvalue i + 1
    pos = A[np.isfinite(A) & (A > 0)]
    cmap = plots.plt.get_cmap("magma").with_extremes(bad="lightgrey")
    x_hi = grid[-1] if grid[-1] > grid[0] else grid[0] + 1e-9
    dx = (x_hi - grid[0]) / max(1, len(grid) - 1) / 2
    im = ax.imshow(np.ma.masked_invalid(np.where(A > 0, A, np.nan)), aspect="auto", origin="upper", cmap=cmap,
                   norm=LogNorm(vmin=float(pos.min()), vmax=float(pos.max())) if pos.size else None,
                   extent=[grid[0] - dx, x_hi + dx, k + 0.5, 0.5], interpolation="nearest")
    fig.colorbar(im, ax=ax, label="|eigenvalue| (log colour scale)")
    neg_j, neg_m = np.nonzero(eig_c[0].T < 0)
    if neg_j.size:
        ax.plot(grid[neg_m], neg_j + 1, "x", color="cyan", ms=4, mew=0.8, label="negative eigenvalue")
        ax.legend(fontsize=6, loc="lower right")
    ax.set_xlabel("L2 strength (coefficient of Σθ²)")
    ax.set_ylabel(f"eigenvalue index ({cfg['which']} order)")
    ax.set_title(f"|spectrum| of ID {ids[0]} (grey: unconverged)", fontsize=8)
    fig.tight_layout()
    plots.save(fig, out / "spectrum_vs_l2.png", dpi=DPI)

    # ---- λ_max vs test accuracy: collapsed models apart, alpha against overplotting
    keep = ~collapsed
    corr = pearson_ci(lam_max[keep], acc[keep])
    fig, axes = plots.new_figure(1, 1, (5.4, 4.0))
    ax = axes[0, 0]
    L2 = np.tile(grid, (len(ids), 1))
    sc = ax.scatter(lam_max[keep], acc[keep], c=L2[keep], cmap="viridis", s=16, alpha=0.7, edgecolor="k",
                    linewidth=0.2, vmin=float(grid.min()), vmax=float(grid.max()) if grid.max() > grid.min() else
                    float(grid.min()) + 1e-9, label=f"models (n = {int(keep.sum())})")
    if keep.any():
        fig.colorbar(sc, ax=ax, label="L2 strength")
    if capped.any():
        ax.scatter(lam_max[capped], acc[capped], s=60, facecolor="none", edgecolor="tab:red", linewidth=0.8,
                   label=f"hit the epoch cap (n = {int(capped.sum())})")
    if collapsed.any():
        ax.scatter(lam_max[collapsed], acc[collapsed], marker="x", color="grey", s=18,
                   label=f"collapsed, < {COLLAPSE_ACC:g} % (excluded, n = {int(collapsed.sum())})")
        cx, cy = np.nanmedian(lam_max[collapsed]), np.nanmedian(acc[collapsed])
        ax.annotate(f"{int(collapsed.sum())} collapsed models here", (cx, cy), xytext=(0, 18),
                    textcoords="offset points", ha="center", fontsize=7, color="dimgrey",
                    arrowprops=dict(arrowstyle="-", color="grey", lw=0.6))
    lm = lam_max[np.isfinite(lam_max)]
    if lm.size and (lm > 0).all() and lm.max() / lm.min() > 30:
        ax.set_xscale("log")
    ax.set_xlabel("λ_max (largest converged Hessian eigenvalue)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(corr.text() + " — collapsed models excluded", fontsize=7)
    ax.legend(fontsize=6, loc="best")
    ax.grid(alpha=0.3)
    plots.save(fig, out / "lambda_max_vs_test_accuracy.png", dpi=DPI)

    # ---- findings
    lines = []
    n_col = int(collapsed.sum())
    if grid.size >= 3 and keep.sum() >= 3 and np.ptp(lam_max[keep]) > 0:
        rho = stats.spearmanr(L2[keep], lam_max[keep])
        trend = ("falls" if rho.statistic < 0 else "rises") if rho.pvalue < 0.05 else "shows no significant monotone trend"
        lines.append(f"- λ_max {trend} with L2 (Spearman ρ = {rho.statistic:+.3f}, p = {rho.pvalue:.3g}, "
                     f"n = {int(keep.sum())} non-collapsed models); from {fmt(np.nanmean(lam_max[:, 0]), '.4g')} at "
                     f"L2 = 0 to {fmt(np.nanmean(lam_max[:, -1]), '.4g')} at L2 = {grid[-1]:g}.")
    else:
        lines.append(f"- {grid.size} L2 value(s), {int(keep.sum())} non-collapsed model(s): too few for a trend "
                     f"(λ_max {', '.join(fmt(v, '.4g') for v in lam_max.ravel())}).")
    lines.append(f"- λ_max vs test accuracy over the non-collapsed models: {corr.text()}"
                 + (" — significant at 5 %" if corr.ok and corr.corr.p < 0.05 else
                    " — not significant (null result)" if corr.ok else "") + ".")
    lines.append(f"- Collapsed models (test accuracy < {COLLAPSE_ACC:g} %, chance = 10 %): {n_col} of {acc.size}, "
                 "excluded from every correlation and trend"
                 + (f" (L2 = {', '.join(l2_label(v) for v in L2[collapsed][:10])}"
                    f"{' …' if n_col > 10 else ''}; mean test loss {np.mean(get('Test_Loss')[collapsed]):.4f} "
                    f"vs ln 10 = {np.log(10):.4f})." if n_col else "."))
    n_cap = int(capped.sum())
    lines.append(f"- Epoch cap: {n_cap} of {acc.size} model(s) reached max_epochs = {s['max_epochs']} before early "
                 "stopping (patience " + str(s["patience"]) + ")"
                 + (f": L2 = {', '.join(l2_label(v) for v in L2[capped][:10])}{' …' if n_cap > 10 else ''} — "
                    "their training had not converged by the study's rule." if n_cap else "."))
    lines.append(f"- Outliers vs bulk: the largest ratio gap λ_i/λ_(i+1) among the converged positive top-{k} "
                 f"lies after eigenvalue {n_typ} (median over models; per model "
                 f"{sorted(set(n_out.ravel().tolist()))}); {'this matches' if n_typ == 9 else 'this differs from'} "
                 "the C − 1 = 9 outliers expected for 10 classes.")
    tol = s["tol"] if s["tol"] is not None else 1e-8
    m_unconv = int((~conv.all(-1)).sum())
    lines.append(f"- Lanczos convergence (relative residual ‖Hy − θy‖/max|θ| ≤ {tol:g}, checked with one extra "
                 f"HVP per pair): {acc.size - m_unconv} of {acc.size} models fully converged; {n_unconv} of "
                 f"{conv.size} pairs did not (largest residual {res.max():.2e}) and are left out of λ_max, the "
                 "plots and the outlier count (kept in the eigenvalue CSVs and `spectrum.npz`).")
    neg = int((eig_c < 0).sum())
    if neg:
        lines.append(f"- {neg} of the {int(np.isfinite(eig_c).sum())} converged top-{k} ({cfg['which']}) eigenvalues "
                     "are negative.")
    lines.append(f"- Work done (counts, not times): {int(get('Epochs', int).sum())} training epochs over "
                 f"{acc.size} models; {int(get('hvps', int).sum())} Hessian-vector products (Lanczos + check) on "
                 f"{s['hessian_samples'] or cfg['train_size']} samples each.")
    step = max(1, len(grid) // 20)
    body = []
    for ii, ident in enumerate(ids):
        for j in range(0, len(grid), step):
            r = all_rows[ident][j]
            flags = ", ".join(f for f, on in (("collapsed", collapsed[ii, j]), ("epoch cap", capped[ii, j]),
                                             (f"{int((~conv[ii, j]).sum())} unconv.", not conv[ii, j].all())) if on)
            body.append([ident, l2_label(r["L2_strength"]), r["Epochs"], fmt(r["Train_Loss"], ".4f"),
                         fmt(r["Test_Loss"], ".4f"), fmt(r["Test_Accuracy"], ".2f"), fmt(lam_max[ii, j], ".4g"),
                         fmt(sorted(np.abs(r["eigenvalues"]))[-min(k, 10)], ".4g"), flags or "—"])
    data_line = f"{cfg['dataset']} ({cfg['train_size']} train / {cfg['test_size']} test)"
    if cfg.get("dataset_note"):
        data_line += f" — {cfg['dataset_note']}"
    vec_file = "Hessian-eigenvectors-{ID}-{L2}." + ("npy` (float32 [P, k])" if s["eigvec_format"] == "npy"
                                                    else "csv`")
    text = [f"# Weight-decay sweep vs Hessian spectrum (`lamda run spectrum --preset {cfg['preset']}`)", ""]
    if _caveat(cfg, len(grid)):
        text += [_caveat(cfg, len(grid)), ""]
    text += [
        f"Data: {data_line}. Sigmoid MLP {'-'.join(str(h) for h in [784, *s['hidden'], 10])}; "
        f"{len(grid)} L2 values in [0, {s['l2_max']}]; Adam lr {s['lr']}, batch {s['batch']}, ≤ {s['max_epochs']} "
        f"epochs, early stopping patience {s['patience']}; top-{k} eigenpairs (which = {cfg['which']}, "
        f"{cfg['method']}{', ≤ ' + str(s['max_iter']) + ' Lanczos steps' if s.get('max_iter') else ''}) of the mean "
        f"cross-entropy Hessian on {s['hessian_samples'] or cfg['train_size']} training samples, float64, relative "
        f"residual tolerance {tol:g}.", "",
        "Definitions: λ_max = the largest converged eigenvalue (the `Lambda_Max` column of `Model-{ID}.csv` is the "
        f"largest computed one, as in the study); collapsed = test accuracy < {COLLAPSE_ACC:g} %; epoch cap = "
        "training ended at max_epochs without early stopping.", "",
        "## Models" + (f" (every {step}th L2 value)" if step > 1 else ""), "",
        markdown_table(["ID", "L2", "epochs", "train loss", "test loss", "test acc (%)", "λ_max",
                        f"|λ|_{min(k, 10)}", "flags"], body), "",
        "## Findings (computed from the numbers)", "", *lines, "",
        f"Files under `{cfg.get('data_dir', DATA_DIR)}/`: `Model-{{ID}}.csv`, `gradients-{{ID}}-{{L2}}.csv`, "
        f"`Hessian-eigenvalues-{{ID}}-{{L2}}.csv`, `{vec_file}, `model_weights-{{ID}}-{{L2}}.pth`; at the top: "
        "`spectrum.npz`, `spectrum_vs_l2.png`, `lambda_max_vs_test_accuracy.png`, `cells/*.json`.", ""]
    lio.write_text(out / "summary.md", "\n".join(text))
    return 0


def add_arguments(p) -> None:
    add_mnist_like_argument(p)
    p.add_argument("--seeds", default=None, help="comma-separated run IDs/seeds (default: --seed)")
    p.add_argument("--steps", type=int_at_least(1), default=None, help="number of L2 values on the grid (full: 451)")
    p.add_argument("--l2-max", type=float_in(0.0), default=None, help="largest L2 strength, ≥ 0 (default 0.09)")
    p.add_argument("--k", type=int_at_least(1), default=None, help="number of Hessian eigenpairs (default 30)")
    p.add_argument("--hessian-samples", type=int_at_least(1), default=None,
                   help="training samples the Hessian is taken over (default: preset; full = all)")
    p.add_argument("--max-epochs", type=int_at_least(1), default=None, help="epoch cap before early stopping")
    p.add_argument("--hidden", type=int_list(1), default=None,
                   help="hidden widths of the sigmoid MLP, each ≥ 1 (default 128,128)")
    p.add_argument("--tol", type=float_in(0.0, 1.0, lo_open=True, hi_open=True), default=None,
                   help="relative residual tolerance of the eigenpairs, in (0, 1) (default: preset; full = 1e-8)")
    p.add_argument("--which", choices=("LM", "LA"), default="LM",
                   help="LM (default, the study's): largest magnitude; LA: largest algebraic")
    p.add_argument("--method", choices=("lanczos", "eigsh"), default="lanczos", help="eigen-solver (default lanczos)")
    p.add_argument("--eigvec-format", choices=("csv", "npy"), default=None,
                   help="eigenvector files: csv (the study's format; smoke/quick default) or npy (float32 [P, k], "
                        "the full preset's default: 451 models × 30 × 118 k values are ~27 GB as CSV)")


register(Experiment(name=NAME, help="weight-decay sweep vs top-k Hessian spectrum of a sigmoid MLP",
                    add_arguments=add_arguments, run=run, analyze=analyze))
