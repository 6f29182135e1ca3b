"""Running the diagnostic: one grid cell per (data set, method, seed) run.

Each cell is a training run with λ measured on a fixed set of test points on the schedule of
[`lamda.schedule`][lamda.schedule].
"""
from __future__ import annotations

import copy
import pathlib

import numpy as np
import torch

from ... import distributed
from ...data import load_dataset
from ...measure import DIRECTION_MODES, LambdaMeter, MeasureConfig
from ...models import build_model
from ...regularizers import (Augmentation, Dropout, InputGradientPenalty, LabelSmoothing, RegularizerSet, SAM,
                             WeightDecay)
from ...schedule import MeasurementSchedule
from ...trainer import Trainer, TrainConfig, train_run
from ..folders import open_results_folder, parse_seeds
from ..runner import Cell, cell_is_complete, run_grid
from .analysis import analyze, figure_folders
from .config import (K_DIRECTIONS, NAME, ORDER, PRESETS, RunSpec, dataset_dirs, datasets_of, methods_of,
                     plan_cells)

__all__ = ["run", "regularizers", "measurement_points", "train_one"]

# the settings a resumed run must repeat
IDENTITY = ("experiment", "preset", "datasets", "seeds", "methods", "overrides", "direction_mode")


def regularizers(spec: RunSpec) -> RegularizerSet:
    """The regularisers of one run of the grid (its family at its strength)."""
    f, s = spec.family, spec.strength
    if f == "baseline":
        return RegularizerSet([])
    if f == "dropout":
        return RegularizerSet([Dropout(float(s))])
    if f == "weight_decay":
        return RegularizerSet([WeightDecay(float(s))])
    if f == "augmentation":
        rot = 15.0 if s == "crop_flip_rotation" else None
        return RegularizerSet([Augmentation.for_dataset(spec.dataset, rotation=rot)])
    if f == "label_smoothing":
        return RegularizerSet([LabelSmoothing(float(s))])
    if f == "sam":
        return RegularizerSet([SAM(float(s))])
    if f == "input_gradient_penalty":
        return RegularizerSet([InputGradientPenalty(float(s))])
    raise ValueError(f"unknown method family {f!r}")


def _model_kwargs(spec: RunSpec) -> dict:
    if spec.settings["model"] == "mnist_cnn":
        return {"dropout": 0.0, "dropout_fc": 0.0}       # dropout only in the dropout runs
    return {}


def measurement_points(n_test: int, points: int, seed: int) -> np.ndarray:
    """Indices (into the test subset) of the fixed λ measurement points."""
    g = torch.Generator().manual_seed(seed + 99)
    return np.sort(torch.randperm(n_test, generator=g)[:min(points, n_test)].numpy())


def train_one(spec: RunSpec, data, out_dir: pathlib.Path, args, meas_idx: np.ndarray) -> None:
    """Train one run into ``out_dir / spec.run_rel``, measuring λ on the test points ``meas_idx``."""
    s, seed = spec.settings, spec.seed
    cfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch"], lr=s["lr"], optimizer="adam",
                      schedule=s["schedule"], seed=seed, device=args.device, progress=not args.no_progress)
    mcfg = MeasureConfig(points=len(meas_idx), directions=K_DIRECTIONS, order=ORDER, seed=seed * 1000 + 7,
                         direction_mode=args.direction_mode)
    run_config = {"experiment": NAME, "dataset": spec.dataset, "family": spec.family, "strength": spec.strength,
                  "label": spec.label, "seed": seed, "model": s["model"], "model_kwargs": _model_kwargs(spec),
                  "train": cfg.to_dict(), "measure": mcfg.to_dict(), "regularizers": regularizers(spec).describe(),
                  "train_size": s["train"], "test_size": s["test"]}

    def build():
        torch.manual_seed(seed)
        model = build_model(s["model"], in_channels=data.in_channels, image_size=data.image_size,
                            num_classes=data.num_classes, **_model_kwargs(spec))
        idx = torch.as_tensor(meas_idx)
        meter = LambdaMeter(data.x_test[idx], data.y_test[idx], mcfg)
        return Trainer(model, copy.copy(data), regularizers(spec), cfg, meter, MeasurementSchedule())

    train_run(build, out_dir / spec.run_rel, config=run_config, measurement_indices=meas_idx,
              desc=f"{spec.dataset}:{spec.label}:seed {seed}")


def _experiment_config(args, datasets, seeds, methods, overrides, dirs, specs, out) -> dict:
    return {"experiment": NAME, "preset": args.preset, "datasets": datasets, "seed": seeds[0], "seeds": seeds,
            "methods": methods, "overrides": overrides, "direction_mode": args.direction_mode,
            "data_root": args.data_root, "device": args.device, "directions": K_DIRECTIONS, "order": ORDER,
            "settings": {d: {**PRESETS[args.preset][d], **overrides} for d in datasets},
            "dataset_dirs": {d: str(p.relative_to(out)) if p != out else "." for d, p in dirs.items()},
            "runs": {d: [{"rel": s.rel, "dir": s.run_rel, "seed": s.seed, "family": s.family,
                          "family_dir": s.family_dir, "strength": s.strength, "label": s.label}
                         for s in specs if s.dataset == d] for d in datasets}}


def run(args) -> int:
    """``lamda run diagnostic``: train every run of the grid, then (rank 0, once all are done) the analyses."""
    out = pathlib.Path(args.out)
    datasets = datasets_of(args.dataset)
    dirs = dataset_dirs(out, datasets)
    methods = methods_of(args.methods)
    overrides = {k: getattr(args, k) for k in ("epochs", "points") if getattr(args, k, None) is not None}
    if args.direction_mode not in DIRECTION_MODES:
        raise ValueError(f"--direction-mode must be one of {DIRECTION_MODES}, got {args.direction_mode!r}")
    n_seeds = max(PRESETS[args.preset][d].get("seeds", 1) for d in datasets)
    seeds = parse_seeds(getattr(args, "seeds", None), args.seed, n_seeds)
    specs, cells = plan_cells(datasets, args.preset, seeds, methods, overrides, dirs, out)
    open_results_folder(out, _experiment_config(args, datasets, seeds, methods, overrides, dirs, specs, out),
                        IDENTITY, copy=False)
    by_key = {c.key: sp for c, sp in zip(cells, specs)}
    loaded: dict = {}

    def work(cell: Cell) -> None:
        spec = by_key[cell.key]
        key = (spec.dataset, spec.seed)
        if key not in loaded:
            st = spec.settings
            data = load_dataset(spec.dataset, root=args.data_root, train_size=st["train"], test_size=st["test"],
                                seed=spec.seed, download=args.download)
            loaded[key] = (data, measurement_points(data.x_test.shape[0], st["points"], spec.seed))
        data, idx = loaded[key]
        train_one(spec, data, dirs[spec.dataset], args, idx)

    rc = run_grid(NAME, out, cells, work, analyze, shard=args.shard, progress=True)
    if rc == 0 and distributed.rank_world()[0] == 0 and all(cell_is_complete(out, c) for c in cells):
        print(f"[{NAME}] summary: {out / 'summary.md'}", flush=True)
        for f in figure_folders(out):
            print(f"[{NAME}] figures: {f}", flush=True)
    return rc
