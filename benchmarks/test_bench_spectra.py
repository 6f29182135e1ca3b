"""Hessian spectra against the peers, side by side in one process: lamda_ext, PyHessian,
hessian-eigenthings and curvlinops (+ scipy ``eigsh``) on the same model (the MNIST CNN, eval mode,
float32, CPU), the same data (the first B MNIST training images; Gaussian noise when the data set
is not found) and, where a peer takes them, the same vectors.

Cases, for B in ``LAMDA_BENCH_SPECTRA_SIZES`` (default ``128,512``):

* ``eigs``: top-10 eigenvalues (LA). Each method's largest relative error against a converged
  float64 reference (lamda_ext Lanczos, tol 1e-10, every pair's residual checked) is stored with its
  time; the acceptance compares methods whose every eigenvalue is within rtol 1e-3.
* ``trace``: a ``LAMDA_BENCH_SPECTRA_PROBES``-probe (default 100) Hutchinson trace.
* ``hvp``: one gradient (the unit), single-vector HVPs and K = 16 HVPs (``LAMDA_BENCH_SPECTRA_K``).
* ``work``: arithmetic per product in gradient units (FLOP counts; independent of machine load).

``LAMDA_BENCH_SPECTRA_TOP`` (default 10) sets the number of eigenvalues, ``LAMDA_BENCH_ROUNDS`` (default 3)
the timed rounds per case, ``LAMDA_BENCH_WARMUP`` (default 1) the untimed runs before them.

Peers are the optional ``bench`` extra (``pip install .[bench]``); a peer that is not installed is
skipped with the reason. PyHessian runs with ``cuda=False`` (its default is True) and without
``density()`` (broken on current torch). Results: one line per measurement as it is taken, a table
printed at the end of the session, and ``benchmarks/results/spectra-<host>-cpu-B<sizes>[-<LAMDA_BENCH_TAG>].json`` (rewritten
atomically after every measurement, so a run cut short keeps what it measured).

    python -m pytest benchmarks/test_bench_spectra.py -s -p no:cacheprovider
    LAMDA_BENCH_SPECTRA_SIZES=8 LAMDA_BENCH_SPECTRA_TOP=2 LAMDA_BENCH_SPECTRA_PROBES=4 LAMDA_BENCH_SPECTRA_K=2 \\
    LAMDA_BENCH_ROUNDS=1 python -m pytest benchmarks/test_bench_spectra.py -s -p no:cacheprovider   # a smoke run
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bench import (eigs_curvlinops_eigsh, eigs_hessian_eigenthings, eigs_lamda_ext, eigs_pyhessian, mnist_batch,
                    time_median, top_eig_error)
from lamda.models import MnistCNN

from lamda_ext.hessian import HessianOperator, hessian_eigs, hessian_trace
from lamda_ext.hvp import hvp

SIZES = [int(s) for s in os.environ.get("LAMDA_BENCH_SPECTRA_SIZES", "128,512").split(",") if s.strip()]
PROBES = int(os.environ.get("LAMDA_BENCH_SPECTRA_PROBES", "100"))
K = int(os.environ.get("LAMDA_BENCH_SPECTRA_K", "16"))
ROUNDS = int(os.environ.get("LAMDA_BENCH_ROUNDS", "3"))
WARMUP = int(os.environ.get("LAMDA_BENCH_WARMUP", "1"))
TOP = int(os.environ.get("LAMDA_BENCH_SPECTRA_TOP", "10"))
RTOL = 1e-3                     # the accuracy every compared top-10 method must reach
RESULTS: dict = {}


def _data(B: int):
    return mnist_batch(B)


@pytest.fixture(scope="module", params=SIZES, ids=lambda b: f"B{b}")
def problem(request):
    torch.manual_seed(0)
    B = request.param
    model = MnistCNN().eval()
    x, y, source = _data(B)
    P = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(2)
    V = torch.randn(K, P, generator=g)
    V = V / V.norm(dim=1, keepdim=True)
    Z = (torch.randint(0, 2, (PROBES, P), generator=g, dtype=torch.int8) * 2 - 1).float()
    RESULTS.setdefault(B, {"data": source, "P": P})
    return {"B": B, "model": model, "x": x, "y": y, "V": V, "Z": Z, "ref": None}


def _reference(pb) -> torch.Tensor:
    """The converged float64 reference of the top eigenvalues, computed when an eigenvalue case first needs it
    (the trace and HVP cases run without it)."""
    if pb["ref"] is None:
        m64 = MnistCNN().double().eval()
        m64.load_state_dict(pb["model"].state_dict())
        t0 = time.perf_counter()
        ref = hessian_eigs(m64, None, (pb["x"].double(), pb["y"]), k=TOP, which="LA", tol=1e-10, max_iter=600,
                           generator=torch.Generator().manual_seed(3))
        assert bool(ref.converged.all()), f"the float64 reference did not converge: {ref.residuals}"
        RESULTS[pb["B"]]["reference"] = ref.eigenvalues.tolist()
        print(f"\n[spectra B={pb['B']}] float64 reference: {ref.steps} Lanczos steps, "
              f"{time.perf_counter() - t0:.1f} s, max residual {float(ref.residuals.max()):.1e}", flush=True)
        _write_results()
        pb["ref"] = ref.eigenvalues
    return pb["ref"]


def _time(benchmark, fn):
    return time_median(benchmark, fn, ROUNDS, WARMUP)


def _write_results() -> None:
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    tag = "-".join(str(B) for B in SIZES) + (f"-{os.environ['LAMDA_BENCH_TAG']}" if os.environ.get("LAMDA_BENCH_TAG") else "")
    path = os.path.join(out, f"spectra-{platform.node()}-cpu-B{tag}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"torch": torch.__version__, "time": time.time(), "rounds": ROUNDS, "warmup": WARMUP,
                   "threads": torch.get_num_threads(), "results": RESULTS}, f, indent=1)
    os.replace(path + ".tmp", path)


def _store(pb, case: str, method: str, seconds: float, **extra):
    RESULTS.setdefault(pb["B"], {}).setdefault(case, {})[method] = {"median_s": seconds, **extra}
    print(f"\n[spectra B={pb['B']}] {case:<6} {method:<42} {seconds * 1e3:10.1f} ms  "
          + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items()), flush=True)
    _write_results()


def _eig_error(pb, vals) -> float:
    return top_eig_error(vals, _reference(pb))


# ------------------------------------------------------------------ top-10 eigenvalues

@pytest.mark.benchmark(group="spectra-eigs")
def test_eigs_lamda_ext(benchmark, problem):
    pb = problem

    t, res = _time(benchmark, lambda: eigs_lamda_ext(pb["model"], pb["x"], pb["y"], TOP, 1e-3))
    _store(pb, "eigs", "lamda_ext lanczos (tol 1e-3)", t, max_rel_err=_eig_error(pb, res.eigenvalues),
           steps=res.steps)


@pytest.mark.benchmark(group="spectra-eigs")
def test_eigs_pyhessian(benchmark, problem):
    pytest.importorskip("pyhessian", reason="PyHessian is not installed (pip install .[bench])")
    pb = problem
    t, vals = _time(benchmark, lambda: eigs_pyhessian(pb["model"], pb["x"], pb["y"], TOP, 1e-4))
    _store(pb, "eigs", "PyHessian power+deflation (tol 1e-4)", t, max_rel_err=_eig_error(pb, vals))


@pytest.mark.benchmark(group="spectra-eigs")
def test_eigs_hessian_eigenthings(benchmark, problem):
    pytest.importorskip("hessian_eigenthings", reason="hessian-eigenthings is not installed (pip install .[bench])")
    pb = problem
    t, vals = _time(benchmark, lambda: eigs_hessian_eigenthings(pb["model"], pb["x"], pb["y"], TOP, 60))
    _store(pb, "eigs", "hessian-eigenthings lanczos (60 steps)", t, max_rel_err=_eig_error(pb, vals))


@pytest.mark.benchmark(group="spectra-eigs")
def test_eigs_curvlinops_eigsh(benchmark, problem):
    pytest.importorskip("curvlinops", reason="curvlinops is not installed (pip install .[bench])")
    pb = problem
    v0 = np.random.default_rng(0).standard_normal(sum(p.numel() for p in pb["model"].parameters()))
    t, vals = _time(benchmark, lambda: eigs_curvlinops_eigsh(pb["model"], pb["x"], pb["y"], TOP, 1e-3, v0))
    _store(pb, "eigs", "curvlinops + eigsh (tol 1e-3)", t, max_rel_err=_eig_error(pb, vals))


# ------------------------------------------------------------------ trace

@pytest.mark.benchmark(group="spectra-trace")
def test_trace_lamda_ext(benchmark, problem):
    pb = problem
    t, est = _time(benchmark, lambda: hessian_trace(pb["model"], None, (pb["x"], pb["y"]), probes=PROBES,
                                                    generator=torch.Generator().manual_seed(5)))
    _store(pb, "trace", "lamda_ext hutchinson", t, estimate=float(est), std_error=est.std_error)


@pytest.mark.benchmark(group="spectra-trace")
def test_trace_lamda_ext_hvp(benchmark, problem):
    """The same probes as quadratic forms of HVPs (cached linearisation) instead of Taylor passes."""
    pb = problem

    def run():
        op = HessianOperator(pb["model"], None, (pb["x"], pb["y"]))
        return float(sum((Zb * op.matvec(Zb)).sum() for Zb in pb["Z"].split(32))) / PROBES
    t, est = _time(benchmark, run)
    _store(pb, "trace", "lamda_ext z·Hz by HVPs", t, estimate=est)


@pytest.mark.benchmark(group="spectra-trace")
def test_trace_pyhessian(benchmark, problem):
    pyhessian = pytest.importorskip("pyhessian", reason="PyHessian is not installed (pip install .[bench])")
    pb = problem

    def run():
        h = pyhessian.hessian(pb["model"], torch.nn.CrossEntropyLoss(), data=(pb["x"], pb["y"]), cuda=False)
        # PyHessian stops when |mean − previous mean| / (previous mean + 1e-6) < tol, without abs() in the
        # denominator: any tol ≥ 0 stops it after 2 probes once the running mean is negative; -inf never stops
        return h.trace(maxIter=PROBES, tol=float("-inf"))
    t, samples = _time(benchmark, run)
    _store(pb, "trace", "PyHessian", t, estimate=float(np.mean(samples)), probes=len(samples))


@pytest.mark.benchmark(group="spectra-trace")
def test_trace_hessian_eigenthings(benchmark, problem):
    he = pytest.importorskip("hessian_eigenthings", reason="hessian-eigenthings is not installed (pip install .[bench])")
    pb = problem

    def run():
        op = he.HessianOperator(pb["model"], [(pb["x"], pb["y"])], he.supervised_loss(F.cross_entropy))
        return he.hutchinson(op, num_samples=PROBES, seed=0)
    t, res = _time(benchmark, run)
    _store(pb, "trace", "hessian-eigenthings", t, estimate=res.estimate, std_error=res.stderr)


@pytest.mark.benchmark(group="spectra-trace")
def test_trace_curvlinops(benchmark, problem):
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops is not installed (pip install .[bench])")
    pb = problem

    def run():   # the benchmark's own probes Z, in blocks of 32 columns (curvlinops' block products)
        H = curvlinops.HessianLinearOperator(pb["model"], torch.nn.CrossEntropyLoss(), list(pb["model"].parameters()),
                                             [(pb["x"], pb["y"])], check_deterministic=False)
        return float(sum((Zb * (H @ Zb.t().contiguous()).t()).sum() for Zb in pb["Z"].split(32))) / PROBES
    t, est = _time(benchmark, run)
    _store(pb, "trace", "curvlinops (blocks of 32)", t, estimate=est)


# ------------------------------------------------------------------ HVPs

def _gradient(model, x, y):
    return torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))


@pytest.mark.benchmark(group="spectra-hvp")
def test_hvp_gradient(benchmark, problem):
    pb = problem
    t, _ = _time(benchmark, lambda: _gradient(pb["model"], pb["x"], pb["y"]))
    _store(pb, "hvp", "gradient (unit)", t)


@pytest.mark.benchmark(group="spectra-hvp")
@pytest.mark.parametrize("variant", ["hvp 1", "hvp K", "operator 1 (cached)", "operator K (cached)"])
def test_hvp_lamda_ext(benchmark, problem, variant):
    pb = problem
    V = pb["V"] if variant.endswith("K") or "K " in variant else pb["V"][:1]
    if variant.startswith("hvp"):
        fn = lambda: hvp(pb["model"], pb["x"], pb["y"], V)
    else:
        op = HessianOperator(pb["model"], None, (pb["x"], pb["y"]))
        op @ V                                          # linearise once; the timed products replay
        fn = lambda: op @ V
    t, out = _time(benchmark, fn)
    assert out.shape == V.shape
    _store(pb, "hvp", f"lamda_ext {variant}", t, vectors=V.shape[0])


@pytest.mark.benchmark(group="spectra-hvp")
@pytest.mark.parametrize("n", [1, K])
def test_hvp_pyhessian(benchmark, problem, n):
    pytest.importorskip("pyhessian", reason="PyHessian is not installed (pip install .[bench])")
    from pyhessian import hessian
    from pyhessian.utils import hessian_vector_product
    pb = problem
    h = hessian(pb["model"], torch.nn.CrossEntropyLoss(), data=(pb["x"], pb["y"]), cuda=False)
    sizes = [p.numel() for p in h.params]
    vs = [[c.reshape(p.shape) for c, p in zip(v.split(sizes), h.params)] for v in pb["V"][:n]]
    t, _ = _time(benchmark, lambda: [hessian_vector_product(h.gradsH, h.params, v) for v in vs])
    _store(pb, "hvp", f"PyHessian {n} (kept graph)", t, vectors=n)


@pytest.mark.benchmark(group="spectra-hvp")
@pytest.mark.parametrize("n", [1, K])
def test_hvp_hessian_eigenthings(benchmark, problem, n):
    he = pytest.importorskip("hessian_eigenthings", reason="hessian-eigenthings is not installed (pip install .[bench])")
    pb = problem
    op = he.HessianOperator(pb["model"], [(pb["x"], pb["y"])], he.supervised_loss(F.cross_entropy))
    t, _ = _time(benchmark, lambda: [op.matvec(v) for v in pb["V"][:n]])
    _store(pb, "hvp", f"hessian-eigenthings {n}", t, vectors=n)


@pytest.mark.benchmark(group="spectra-hvp")
@pytest.mark.parametrize("n", [1, K])
def test_hvp_curvlinops(benchmark, problem, n):
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops is not installed (pip install .[bench])")
    pb = problem
    H = curvlinops.HessianLinearOperator(pb["model"], torch.nn.CrossEntropyLoss(), list(pb["model"].parameters()),
                                         [(pb["x"], pb["y"])], check_deterministic=False)
    M = pb["V"][:n].t().contiguous()
    t, _ = _time(benchmark, lambda: H @ M)
    _store(pb, "hvp", f"curvlinops {n} (block)", t, vectors=n)


def test_methods_agree(problem):
    """lamda_ext's products agree with a peer's on the benchmark's model (float32 rounding)."""
    pb = problem
    V = pb["V"][:2]
    ours = HessianOperator(pb["model"], None, (pb["x"], pb["y"])) @ V
    loss = F.cross_entropy(pb["model"](pb["x"]), pb["y"])
    params = list(pb["model"].parameters())
    g = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([t.reshape(-1) for t in g])
    ref = torch.stack([torch.cat([t.reshape(-1) for t in torch.autograd.grad(flat @ v, params, retain_graph=True)])
                       for v in V])
    assert float((ours - ref).norm() / ref.norm()) < 1e-4
    # the Taylor quadratic forms of hessian_trace are z·Hz of the products (same probes)
    op = HessianOperator(pb["model"], None, (pb["x"], pb["y"]))
    Z = pb["Z"][:3]
    q_hvp = (Z.double() * (op @ Z).double()).sum(dim=1)
    q_taylor = op.quadratic_forms(Z)
    scale = float(Z.double().norm(dim=1).max() * (op @ Z).double().norm(dim=1).max())
    assert float((q_taylor - q_hvp).abs().max()) < 1e-4 * scale


# ------------------------------------------------------------------ work counts (independent of machine load)

def test_work_counts(problem):
    """Arithmetic per product in gradient units (``torch.utils.flop_counter``: convolutions and matrix
    products, forward and backward), which machine load does not change. A cached operator product
    replays only the tangent pass (2 gradients of arithmetic: the HVP's tangent forward and tangent
    backward each cost twice the primal ones); an uncached HVP adds the primal forward and backward;
    a quadratic form ``zᵀHz`` needs first-order Taylor passes and, once per batch, one adjoint pass (counted here,
    shared by the probes)."""
    from torch.utils.flop_counter import FlopCounterMode
    pb = problem
    model, x, y, V, Z = pb["model"], pb["x"], pb["y"], pb["V"], pb["Z"]

    def flops(fn) -> int:
        with FlopCounterMode(display=False) as fc:
            fn()
        return fc.get_total_flops()

    grad = flops(lambda: _gradient(model, x, y))
    op = HessianOperator(model, None, (x, y))
    op @ V[0]
    counts = {
        "operator product (cached)": flops(lambda: op @ V[0]) / grad,
        "hvp, one vector (uncached)": flops(lambda: hvp(model, x, y, V[0])) / grad,
        f"z·Hz by Taylor, {len(Z)} probes, per probe": flops(lambda: op.quadratic_forms(Z)) / (grad * len(Z)),
    }
    params = list(model.parameters())
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    vs = [c.reshape(p.shape) for c, p in zip(V[0].split([p.numel() for p in params]), params)]
    counts["double backward on a kept graph"] = flops(
        lambda: torch.autograd.grad(g, params, grad_outputs=vs, retain_graph=True)) / grad
    RESULTS.setdefault(pb["B"], {})["work (gradient units)"] = counts
    assert counts["operator product (cached)"] <= 2.05
    assert counts["operator product (cached)"] < counts["hvp, one vector (uncached)"]


# ------------------------------------------------------------------ summary

@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    if not RESULTS:
        return
    lines = [(f"Hessian spectra (MNIST CNN, CPU, float32, torch threads={torch.get_num_threads()}, "
              f"{ROUNDS} rounds, median):")]
    for B, res in RESULTS.items():
        lines.append(f"B={B} ({res.get('data')}, P={res.get('P')})")
        for m, c in res.get("work (gradient units)", {}).items():
            lines.append(f"  work   {m:<42} {c:6.2f} gradients of arithmetic")
        for case in ("eigs", "trace", "hvp"):
            rows = res.get(case, {})
            if not rows:
                continue
            unit = rows.get("gradient (unit)", {}).get("median_s")
            ok = [r["median_s"] for m, r in rows.items() if not m.startswith("lamda_ext") and m != "gradient (unit)"
                  and (case != "eigs" or r.get("max_rel_err", 0) <= RTOL)]
            best_peer = min(ok) if ok else None
            for m, r in rows.items():
                extra = ""
                if "max_rel_err" in r:
                    extra += f"  max rel err {r['max_rel_err']:.1e}"
                if "estimate" in r:
                    extra += f"  estimate {r['estimate']:.4g}"
                if unit and "vectors" in r:
                    extra += f"  {r['median_s'] / (unit * r['vectors']):.2f} gradient-times per vector"
                if best_peer and m.startswith("lamda_ext") and case != "hvp":
                    extra += f"  {best_peer / r['median_s']:.2f}x the fastest peer within rtol {RTOL:g}" \
                        if case == "eigs" else f"  {best_peer / r['median_s']:.2f}x the fastest peer"
                lines.append(f"  {case:<6} {m:<42} {r['median_s'] * 1e3:10.1f} ms{extra}")
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with ctx:
        for line in lines:
            tr.write_line(line) if tr is not None else print(line)
    _write_results()
