"""Draw the backend speed-ups of ``benchmarks/README.md`` (taylor and fused against nested autograd).

    python docs/figures/benchmark_speedups.py      # writes docs/figures/backend_speedups.png

Reads every table of the benchmarks README whose header has the columns ``taylor vs autograd`` and
``fused vs autograd`` (the directional-derivative tables, CPU and GPU, and the transformer table), labels each
row with its case and the machine section it sits in, and plots both ratios on a log axis. The numbers are
the README's: rerun the benchmarks and this script to refresh the figure.
"""
from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
README = REPO / "benchmarks" / "README.md"
OUT = pathlib.Path(__file__).resolve().parent / "backend_speedups.png"
COLUMNS = ("taylor vs autograd", "fused vs autograd")


def ratio(cell: str) -> float:
    """``"25.1×"`` → 25.1."""
    return float(re.sub(r"[^0-9.]", "", cell))


def tables(text: str):
    """Yield ``(section, header, rows)`` for every markdown table; section = the last ``## `` heading above it."""
    section, lines = "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("- :"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            yield section, header, rows
            continue
        i += 1


def collect() -> list[tuple[str, float, float]]:
    out = []
    for section, header, rows in tables(README.read_text()):
        if not all(c in header for c in COLUMNS):
            continue
        machine = "GPU" if section.startswith("GPU") else "CPU"
        t, f = (header.index(c) for c in COLUMNS)
        out += [(f"{row[0]} ({machine})", ratio(row[t]), ratio(row[f])) for row in rows]
    if not out:
        raise SystemExit(f"no table with columns {COLUMNS} in {README}")
    return out


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = collect()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.4))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [r[1] for r in rows], height=0.4, color="C0", label="taylor")
    ax.barh([i + 0.2 for i in y], [r[2] for r in rows], height=0.4, color="C1", label="fused")
    ax.set_yticks(list(y), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(1, 2 * max(max(r[1], r[2]) for r in rows))
    ax.set_xlabel("speed-up over nested autograd (time ratio, ×, log scale)")
    ax.set_title("Directional derivatives: medians from benchmarks/README.md", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT.relative_to(REPO)} ({len(rows)} cases)")


if __name__ == "__main__":
    main()
