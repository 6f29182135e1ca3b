"""Plots of the scale sweep (``test_bench_scale.py -k sweep``): time and peak memory of one call against K, N,
points and model size, each with its fitted growth exponent (least-squares slope in log-log).

    python benchmarks/scale_plots.py [results/scale-cpu.jsonl] [--out benchmarks/figures]

Writes ``scale_time.png`` (the default calls, grad mode on) and ``scale_memory.png`` (the calls under
``torch.no_grad()`` of ``LAMDA_BENCH_SCALE_NO_GRAD=1`` where present) at 300 dpi and prints the exponents.
"""
from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker as ticker  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

# panel: (title, x label, selector of the sweep rows, x value)
PANELS = [
    ("directions K (vit_b_16, N = 6, B = 1)", "K", lambda r: r["model"] == "vit_b_16" and r["N"] == 6 and r["points"] == 1,
     lambda r: r["K"]),
    ("order N (vit_b_16, K = 15, B = 1)", "N", lambda r: r["model"] == "vit_b_16" and r["K"] == 15 and r["points"] == 1,
     lambda r: r["N"]),
    ("points B (resnet50, K = 15, N = 6)", "B", lambda r: r["model"] == "resnet50", lambda r: r["points"]),
    ("model size (ResNets, K = 15, N = 6, B = 1)", "parameters (millions)",
     lambda r: r["model"].startswith("resnet") and r["points"] == 1, lambda r: r["params_M"]),
]


def load(path: str) -> list[dict]:
    rows = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("ok") and r.get("backend") == "fused" and r.get("budget", "auto") == "auto":
                rows[(r["model"], r["points"], r["K"], r["N"], r.get("grad", True))] = r     # the newest of a case
    return list(rows.values())


def exponent(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def figure(rows, value, ylabel: str, path: str) -> list[str]:
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    notes = []
    for ax, (title, xlabel, pick, xval) in zip(axes, PANELS):
        pts = sorted((xval(r), value(r)) for r in rows if pick(r))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if len(pts) < 2:
            ax.text(0.5, 0.5, "fewer than 2 points", ha="center", transform=ax.transAxes)
            continue
        x, y = map(np.array, zip(*pts))
        p = exponent(x, y)
        ax.loglog(x, y, "o-", label=f"fitted exponent {p:.2f} (n = {len(x)})")
        for axis in (ax.xaxis, ax.yaxis):          # plain numbers on the log axes
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xticks(x)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
        notes.append(f"{title}: {ylabel} ~ {xlabel}^{p:.2f} over {len(x)} points")
    fig.tight_layout()
    fig.savefig(path, dpi=300)
    plt.close(fig)
    return notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="?", default=os.path.join(HERE, "results", "scale-cpu.jsonl"))
    ap.add_argument("--out", default=os.path.join(HERE, "figures"))
    a = ap.parse_args(argv)
    rows = load(a.results)
    os.makedirs(a.out, exist_ok=True)
    # time: the default calls (grad mode on); memory: calls under no_grad where measured (one working set; in grad
    # mode the plan keeps the autograd graph when it fits the budget and recomputes otherwise, which mixes modes)
    timed = [r for r in rows if r.get("grad", True)]
    measured = [r for r in rows if not r.get("grad", True)] or timed
    notes = figure(timed, lambda r: r["call_s"][-1], "time of a warm call (s)", os.path.join(a.out, "scale_time.png"))
    label = "peak RSS above the model's (GiB)" + ("" if measured is timed else ", no_grad")
    notes += figure(measured, lambda r: r["peak_rss_GB"] - r["rss_before_GB"], label,
                    os.path.join(a.out, "scale_memory.png"))
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
