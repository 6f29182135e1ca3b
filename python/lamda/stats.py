"""Small statistics helpers that say "not enough data" instead of returning a meaningless number.

- [`mean_ci`][lamda.stats.mean_ci]: mean, 95 % Student-t half-width and count over seeds
  ([`MeanCI`][lamda.stats.MeanCI]; n/a for one value).
- [`pearson`][lamda.stats.pearson]: Pearson r, two-sided p and a bootstrap 95 % CI over the pairs, with n;
  [`pearson_ci`][lamda.stats.pearson_ci] the same without a CI below [`MIN_BOOT`][lamda.stats.MIN_BOOT] pairs.
- [`cv`][lamda.stats.cv]: coefficient of variation std/|mean| (the study's definition).
- [`bootstrap_stderr`][lamda.stats.bootstrap_stderr]: the standard error of a mean of K values, measured by resampling K
  of them.
- [`fmt`][lamda.stats.fmt], [`fmt_ci`][lamda.stats.fmt_ci]: numbers and ``mean ± half-width`` for tables ("n/a" when
  missing).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np

__all__ = ["Correlation", "CorrelationCI", "MeanCI", "pearson", "pearson_ci", "fmt", "mean_ci", "fmt_ci",
           "t_halfwidth", "cv", "bootstrap_stderr", "MIN_FIT_POINTS", "MIN_BOOT"]

MIN_FIT_POINTS = 5     # no fit line through fewer points


@dataclass
class Correlation:
    """A Pearson correlation with its p-value and bootstrap CI.

    Attributes:
        r: Pearson r (NaN when not computable).
        p: two-sided p-value.
        n: pairs used.
        reason: why nothing was computed (empty when ``r`` is valid).
        ci_lo: lower bound of the bootstrap 95 % CI of r (NaN when not computed).
        ci_hi: upper bound of that CI.
    """
    r: float
    p: float
    n: int
    reason: str = ""
    ci_lo: float = float("nan")
    ci_hi: float = float("nan")

    @property
    def ok(self) -> bool:
        """Whether ``r`` was computed."""
        return not self.reason

    def text(self) -> str:
        """One sentence for a summary: r, p, n and the CI, or why there is no correlation."""
        if not self.ok:
            return f"not enough data ({self.reason})"
        ci = (f", 95 % bootstrap CI [{self.ci_lo:+.2f}, {self.ci_hi:+.2f}]" if np.isfinite(self.ci_lo)
              else ", bootstrap CI n/a")
        return f"Pearson r = {self.r:+.3f}, p = {self.p:.3g}, n = {self.n}{ci}"


def pearson(x, y, n_boot: int = 2000, seed: int = 0) -> Correlation:
    """Pearson r and two-sided p-value over the finite pairs, with a bootstrap 95 % CI of r.

    The p-value is scipy's; the CI is a percentile bootstrap over ``n_boot`` resamples of the pairs, seeded (resamples
    with a constant variable skipped).
    """
    from scipy import stats
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return Correlation(np.nan, np.nan, n, f"n = {n} run(s) with finite values, need at least 3")
    x, y = x[ok], y[ok]
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(np.nan, np.nan, n, "one of the variables is constant")
    res = stats.pearsonr(x, y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb, yb = x[idx], y[idx]
    xc, yc = xb - xb.mean(1, keepdims=True), yb - yb.mean(1, keepdims=True)
    den = np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    good = den > 0
    rb = (xc * yc).sum(1)[good] / den[good]
    lo, hi = (np.percentile(rb, [2.5, 97.5]) if rb.size >= 100 else (np.nan, np.nan))
    return Correlation(float(res.statistic), float(res.pvalue), n, ci_lo=float(lo), ci_hi=float(hi))


def t_halfwidth(std, n: int, level: float = 0.95) -> float:
    """Half-width of the two-sided Student-t interval of a mean.

    ``t_{(1+level)/2, n−1} · std / √n`` (``std`` with ddof = 1). NaN for n < 2 (no interval from one value) or a
    missing/non-finite std. The one t-interval of every study's tables.
    """
    from scipy import stats
    if n is None or int(n) < 2 or std is None or not np.isfinite(float(std)):
        return float("nan")
    return float(stats.t.ppf(0.5 + level / 2, int(n) - 1) * float(std) / np.sqrt(int(n)))


class MeanCI(NamedTuple):
    """Mean, 95 % CI ``half`` width (NaN for n < 2) and count ``n`` of the finite values.

    Unpacks as ``mean, half, n``.
    """

    mean: float
    half: float
    n: int

    def text(self, spec: str = ".4g", short: bool = False) -> str:
        """``mean ± half (95 % CI, n = …)``.

        ``short``: ``mean ± half`` / ``mean ± n/a`` (for a table whose caption states the CI and n).
        """
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{fmt(self.mean, spec)} ± n/a" if short else f"{fmt(self.mean, spec)} (n = 1, CI n/a)"
        return f"{fmt(self.mean, spec)} ± {fmt(self.half, spec)}" + ("" if short else f" (95 % CI, n = {self.n})")


def finite_values(values: Iterable) -> np.ndarray:
    """The finite entries of ``values`` (numbers, None, NaN; any iterable or array) as a float64 vector."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(list(values), dtype=object)
    v = np.asarray([np.nan if x is None else float(x) for x in np.ravel(arr)], float)
    return v[np.isfinite(v)]


def mean_ci(values: Iterable, level: float = 0.95) -> MeanCI:
    """Mean, half-width of the two-sided t-interval (``level``, `t_halfwidth`) and count of the finite values.

    ``values``: numbers, None or NaN (those two are left out), as any iterable or array. The half-width is NaN
    for n = 1 (no interval from one seed); ``(NaN, NaN, 0)`` when there is no finite value.
    """
    v = finite_values(values)
    n = int(v.size)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), 0)
    return MeanCI(float(v.mean()), t_halfwidth(v.std(ddof=1) if n > 1 else float("nan"), n, level), n)


def fmt_ci(mean, half, n: int, spec: str = ".3f") -> str:
    """A table cell ``"m ± h"`` (95 % CI half-width over n seeds).

    ``"m ± n/a"`` for one seed (no interval), ``"n/a"`` without a mean.
    """
    if mean is None or not n or not np.isfinite(float(mean)):
        return "n/a"
    if int(n) < 2 or half is None or not np.isfinite(float(half)):
        return f"{fmt(mean, spec)} ± n/a"
    return f"{fmt(mean, spec)} ± {fmt(half, spec)}"


def cv(values, axis: int = -1) -> np.ndarray:
    """Coefficient of variation std/|mean| (sample std, ddof = 1) over ``axis``, finite values only.

    NaN with fewer than 2 finite values or a zero mean.
    """
    v = np.asarray(values, float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cnt = np.sum(np.isfinite(v), axis=axis)
        m = np.nanmean(v, axis=axis)
        s = np.nanstd(v, axis=axis, ddof=1)
        out = s / np.abs(m)
    return np.where((cnt >= 2) & (m != 0), out, np.nan)


def bootstrap_stderr(values, k: int, n_boot: int = 500, rng: np.random.Generator | None = None) -> np.ndarray:
    """Standard error of the mean of ``k`` values drawn from the last axis, measured by resampling.

    The std over ``n_boot`` resamples (k values with replacement) of their mean. ``values [..., Kall]`` → ``[...]``.

    It estimates std/√k without assuming it (correlated or heavy-tailed values make the two differ); NaN where a
    row has no finite value.
    """
    v = np.asarray(values, float)
    rng = rng if rng is not None else np.random.default_rng(0)
    kall = v.shape[-1]
    idx = rng.integers(0, kall, size=(n_boot, k))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(v[..., idx], axis=-1)                 # [..., n_boot]
        return np.nanstd(means, axis=-1, ddof=1)


def fmt(v, spec: str = ".3f", missing: str = "n/a") -> str:
    """``v`` formatted with ``spec``, or ``missing`` when it is not a finite number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return missing
    return format(f, spec) if np.isfinite(f) else missing


MIN_BOOT = 5        # no bootstrap CI of a correlation from fewer pairs


@dataclass
class CorrelationCI:
    """A [`Correlation`][lamda.stats.Correlation] with the bounds of its bootstrap CI as ``lo``/``hi``.

    The bounds are NaN when not computable.
    """

    corr: Correlation

    @property
    def lo(self) -> float:
        """Lower bound of the CI."""
        return self.corr.ci_lo

    @property
    def hi(self) -> float:
        """Upper bound of the CI."""
        return self.corr.ci_hi

    @property
    def ok(self) -> bool:
        """Whether ``r`` was computed."""
        return self.corr.ok

    def text(self) -> str:
        """The correlation's sentence, marked when fewer pairs than ``MIN_BOOT`` gave it."""
        small = self.corr.ok and self.corr.n < MIN_BOOT
        return self.corr.text() + (f" (n < {MIN_BOOT})" if small else "")


def pearson_ci(x, y, n_boot: int = 2000, seed: int = 0) -> CorrelationCI:
    """Pearson r over the finite pairs with its percentile bootstrap 95 % CI.

    See [`pearson`][lamda.stats.pearson]; the CI is NaN for fewer than [`MIN_BOOT`][lamda.stats.MIN_BOOT] pairs.
    """
    c = pearson(x, y, n_boot=n_boot, seed=seed)
    if c.ok and c.n < MIN_BOOT:
        c = dataclasses.replace(c, ci_lo=float("nan"), ci_hi=float("nan"))
    return CorrelationCI(c)
