"""The diagnostic study's settings: presets, the method families and their strengths, the run grid, CLI flags."""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from ...measure import DIRECTION_MODES
from ..argtypes import number
from ..runner import Cell

__all__ = ["NAME", "PRESETS", "K_DIRECTIONS", "ORDER", "FAMILIES", "FAMILY_KEYS", "STUDY_SPAGHETTI", "ACC_DROP", "LAMBDA_SE_MULT", "RunSpec",
           "plan_runs", "plan_cells", "dataset_dirs", "datasets_of", "methods_of", "add_arguments"]

NAME = "diagnostic"

# Per data set and preset: subset sizes, optimiser, epochs, measurement points, model, and the test accuracy a
# run is expected to reach (``acc_target``; the summary carries a caveat when a run misses it). ``seeds``: how
# many seeds (from --seed) when --seeds is not given. ``one_strength``: every method at its middle strength only.
# quick is the README's main job: the 7 methods at one strength, 15 epochs.
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

# (folder, family key, strengths); the presets with one_strength run the middle strength of each family.
FAMILIES = (
    ("01_baseline", "baseline", (None,)),
    ("02_dropout", "dropout", (0.3, 0.5, 0.7)),
    ("03_weight_decay", "weight_decay", (1e-4, 1e-3, 1e-2)),
    ("04_data_augmentation", "augmentation", ("rotation_translation",)),      # cifar10: see _aug_strengths
    ("05_label_smoothing", "label_smoothing", (0.05, 0.1, 0.15)),
    ("06_sam", "sam", (0.05, 0.1, 0.2)),
    ("07_input_gradient_penalty", "input_gradient_penalty", (0.01, 0.1, 1.0)),
)
FAMILY_KEYS = tuple(f[1] for f in FAMILIES)
# run-folder prefixes, as the study names them (wd_1e-4, smooth_0.1, sam_rho_0.1, igp_0.1)
_SHORT = {"dropout": "dropout", "weight_decay": "wd", "label_smoothing": "smooth",
          "sam": "sam_rho", "input_gradient_penalty": "igp"}
# the per-method spaghetti figures the study names: (family, strength) → spaghetti_<family>_<strength>.png,
# drawn for the run of that family whose strength is nearest
STUDY_SPAGHETTI = (("weight_decay", 0.001), ("sam", 0.1))
# H4's events: test accuracy degrades when it stays ACC_DROP below its peak to the end of the run; λ moves when its
# mean differs from its value at convergence by more than LAMBDA_SE_MULT standard errors over directions
ACC_DROP = 0.01
LAMBDA_SE_MULT = 2.0


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
    """One run of the grid.

    Attributes:
        dataset: the data set the run trains on.
        family_dir: the family's folder name.
        family: the regulariser family.
        strength: the family's strength of this run.
        label: the study's run name.
        rel: its folder relative to the data set's root.
        settings: the preset's settings with the overrides.
        seed: the training seed.
        run_rel: the run's folder under the data set's root: ``rel``, or ``rel/seed_<s>`` with several seeds.
    """

    dataset: str
    family_dir: str
    family: str
    strength: object
    rel: str
    label: str
    settings: dict = field(default_factory=dict)
    seed: int = 42
    run_rel: str = ""


def _run_name(fdir: str, fam: str, s) -> tuple[str, str]:
    """``(folder relative to the data set's root, label)`` of one strength of a family."""
    if fam == "baseline":
        return fdir, "baseline"
    if fam == "augmentation":
        return f"{fdir}/{s}", f"aug_{s}"
    name = f"{_SHORT[fam]}_{_strength_name(fam, s)}"
    return f"{fdir}/{name}", name


def plan_runs(dataset: str, preset: str, methods: list[str] | None = None,
              overrides: dict | None = None) -> list[RunSpec]:
    """The grid of runs of one data set, in a fixed order (``methods``: a subset of `FAMILY_KEYS`).

    Raises:
        ValueError: an unknown method family.
    """
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
            rel, label = _run_name(fdir, fam, s)
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


def datasets_of(arg: str) -> list[str]:
    """The data sets of ``--dataset`` (``both`` = MNIST and CIFAR-10)."""
    return ["mnist", "cifar10"] if arg == "both" else [arg]


def methods_of(arg: str | None) -> list[str] | None:
    """The method families of ``--methods`` (None: all)."""
    return [m.strip() for m in arg.split(",") if m.strip()] if arg else None


def add_arguments(p) -> None:
    """The diagnostic's own flags."""
    p.add_argument("--dataset", choices=("digits", "mnist", "cifar10", "both"), default="digits",
                   help="digits (offline, ships with scikit-learn; default), mnist, cifar10, or both = mnist + cifar10")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of the method families ({', '.join(FAMILY_KEYS)}); default all")
    p.add_argument("--epochs", type=number(int, low=1), default=None, help="override the preset's number of epochs")
    p.add_argument("--points", type=number(int, low=1), default=None,
                   help="override the preset's number of measurement points")
    p.add_argument("--seeds", default=None,
                   help="comma-separated training seeds (default: the preset's count from --seed; full = 3 seeds)")
    p.add_argument("--direction-mode", choices=DIRECTION_MODES, default="shared",
                   help="shared (default, the study's protocol): 15 input directions drawn once per run, the same "
                        "for every point and measurement; per-point: each point draws its own")
