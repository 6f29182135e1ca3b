"""Running the spectrum study.

One grid cell per (run ID, L2 value) — train the model, then write its gradient, the top eigenpairs of each curvature of
``--curvature`` and its weights in the study's files, and a JSON record of the cell.
"""
from __future__ import annotations

import copy
import pathlib
import time

import numpy as np
import torch

from ...models import SigmoidMLP
from ...result_files import atomic_path, read_json, write_json
from ...trainer import resolve_device
from ..folders import open_results_folder, parse_seeds
from ..mnist_like import load_mnist_like
from ..runner import Cell, run_grid
from .analysis import analyze
from .config import (COLLAPSE_ACC, DATA_DIR, NAME, curvatures, grid_cells, key_prefix, l2_grid, l2_label,
                     model_files, settings)
from .curvature import full_gradient, hessian_data, top_eigenpairs
from .training import evaluate, l2_term, train_model

__all__ = ["run", "train_cell"]

IDENTITY = ("experiment", "preset", "seed", "ids", "dataset", "settings", "which", "method", "curvature")


def _write_csv_array(path, header: list[str], columns: list[np.ndarray], fmts: list[str]) -> None:
    """CSV of column arrays (np.savetxt into an atomic temp file)."""
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.column_stack(columns), delimiter=",", header=",".join(header), comments="", fmt=fmts)


def _write_npy(path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)


def _write_gradient(path, grads: dict[str, torch.Tensor]) -> np.ndarray:
    """The study's gradient CSV (parameter, flat_index, gradient); returns the flat gradient."""
    names = np.concatenate([np.full(g.numel(), k, dtype=object) for k, g in grads.items()])
    flat_idx = np.concatenate([np.arange(g.numel()) for g in grads.values()])
    gvec = torch.cat([g.reshape(-1) for g in grads.values()]).cpu().numpy()
    _write_csv_array(path, ["parameter", "flat_index", "gradient"], [names, flat_idx, gvec], ["%s", "%d", "%.12e"])
    return gvec


def _write_eigenpairs(files: dict, dd: pathlib.Path, ce, eigvec_format: str, pre: str) -> None:
    """The study's eigenvalue CSV and eigenvector file (CSV, or float32 npy ``[P, k]``) of one curvature.

    The curvature is the one whose roles in ``files`` start with ``pre``.
    """
    vals = ce.values
    _write_csv_array(dd / files[f"{pre}eigenvalues"], ["index", "eigenvalue"], [np.arange(1, len(vals) + 1), vals],
                     ["%d", "%.17g"])
    V = ce.vectors.detach().cpu().numpy().T                                   # [P, k]
    if eigvec_format == "npy":
        _write_npy(dd / files[f"{pre}eigenvectors"], V.astype(np.float32))
    else:
        _write_csv_array(dd / files[f"{pre}eigenvectors"],
                         ["param_index"] + [f"eigvec_{i + 1}" for i in range(V.shape[1])],
                         [np.arange(V.shape[0])] + [V[:, i] for i in range(V.shape[1])],
                         ["%d"] + ["%.9g"] * V.shape[1])


def _curvature_record(kind: str, ce, seconds: float) -> dict:
    """A curvature's entries of the cell record.

    Keys start with its ``key_prefix``; ``hvps`` counts its curvature-vector products, Lanczos and check.
    """
    pre = key_prefix(kind)
    return {f"{pre}eigenvalues": ce.values.tolist(), f"{pre}rel_residual": ce.rel_residual.tolist(),
            f"{pre}converged": ce.converged.tolist(), f"{pre}hvps": ce.hvps, f"{pre}eig_notes": ce.notes,
            f"{kind}_time_s": seconds}


def _eigenpairs(m64, hdata, files: dict, dd: pathlib.Path, s: dict, cfg: dict, ident: int) -> tuple[dict, float]:
    """Every curvature of ``cfg["curvature"]``.

    Its checked top-k eigenpairs written to its files (the same start vector seed for each); the cell record's curvature
    entries and the primary curvature's largest eigenvalue.
    """
    rec, lam_max = {}, None
    for kind in curvatures(cfg["curvature"]):
        t = time.perf_counter()
        ce = top_eigenpairs(m64, hdata, s, cfg, torch.Generator().manual_seed(ident * 1000 + 3), kind)
        rec.update(_curvature_record(kind, ce, time.perf_counter() - t))
        _write_eigenpairs(files, dd, ce, s["eigvec_format"], key_prefix(kind))
        lam_max = float(ce.values.max()) if lam_max is None else lam_max
    return rec, lam_max


def train_cell(out: pathlib.Path, ident: int, l2: float, data, s: dict, cfg: dict, dev) -> dict:
    """Train the model of (``ident``, ``l2``), write its files, and return (and write) its cell record."""
    files, dd = model_files(ident, l2, s["eigvec_format"], curvatures(cfg["curvature"])), out / DATA_DIR
    torch.manual_seed(ident)
    model = SigmoidMLP(in_features=data.x_train[0].numel(), hidden=tuple(s["hidden"]),
                       num_classes=data.num_classes).to(dev)
    t0 = time.perf_counter()
    info = train_model(model, data, float(l2), s, ident)
    train_time = time.perf_counter() - t0
    tr_loss, tr_acc = evaluate(model, data.x_train, data.y_train)
    te_loss, te_acc = evaluate(model, data.x_test, data.y_test)
    reg = float(l2_term(model).detach())
    m64 = copy.deepcopy(model).double().eval()              # float64 copy for the gradient and the curvature
    hdata = hessian_data(data, s["hessian_samples"])
    gvec = _write_gradient(dd / files["gradients"], full_gradient(m64, hdata))
    curv, lam_max = _eigenpairs(m64, hdata, files, dd, s, cfg, ident)
    with atomic_path(dd / files["weights"]) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    row = {"L2_strength": float(l2), "Train_Loss": tr_loss, "Train_Reg_Loss": tr_loss + float(l2) * reg,
           "Test_Loss": te_loss, "Test_Accuracy": 100.0 * te_acc, "Train_Accuracy": 100.0 * tr_acc,
           "Epochs": info["epochs"], "Lambda_Max": lam_max, **curv, "stopped_early": info["stopped_early"],
           "epoch_cap": (not info["stopped_early"]) and info["epochs"] >= s["max_epochs"],
           "gradient_norm": float(np.linalg.norm(gvec)), "train_time_s": train_time, "id": ident}
    write_json(out / "cells" / f"{ident}-{l2_label(l2)}.json", row)
    return row


def _experiment_config(args, s: dict, grid, ids, data, dname: str, note: str) -> dict:
    return {"experiment": NAME, "preset": args.preset, "seed": args.seed, "ids": ids, "dataset": dname,
            "dataset_note": note, "data_root": args.data_root, "device": args.device, "settings": s,
            "which": args.which, "method": args.method, "curvature": args.curvature, "l2_grid": grid,
            "data_dir": DATA_DIR,
            "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0]),
            "hessian": "mean cross-entropy over the first hessian_samples training samples (all when null), "
                       "float64, eval mode; the L2 term (adds 2·L2 to every eigenvalue) is excluded",
            "ggn": "generalised Gauss–Newton matrix J^T H_CE J of the same loss, data and model (J: Jacobian of the "
                   "logits)",
            "l2_penalty": "L2 · sum of squares of all parameters, added to the batch-mean cross-entropy",
            "collapsed": f"test accuracy < {COLLAPSE_ACC:g} % (chance = 10 %): excluded from correlations"}


def _name_the_hessian(out: pathlib.Path) -> None:
    """A results folder whose config names no curvature holds the Hessian's spectra.

    Write ``"curvature": "hessian"`` into its config files, so that resuming it with the default ``--curvature`` finds
    the same run.
    """
    for name in ("experiment_config.json", "config.json"):
        path = out / name
        if path.is_file():
            cfg = read_json(path)
            if "curvature" not in cfg:
                write_json(path, {**cfg, "curvature": "hessian"})


def run(args) -> int:
    """``lamda run spectrum``: train and analyse every (ID, L2) model, then (rank 0) the analysis."""
    out = pathlib.Path(args.out)
    s = settings(args)
    grid = l2_grid(s["l2_max"], s["steps"])
    ids = parse_seeds(args.seeds, args.seed, s["seeds"])
    dev = resolve_device(args.device)
    data, dname, note = load_mnist_like(args.dataset, args.data_root, train_size=s["train"], test_size=s["test"],
                                        seed=args.seed, download=args.download)
    data = data.to(dev)
    config = _experiment_config(args, s, grid, ids, data, dname, note)
    _name_the_hessian(out)
    open_results_folder(out, config, IDENTITY)

    def work(cell: Cell) -> None:
        t = time.perf_counter()
        row = train_cell(out, cell.params["id"], cell.params["l2"], data, s, config, dev)
        print(f"[{NAME}] ID {row['id']} L2={l2_label(row['L2_strength'])}: test acc {row['Test_Accuracy']:.2f} %, "
              f"λ_max {row['Lambda_Max']:.4g}, {row['Epochs']} epochs, {time.perf_counter() - t:.1f} s", flush=True)

    cells = grid_cells(ids, grid, s["eigvec_format"], curvatures(args.curvature))
    return run_grid(NAME, out, cells, work, analyze, shard=args.shard)
