"""The probe study's settings: the optimizers, presets, file columns, the grid and the CLI flags."""
from __future__ import annotations

from ..argtypes import number
from ..mnist_like import add_mnist_like_argument
from ..runner import Cell

__all__ = ["NAME", "OPTIMIZERS", "STEP_COLUMNS", "EPOCH_COLUMNS", "MIN_SCALE", "PRESETS", "settings",
           "optimizers_of", "grid_cells", "add_arguments"]

NAME = "probe"
OPTIMIZERS = ("sgd", "adam", "sam", "probe", "sgd_matched")
STEP_COLUMNS = ["step", "epoch", "loss", "accuracy", "curvature", "directional_curvature", "probed", "lr", "scale",
                "reference"]
EPOCH_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "mean_curvature", "lr", "epoch_time_s"]
MIN_SCALE = 0.1

# ref_decay: the running reference's memory in probes (~1 / (1 − decay)); the smaller presets probe far fewer
# times per run, so they use a shorter memory (0.7: half-life ~2 probes)
PRESETS = {
    "full": dict(train=None, test=None, epochs=10, batch=128, seeds=3, probe_every=10, probe_dirs=4, eps=1e-3,
                 sgd_lr=0.02, adam_lr=1e-3, rho=0.05, ref_decay=0.9),
    "quick": dict(train=2000, test=1000, epochs=4, batch=128, seeds=2, probe_every=4, probe_dirs=4, eps=1e-3,
                  sgd_lr=0.02, adam_lr=1e-3, rho=0.05, ref_decay=0.7),
    "smoke": dict(train=256, test=256, epochs=2, batch=64, seeds=1, probe_every=2, probe_dirs=2, eps=1e-3,
                  sgd_lr=0.02, adam_lr=1e-3, rho=0.05, ref_decay=0.7),
}


def settings(args) -> dict:
    """The preset's settings with the flags that override them, and ``max_scale``."""
    s = dict(PRESETS[args.preset])
    for key in ("epochs", "probe_every", "probe_dirs", "eps", "ref_decay"):
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    s["max_scale"] = args.max_scale
    return s


def optimizers_of(arg: str | None) -> list[str]:
    """The optimizers of ``--optimizers`` (default all), in the order of `OPTIMIZERS` (probe before sgd_matched).

    Raises:
        ValueError: an unknown optimizer, or sgd_matched without probe.
    """
    opts = list(OPTIMIZERS) if not arg else [o.strip() for o in arg.split(",")]
    bad = sorted(set(opts) - set(OPTIMIZERS))
    if bad:
        raise ValueError(f"--optimizers: unknown {bad}; choose from {', '.join(OPTIMIZERS)}")
    if "sgd_matched" in opts and "probe" not in opts:
        raise ValueError("--optimizers: sgd_matched trains at the probe run's mean lr, so it needs probe too")
    return [o for o in OPTIMIZERS if o in opts]


def grid_cells(cfg: dict) -> list[Cell]:
    """One cell per (seed, optimizer), output ``runs/<optimizer>/seed_<s>``.

    ``sgd_matched`` shares the cell of its ``probe`` run (key ``probe+sgd_matched/seed_<s>``: it needs that run's mean
    lr, so no shard or rank ever waits for another).
    """
    cells = []
    for sd in cfg["seeds"]:
        for o in cfg["optimizers"]:
            if o == "sgd_matched":
                continue
            group = [o, "sgd_matched"] if o == "probe" and "sgd_matched" in cfg["optimizers"] else [o]
            cells.append(Cell(f"{'+'.join(group)}/seed_{sd}", {"optimizers": group, "seed": int(sd)},
                              tuple(f"runs/{g}/seed_{sd}" for g in group)))
    return cells


def add_arguments(p) -> None:
    """The probe study's own flags."""
    add_mnist_like_argument(p)
    p.add_argument("--seeds", default=None, help="comma-separated run seeds (default: the preset's count from --seed)")
    p.add_argument("--optimizers", default=None,
                   help=f"comma-separated subset of {', '.join(OPTIMIZERS)} (sgd_matched needs probe)")
    p.add_argument("--epochs", type=number(int, low=1), default=None, help="override the preset's epochs (>= 1)")
    p.add_argument("--probe-every", type=number(int, low=1), default=None, help="probe every k batches (>= 1)")
    p.add_argument("--probe-dirs", type=number(int, low=1), default=None,
                   help="N random directions per probe (>= 1)")
    p.add_argument("--eps", type=number(float, low=0.0, high=1.0, low_open=True), default=None,
                   help="finite-difference step ε in parameter units, in (0, 1] (default 1e-3)")
    p.add_argument("--max-scale", type=number(float, low=1.0, high=100.0), default=2.0,
                   help="largest lr multiplier of the probe optimizer, in [1, 100] (default 2.0)")
    p.add_argument("--ref-decay", type=number(float, low=0.0, high=1.0, low_open=True, high_open=True),
                   default=None, help="decay of the running reference curvature (EMA of log c), in (0, 1) (default: "
                                      "the preset's, 0.9 full, 0.7 quick/smoke)")
