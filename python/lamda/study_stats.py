"""Confidence intervals for the landscape and spectrum studies' summaries.

- :func:`mean_ci`: mean and 95 % Student-t confidence half-width over seeds (n/a for n < 2).
- :func:`pearson_ci`: Pearson r with its p-value (:func:`lamda.analysis.stats.pearson`) and a seeded
  percentile-bootstrap 95 % CI of r.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .stats import Correlation, fmt, pearson
from .stats import mean_ci as _mean_ci

__all__ = ["MeanCI", "mean_ci", "CorrelationCI", "pearson_ci", "MIN_BOOT"]


@dataclass
class MeanCI:
    """``mean``, 95 % ``half`` width (NaN for n < 2) and ``n`` finite values."""
    mean: float
    half: float
    n: int

    def text(self, spec: str = ".4g", short: bool = False) -> str:
        """``mean ± half (95 % CI, n = …)``; ``short``: ``mean ± half`` / ``mean ± n/a`` (for a table whose caption
        states the CI and n)."""
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{fmt(self.mean, spec)} ± n/a" if short else f"{fmt(self.mean, spec)} (n = 1, CI n/a)"
        return f"{fmt(self.mean, spec)} ± {fmt(self.half, spec)}" + ("" if short else f" (95 % CI, n = {self.n})")


def mean_ci(values, level: float = 0.95) -> MeanCI:
    """Mean and Student-t CI half-width ``t_{(1+level)/2, n-1} · s / √n`` over the finite values
    (:func:`stats.mean_ci`)."""
    return MeanCI(*_mean_ci(values, level))


@dataclass
class CorrelationCI:
    """A :class:`Correlation` (its bootstrap CI included) with the CI bounds as ``lo``/``hi`` (NaN when not computable)."""
    corr: Correlation

    @property
    def lo(self) -> float:
        return self.corr.ci_lo

    @property
    def hi(self) -> float:
        return self.corr.ci_hi

    @property
    def ok(self) -> bool:
        return self.corr.ok

    def text(self) -> str:
        small = self.corr.ok and self.corr.n < MIN_BOOT
        return self.corr.text() + (f" (n < {MIN_BOOT})" if small else "")


MIN_BOOT = 5


def pearson_ci(x, y, n_boot: int = 2000, seed: int = 0) -> CorrelationCI:
    """Pearson r over the finite pairs with its percentile bootstrap 95 % CI (:func:`stats.pearson`; the CI is
    NaN for fewer than :data:`MIN_BOOT` pairs)."""
    c = pearson(x, y, n_boot=n_boot, seed=seed)
    if c.ok and c.n < MIN_BOOT:
        c = dataclasses.replace(c, ci_lo=float("nan"), ci_hi=float("nan"))
    return CorrelationCI(c)
