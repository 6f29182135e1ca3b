"""λ measurement on a fixed set of points with fixed, regenerable directions.

A [`LambdaMeter`][lamda.measure.LambdaMeter] holds P measurement points ``x [P, *S]``, ``y [P]`` and measures, for the
current model, the directional derivatives ``d_n`` (n = 1..order) of the per-sample loss along K
random unit input directions with ``lamda_ext.directional_derivs``. The same directions are used at
every measurement of a run, so per-direction λ can be followed over training. Two protocols
(``MeasureConfig.direction_mode``):

- ``"shared"`` (the λ-diagnostic study's): K directions ``u_k [*S]`` drawn once from a CPU
  ``torch.Generator`` seeded with ``seed`` (float32, unit norm over S), the same vector for every
  point; direction k is one vector that can be followed through training. Stored in full.
- ``"per-point"``: every point draws its own K directions; points are processed in chunks of
  ``chunk_size`` and chunk ``c`` draws from ``direction_seeds[c] = seed + c``
  ([`regenerate_directions`][lamda.measure.regenerate_directions] rebuilds them). "Direction k" is then an average over
  P unrelated vectors.

One measurement ([`LambdaMeter.measure`][lamda.measure.LambdaMeter.measure]) returns

- ``derivatives_per_point [P, K, N]``: d_n per point,
- ``derivatives [K, N]``: mean over points of d_n,
- ``log_abs_derivatives [K, N]``: mean over points of log|d_n| (exact zeros masked),
- ``lambda_values [K]``: per-direction curvature rate fitted on ``log_abs_derivatives``
  (``lamda_ext.curvature_rate(..., pool="points")``),
- ``directions [K, prod(S)]`` (float32; shared mode only): the directions used.

[`LambdaMeter.run_arrays`][lamda.measure.LambdaMeter.run_arrays] gives the run-level arrays stored beside the stacked
measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

import numpy as np
import torch
from torch import nn

import lamda_ext
from lamda_ext.checks import check_order

DIRECTION_MODES = ("shared", "per-point")

__all__ = ["DIRECTION_MODES", "MeasureConfig", "LambdaMeter", "fit_lambda", "log_abs_mean", "regenerate_directions"]


@dataclass
class MeasureConfig:
    """How a [`LambdaMeter`][lamda.measure.LambdaMeter] measures λ.

    Attributes:
        points: P, the measurement points.
        directions: K, the random input directions.
        order: N, the highest derivative order.
        seed: the direction seed.
        chunk_size: points per call of the derivatives (per-point mode: one direction seed per chunk).
        backend: the backend of [`directional_derivs`][lamda_ext.derivs.directional_derivs].
        loss: the loss.
        direction_mode: ``"shared"`` (one set of K directions for all points) or ``"per-point"``.
    """

    points: int = 100
    directions: int = 15
    order: int = 6
    seed: int = 1234
    chunk_size: int = 25
    backend: str = "auto"
    loss: str = "cross_entropy"
    direction_mode: str = "per-point"

    def __post_init__(self):
        if self.direction_mode not in DIRECTION_MODES:
            raise ValueError(f"direction_mode must be one of {DIRECTION_MODES}, got {self.direction_mode!r}")
        if self.points < 1 or self.directions < 1 or self.chunk_size < 1:
            raise ValueError(f"points, directions and chunk_size must be >= 1, got {self}")
        check_order(self.order, self.backend)

    def to_dict(self) -> dict:
        """The settings as a dict (for ``config.json``)."""
        return asdict(self)


def log_abs_mean(d: np.ndarray | torch.Tensor, axis: int = 0) -> np.ndarray:
    """Mean over ``axis`` of log|d| with exact zeros masked (NaN where every entry is zero)."""
    a = np.abs(np.asarray(d, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(a > 0, np.log(np.where(a > 0, a, 1.0)), np.nan)
    cnt = np.sum(np.isfinite(logs), axis=axis)
    s = np.nansum(logs, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)


def fit_lambda(log_abs: np.ndarray, orders: tuple[int, int] | None = None) -> np.ndarray:
    """Least-squares slope of ``log_abs[..., n-1]`` against n over an order window.

    Args:
        log_abs: ``[..., N]`` values of log|d_n| for n = 1..N (NaN = masked).
        orders: inclusive window ``(lo, hi)`` with 1 ≤ lo < hi ≤ N; default ``(1, N)``.

    Returns:
        slopes ``[...]``; NaN where fewer than two finite values lie in the window.
    """
    log_abs = np.asarray(log_abs, dtype=np.float64)
    N = log_abs.shape[-1]
    lo, hi = (1, N) if orders is None else orders
    if not (1 <= lo < hi <= N):
        raise ValueError(f"order window must satisfy 1 <= lo < hi <= {N}, got {(lo, hi)}")
    y = log_abs[..., lo - 1:hi]
    n = np.arange(lo, hi + 1, dtype=np.float64)
    mask = np.isfinite(y)
    w = mask.astype(np.float64)
    cnt = w.sum(-1)
    yz = np.where(mask, y, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        nbar = (w * n).sum(-1) / cnt
        ybar = yz.sum(-1) / cnt
        dn = (n - nbar[..., None]) * w
        slope = (dn * (yz - ybar[..., None])).sum(-1) / (dn * dn).sum(-1)
    return np.where(cnt >= 2, slope, np.nan)


def _directional_derivs(model, x, y, cfg: MeasureConfig, directions):
    return lamda_ext.directional_derivs(model, x, y, order=cfg.order, directions=directions, loss=cfg.loss,
                                        wrt="input", backend=cfg.backend)


def shared_directions(sample_shape, directions: int, seed: int) -> torch.Tensor:
    """The shared directions of a ``"shared"``-mode meter.

    ``[K, *sample_shape]`` float32, unit norm, drawn on the CPU from ``torch.Generator().manual_seed(seed)`` (the same
    on every device).
    """
    g = torch.Generator().manual_seed(int(seed))
    return lamda_ext.random_directions(torch.zeros((1,) + tuple(sample_shape)), directions, g, shared=True)


def regenerate_directions(x_points: torch.Tensor, directions: int, direction_seeds, chunk_size: int) -> torch.Tensor:
    """The unit directions a [`LambdaMeter`][lamda.measure.LambdaMeter] used: ``[P, K, *x.shape[1:]]``."""
    out = []
    for c, seed in enumerate(np.asarray(direction_seeds).tolist()):
        xc = x_points[c * chunk_size:(c + 1) * chunk_size]
        g = torch.Generator().manual_seed(int(seed))   # CPU generator: same directions on every device
        out.append(lamda_ext.random_directions(xc, directions, generator=g).transpose(0, 1))
    return torch.cat(out, 0)


class LambdaMeter:
    """Measures λ on fixed points ``x [P, ...]``, ``y [P]`` with fixed, seeded directions."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, cfg: MeasureConfig):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} points but y has {y.shape[0]} labels")
        self.x, self.y, self.cfg = x, y, cfg
        n_chunks = (x.shape[0] + cfg.chunk_size - 1) // cfg.chunk_size
        if cfg.direction_mode == "shared":
            self.direction_seeds = np.array([cfg.seed], dtype=np.int64)
            self.directions = shared_directions(x.shape[1:], cfg.directions, cfg.seed)      # [K, *S] float32
        else:
            self.direction_seeds = np.array([cfg.seed + c for c in range(n_chunks)], dtype=np.int64)
            self.directions = None

    @property
    def points(self) -> int:
        """P, the number of measurement points."""
        return int(self.x.shape[0])

    def measure(self, model: nn.Module) -> dict[str, np.ndarray]:
        """One measurement in eval mode (the model's train/eval state is restored afterwards)."""
        was_training = model.training
        model.eval()
        try:
            per_point = []
            cs = self.cfg.chunk_size
            shared = (self.directions.to(self.x.device, self.x.dtype) if self.directions is not None else None)
            for c in range((self.points + cs - 1) // cs):
                xc, yc = self.x[c * cs:(c + 1) * cs], self.y[c * cs:(c + 1) * cs]
                if shared is not None:
                    u = shared
                else:   # CPU generator: device-independent directions
                    g = torch.Generator().manual_seed(int(self.direction_seeds[c]))
                    u = lamda_ext.random_directions(xc.cpu(), self.cfg.directions, g).to(xc.device)
                d = _directional_derivs(model, xc, yc, self.cfg, u)
                per_point.append(d.detach().to("cpu", torch.float64))
            dpp = torch.cat(per_point, 0).numpy()                                   # [P, K, N]
        finally:
            model.train(was_training)
        if not np.all(np.isfinite(dpp)):
            raise FloatingPointError("directional derivatives contain NaN/inf; the model has diverged")
        log_abs = log_abs_mean(dpp, axis=0)                                         # [K, N]
        lam = _curvature_rate_points(dpp)
        out = {"derivatives_per_point": dpp, "derivatives": dpp.mean(0), "log_abs_derivatives": log_abs,
               "lambda_values": lam}
        if self.directions is not None:
            out["directions"] = self.directions.reshape(self.cfg.directions, -1).numpy().astype(np.float32)
        return out

    def run_arrays(self, measurements: list[dict]) -> dict[str, np.ndarray]:
        """Run-level arrays for ``lambda_data.npz``.

        ``direction_seeds``, ``direction_chunk_size``, ``direction_mode``, and in shared mode ``directions [M, K,
        prod(S)]`` float32 (one row per measurement).
        """
        arr = {"direction_seeds": self.direction_seeds, "direction_chunk_size": np.array(self.cfg.chunk_size),
               "direction_mode": np.array(self.cfg.direction_mode)}
        if self.directions is not None:
            k, dim = self.cfg.directions, int(np.prod(self.x.shape[1:]))
            arr["directions"] = (np.stack([r["directions"] for r in measurements]) if measurements
                                 else np.zeros((0, k, dim), np.float32))
        return arr


def _curvature_rate_points(dpp: np.ndarray) -> np.ndarray:
    """Per-direction λ pooled over points ``[P, K, N]`` → ``[K]`` (lamda_ext.curvature_rate, pool='points')."""
    lam = lamda_ext.curvature_rate(torch.from_numpy(dpp), pool="points")
    return lam.detach().cpu().numpy().astype(np.float64)
