"""Running the probe study: one grid cell per (seed, optimizer).

The ``sgd_matched`` control trains in its ``probe`` run's cell, at that run's mean learning rate.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ...result_files import read_csv
from ...trainer import resolve_device, run_is_complete
from ..folders import open_results_folder, parse_seeds
from ..mnist_like import load_mnist_like
from ..runner import Cell, run_grid
from .analysis import analyze
from .config import MIN_SCALE, NAME, grid_cells, optimizers_of, settings
from .training import train_one

__all__ = ["run", "matched_lr"]

IDENTITY = ("experiment", "preset", "seed", "seeds", "optimizers", "dataset", "settings", "max_scale")


def matched_lr(out: pathlib.Path, seed: int) -> float:
    """The mean lr over the steps of ``runs/probe/seed_<seed>`` (finished), for the ``sgd_matched`` control.

    Raises:
        ValueError: that probe run is not finished.
    """
    rd = out / "runs" / "probe" / f"seed_{seed}"
    if not run_is_complete(rd):
        raise ValueError(f"sgd_matched/seed_{seed} trains at the mean lr of probe/seed_{seed}, which is not finished "
                         f"in {out}; resume the run (the cell probe+sgd_matched/seed_{seed} trains both, in order)")
    lrs = np.array([r["lr"] for r in read_csv(rd / "steps.csv")], float)
    return float(lrs.mean())


def run(args) -> int:
    """``lamda run probe``: train every (seed, optimizer) cell, then (rank 0) the analysis."""
    out = pathlib.Path(args.out)
    s = settings(args)
    seeds = parse_seeds(args.seeds, args.seed, s["seeds"])
    opts = optimizers_of(args.optimizers)
    data, dname, note = load_mnist_like(args.dataset, args.data_root, train_size=s["train"], test_size=s["test"],
                                        seed=args.seed, download=args.download)
    data = data.to(resolve_device(args.device))
    config = {"experiment": NAME, "preset": args.preset, "seed": args.seed, "seeds": seeds, "optimizers": opts,
              "dataset": dname, "dataset_note": note, "data_root": args.data_root, "device": args.device,
              "settings": s, "max_scale": args.max_scale, "min_scale": MIN_SCALE,
              "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0])}
    open_results_folder(out, config, IDENTITY)

    def work(cell: Cell) -> None:
        sd = cell.params["seed"]
        for o, rel in zip(cell.params["optimizers"], cell.outputs):
            rd = out / rel
            if not run_is_complete(rd):        # sgd_matched after its probe run: that run's mean lr
                train_one(o, sd, data, s, args, rd, matched_lr(out, sd) if o == "sgd_matched" else None)

    return run_grid(NAME, out, grid_cells(config), work, analyze, shard=args.shard, progress=not args.no_progress)
