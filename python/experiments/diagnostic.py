"""``lamda run diagnostic``: λ as a training diagnostic across seven regularisers (issue 5).

The same model is trained under each method (baseline; dropout; weight decay; data augmentation;
label smoothing; SAM; input-gradient penalty) and λ is measured during training on a fixed set of
test points (K = 15 input directions, orders 1–6) on the schedule of :mod:`lamda.schedule`.
Afterwards the post-hoc analyses (:mod:`lamda.analysis.diagnostic`) run on the saved arrays alone.

Output tree under ``--out`` (per data set; with ``--dataset both`` CIFAR-10 goes into ``cifar10/``)::

    experiment_config.json, summary.md
    00_summary/  all_methods_comparison.png performance_vs_lambda.png generalization_gap_vs_lambda.png
                 calibration_vs_lambda.png summary_statistics.csv
    01_baseline/ training_metrics.csv lambda_data.npz lambda_evolution.png final_model.pt config.json
                 baseline_comparison.png
    02_dropout/dropout_0.3/ ...  02_dropout/dropout_comparison.png   (and so on to 07)
    validation_analysis/ direction_convergence/ order_sensitivity/ temporal_directional_stability/
                         joint_K_order_optimization/
"""
from __future__ import annotations

import copy
import pathlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import io as lio
from ..data import load_dataset
from ..measure import LambdaMeter, MeasureConfig
from ..models import build_model
from ..regularizers import (Augmentation, Dropout, InputGradientPenalty, LabelSmoothing, RegularizerSet, SAM,
                            WeightDecay)
from ..schedule import MeasurementSchedule
from ..trainer import Trainer, TrainConfig, run_is_complete, train_run
from . import Experiment, parse_shard, register

__all__ = ["PRESETS", "FAMILIES", "RunSpec", "plan_runs", "run", "analyze", "dataset_dirs"]

NAME = "diagnostic"

# Per data set and preset: subset sizes, optimiser, epochs, measurement points, model.
PRESETS: dict[str, dict[str, dict]] = {
    "full": {
        "mnist": dict(train=1000, test=1000, epochs=50, batch=128, lr=1e-3, schedule="none", points=100,
                      model="mnist_cnn"),
        "digits": dict(train=1000, test=597, epochs=50, batch=128, lr=1e-3, schedule="none", points=100,
                       model="mnist_cnn"),
        "cifar10": dict(train=10000, test=1000, epochs=100, batch=128, lr=3e-3, schedule="cosine", points=100,
                        model="cifar_cnn"),
    },
    "quick": {
        "mnist": dict(train=1000, test=1000, epochs=15, batch=128, lr=1e-3, schedule="none", points=50,
                      model="mnist_cnn"),
        "digits": dict(train=1000, test=597, epochs=15, batch=128, lr=1e-3, schedule="none", points=50,
                       model="mnist_cnn"),
        "cifar10": dict(train=2000, test=500, epochs=10, batch=128, lr=1e-3, schedule="cosine", points=40,
                        model="cifar_cnn"),
    },
    "smoke": {
        "mnist": dict(train=256, test=256, epochs=2, batch=64, lr=1e-3, schedule="none", points=8,
                      model="mnist_cnn", one_strength=True),
        "digits": dict(train=256, test=200, epochs=2, batch=64, lr=1e-3, schedule="none", points=8,
                       model="mnist_cnn", one_strength=True),
        "cifar10": dict(train=256, test=128, epochs=2, batch=64, lr=1e-3, schedule="cosine", points=8,
                        model="cifar_cnn", one_strength=True),
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
_SHORT = {"dropout": "dropout", "weight_decay": "weight_decay", "label_smoothing": "label_smoothing",
          "sam": "sam_rho", "input_gradient_penalty": "igp"}


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
                rel, label = f"{fdir}/{_SHORT[fam]}_{s}", f"{_SHORT[fam]}_{s}"
            specs.append(RunSpec(dataset, fdir, fam, s, rel, label, dict(settings)))
    return specs


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
    cfg = TrainConfig(epochs=s["epochs"], batch_size=s["batch"], lr=s["lr"], optimizer="adam",
                      schedule=s["schedule"], seed=args.seed, device=args.device,
                      progress=not args.no_progress)
    mcfg = MeasureConfig(points=len(meas_idx), directions=K_DIRECTIONS, order=ORDER, seed=args.seed * 1000 + 7)
    run_dir = out_dir / spec.rel
    run_config = {"experiment": NAME, "dataset": spec.dataset, "family": spec.family, "strength": spec.strength,
                  "label": spec.label, "model": s["model"], "model_kwargs": _model_kwargs(spec),
                  "train": cfg.to_dict(), "measure": mcfg.to_dict(), "regularizers": spec.regularizers().describe(),
                  "train_size": s["train"], "test_size": s["test"]}

    def build():
        torch.manual_seed(args.seed)
        model = build_model(s["model"], in_channels=data.in_channels, image_size=data.image_size,
                            num_classes=data.num_classes, **_model_kwargs(spec))
        d = copy.copy(data)
        meter = LambdaMeter(data.x_test[torch.as_tensor(meas_idx)], data.y_test[torch.as_tensor(meas_idx)], mcfg)
        return Trainer(model, d, spec.regularizers(), cfg, meter, MeasurementSchedule())

    from ..analysis.diagnostic import write_run_plot
    train_run(build, run_dir, config=run_config, measurement_indices=meas_idx,
              extra_outputs=lambda rd, res: write_run_plot(rd, spec.label), desc=f"{spec.dataset}:{spec.label}")


def measurement_points(n_test: int, points: int, seed: int) -> np.ndarray:
    """Indices (into the test subset) of the fixed λ measurement points."""
    g = torch.Generator().manual_seed(seed + 99)
    return np.sort(torch.randperm(n_test, generator=g)[:min(points, n_test)].numpy())


def run(args) -> int:
    out = pathlib.Path(args.out)
    datasets = _datasets(args.dataset)
    shard = parse_shard(args.shard)
    dirs = dataset_dirs(out, datasets)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    overrides = {k: getattr(args, k) for k in ("epochs", "points") if getattr(args, k, None) is not None}
    for k, v in overrides.items():
        if v < 1:
            raise ValueError(f"--{k} must be >= 1, got {v}")
    grid = [spec for d in datasets for spec in plan_runs(d, args.preset, methods, overrides)]
    config = {"experiment": NAME, "preset": args.preset, "datasets": datasets, "seed": args.seed,
              "methods": methods, "overrides": overrides,
              "data_root": args.data_root, "device": args.device, "directions": K_DIRECTIONS, "order": ORDER,
              "settings": {d: {**PRESETS[args.preset][d], **overrides} for d in datasets},
              "dataset_dirs": {d: str(p.relative_to(out)) if p != out else "." for d, p in dirs.items()},
              "runs": {d: [{"rel": s.rel, "family": s.family, "family_dir": s.family_dir, "strength": s.strength,
                            "label": s.label} for s in grid if s.dataset == d] for d in datasets}}
    cfg_path = out / "experiment_config.json"
    if cfg_path.exists():
        old = lio.read_json(cfg_path)
        keys = ("experiment", "preset", "datasets", "seed", "methods", "overrides")
        if {k: old.get(k) for k in keys} != {k: config[k] for k in keys}:
            raise ValueError(f"{out} holds a different run ({', '.join(f'{k}={old.get(k)}' for k in keys)}); "
                             f"choose another --out or repeat the same settings to resume")
    else:
        lio.write_json(cfg_path, config)
    t0 = time.perf_counter()
    loaded = {}
    mine = [s for i, s in enumerate(grid) if i % shard[1] == shard[0]]
    for spec in mine:
        ddir = dirs[spec.dataset]
        if run_is_complete(ddir / spec.rel):
            print(f"[diagnostic] {spec.dataset}:{spec.rel} finished earlier, skipped", flush=True)
            continue
        if spec.dataset not in loaded:
            st = spec.settings
            data = load_dataset(spec.dataset, root=args.data_root, train_size=st["train"], test_size=st["test"],
                                seed=args.seed, download=args.download)
            loaded[spec.dataset] = (data, measurement_points(data.x_test.shape[0], st["points"], args.seed))
        data, idx = loaded[spec.dataset]
        t = time.perf_counter()
        _train_one(spec, data, ddir, args, idx)
        print(f"[diagnostic] {spec.dataset}:{spec.rel} done in {time.perf_counter() - t:.1f} s", flush=True)
    missing = [s for s in grid if not run_is_complete(dirs[s.dataset] / s.rel)]
    if missing:
        print(f"[diagnostic] {len(missing)} run(s) of other shards are not finished yet; when every shard is done, "
              f"run `lamda analyze {out}`", flush=True)
        return 0
    analyze(out)
    print(f"[diagnostic] all runs done; total {time.perf_counter() - t0:.1f} s; see {out / 'summary.md'}", flush=True)
    return 0


def analyze(out) -> int:
    from ..analysis.diagnostic import analyze_experiment
    analyze_experiment(pathlib.Path(out))
    return 0


def add_arguments(p) -> None:
    p.add_argument("--dataset", choices=("digits", "mnist", "cifar10", "both"), default="digits",
                   help="digits (offline, ships with scikit-learn; default), mnist, cifar10, or both = mnist + cifar10")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of the method families ({', '.join(FAMILY_KEYS)}); default all")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--points", type=int, default=None, help="override the preset's number of measurement points")


register(Experiment(name=NAME, help="λ as a training diagnostic across seven regularisers",
                    add_arguments=add_arguments, run=run, analyze=analyze, ddp=True))
