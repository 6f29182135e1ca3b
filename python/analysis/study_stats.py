"""Confidence intervals for the landscape and spectrum studies' summaries.

- :func:`mean_ci`: mean and 95 % Student-t confidence half-width over seeds (n/a for n < 2).
- :func:`pearson_ci`: Pearson r with its p-value (:func:`lamda.analysis.stats.pearson`) and a seeded
  percentile-bootstrap 95 % CI of r.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import Correlation, fmt, pearson

__all__ = ["MeanCI", "mean_ci", "CorrelationCI", "pearson_ci", "MIN_BOOT"]


@dataclass
class MeanCI:
    """``mean``, 95 % ``half`` width (NaN for n < 2) and ``n`` finite values."""
    mean: float
    half: float
    n: int

    def text(self, spec: str = ".4g") -> str:
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{fmt(self.mean, spec)} (n = 1, CI n/a)"
        return f"{fmt(self.mean, spec)} ± {fmt(self.half, spec)} (95 % CI, n = {self.n})"


def mean_ci(values, level: float = 0.95) -> MeanCI:
    """Mean and Student-t CI half-width ``t_{(1+level)/2, n-1} · s / √n`` over the finite values."""
    from scipy import stats
    v = np.asarray([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return MeanCI(float("nan"), float("nan"), 0)
    if v.size == 1:
        return MeanCI(float(v[0]), float("nan"), 1)
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return MeanCI(float(v.mean()), half, int(v.size))


@dataclass
class CorrelationCI:
    """A :class:`Correlation` plus the bootstrap CI ``(lo, hi)`` of r (NaN when not computable)."""
    corr: Correlation
    lo: float
    hi: float

    @property
    def ok(self) -> bool:
        return self.corr.ok

    def text(self) -> str:
        if not self.corr.ok:
            return self.corr.text()
        ci = (f"95 % bootstrap CI [{self.lo:+.3f}, {self.hi:+.3f}]" if np.isfinite(self.lo) else
              f"bootstrap CI n/a{' (n < ' + str(MIN_BOOT) + ')' if self.corr.n < MIN_BOOT else ''}")
        return f"{self.corr.text()[:-1]}, {ci})"


MIN_BOOT = 5


def pearson_ci(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> CorrelationCI:
    """Pearson r over the finite pairs with a percentile bootstrap CI (resamples with a constant variable are
    skipped; the CI is NaN for fewer than :data:`MIN_BOOT` pairs or when fewer than half of the resamples are
    usable)."""
    c = pearson(x, y)
    if not c.ok or c.n < MIN_BOOT:
        return CorrelationCI(c, float("nan"), float("nan"))
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_boot), x.size))
    xs, ys = x[idx], y[idx]
    xc, yc = xs - xs.mean(1, keepdims=True), ys - ys.mean(1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    good = den > 0
    if good.sum() < n_boot / 2:
        return CorrelationCI(c, float("nan"), float("nan"))
    r = (xc * yc).sum(1)[good] / den[good]
    a = (1 - level) / 2
    return CorrelationCI(c, float(np.quantile(r, a)), float(np.quantile(r, 1 - a)))
