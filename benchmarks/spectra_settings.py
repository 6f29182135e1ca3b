"""Which settings of each method reach rtol 1e-3 on the top-k (LA) Hessian eigenvalues, and how long they take.

k is the size of the reference. Run after ``test_bench_spectra.py`` for the same B with an eigenvalue case (it
reads that run's float64 reference from ``benchmarks/results/spectra-*-cpu-B<B>.json``; files of runs without one
are skipped); one warm process, every setting timed once per repetition, interleaved. Needs the peers (``pip install .[bench]``). Settings by environment: LAM_TOLS, ETH_STEPS, EIGSH_TOLS,
PYH_TOLS (comma lists), REPS.

    LAMDA_DATA_ROOT=../shared/data python benchmarks/spectra_settings.py 128
"""
import glob
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _bench import eigs_curvlinops_eigsh, eigs_hessian_eigenthings, eigs_lamda_ext, eigs_pyhessian  # noqa: E402
from test_bench_spectra import _data  # noqa: E402
from lamda.models import MnistCNN  # noqa: E402

B = int(sys.argv[1]) if len(sys.argv) > 1 else 128

def _reference(path):
    """The float64 reference stored in a benchmark result file (None where its run took no eigenvalue case)."""
    with open(path) as f:
        return json.load(f)["results"].get(str(B), {}).get("reference")


refs = [r for r in map(_reference, sorted(glob.glob(os.path.join(HERE, "results", f"spectra-*-cpu-B{B}.json"))))
        if r is not None]
if not refs:
    sys.exit(f"no reference for B={B}: run LAMDA_BENCH_SPECTRA_SIZES={B} python -m pytest "
             "benchmarks/test_bench_spectra.py -k eigs_lamda first")
ref = torch.tensor(refs[-1], dtype=torch.float64)
TOP = ref.numel()                 # as many eigenvalues as the benchmark's reference has (10 by default)
torch.manual_seed(0)
model = MnistCNN().eval()
x, y, _ = _data(B)
v0 = np.random.default_rng(0).standard_normal(sum(p.numel() for p in model.parameters()))


def err(vals):
    got = torch.as_tensor(np.sort(np.asarray(vals, dtype=np.float64))[::-1].copy())[:TOP]
    return float(((got - ref).abs() / ref.abs()).max())


def lam(tol):
    r = eigs_lamda_ext(model, x, y, TOP, tol)
    return r.eigenvalues.tolist(), r.steps


cases = [("lamda_ext tol", lam, t) for t in map(float, os.environ.get("LAM_TOLS", "1e-3,3e-3,1e-2").split(","))] + \
        [("eigenthings steps", lambda s: (eigs_hessian_eigenthings(model, x, y, TOP, s), s), int(s))
         for s in os.environ.get("ETH_STEPS", "40,60,80").split(",")] + \
        [("eigsh tol", lambda t: (eigs_curvlinops_eigsh(model, x, y, TOP, t, v0), None), float(t))
         for t in os.environ.get("EIGSH_TOLS", "1e-2,1e-1").split(",")] + \
        [("pyhessian tol", lambda t: (eigs_pyhessian(model, x, y, TOP, t), None), float(t))
         for t in os.environ.get("PYH_TOLS", "1e-3").split(",") if t]
lam(1e-2)   # warm-up
for rep in range(int(os.environ.get("REPS", "1"))):
    for name, fn, arg in cases:
        t0 = time.perf_counter()
        vals, steps = fn(arg)
        t = time.perf_counter() - t0
        print(f"B={B} rep {rep} {name} {arg:g}: {t:7.2f} s  max rel err {err(vals):.2e}  steps {steps}", flush=True)
