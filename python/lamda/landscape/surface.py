"""Loss surfaces along filter-normalised random directions (Li et al., 2018) and their plots.

A direction d has one tensor per parameter. With ``normalization="filter"`` every filter (slice
along dim 0 of a weight with ≥ 2 dims) of a Gaussian tensor is rescaled to the norm of the
matching filter of θ; ``"layer"`` rescales whole tensors; ``"none"`` scales the whole direction to
unit norm. One-dimensional parameters (biases, batch-norm weights and biases) get a zero direction
unless ``include_bias_bn=True`` (then they follow the same normalisation, filters being scalars).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lamda_ext.directions import filter_normalize
from lamda_ext.losses import LossSpec

from .evaluate import evaluate, param_dict

__all__ = ["SurfaceResult", "random_direction", "loss_surface", "plot_surface_1d", "plot_contour", "plot_surface_3d",
           "plot_contour_panels", "surface_grid"]

NORMALIZATIONS = ("filter", "layer", "none")


@dataclass
class SurfaceResult:
    """``alphas [R]`` (and ``betas [R]`` in 2-D).

    ``losses``/``accuracies`` ``[R]`` or ``[R, R]`` (index ``[i, j]`` ↔ ``(alphas[i], betas[j])``); ``directions``: the
    direction dicts used.
    """
    alphas: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray
    betas: np.ndarray | None = None
    directions: list = field(default_factory=list)

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return 1 if self.betas is None else 2


def random_direction(model: nn.Module, normalization: str = "filter", include_bias_bn: bool = False,
                     generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """A random direction over the trainable parameters, normalised as described in the module docstring."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        w = p.detach()
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w.dtype).to(w.device)
        if w.dim() <= 1 and not include_bias_bn:
            d = torch.zeros_like(w)
        elif normalization == "filter":
            if w.dim() <= 1:
                d = d.sign() * w.abs()  # a scalar "filter": |d_i| = |w_i|
            else:
                d = filter_normalize(d, w)
        elif normalization == "layer":
            d = d * (w.norm() / d.norm().clamp_min(1e-12))
        out[name] = d
    if normalization == "none":
        total = torch.sqrt(sum((d.double() ** 2).sum() for d in out.values()))
        out = {k: d / total.to(d.dtype) if total > 0 else d for k, d in out.items()}
    return out


def loss_surface(model: nn.Module, data, directions: int = 1, span: float = 1.0, resolution: int = 21,
                 normalization: str = "filter", *, loss: LossSpec = "cross_entropy", include_bias_bn: bool = False,
                 generator: torch.Generator | None = None, label_smoothing: float = 0.0,
                 given_directions: list | None = None) -> SurfaceResult:
    """Loss and accuracy on the line ``θ + α d`` or the plane ``θ + α d1 + β d2``.

    α, β ∈ [−span, span] on [`surface_grid`][lamda.landscape.surface.surface_grid] (an odd ``resolution`` puts the
    trained point θ exactly on the centre node).

    ``data`` is an ``(x, y)`` pair or an iterable of pairs; the model runs in its current mode
    (use eval mode) and is not modified. ``given_directions`` reuses direction dicts (e.g. from an
    earlier result) instead of drawing them from ``generator``.
    """
    if directions not in (1, 2):
        raise ValueError(f"directions must be 1 or 2, got {directions}")
    if int(resolution) < 2:
        raise ValueError(f"resolution must be ≥ 2, got {resolution}")
    if not span > 0:
        raise ValueError(f"span must be > 0, got {span}")
    if given_directions is not None:
        if len(given_directions) != directions:
            raise ValueError(f"given_directions holds {len(given_directions)} directions, expected {directions}")
        dirs = list(given_directions)
    else:
        dirs = [random_direction(model, normalization, include_bias_bn, generator) for _ in range(directions)]
    base = param_dict(model)
    grid = surface_grid(span, resolution)

    def at(coeffs) -> tuple[float, float]:
        params = dict(base)
        for c, d in zip(coeffs, dirs):
            for k, t in d.items():
                params[k] = params[k] + float(c) * t
        return evaluate(model, data, loss, params, label_smoothing)

    if directions == 1:
        vals = [at((a,)) for a in grid]
        return SurfaceResult(grid, np.array([v[0] for v in vals]), np.array([v[1] for v in vals]), None, dirs)
    L = np.zeros((len(grid), len(grid)))
    A = np.zeros_like(L)
    for i, a in enumerate(grid):
        for j, b in enumerate(grid):
            L[i, j], A[i, j] = at((a, b))
    return SurfaceResult(grid, L, A, grid.copy(), dirs)


def surface_grid(span: float, resolution: int) -> np.ndarray:
    """``resolution`` evenly spaced values from −span to span, symmetric about 0 (``g[i] == −g[R−1−i]``).

    For odd ``resolution`` the centre value is exactly 0.
    """
    R = int(resolution)
    if R < 2:
        raise ValueError(f"resolution must be ≥ 2, got {resolution}")
    half = (R - 1) / 2
    return float(span) * (np.arange(R) - half) / half


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_surface_1d(result: SurfaceResult, path: str | os.PathLike, *, dpi: int = 200, title: str = "") -> str:
    """Loss (left axis) and accuracy (right axis) along the 1-D direction; PNG written atomically."""
    from ..plots import save
    if result.ndim != 1:
        raise ValueError("plot_surface_1d needs a 1-D result (loss_surface(..., directions=1))")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(result.alphas, result.losses, "b-", lw=1.5, label="loss")
    ax.set_xlabel("α (filter-normalised direction)")
    ax.set_ylabel("loss", color="b")
    if np.isfinite(result.accuracies).any():
        ax2 = ax.twinx()
        ax2.plot(result.alphas, result.accuracies, "r--", lw=1.2, label="accuracy")
        ax2.set_ylabel("accuracy", color="r")
    ax.set_title(title or "1-D loss surface", fontsize=9)
    save(fig, path, dpi=dpi)
    return str(path)


def plot_contour(result: SurfaceResult, path: str | os.PathLike, *, levels: int = 30, dpi: int = 200,
                 title: str = "") -> str:
    """Filled contour plot of the 2-D loss surface; PNG written atomically."""
    from ..plots import save
    if result.ndim != 2:
        raise ValueError("plot_contour needs a 2-D result (loss_surface(..., directions=2))")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    B, A = np.meshgrid(result.betas, result.alphas)
    cs = ax.contourf(A, B, result.losses, levels=int(levels), cmap="viridis")
    ax.contour(A, B, result.losses, levels=int(levels), colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=ax, label="loss")
    ax.plot([0], [0], "r*", ms=8)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_title(title or "loss contours", fontsize=9)
    save(fig, path, dpi=dpi)
    return str(path)


def plot_surface_3d(result: SurfaceResult, path: str | os.PathLike, *, dpi: int = 200, title: str = "",
                    elev: float = 35.0, azim: float = -60.0, vmin: float | None = None,
                    vmax: float | None = None) -> str:
    """3-D surface plot of the 2-D loss surface.

    PNG written atomically. ``vmin``/``vmax`` fix the colour scale and the z range (to share them between surfaces);
    values outside are clipped.
    """
    from ..plots import save
    if result.ndim != 2:
        raise ValueError("plot_surface_3d needs a 2-D result (loss_surface(..., directions=2))")
    plt = _plt()
    fig = plt.figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot(111, projection="3d")
    B, A = np.meshgrid(result.betas, result.alphas)
    Z = np.asarray(result.losses, float)
    if vmin is not None or vmax is not None:
        Z = np.clip(Z, vmin, vmax)
    surf = ax.plot_surface(A, B, Z, cmap="viridis", linewidth=0, antialiased=True, vmin=vmin, vmax=vmax)
    if vmin is not None and vmax is not None:
        ax.set_zlim(vmin, vmax)
    fig.colorbar(surf, ax=ax, shrink=0.55, pad=0.12, orientation="horizontal", label="loss (colour)")
    ax.view_init(elev=elev, azim=azim)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_zlabel("loss", labelpad=10)
    ax.set_title(title or "loss surface", fontsize=9)
    save(fig, path, dpi=dpi)
    return str(path)


def plot_contour_panels(results: dict, path: str | os.PathLike, *, levels: int = 25, dpi: int = 300,
                        title: str = "", log: bool = True) -> str:
    """Side-by-side filled contours of several 2-D surfaces on one colour scale.

    ``surfaces`` is ``{panel title: SurfaceResult}``; the panels share levels and one colourbar, and the trained point
    (α = β = 0) is marked by a star.

    ``log=True`` spaces the levels logarithmically in the loss (the loss spans decades far from θ); the
    colourbar is labelled accordingly. PNG written atomically.
    """
    from matplotlib.colors import LogNorm

    from ..plots import save
    if not results:
        raise ValueError("results is empty")
    for name, r in results.items():
        if r.ndim != 2:
            raise ValueError(f"plot_contour_panels needs 2-D results; {name!r} is 1-D")
    allv = np.concatenate([np.asarray(r.losses, float).ravel() for r in results.values()])
    allv = allv[np.isfinite(allv)]
    if allv.size == 0:
        raise ValueError("every surface is non-finite")
    lo, hi = float(allv.min()), float(allv.max())
    use_log = log and lo > 0 and hi > lo
    if use_log:
        lev = np.geomspace(lo, hi, int(levels))
        norm = LogNorm(vmin=lo, vmax=hi)
    else:
        lev = np.linspace(lo, hi if hi > lo else lo + 1e-12, int(levels))
        norm = None
    plt = _plt()
    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n + 1.0, 3.9), squeeze=False, constrained_layout=True)
    cs = None
    for ax, (name, r) in zip(axes[0], results.items()):
        B, A = np.meshgrid(r.betas, r.alphas)
        Z = np.clip(np.asarray(r.losses, float), lo, hi)
        cs = ax.contourf(A, B, Z, levels=lev, cmap="viridis", norm=norm)
        ax.contour(A, B, Z, levels=lev, colors="k", linewidths=0.25)
        i0, j0 = int(np.argmin(np.abs(r.alphas))), int(np.argmin(np.abs(r.betas)))
        ax.plot([r.alphas[i0]], [r.betas[j0]], marker="*", color="red", ms=10, mec="white", mew=0.6,
                label=f"trained θ (loss {r.losses[i0, j0]:.3g})", ls="none")
        ax.set_xlabel("α (filter-normalised direction 1, units of ‖filter‖)")
        ax.set_ylabel("β (filter-normalised direction 2)")
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    ticks = np.geomspace(lo, hi, 6) if use_log else np.linspace(lo, hi, 6)
    cb = fig.colorbar(cs, ax=axes[0].tolist(), shrink=0.9, ticks=ticks)
    cb.ax.minorticks_off()
    cb.ax.set_yticks(ticks, [f"{t:.3g}" for t in ticks])
    cb.set_label("loss (cross-entropy, nats)" + (", log colour scale" if use_log else ""))
    if title:
        fig.suptitle(title, fontsize=10)
    save(fig, path, dpi=dpi)
    return str(path)
