"""Real-size models: time in forward passes and peak memory of one ``directional_derivs`` call, each case in
its own process (``scale_case.py``), at the study's K = 15, N = 6, default arguments (grad mode on,
``memory_budget="auto"``), eval mode.

    pytest benchmarks/test_bench_scale.py -s -p no:cacheprovider                 # the table
    pytest benchmarks/test_bench_scale.py -s -p no:cacheprovider -k sweep        # growth in K, N, points, size
    python benchmarks/scale_plots.py                                              # plots from the results

Cases: resnet50 (B = 2, 8), vit_b_16 (B = 1, 4), swin_t, convnext_tiny (B = 1), a GPT-2-small-size decoder
(124 M parameters, 128 tokens, B = 1), fused and taylor; a 2 GB memory budget on resnet50 and vit_b_16;
nested autograd at N = 6 under a 20 GB address-space cap (where it does not fit, the size it asked for is
reported). Results: ``benchmarks/results/scale-<device>.jsonl`` (one JSON object per case).
``LAMDA_BENCH_TINY=1``: a smoke run (resnet18, K = 2, N = 2). ``LAMDA_BENCH_SCALE_NO_GRAD=1``: every call under
``torch.no_grad()`` (one working set, no autograd graph: the memory the sweep's plot compares).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.environ.get("LAMDA_BENCH_TINY") == "1"
NO_GRAD = os.environ.get("LAMDA_BENCH_SCALE_NO_GRAD") == "1"     # calls under torch.no_grad() (measurement mode)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
RESULTS = os.path.join(HERE, "results", f"scale-{DEVICE}.jsonl")

if TINY:
    TABLE = [("resnet18", 1, 2, 2, "fused", "auto")]
    SWEEP = [("resnet18", 1, k, 2, "fused", "auto") for k in (1, 2)]
else:
    TABLE = [(m, b, 15, 6, be, "auto") for m, b in (("resnet50", 2), ("resnet50", 8), ("vit_b_16", 1),
                                                    ("vit_b_16", 4), ("swin_t", 1), ("convnext_tiny", 1),
                                                    ("gpt2_small", 1)) for be in ("fused", "taylor")]
    TABLE += [("resnet50", 2, 15, 6, "fused", str(2 * 2**30)), ("vit_b_16", 1, 15, 6, "fused", str(2 * 2**30)),
              ("resnet50", 2, 15, 6, "autograd", "auto"), ("vit_b_16", 1, 15, 6, "autograd", "auto")]
    if DEVICE == "cuda":
        TABLE += [("vit_b_16", 16, 15, 6, "fused", "auto")]
    SWEEP = ([("vit_b_16", 1, k, 6, "fused", "auto") for k in (1, 2, 4, 8, 15)]
             + [("vit_b_16", 1, 15, n, "fused", "auto") for n in (1, 2, 4, 8)]
             + [("resnet50", b, 15, 6, "fused", "auto") for b in (1, 4)]
             + [(m, 1, 15, 6, "fused", "auto") for m in ("resnet18", "resnet34", "resnet101")])


def run_case(model, points, K, N, backend, budget, timeout=3600) -> dict:
    cmd = [sys.executable, os.path.join(HERE, "scale_case.py"), "--model", model, "--points", str(points),
           "--directions", str(K), "--order", str(N), "--backend", backend, "--budget", budget, "--repeat",
           "1" if backend == "autograd" else "2", "--device", DEVICE]
    if NO_GRAD:
        cmd += ["--no-grad"]
    if backend == "autograd":
        cmd += ["--rss-limit", "20"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"model": model, "points": points, "K": K, "N": N, "backend": backend, "ok": False,
                "error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:300], "returncode": proc.returncode}
    return json.loads(lines[-1])


def _record(res: dict) -> None:
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(res) + "\n")
    fp = ", ".join(f"{v:.1f}" for v in res.get("forward_passes", []))
    print(f"\n{res['model']} B={res['points']} K={res['K']} N={res['N']} {res['backend']} budget={res.get('budget')}: "
          f"ok={res['ok']} forward passes [{fp}] peak RSS {res.get('peak_rss_GB', float('nan')):.2f} GB "
          f"{res.get('error', '')}")


@pytest.mark.parametrize("case", TABLE, ids=lambda c: "-".join(map(str, c)))
def test_scale_table(case):
    res = run_case(*case)
    res["budget"] = case[-1]
    _record(res)
    if case[4] != "autograd":
        assert res["ok"], res.get("error")


@pytest.mark.parametrize("case", SWEEP, ids=lambda c: "sweep-" + "-".join(map(str, c)))
def test_scale_sweep(case):
    res = run_case(*case)
    res["budget"] = case[-1]
    res["sweep"] = True
    _record(res)
    assert res["ok"], res.get("error")
