"""The probe study's per-run series (curvature, lr, scale, loss, accuracy) and their trailing-mean smoothing."""
from __future__ import annotations

import numpy as np

__all__ = ["series", "smooth", "window"]


def series(o: str, sd: int, st: list[dict], ep: list[dict]) -> dict[str, np.ndarray]:
    """The run's series for ``probe_data.npz`` and the figures, keyed ``<optimizer>_seed<s>_<what>``."""
    pr = [r for r in st if r["probed"] and r["curvature"] is not None]
    key = f"{o}_seed{sd}"
    raw = {f"{key}_probe_steps": np.array([r["step"] for r in pr], np.int64),
           f"{key}_curvature": np.array([r["curvature"] for r in pr], float),
           f"{key}_lr": np.array([r["lr"] for r in st], float),
           f"{key}_test_acc": np.array([r["test_acc"] for r in ep], float),
           f"{key}_loss": np.array([r["loss"] for r in st], float)}
    if o == "probe":
        raw[f"{key}_scale"] = np.array([r["scale"] for r in st], float)
        raw[f"{key}_reference"] = np.array([r["reference"] for r in pr], float)
    return raw



def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average ``[T]`` → ``[T]``.

    Entry t is the mean of the finite values among the last ``window`` entries up to t (NaN when there are none).
    """
    v = np.asarray(values, float)
    if int(window) < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ok = np.isfinite(v)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    lo = np.maximum(np.arange(1, len(v) + 1) - int(window), 0)
    hi = np.arange(1, len(v) + 1)
    cnt = cn[hi] - cn[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (cs[hi] - cs[lo]) / np.maximum(cnt, 1), np.nan)


def window(n: int) -> int:
    """The smoothing window of a series of ``n`` values: a fifth of it, between 1 and 10."""
    return max(1, min(10, n // 5))
