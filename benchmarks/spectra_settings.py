"""Which settings of each method reach rtol 1e-3 on the top-10 (LA) Hessian eigenvalues, and how long they take.

Run after ``test_bench_spectra.py`` for the same B (it reads that run's float64 reference from
``benchmarks/results/spectra-*-cpu-B<B>.json``); one warm process, every setting timed once per repetition,
interleaved. Needs the peers (``pip install .[bench]``). Settings by environment: LAM_TOLS, ETH_STEPS, EIGSH_TOLS,
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
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_bench_spectra import _data  # noqa: E402
from lamda.models import MnistCNN  # noqa: E402
from lamda_ext.hessian import hessian_eigs  # noqa: E402

B = int(sys.argv[1]) if len(sys.argv) > 1 else 128
found = sorted(glob.glob(os.path.join(HERE, "results", f"spectra-*-cpu-B{B}.json")))
if not found:
    sys.exit(f"no reference for B={B}: run LAMDA_BENCH_SPECTRA_SIZES={B} python -m pytest "
             "benchmarks/test_bench_spectra.py -k eigs_lamda first")
with open(found[-1]) as f:
    ref = torch.tensor(json.load(f)["results"][str(B)]["reference"], dtype=torch.float64)
torch.manual_seed(0)
model = MnistCNN().eval()
x, y, _ = _data(B)


def err(vals):
    got = torch.as_tensor(np.sort(np.asarray(vals, dtype=np.float64))[::-1].copy())[:10]
    return float(((got - ref).abs() / ref.abs()).max())
import curvlinops  # noqa: E402
import hessian_eigenthings as he  # noqa: E402
import pyhessian  # noqa: E402
from scipy.sparse.linalg import eigsh  # noqa: E402

P = sum(p.numel() for p in model.parameters())
v0 = np.random.default_rng(0).standard_normal(P)


def lam(tol):
    r = hessian_eigs(model, None, (x, y), k=10, which="LA", tol=tol, generator=torch.Generator().manual_seed(4))
    return r.eigenvalues.tolist(), r.steps


def eth(steps):
    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
    return he.lanczos(op, k=10, max_iter=steps, which="LA", seed=0, reorthogonalize=True).eigenvalues.tolist(), steps


def cvl(tol):
    H = curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)], check_deterministic=False)
    return eigsh(H.to_scipy(), k=10, which="LA", tol=tol, v0=v0)[0].tolist(), None


def pyh(tol):
    h = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    return h.eigenvalues(maxIter=100, tol=tol, top_n=10)[0], None

cases = [("lamda_ext tol", lam, t) for t in map(float, os.environ.get("LAM_TOLS", "1e-3,3e-3,1e-2").split(","))] + \
        [("eigenthings steps", eth, int(s)) for s in os.environ.get("ETH_STEPS", "40,60,80").split(",")] + \
        [("eigsh tol", cvl, float(t)) for t in os.environ.get("EIGSH_TOLS", "1e-2,1e-1").split(",")] + \
        [("pyhessian tol", pyh, float(t)) for t in os.environ.get("PYH_TOLS", "1e-3").split(",") if t]
lam(1e-2)   # warm-up
for rep in range(int(os.environ.get("REPS", "1"))):
    for name, fn, arg in cases:
        t0 = time.perf_counter(); vals, steps = fn(arg); t = time.perf_counter() - t0
        print(f"B={B} rep {rep} {name} {arg:g}: {t:7.2f} s  max rel err {err(vals):.2e}  steps {steps}", flush=True)
