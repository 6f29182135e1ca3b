"""HVP cost on the MNIST CNN (CPU, batch 128, float32, eval mode): K = 16 directions at once.

Side by side in one run: one gradient (the unit), forward-over-reverse (``lamda_ext.hvp.hvp``: one
linearised primal pass, then the tangent pass per direction — the CPU default — or all K vmapped at
once), reverse-over-reverse (``hvp_double_backward``, one backward per direction) and
central finite differences (``hvp_finite_difference``, two gradients per direction). The figure of
merit is gradient-times per direction, ``t(method, K=16) / (16 · t(gradient))`` (target ≤ 2.5 for
forward-over-reverse); each benchmark stores it in ``extra_info["grad_times_per_direction"]`` and
the module prints a summary table at the end.

    PYTHONPATH=... python -m pytest benchmarks/test_bench_hvp.py --benchmark-min-rounds=3
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from lamda.models import MnistCNN
from lamda_ext.hvp import hvp
from lamda_ext.hvp_reference import hvp_double_backward, hvp_finite_difference

K = 16
B = 128
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = MnistCNN().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(K, P, generator=g)
    V = V / V.norm(dim=1, keepdim=True)
    return model, x, y, V


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    yield
    if "gradient" not in RESULTS:
        return
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    g = RESULTS["gradient"]
    lines = [f"HVP benchmark (MNIST CNN, CPU, B={B}, K={K}, float32, torch threads={torch.get_num_threads()}):",
             f"  {'gradient':<22} median {g * 1e3:9.1f} ms"]
    for name in ("forward_over_reverse", "fwd_rev_all_K_at_once", "double_backward", "finite_difference"):
        if name in RESULTS:
            t = RESULTS[name]
            lines.append(f"  {name:<22} median {t * 1e3:9.1f} ms  = {t / (K * g):5.2f} gradient-times per direction "
                         f"({t / g:5.1f} gradients for all {K})")
    capman = request.config.pluginmanager.getplugin("capturemanager")
    ctx = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with ctx:
        for line in lines:
            if tr is not None:
                tr.write_line(line)
            else:
                print(line)


def _gradient(model, x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, list(model.parameters()))


def _record(benchmark, name):
    med = benchmark.stats.stats.median
    RESULTS[name] = med
    if name != "gradient" and "gradient" in RESULTS:
        benchmark.extra_info["grad_times_per_direction"] = med / (K * RESULTS["gradient"])
    benchmark.extra_info.update({"K": K, "batch": B})


@pytest.mark.benchmark(group="hvp-mnist-cnn")
def test_gradient(benchmark, problem):
    model, x, y, _ = problem
    benchmark(_gradient, model, x, y)
    _record(benchmark, "gradient")


@pytest.mark.benchmark(group="hvp-mnist-cnn")
def test_forward_over_reverse(benchmark, problem):
    model, x, y, V = problem
    out = benchmark(hvp, model, x, y, V)
    assert out.shape == V.shape
    _record(benchmark, "forward_over_reverse")


@pytest.mark.benchmark(group="hvp-mnist-cnn")
def test_forward_over_reverse_all_at_once(benchmark, problem):
    """The same HVP with all K tangents in one vmapped evaluation (the GPU default)."""
    model, x, y, V = problem
    out = benchmark(hvp, model, x, y, V, chunk_size=K)
    assert out.shape == V.shape
    _record(benchmark, "fwd_rev_all_K_at_once")


@pytest.mark.benchmark(group="hvp-mnist-cnn")
def test_double_backward(benchmark, problem):
    model, x, y, V = problem
    out = benchmark(hvp_double_backward, model, x, y, V)
    assert out.shape == V.shape
    _record(benchmark, "double_backward")


@pytest.mark.benchmark(group="hvp-mnist-cnn")
def test_finite_difference(benchmark, problem):
    model, x, y, V = problem
    out = benchmark(hvp_finite_difference, model, x, y, V)
    assert out.shape == V.shape
    _record(benchmark, "finite_difference")


def test_methods_agree(problem):
    """The three HVPs agree on the benchmark's model (finite differences in float64: in float32 the
    rounding error of the gradients and the ReLU kinks crossed by the step swamp the difference)."""
    model, x, y, V = problem
    a = hvp(model, x[:32], y[:32], V[:2])
    b = hvp_double_backward(model, x[:32], y[:32], V[:2])
    assert float((a - b).norm() / b.norm()) < 1e-4
    m64 = MnistCNN().double().eval()
    m64.load_state_dict(model.state_dict())
    a64 = hvp(m64, x[:32].double(), y[:32], V[:2].double())
    c64 = hvp_finite_difference(m64, x[:32].double(), y[:32], V[:2].double())
    assert float((a64 - c64).norm() / a64.norm()) < 1e-3
    assert float((a.double() - a64).norm() / a64.norm()) < 1e-2
