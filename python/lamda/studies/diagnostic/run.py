"""``lamda run diagnostic``: λ as a training diagnostic across seven regularisers (issue 5).

The same model is trained under each method (baseline; dropout; weight decay; data augmentation;
label smoothing; SAM; input-gradient penalty) and λ is measured during training on a fixed set of
test points on the schedule of :mod:`lamda.schedule`: K = 15 input directions drawn once per run and
shared by every point (``--direction-mode shared``, the study's protocol; ``per-point`` is the old one),
orders 1–6. Afterwards the post-hoc analyses (:mod:`lamda.analysis.diagnostic`) run on the saved arrays
alone. Each run is one cell of the shared grid runner (:mod:`lamda.experiments.runner`).

Output tree under ``--out`` (per data set; with ``--dataset both`` CIFAR-10 goes into ``cifar10/``; with
several ``--seeds`` every run folder holds one ``seed_<s>/`` folder per seed)::

    experiment_config.json, summary.md
    00_summary/  all_methods_comparison.png performance_vs_lambda.png generalization_gap_vs_lambda.png
                 calibration_vs_lambda.png summary_statistics.csv
    01_baseline/ training_metrics.csv lambda_data.npz lambda_evolution.png final_model.pt config.json
                 baseline_comparison.png
    02_dropout/dropout_0.3/ ...  02_dropout/dropout_comparison.png
    03_weight_decay/wd_1e-4/ ... wd_comparison.png      04_data_augmentation/rotation_translation/ ...
    05_label_smoothing/smooth_0.05/ ... smooth_comparison.png   06_sam/sam_rho_0.05/ ... sam_comparison.png
    07_input_gradient_penalty/igp_0.01/ ... igp_comparison.png
    validation_analysis/ direction_convergence/ order_sensitivity/ temporal_directional_stability/
                         joint_K_order_optimization/     (file names: lamda.analysis.diagnostic.validation_files)
"""
from __future__ import annotations

import copy
import pathlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ... import distributed
from ... import result_files as lio
from ...data import load_dataset
from ...measure import DIRECTION_MODES, LambdaMeter, MeasureConfig
from ...models import build_model
from ...regularizers import (Augmentation, Dropout, InputGradientPenalty, LabelSmoothing, RegularizerSet, SAM,
                            WeightDecay)
from ...schedule import MeasurementSchedule
from ...trainer import Trainer, TrainConfig, train_run
from .. import Experiment, register
from ..support import parse_seeds
from ..runner import Cell, cell_is_complete, recorded_cells, require_complete, run_grid

__all__ = ["PRESETS", "FAMILIES", "RunSpec", "plan_runs", "run", "analyze", "dataset_dirs", "plan_cells"]

NAME = "diagnostic"

# Per data set and preset: subset sizes, optimiser, epochs, measurement points, model, and the test accuracy a
# run is expected to reach (``acc_target``; the summary carries a caveat when a run misses it). ``seeds``: how
# many seeds (from --seed) when --seeds is not given. ``one_strength``: every method at its middle strength only.
# quick (the README's main job): the 7 methods at one strength, 15 epochs — 105 run-epochs against the 255 of
# the former 17-run quick preset.
PRESETS: dict[str, dict[str, dict]] = {
    "full": {
        "mnist": dict(train=1000, test=1000, epochs=50, batch=128, lr=1e-3, schedule="none", points=100,
                      model="mnist_cnn", acc_target=0.85, seeds=3),
        "digits": dict(train=1000, test=597, epochs=50, batch=128, lr=1e-3, schedule="none", points=100,
                       model="mnist_cnn", acc_target=0.85, seeds=3),
        "cifar10": dict(train=10000, test=1000, epochs=100, batch=128, lr=3e-3, schedule="cosine", points=100,
                        model="cifar_cnn", acc_target=0.65, seeds=3),
    },
    "quick": {
        "mnist": dict(train=1000, test=1000, epochs=15, batch=128, lr=1e-3, schedule="none", points=50,
                      model="mnist_cnn", acc_target=0.85, seeds=1, one_strength=True),
        "digits": dict(train=1000, test=597, epochs=15, batch=128, lr=1e-3, schedule="none", points=50,
                       model="mnist_cnn", acc_target=0.85, seeds=1, one_strength=True),
        "cifar10": dict(train=2000, test=500, epochs=10, batch=128, lr=1e-3, schedule="cosine", points=40,
                        model="cifar_cnn", acc_target=0.40, seeds=1, one_strength=True),
    },
    "smoke": {
        "mnist": dict(train=256, test=256, epochs=2, batch=64, lr=1e-3, schedule="none", points=8,
                      model="mnist_cnn", acc_target=0.85, seeds=1, one_strength=True),
        "digits": dict(train=256, test=200, epochs=2, batch=64, lr=1e-3, schedule="none", points=8,
                       model="mnist_cnn", acc_target=0.85, seeds=1, one_strength=True),
        "cifar10": dict(train=256, test=128, epochs=2, batch=64, lr=1e-3, schedule="cosine", points=8,
                        model="cifar_cnn", acc_target=0.40, seeds=1, one_strength=True),
    },
}

K_DIRECTIONS, ORDER = 15, 6

# (folder, family key, strengths); the smoke preset runs the middle strength of each family.
FAMILIES = (
    ("01_baseline", "baseline", (None,)),
    ("02_dropout", "dropout", (0.3, 0.5, 0.7)),
    ("03_weight_decay", "weight_decay", (1e-4, 1e-3, 1e-2)),
    ("04_data_augmentation", "augmentation", ("rotation_translation",)),      # cifar10: see _aug_strengths
    ("05_label_smoothing", "label_smoothing", (0.05, 0.1, 0.15)),
    ("06_sam", "sam", (0.05, 0.1, 0.2)),
    ("07_input_gradient_penalty", "input_gradient_penalty", (0.01, 0.1, 1.0)),
)
# run-folder prefixes, as the study names them (wd_1e-4, smooth_0.1, sam_rho_0.1, igp_0.1)
_SHORT = {"dropout": "dropout", "weight_decay": "wd", "label_smoothing": "smooth",
          "sam": "sam_rho", "input_gradient_penalty": "igp"}


def _strength_name(family: str, s) -> str:
    """``1e-4`` for weight decay (the study's ``wd_1e-4``), else the plain number (``0.1``)."""
    if family == "weight_decay":
        m, e = f"{float(s):.0e}".split("e")
        return f"{m}e{int(e)}"
    return str(s)


def _aug_strengths(dataset: str):
    return ("crop_flip", "crop_flip_rotation") if dataset == "cifar10" else ("rotation_translation",)


@dataclass
class RunSpec:
    """One run of the grid: ``rel`` is its folder relative to the data set's root."""

    dataset: str
    family_dir: str
    family: str
    strength: object
    rel: str
    label: str
    settings: dict = field(default_factory=dict)
    seed: int = 42
    run_rel: str = ""          # the run's folder under the data set's root: rel, or rel/seed_<s> with several seeds

    def regularizers(self) -> RegularizerSet:
        f, s = self.family, self.strength
        if f == "baseline":
            return RegularizerSet([])
        if f == "dropout":
            return RegularizerSet([Dropout(float(s))])
        if f == "weight_decay":
            return RegularizerSet([WeightDecay(float(s))])
        if f == "augmentation":
            rot = 15.0 if s == "crop_flip_rotation" else None
            return RegularizerSet([Augmentation.for_dataset(self.dataset, rotation=rot)])
        if f == "label_smoothing":
            return RegularizerSet([LabelSmoothing(float(s))])
        if f == "sam":
            return RegularizerSet([SAM(float(s))])
        if f == "input_gradient_penalty":
            return RegularizerSet([InputGradientPenalty(float(s))])
        raise ValueError(f"unknown method family {f!r}")


FAMILY_KEYS = tuple(f[1] for f in FAMILIES)


def plan_runs(dataset: str, preset: str, methods: list[str] | None = None,
              overrides: dict | None = None) -> list[RunSpec]:
    """The grid of runs of one data set, in a fixed order (``methods``: a subset of :data:`FAMILY_KEYS`)."""
    settings = {**PRESETS[preset][dataset], **(overrides or {})}
    if methods is not None:
        bad = sorted(set(methods) - set(FAMILY_KEYS))
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(FAMILY_KEYS)}")
    specs = []
    for fdir, fam, strengths in FAMILIES:
        if methods is not None and fam not in methods:
            continue
        if fam == "augmentation":
            strengths = _aug_strengths(dataset)
        if settings.get("one_strength") and len(strengths) > 1:
            strengths = (strengths[len(strengths) // 2],)
        for s in strengths:
            if fam == "baseline":
                rel, label = fdir, "baseline"
            elif fam == "augmentation":
                rel, label = f"{fdir}/{s}", f"aug_{s}"
            else:
                name = f"{_SHORT[fam]}_{_strength_name(fam, s)}"
                rel, label = f"{fdir}/{name}", name
            specs.append(RunSpec(dataset, fdir, fam, s, rel, label, dict(settings), run_rel=rel))
    return specs


def plan_cells(datasets: list[str], preset: str, seeds: list[int], methods: list[str] | None,
               overrides: dict, dirs: dict[str, pathlib.Path], out: pathlib.Path) -> tuple[list[RunSpec], list[Cell]]:
    """Every (data set, method, seed) run and its grid cell (key ``<dataset>/<run folder>``, output = the folder)."""
    specs, cells = [], []
    for d in datasets:
        for seed in seeds:
            for spec in plan_runs(d, preset, methods, overrides):
                spec.seed = seed
                spec.run_rel = spec.rel if len(seeds) == 1 else f"{spec.rel}/seed_{seed}"
                specs.append(spec)
    specs.sort(key=lambda sp: (datasets.index(sp.dataset), sp.rel, seeds.index(sp.seed)))
    for sp in specs:
        folder = (dirs[sp.dataset] / sp.run_rel).relative_to(out).as_posix()
        cells.append(Cell(f"{sp.dataset}/{sp.run_rel}", {"dataset": sp.dataset, "rel": sp.rel, "seed": sp.seed,
                                                          "family": sp.family, "strength": sp.strength,
                                                          "settings": sp.settings}, (folder,)))
    return specs, cells


def dataset_dirs(out: pathlib.Path, datasets: list[str]) -> dict[str, pathlib.Path]:
    """The root folder of each data set's tree: the first at ``out``, CIFAR-10 under ``out/cifar10`` with both."""
    if len(datasets) == 1:
        return {datasets[0]: out}
    return {d: (out if i == 0 else out / d) for i, d in enumerate(datasets)}


def _datasets(arg: str) -> list[str]:
    return ["mnist", "cifar10"] if arg == "both" else [arg]


def _model_kwargs(spec: RunSpec) -> dict:
    if spec.settings["model"] == "mnist_cnn":
        return {"dropout": 0.0, "dropout_fc": 0.0}       # dropout only in the dropout runs
    return {}


def _train_one(spec: RunSpec, data, out_dir: pathlib.Path, args, meas_idx: np.ndarray) -> None:
    s = spec.settings
    seed = spec.seed
    cfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch"], lr=s["lr"], optimizer="adam",
                      schedule=s["schedule"], seed=seed, device=args.device,
                      progress=not args.no_progress)
    mcfg = MeasureConfig(points=len(meas_idx), directions=K_DIRECTIONS, order=ORDER, seed=seed * 1000 + 7,
                         direction_mode=args.direction_mode)
    run_dir = out_dir / spec.run_rel
    run_config = {"experiment": NAME, "dataset": spec.dataset, "family": spec.family, "strength": spec.strength,
                  "label": spec.label, "seed": seed, "model": s["model"], "model_kwargs": _model_kwargs(spec),
                  "train": cfg.to_dict(), "measure": mcfg.to_dict(), "regularizers": spec.regularizers().describe(),
                  "train_size": s["train"], "test_size": s["test"]}

    def build():
        torch.manual_seed(seed)
        model = build_model(s["model"], in_channels=data.in_channels, image_size=data.image_size,
                            num_classes=data.num_classes, **_model_kwargs(spec))
        d = copy.copy(data)
        meter = LambdaMeter(data.x_test[torch.as_tensor(meas_idx)], data.y_test[torch.as_tensor(meas_idx)], mcfg)
        return Trainer(model, d, spec.regularizers(), cfg, meter, MeasurementSchedule())

    train_run(build, run_dir, config=run_config, measurement_indices=meas_idx,
              desc=f"{spec.dataset}:{spec.label}:seed {seed}")


def measurement_points(n_test: int, points: int, seed: int) -> np.ndarray:
    """Indices (into the test subset) of the fixed λ measurement points."""
    g = torch.Generator().manual_seed(seed + 99)
    return np.sort(torch.randperm(n_test, generator=g)[:min(points, n_test)].numpy())


def _seeds(args, preset: str, datasets: list[str]) -> list[int]:
    n = max(PRESETS[preset][d].get("seeds", 1) for d in datasets)
    return parse_seeds(getattr(args, "seeds", None), args.seed, n)


def run(args) -> int:
    out = pathlib.Path(args.out)
    datasets = _datasets(args.dataset)
    dirs = dataset_dirs(out, datasets)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    overrides = {k: getattr(args, k) for k in ("epochs", "points") if getattr(args, k, None) is not None}
    for k, v in overrides.items():
        if v < 1:
            raise ValueError(f"--{k} must be >= 1, got {v}")
    if args.direction_mode not in DIRECTION_MODES:
        raise ValueError(f"--direction-mode must be one of {DIRECTION_MODES}, got {args.direction_mode!r}")
    seeds = _seeds(args, args.preset, datasets)
    specs, cells = plan_cells(datasets, args.preset, seeds, methods, overrides, dirs, out)
    config = {"experiment": NAME, "preset": args.preset, "datasets": datasets, "seed": seeds[0], "seeds": seeds,
              "methods": methods, "overrides": overrides, "direction_mode": args.direction_mode,
              "data_root": args.data_root, "device": args.device, "directions": K_DIRECTIONS, "order": ORDER,
              "settings": {d: {**PRESETS[args.preset][d], **overrides} for d in datasets},
              "dataset_dirs": {d: str(p.relative_to(out)) if p != out else "." for d, p in dirs.items()},
              "runs": {d: [{"rel": s.rel, "dir": s.run_rel, "seed": s.seed, "family": s.family,
                            "family_dir": s.family_dir, "strength": s.strength, "label": s.label}
                           for s in specs if s.dataset == d] for d in datasets}}
    cfg_path = out / "experiment_config.json"
    if cfg_path.exists():
        old = lio.read_json(cfg_path)
        keys = ("experiment", "preset", "datasets", "seeds", "methods", "overrides", "direction_mode")
        if {k: old.get(k) for k in keys} != lio._jsonable({k: config[k] for k in keys}):
            raise ValueError(f"{out} holds a different run ({', '.join(f'{k}={old.get(k)}' for k in keys)}); "
                             f"choose another --out or repeat the same settings to resume")
    else:
        lio.write_json(cfg_path, config)
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
        _train_one(spec, data, dirs[spec.dataset], args, idx)

    rc = run_grid(NAME, out, cells, work, analyze, shard=args.shard, progress=True)
    if rc == 0 and distributed.rank_world()[0] == 0 and all(cell_is_complete(out, c) for c in cells):
        from .analysis import figure_folders
        print(f"[diagnostic] summary: {out / 'summary.md'}", flush=True)
        for f in figure_folders(out):
            print(f"[diagnostic] figures: {f}", flush=True)
    return rc


def analyze(out) -> int:
    """Regenerate every analysis from disk; refuses a folder whose runs are not all complete."""
    from .analysis import analyze_experiment
    out = pathlib.Path(out)
    cells = recorded_cells(out)
    if cells is not None:
        require_complete(out, cells)
    analyze_experiment(out)
    return 0


def add_arguments(p) -> None:
    p.add_argument("--dataset", choices=("digits", "mnist", "cifar10", "both"), default="digits",
                   help="digits (offline, ships with scikit-learn; default), mnist, cifar10, or both = mnist + cifar10")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of the method families ({', '.join(FAMILY_KEYS)}); default all")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--points", type=int, default=None, help="override the preset's number of measurement points")
    p.add_argument("--seeds", default=None,
                   help="comma-separated training seeds (default: the preset's count from --seed; full = 3 seeds)")
    p.add_argument("--direction-mode", choices=DIRECTION_MODES, default="shared",
                   help="shared (default, the study's protocol): 15 input directions drawn once per run, the same "
                        "for every point and measurement; per-point: each point draws its own")


register(Experiment(name=NAME, help="λ as a training diagnostic across seven regularisers",
                    add_arguments=add_arguments, run=run, analyze=analyze, ddp=True))
