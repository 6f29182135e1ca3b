"""Tables of a study's ``summary.md`` and CSVs: per-group mean, std and 95 % CI over seeds; Markdown tables."""
from __future__ import annotations

from typing import Iterable, Sequence

from ..stats import finite_values, t_halfwidth

__all__ = ["group_mean_ci", "markdown_table"]


def _mean_std_n(values: Iterable) -> tuple[float, float, int]:
    """Mean, sample std (ddof=1; 0 for one value) and count of the finite values (NaN, NaN, 0 when none)."""
    v = finite_values(values)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def group_mean_ci(rows: list[dict], key: str, columns: Sequence[str], order: Sequence | None = None) -> list[dict]:
    """One row per value of ``key`` (in ``order``, else first appearance; values without rows left out).

    Returns:
        rows ``{key, n, <col>_mean, <col>_std, <col>_n for every column, then <col>_ci95 for every column}``
        over the finite values of each column (``_ci95``: 95 % Student-t half-width of the mean, NaN for fewer
        than 2 values).
    """
    groups = list(order) if order is not None else list(dict.fromkeys(r[key] for r in rows))
    out = []
    for g in groups:
        sel = [r for r in rows if r[key] == g]
        if not sel:
            continue
        row = {key: g, "n": len(sel)}
        for c in columns:
            row[f"{c}_mean"], row[f"{c}_std"], row[f"{c}_n"] = _mean_std_n(r.get(c) for r in sel)
        for c in columns:
            row[f"{c}_ci95"] = t_halfwidth(row[f"{c}_std"], row[f"{c}_n"])
        out.append(row)
    return out


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A Markdown table: the header row, the separator and one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)

