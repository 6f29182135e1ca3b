"""The curvature rate λ: least-squares slope of log|d_n| against n."""
from __future__ import annotations

import numbers
import warnings
from typing import Optional, Tuple

import torch


def log_abs(derivs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ln|d|, mask)`` of ``derivs`` (any shape): exact zeros get log 0 and mask False (bool, same shape)."""
    mask = derivs != 0
    safe = torch.where(mask, derivs.abs(), torch.ones_like(derivs))
    return torch.log(safe), mask


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(mean, any valid)``: the mean of ``values`` over ``dim`` over the entries where ``mask`` (bool) is True."""
    w = mask.to(values.dtype)
    count = w.sum(dim=dim)
    mean = (values * w).sum(dim=dim) / count.clamp_min(1)
    return mean, count > 0


def fit_slope(logs: torch.Tensor, mask: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of ``logs`` ``[..., N]`` over ``orders`` ``[N]`` → ``[...]`` (NaN below 2 usable points)."""
    w = mask.to(logs.dtype)
    n = w.sum(-1)
    xbar = (w * orders).sum(-1) / n.clamp_min(1)
    ybar = (w * logs).sum(-1) / n.clamp_min(1)
    dx = (orders - xbar.unsqueeze(-1)) * w
    sxx = (dx * dx).sum(-1)
    sxy = (dx * (logs - ybar.unsqueeze(-1))).sum(-1)
    slope = sxy / torch.where(n >= 2, sxx, torch.ones_like(sxx))
    return torch.where(n >= 2, slope, torch.full_like(slope, float("nan")))


def curvature_rate(derivs: torch.Tensor, orders: Optional[Tuple[int, int]] = None, pool: str = "none") -> torch.Tensor:
    """λ, the least-squares slope of ln|d_n| over n in an order window.

    Exact zeros are masked out of the fit, never clamped; a fit with fewer than two usable orders gives NaN, and the
    number of such fits is reported in a ``RuntimeWarning``.

    Args:
        derivs: ``[B, K, N]`` (input space) or ``[K, N]`` (parameter space), floating point; the last axis is
            n = 1..N (what [`directional_derivs`][lamda_ext.derivs.directional_derivs] returns).
        orders: inclusive window ``(lo, hi)`` of orders (1-based, ``1 ≤ lo < hi ≤ N``); default all.
        pool: ``"none"`` → one λ per row (``[B, K]`` or ``[K]``); ``"points"`` → ``[K]``, fitted on the mean over
            points of ln|d_n| (``[B, K, N]`` input only); ``"all"`` → a scalar, fitted on the mean of ln|d_n| over
            every row.

    Returns:
        λ in ``derivs``' dtype and device, of the shape ``pool`` gives.

    Raises:
        ValueError: NaN/inf in ``derivs``, an empty tensor, a window outside ``1..N``, an unknown ``pool``, or
            ``pool="points"`` on ``[K, N]``.
        TypeError: non-float ``derivs`` or a malformed ``orders``.

    Example:
        >>> import torch, lamda_ext
        >>> d = torch.exp(2.0 * torch.arange(1, 7, dtype=torch.float64)).expand(5, 3, 6)   # d_n = e^(2n)
        >>> lamda_ext.curvature_rate(d, pool="points")
        tensor([2., 2., 2.], dtype=torch.float64)
        >>> tuple(lamda_ext.curvature_rate(d, orders=(2, 5)).shape)
        (5, 3)
    """
    if not isinstance(derivs, torch.Tensor) or derivs.dim() not in (2, 3):
        raise ValueError("derivs must be a tensor [B, K, N] or [K, N]")
    if not derivs.dtype.is_floating_point:
        raise TypeError(f"derivs must be floating point, got {derivs.dtype}")
    if derivs.numel() == 0:
        raise ValueError(f"derivs is empty (shape {list(derivs.shape)}): there is nothing to fit")
    if not bool(torch.isfinite(derivs).all()):
        bad = int((~torch.isfinite(derivs)).sum())
        raise ValueError(f"derivs contains {bad} NaN or inf value(s); λ of such a row is undefined "
                         "(check the model and inputs that produced them)")
    n_max = derivs.shape[-1]
    if orders is None:
        lo, hi = 1, n_max
    else:
        if not isinstance(orders, (tuple, list)) or len(orders) != 2:
            raise TypeError(f"orders must be a window (lo, hi) of two ints, got {orders!r}")
        if any(isinstance(o, bool) or not isinstance(o, numbers.Integral) for o in orders):
            raise TypeError(f"orders must be a window (lo, hi) of two ints, got {orders!r}")
        lo, hi = int(orders[0]), int(orders[1])
    if not (1 <= lo < hi <= n_max):
        raise ValueError(f"orders must be a window (lo, hi) with 1 ≤ lo < hi ≤ {n_max}, got {orders}")
    if pool not in ("none", "points", "all"):
        raise ValueError(f"pool must be 'none', 'points' or 'all', got {pool!r}")
    if pool == "points" and derivs.dim() != 3:
        raise ValueError("pool='points' needs input-space derivatives [B, K, N]")
    d = derivs[..., lo - 1:hi]
    logs, mask = log_abs(d)
    if pool == "points":
        logs, mask = masked_mean(logs, mask, 0)
    elif pool == "all":
        logs, mask = masked_mean(logs.reshape(-1, d.shape[-1]), mask.reshape(-1, d.shape[-1]), 0)
    n = torch.arange(lo, hi + 1, dtype=d.dtype, device=d.device)
    lam = fit_slope(logs, mask, n)
    bad = int(torch.isnan(lam).sum())
    if bad:
        warnings.warn(f"curvature_rate: {bad} fit(s) had fewer than 2 non-zero orders in {lo}..{hi} and are NaN",
                      RuntimeWarning, stacklevel=2)
    return lam
