"""Running the selective study.

One grid cell per (condition, seed), a training run followed by the λ measurement per class pair on its boundary test
points.
"""
from __future__ import annotations

import copy
import pathlib

import torch

from ...models import build_model
from ...regularizers import LambdaPenalty, RegularizerSet
from ...result_files import write_json, write_npz
from ...trainer import Trainer, TrainConfig, train_run
from ..folders import open_results_folder, parse_seeds
from ..mnist_like import load_mnist_like
from ..runner import Cell, run_grid
from .analysis import analyze
from .boundary import measure_pairs
from .config import (CONDITIONS, MEASURE_K, MEASURE_ORDER, MIN_POINTS, NAME, PAIR_NAMES, PENALTY_K, PENALTY_ORDER,
                     PROB_WINDOW, conditions_of, grid_cells, settings)

__all__ = ["run", "regularizers", "train_one"]

IDENTITY = ("experiment", "preset", "seed", "seeds", "conditions", "scale", "label_noise", "dataset", "settings")


def regularizers(condition: str, scale: float, penalty_points, seed: int) -> RegularizerSet:
    """The λ penalty of ``condition`` (none for the baseline), on its classes' samples."""
    classes = CONDITIONS[condition]
    if classes == "none":
        return RegularizerSet([])
    return RegularizerSet([LambdaPenalty(scale, order=PENALTY_ORDER, directions=PENALTY_K, classes=classes,
                                         max_points=penalty_points, seed=seed + 17)])


def train_one(condition: str, seed: int, data, run_dir: pathlib.Path, s: dict, args) -> None:
    """Train one (condition, seed) run into ``run_dir`` and measure λ per class pair (``boundary_lambda.*``)."""
    cfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch"], lr=s["lr"], optimizer="adam", seed=seed,
                      device=args.device, progress=not args.no_progress)
    regs = regularizers(condition, s["scale"], s["penalty_points"], seed)
    run_config = {"experiment": NAME, "condition": condition, "seed": seed, "model": "mnist_cnn",
                  "model_kwargs": {"dropout": 0.5, "dropout_fc": 0.5}, "train": cfg.to_dict(),
                  "regularizers": regs.describe(), "dataset": data.name, "label_noise": args.label_noise,
                  "boundary_rule": s["boundary_rule"]}
    holder = []

    def build():
        torch.manual_seed(seed)
        model = build_model("mnist_cnn", num_classes=data.num_classes, dropout=0.5, dropout_fc=0.5)
        tr = Trainer(model, copy.copy(data), regularizers(condition, s["scale"], s["penalty_points"], seed), cfg)
        holder[:] = [tr]
        return tr

    def boundary(rd: pathlib.Path, result) -> None:
        tr = holder[0]
        summary, arrays = measure_pairs(tr.model, tr.data.x_test, tr.data.y_test, rule=s["boundary_rule"],
                                        max_points=s["max_boundary"], seed=seed)
        write_npz(rd / "boundary_lambda.npz", **arrays)
        write_json(rd / "boundary_lambda.json", summary)

    train_run(build, run_dir, config=run_config, extra_outputs=boundary, desc=f"{condition}/seed_{seed}")


def _experiment_config(args, s: dict, seeds, conditions, data, dname: str, note: str) -> dict:
    return {"experiment": NAME, "preset": args.preset, "seed": args.seed, "seeds": seeds,
            "conditions": conditions, "scale": s["scale"], "label_noise": args.label_noise,
            "dataset": dname, "dataset_note": note, "data_root": args.data_root, "device": args.device,
            "settings": s, "penalty": {"order": PENALTY_ORDER, "directions": PENALTY_K,
                                       "direction_protocol": "per-point"},
            "measurement": {"order": MEASURE_ORDER, "directions": MEASURE_K, "direction_protocol": "per-point",
                            "boundary_rule": s["boundary_rule"], "prob_window": PROB_WINDOW,
                            "max_points": s["max_boundary"], "min_points": MIN_POINTS, "pairs": PAIR_NAMES},
            "train_size": int(data.x_train.shape[0]), "test_size": int(data.x_test.shape[0])}


def run(args) -> int:
    """``lamda run selective``: train every (condition, seed) cell, then (rank 0) the analysis."""
    out = pathlib.Path(args.out)
    s = settings(args)
    seeds = parse_seeds(args.seeds, args.seed, s["seeds"])
    conditions = conditions_of(args.conditions)
    data, dname, note = load_mnist_like(args.dataset, args.data_root, train_size=s["train"], test_size=s["test"],
                                        seed=args.seed, label_noise=args.label_noise, download=args.download)
    config = _experiment_config(args, s, seeds, conditions, data, dname, note)
    open_results_folder(out, config, IDENTITY)

    def work(cell: Cell) -> None:
        train_one(cell.params["condition"], cell.params["seed"], data, out / cell.outputs[0], s, args)

    return run_grid(NAME, out, grid_cells(config), work, analyze, shard=args.shard, progress=not args.no_progress)
