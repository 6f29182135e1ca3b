"""Small statistics helpers that say "not enough data" instead of returning a meaningless number."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Correlation", "pearson", "fmt"]


@dataclass
class Correlation:
    r: float
    p: float
    n: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    def text(self) -> str:
        if not self.ok:
            return f"not enough data ({self.reason})"
        return f"Pearson r = {self.r:+.3f}, p = {self.p:.3g} (n = {self.n})"


def pearson(x, y) -> Correlation:
    """Pearson r and two-sided p-value (scipy) over the pairs where both values are finite."""
    from scipy import stats
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3:
        return Correlation(np.nan, np.nan, n, f"{n} run(s) with finite values, need at least 3")
    if np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return Correlation(np.nan, np.nan, n, "one of the variables is constant")
    res = stats.pearsonr(x[ok], y[ok])
    return Correlation(float(res.statistic), float(res.pvalue), n)


def fmt(v, spec: str = ".3f", missing: str = "n/a") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return missing
    return format(f, spec) if np.isfinite(f) else missing
