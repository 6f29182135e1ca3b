"""The landscape study's settings: architectures, presets, result columns, the two-stage grid, CLI flags."""
from __future__ import annotations

import itertools

from ...models import STUDY_SIZES
from ..argtypes import name_list, number
from ..runner import Cell

__all__ = ["NAME", "ARCHS", "RHO", "RESULT_COLUMNS", "CONNECTIVITY_COLUMNS", "TARGET_PARAMS", "COMPARED", "PRESETS", "settings",
           "archs_of", "seed_pairs", "model_cells", "pair_cells", "add_arguments"]

NAME = "landscape"
ARCHS = {"cnn": "cifar_cnn", "resnet": "cifar_resnet"}
RHO = 0.05
RESULT_COLUMNS = ["arch", "seed", "test_acc", "train_acc", "test_loss", "train_loss", "lambda_max", "lambda_min",
                  "condition_number", "n_negative", "n_eigs_converged", "n_eigs_computed", "lanczos_converged",
                  "sharpness", "sharpness_random", "n_params", "hessian_hvps", "train_time_s", "hessian_time_s"]
CONNECTIVITY_COLUMNS = ["arch", "seed_a", "seed_b", "barrier", "barrier_alpha", "excess", "excess_alpha",
                        "bn_reestimated", "min_acc", "min_acc_alpha", "acc_a", "acc_b", "n_eval"]
TARGET_PARAMS = {"cnn": 1.8e6, "resnet": 2.1e6}       # the study's model sizes
# the quantities compared between architectures (``barrier``: over the seed pairs)
COMPARED = ("test_acc", "test_loss", "lambda_max", "lambda_min", "condition_number", "n_negative", "sharpness",
            "barrier")
_STUDY = {"cnn": STUDY_SIZES["cifar_cnn"], "resnet": STUDY_SIZES["cifar_resnet"]}

PRESETS = {
    "full": dict(train=None, test=None, epochs=15, batch=128, lr=1e-3, seeds=3, k=20, k_neg=5, hessian_samples=2048,
                 eig_tol=1e-3, eig_max_iter=None, sharp_samples=2048, surface_res=31, surface_span=1.0,
                 surface_samples=2048, conn_steps=21, augment=True, model_kwargs=_STUDY),
    "quick": dict(train=2000, test=500, epochs=3, batch=128, lr=1e-3, seeds=2, k=15, k_neg=3, hessian_samples=64,
                  eig_tol=1e-2, eig_max_iter=40, sharp_samples=500, surface_res=13, surface_span=1.0,
                  surface_samples=128, conn_steps=11, augment=True, model_kwargs=_STUDY),
    "smoke": dict(train=256, test=128, epochs=1, batch=64, lr=1e-3, seeds=2, k=15, k_neg=2, hessian_samples=16,
                  eig_tol=1e-1, eig_max_iter=20, sharp_samples=64, surface_res=5, surface_span=1.0,
                  surface_samples=64, conn_steps=5, augment=True,
                  model_kwargs={"cnn": {"width": 16, "fc_width": 64}, "resnet": {"widths": (8, 16, 32)}}),
}


def settings(args) -> dict:
    """The preset's settings with the flags that override them."""
    s = dict(PRESETS[args.preset])
    for key in ("epochs", "k"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    return s


def archs_of(arg: str | None) -> list[str]:
    """The architectures of ``--archs`` (default both).

    Raises:
        ValueError: an unknown architecture.
    """
    archs = list(ARCHS) if not arg else [a.strip() for a in arg.split(",")]
    bad = sorted(set(archs) - set(ARCHS))
    if bad:
        raise ValueError(f"--archs: unknown {bad}; choose from {', '.join(ARCHS)}")
    return archs


def seed_pairs(seeds: list[int]) -> list[tuple[int, int]]:
    """Every pair of seeds (the linear paths of the connectivity analysis)."""
    return list(itertools.combinations(seeds, 2))


def model_cells(archs: list[str], seeds: list[int]) -> list[Cell]:
    """Stage 1: one cell per trained model (training + Hessian + sharpness), output ``runs/<arch>/seed_<s>``."""
    return [Cell(f"{a}/seed_{sd}", {"kind": "model", "arch": a, "seed": int(sd)}, (f"runs/{a}/seed_{sd}",))
            for a in archs for sd in seeds]


def pair_cells(archs: list[str], seeds: list[int]) -> list[Cell]:
    """Stage 2 (needs every model of its architecture): connectivity of each seed pair and the surface."""
    cells = []
    for a in archs:
        for sa, sb in seed_pairs(seeds):
            cells.append(Cell(f"pairs/{a}/connectivity_{sa}-{sb}", {"kind": "connectivity", "arch": a,
                                                                     "seed_a": int(sa), "seed_b": int(sb)},
                              (f"pairs/connectivity_{a}_{sa}-{sb}.json",)))
        cells.append(Cell(f"pairs/{a}/surface", {"kind": "surface", "arch": a, "seed": int(seeds[0])},
                          (f"pairs/surface_{a}.npz",)))
    return cells


def add_arguments(p) -> None:
    """The landscape study's own flags."""
    p.add_argument("--seeds", default=None, help="comma-separated seeds, at least two (default: --seed, --seed + 1)")
    p.add_argument("--archs", type=name_list(tuple(ARCHS)), default=None,
                   help=f"comma-separated subset of {', '.join(ARCHS)} (default both)")
    p.add_argument("--epochs", type=number(int, low=1), default=None, help="override the preset's number of epochs (≥ 1)")
    p.add_argument("--k", type=number(int, low=15), default=None,
                   help="number of top Hessian eigenvalues (≥ 15, the study's minimum)")
