"""Running the landscape study, in two stages on the grid runner.

Every model (training, Hessian extremes, sharpness), then per architecture the linear paths between seeds and the loss
surface of the first seed.
"""
from __future__ import annotations

import copy
import pathlib
import time

import numpy as np
import torch

from lamda_ext.hessian import HessianOperator

from ...data import load_dataset
from ...landscape import loss_surface, mode_connectivity, sharpness
from ...landscape.eigcheck import checked_eigs
from ...models import build_model
from ...regularizers import Augmentation, RegularizerSet
from ...result_files import load_checkpoint, write_json, write_npz
from ...trainer import TrainConfig, Trainer, resolve_device, run_is_complete, train_run
from ..folders import open_results_folder, parse_seeds
from ..runner import Cell, cell_is_complete, run_grid
from .analysis import analyze
from .config import ARCHS, NAME, RHO, archs_of, model_cells, pair_cells, settings

__all__ = ["run", "build", "train_one", "analyse_model"]

IDENTITY = ("experiment", "preset", "seed", "seeds", "archs", "settings")


def _batched(x, y, n, bs=256):
    if n is not None:
        x, y = x[:n], y[:n]
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, x.shape[0], bs)]


def build(arch: str, s: dict) -> torch.nn.Module:
    """The architecture with the preset's size."""
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in s.get("model_kwargs", {}).get(arch, {}).items()}
    return build_model(ARCHS[arch], in_channels=3, image_size=32, num_classes=10, **kw)


def _load_model(arch: str, run_dir: pathlib.Path, dev, s: dict) -> torch.nn.Module:
    model = build(arch, s)
    model.load_state_dict(load_checkpoint(run_dir / "final_model.pt")["model"])
    return model.to(dev).eval()


def train_one(arch: str, seed: int, data, s: dict, args, run_dir: pathlib.Path) -> None:
    """Train one (architecture, seed) model into ``run_dir`` (Adam, cosine schedule, crop + flip)."""
    cfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch"], lr=s["lr"], optimizer="adam", schedule="cosine",
                      seed=seed, device=args.device, progress=not args.no_progress)

    def regs():
        return RegularizerSet([Augmentation.for_dataset("cifar10")] if s["augment"] else [])

    def make():
        torch.manual_seed(seed)
        return Trainer(build(arch, s), copy.copy(data), regs(), cfg)

    train_run(make, run_dir, config={"experiment": NAME, "arch": arch, "model": ARCHS[arch], "seed": seed,
                                     "model_kwargs": s.get("model_kwargs", {}).get(arch, {}),
                                     "train": cfg.to_dict(), "regularizers": regs().describe()},
              desc=f"{arch}/seed_{seed}")


def analyse_model(arch: str, seed: int, data, s: dict, dev, run_dir: pathlib.Path) -> None:
    """Hessian extremes (with residual checks) and sharpness of one trained model.

    Writes ``hessian.npz`` and ``analysis.json`` (last: it marks the model as analysed).
    """
    model = _load_model(arch, run_dir, dev, s)
    hdata = _batched(data.x_train, data.y_train, s["hessian_samples"])
    gen = torch.Generator().manual_seed(seed * 31 + 1)
    t0 = time.perf_counter()
    op = HessianOperator(model, "cross_entropy", hdata)          # one tangent graph serves both ends
    top = checked_eigs(op, k=s["k"], which="LA", tol=s["eig_tol"], max_iter=s["eig_max_iter"], generator=gen)
    neg = checked_eigs(op, k=s["k_neg"], which="SA", tol=s["eig_tol"], max_iter=s["eig_max_iter"], generator=gen)
    h_time = time.perf_counter() - t0
    sdata = _batched(data.x_train, data.y_train, s["sharp_samples"])
    sh = sharpness(model, "cross_entropy", sdata, rho=RHO, kind="adversarial")
    sh_r = sharpness(model, "cross_entropy", sdata, rho=RHO, kind="random", n_random=5,
                     generator=torch.Generator().manual_seed(seed))
    write_npz(run_dir / "hessian.npz", top_eigenvalues=top.values, top_rel_residual=top.rel_residual,
              top_converged=top.converged, negative_eigenvalues=neg.values,
              negative_rel_residual=neg.rel_residual, negative_converged=neg.converged)
    write_json(run_dir / "analysis.json", {
        "top_eigenvalues": top.values.tolist(), "top_rel_residual": top.rel_residual.tolist(),
        "top_converged": top.converged.tolist(), "negative_eigenvalues": neg.values.tolist(),
        "negative_rel_residual": neg.rel_residual.tolist(), "negative_converged": neg.converged.tolist(),
        "sharpness": sh, "sharpness_random": sh_r, "rho": RHO, "hessian_samples": s["hessian_samples"],
        "hessian_time_s": h_time, "hessian_hvps": top.hvps + neg.hvps, "eig_tol": s["eig_tol"],
        "eig_notes": top.notes + neg.notes, "n_params": sum(p.numel() for p in model.parameters())})


def _connectivity(out: pathlib.Path, arch: str, sa: int, sb: int, data, s: dict, dev) -> None:
    """Linear path between two seeds on the run's test set (the model table's data) → its JSON."""
    ma = _load_model(arch, out / "runs" / arch / f"seed_{sa}", dev, s)
    mb = _load_model(arch, out / "runs" / arch / f"seed_{sb}", dev, s)
    bn = _batched(data.x_train, data.y_train, s["hessian_samples"] * 4 if s["hessian_samples"] else None)
    res = mode_connectivity(ma, mb, _batched(data.x_test, data.y_test, None), steps=s["conn_steps"], bn_data=bn)
    i = int(np.argmin(res.accuracies))
    write_json(out / "pairs" / f"connectivity_{arch}_{sa}-{sb}.json", {
        **res.as_dict(), "arch": arch, "seed_a": sa, "seed_b": sb, "min_acc": float(res.accuracies[i]),
        "min_acc_alpha": float(res.alphas[i]), "acc_a": float(res.accuracies[0]), "acc_b": float(res.accuracies[-1]),
        "n_eval": int(data.x_test.shape[0]), "n_bn": int(sum(x.shape[0] for x, _ in bn)) if res.bn_reestimated else 0})


def _surface(out: pathlib.Path, arch: str, seed: int, data, s: dict, dev) -> None:
    """The filter-normalised 2-D loss surface around one model → ``pairs/surface_<arch>.npz``."""
    m = _load_model(arch, out / "runs" / arch / f"seed_{seed}", dev, s)
    res = loss_surface(m, _batched(data.x_test, data.y_test, s["surface_samples"]), directions=2,
                       span=s["surface_span"], resolution=s["surface_res"],
                       generator=torch.Generator().manual_seed(seed + 123))
    write_npz(out / "pairs" / f"surface_{arch}.npz", alphas=res.alphas, betas=res.betas, losses=res.losses,
              accuracies=res.accuracies)


def run(args) -> int:
    """``lamda run landscape``: stage 1 (every model), then stage 2 (paths, surfaces) and (rank 0) the analysis."""
    out = pathlib.Path(args.out)
    s = settings(args)
    seeds = parse_seeds(args.seeds, args.seed, s["seeds"])
    if len(seeds) < 2:
        raise ValueError("landscape needs at least two seeds per architecture (mode connectivity)")
    archs = archs_of(args.archs)
    dev = resolve_device(args.device)
    data = load_dataset("cifar10", root=args.data_root, train_size=s["train"], test_size=s["test"], seed=args.seed,
                        download=args.download)
    config = {"experiment": NAME, "preset": args.preset, "seed": args.seed, "seeds": seeds, "archs": archs,
              "data_root": args.data_root, "device": args.device, "settings": s, "rho": RHO,
              "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0])}
    open_results_folder(out, config, IDENTITY)
    models, pairs = model_cells(archs, seeds), pair_cells(archs, seeds)

    def work(cell: Cell) -> None:
        p = cell.params
        if p["kind"] == "model":
            rd = out / "runs" / p["arch"] / f"seed_{p['seed']}"
            if not run_is_complete(rd):
                train_one(p["arch"], p["seed"], data, s, args, rd)
            analyse_model(p["arch"], p["seed"], data, s, dev, rd)
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
