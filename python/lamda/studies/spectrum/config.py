"""The spectrum study's settings.

Presets, the L2 grid, the curvatures, the study's file names, the grid of cells, CLI flags.
"""
from __future__ import annotations

import numpy as np

from ..argtypes import int_list, number
from ..mnist_like import add_mnist_like_argument
from ..runner import Cell

__all__ = ["NAME", "DATA_DIR", "MODEL_COLUMNS", "COLLAPSE_ACC", "NUM_CLASSES", "PRESETS", "OVERRIDES",
           "CURVATURE_CHOICES", "CURVATURE_LABEL", "COMPARE_FIGURE", "curvatures", "key_prefix", "l2_grid",
           "l2_label", "model_files", "settings", "grid_cells", "add_arguments"]

NAME = "spectrum"
DATA_DIR = "test_data"
MODEL_COLUMNS = ["L2_strength", "Train_Loss", "Train_Reg_Loss", "Test_Loss", "Test_Accuracy", "Train_Accuracy",
                 "Epochs", "Lambda_Max"]
COLLAPSE_ACC = 15.0   # % test accuracy: at most 1.5 × chance (10 classes) = a collapsed model
NUM_CLASSES = 10      # both data sets of the study (MNIST, digits): C − 1 = 9 outliers expected

# quick: 10 models on [0, 0.03] (above it the 784-128-128-10 MLP collapses to chance on the quick preset's data);
# the Hessian on 500 samples with ≤ 120 Lanczos steps at tol 1e-4 bounds the HVP work at
# 10 × (120 + 30 check) × 500 = 0.75 M per-sample HVPs
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
# the preset settings a flag of the same name overrides
OVERRIDES = ("steps", "l2_max", "k", "hessian_samples", "max_epochs", "tol", "hidden", "eigvec_format")


# --curvature → the curvatures computed, in order: the first one is the study's primary curvature (Lambda_Max,
# spectrum_vs_l2.png, λ_max vs accuracy); "both" adds the GGN to the Hessian
CURVATURE_CHOICES = {"hessian": ("hessian",), "ggn": ("ggn",), "both": ("hessian", "ggn")}
CURVATURE_LABEL = {"hessian": "Hessian", "ggn": "GGN"}     # in file names, axis labels and the summary
COMPARE_FIGURE = "hessian_vs_ggn_spectra.png"              # the two spectra side by side (--curvature both)


def curvatures(choice: str | None) -> tuple[str, ...]:
    """The curvatures a run computes for ``--curvature choice``.

    None (a folder whose config names no curvature) is the Hessian.

    Raises:
        ValueError: ``choice`` is not one of :data:`CURVATURE_CHOICES`.

    """
    if choice is None:
        return CURVATURE_CHOICES["hessian"]
    if choice not in CURVATURE_CHOICES:
        raise ValueError(f"curvature must be one of {', '.join(CURVATURE_CHOICES)}, got {choice!r}")
    return CURVATURE_CHOICES[choice]


def key_prefix(kind: str) -> str:
    """The prefix of a curvature's keys in the cell records, :func:`model_files` and ``spectrum.npz``.

    "" for the Hessian (the study's keys), ``"ggn_"`` for the GGN.
    """
    return "" if kind == "hessian" else f"{kind}_"


def l2_grid(l2_max: float, steps: int) -> np.ndarray:
    """``steps`` L2 strengths on a linear grid from 0 to ``l2_max`` (one point, 0, when steps = 1).

    Raises:
        ValueError: ``steps < 1`` or ``l2_max < 0``.
    """
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if not l2_max >= 0:
        raise ValueError(f"--l2-max must be >= 0, got {l2_max}")
    return np.linspace(0.0, l2_max, steps) if steps > 1 else np.zeros(1)


def l2_label(l2: float) -> str:
    """The L2 strength as the study's file names write it (``%.5f``)."""
    return f"{l2:.5f}"


def model_files(ident: int, l2: float, eigvec_format: str, kinds: tuple[str, ...] = ("hessian",)) -> dict[str, str]:
    """The study's files of one model under :data:`DATA_DIR` by role.

    Gradients, weights, and per curvature of ``kinds`` its eigenvalues and eigenvectors (roles
    ``{key_prefix}eigenvalues``, ``{key_prefix}eigenvectors``; files ``Hessian-eigenvalues-…``, ``GGN-eigenvalues-…``).
    """
    lab = l2_label(float(l2))
    files = {"gradients": f"gradients-{ident}-{lab}.csv"}
    for kind in kinds:
        pre, name = key_prefix(kind), CURVATURE_LABEL[kind]
        files[f"{pre}eigenvalues"] = f"{name}-eigenvalues-{ident}-{lab}.csv"
        files[f"{pre}eigenvectors"] = f"{name}-eigenvectors-{ident}-{lab}.{eigvec_format}"
    files["weights"] = f"model_weights-{ident}-{lab}.pth"
    return files


def settings(args) -> dict:
    """The preset's settings with the flags that override them."""
    s = dict(PRESETS[args.preset])
    for key in OVERRIDES:
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    return s


def grid_cells(ids: list[int], grid, eigvec_format: str, kinds: tuple[str, ...] = ("hessian",)) -> list[Cell]:
    """One cell per (run ID, L2 value).

    Its outputs are the study's files of that model (curvatures ``kinds``) and its cell JSON.
    """
    cells = []
    for ident in ids:
        for l2 in grid:
            lab = l2_label(float(l2))
            files = model_files(ident, l2, eigvec_format, kinds).values()
            cells.append(Cell(f"id_{ident}/l2_{lab}", {"id": int(ident), "l2": float(l2)},
                              tuple(f"{DATA_DIR}/{f}" for f in files) + (f"cells/{ident}-{lab}.json",)))
    return cells


def add_arguments(p) -> None:
    """The spectrum study's own flags."""
    add_mnist_like_argument(p)
    p.add_argument("--seeds", default=None, help="comma-separated run IDs/seeds (default: --seed)")
    p.add_argument("--steps", type=number(int, low=1), default=None, help="number of L2 values on the grid (full: 451)")
    p.add_argument("--l2-max", type=number(float, low=0.0), default=None, help="largest L2 strength, ≥ 0 (default 0.09)")
    p.add_argument("--k", type=number(int, low=1), default=None, help="number of Hessian eigenpairs (default 30)")
    p.add_argument("--hessian-samples", type=number(int, low=1), default=None,
                   help="training samples the Hessian is taken over (default: preset; full = all)")
    p.add_argument("--max-epochs", type=number(int, low=1), default=None, help="epoch cap before early stopping")
    p.add_argument("--hidden", type=int_list(1), default=None,
                   help="hidden widths of the sigmoid MLP, each ≥ 1 (default 128,128)")
    p.add_argument("--tol", type=number(float, low=0.0, high=1.0, low_open=True, high_open=True), default=None,
                   help="relative residual tolerance of the eigenpairs, in (0, 1) (default: preset; full = 1e-8)")
    p.add_argument("--which", choices=("LM", "LA"), default="LM",
                   help="LM (default, the study's): largest magnitude; LA: largest algebraic")
    p.add_argument("--curvature", choices=tuple(CURVATURE_CHOICES), default="hessian",
                   help="the matrix whose top-k eigenpairs are taken: hessian (default, the study's), ggn (the "
                        "generalised Gauss–Newton matrix, GGN-eigen* files) or both (and a figure of the two "
                        "spectra side by side)")
    p.add_argument("--method", choices=("lanczos", "eigsh"), default="lanczos", help="eigen-solver (default lanczos)")
    p.add_argument("--eigvec-format", choices=("csv", "npy"), default=None,
                   help="eigenvector files: csv (the study's format; smoke/quick default) or npy (float32 [P, k], "
                        "the full preset's default: 451 models × 30 × 118 k values are ~27 GB as CSV)")
