"""The selective study's settings: conditions, class pairs, measurement constants, presets, CLI flags."""
from __future__ import annotations

from ..argtypes import number
from ..mnist_like import add_mnist_like_argument
from ..runner import Cell

__all__ = ["NAME", "CONDITIONS", "PAIRS", "PAIR_NAMES", "TARGET", "PENALTY_ORDER", "PENALTY_K", "MEASURE_ORDER",
           "MEASURE_K", "MEASURE_CHUNK", "PROB_WINDOW", "MIN_POINTS", "BOUNDARY_RULES", "PRESETS", "pair_name",
           "settings", "conditions_of", "grid_cells", "add_arguments"]

NAME = "selective"

# condition → the classes its λ penalty applies to (None: every class; "none": no penalty)
CONDITIONS: dict[str, tuple[int, ...] | None | str] = {
    "baseline": "none", "global": None, "selective_49": (4, 9), "selective_38": (3, 8)}
PAIRS: tuple[tuple[int, int], ...] = ((4, 9), (3, 8), (5, 6))
PENALTY_ORDER, PENALTY_K = 3, 2
MEASURE_ORDER, MEASURE_K = 4, 4
MEASURE_CHUNK = 50
PROB_WINDOW = (0.2, 0.8)
MIN_POINTS = 10
BOUNDARY_RULES = ("label", "top2")

# scale: the study's final run uses 200 (full); the smaller presets keep it so the penalty has the same weight
PRESETS = {
    "full": dict(train=None, test=None, epochs=15, batch=128, lr=1e-3, seeds=3, max_boundary=200,
                 penalty_points=None, scale=200.0),
    "quick": dict(train=3000, test=4000, epochs=3, batch=128, lr=1e-3, seeds=3, max_boundary=200,
                  penalty_points=64, scale=200.0),
    "smoke": dict(train=512, test=500, epochs=2, batch=128, lr=1e-3, seeds=1, max_boundary=30,
                  penalty_points=16, scale=200.0),
}


def pair_name(pair) -> str:
    """``"4v9"`` for the pair ``(4, 9)``."""
    return f"{pair[0]}v{pair[1]}"


PAIR_NAMES = tuple(pair_name(p) for p in PAIRS)
# the pair each selective condition targets
TARGET = {"selective_49": "4v9", "selective_38": "3v8"}


def settings(args) -> dict:
    """The preset's settings with the flags that override them, and the boundary rule."""
    s = dict(PRESETS[args.preset])
    for key in ("epochs", "scale", "max_boundary"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    s["boundary_rule"] = args.boundary_rule
    return s


def conditions_of(arg: str | None) -> list[str]:
    """The conditions of ``--conditions`` (default all).

    Raises:
        ValueError: an unknown condition, or no baseline.
    """
    conditions = list(CONDITIONS) if not arg else [c.strip() for c in arg.split(",")]
    bad = sorted(set(conditions) - set(CONDITIONS))
    if bad or "baseline" not in conditions:
        raise ValueError(f"--conditions: unknown {bad} (choose from {', '.join(CONDITIONS)}); baseline is required")
    return conditions


def grid_cells(cfg: dict) -> list[Cell]:
    """One cell per (seed, condition): key ``<condition>/seed_<s>``, output ``runs/<condition>/seed_<s>``."""
    return [Cell(f"{c}/seed_{sd}", {"condition": c, "seed": int(sd)}, (f"runs/{c}/seed_{sd}",))
            for sd in cfg["seeds"] for c in cfg["conditions"]]


def add_arguments(p) -> None:
    """The selective study's own flags."""
    add_mnist_like_argument(p)
    p.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the preset's count from --seed)")
    p.add_argument("--scale", type=number(float, low=0.0), default=None,
                   help="λ penalty scale, finite >= 0 (default: the preset's, 200 as in the study's final run); the "
                        "penalty's share of the training loss per epoch is logged in training_metrics.csv")
    p.add_argument("--label-noise", type=number(float, low=0.0, high=1.0, high_open=True), default=0.2,
                   help="fraction of noisy training labels, in [0, 1) (default 0.2)")
    p.add_argument("--conditions", default=None,
                   help=f"comma-separated subset of {', '.join(CONDITIONS)} (baseline required; default all)")
    p.add_argument("--epochs", type=number(int, low=1), default=None,
                   help="override the preset's number of epochs (>= 1)")
    p.add_argument("--boundary-rule", choices=BOUNDARY_RULES, default="label",
                   help="label (default, the study's): true label in the pair, top-class probability in [0.2, 0.8], "
                        "random sample; top2: the two most probable classes are the pair, smallest margins first")
    p.add_argument("--max-boundary", type=number(int, low=MIN_POINTS), default=None,
                   help=f"at most this many boundary points per pair (>= {MIN_POINTS}; default: the preset's)")
