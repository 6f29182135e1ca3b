"""Benchmarks report ratios measured side by side in one run.

Each case records its median time in a shared table; at the end of the session the
ratios (to the autograd reference and to the K+1-forward floor) are printed and written
to ``benchmarks/results/<host>-<device>.json``.
"""
from __future__ import annotations

import json
import os
import platform
import time

import pytest
import torch

RESULTS: dict = {}


@pytest.fixture
def record(benchmark):
    def _record(case: str, variant: str, fn, rounds: int = 5, warmup: int = 1):
        benchmark.group = case
        benchmark.extra_info.update(case=case, variant=variant)
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
        RESULTS.setdefault(case, {})[variant] = benchmark.stats.stats.median
    return _record


def pytest_sessionfinish(session, exitstatus):
    if not RESULTS:
        return
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    lines = ["", "ratios (median times, measured in this run)", f"device: {device}, torch {torch.__version__}, "
             f"threads {torch.get_num_threads()}"]
    table = {}
    for case, times in RESULTS.items():
        ref, floor, expanded = times.get("autograd"), times.get("floor"), times.get("expanded")
        for variant, t in times.items():
            row = {"median_s": t}
            if ref:
                row["speedup_vs_autograd"] = ref / t
            if expanded:       # shared-direction cases: the same directions expanded to [K, B, *S]
                row["speedup_vs_expanded"] = expanded / t
            if floor:
                row["x_floor"] = t / floor
            table.setdefault(case, {})[variant] = row
            extra = "".join(f"  {k}={v:.2f}" for k, v in row.items() if k != "median_s")
            lines.append(f"  {case:<34} {variant:<14} {t * 1e3:10.2f} ms{extra}")
    print("\n".join(lines))
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    name = f"{platform.node()}-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"device": device, "torch": torch.__version__, "time": time.time(), "results": table}, f, indent=1)
    os.replace(tmp, os.path.join(out, name))
