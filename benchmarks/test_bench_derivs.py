"""Directional derivatives: every fast path against the autograd reference on the same inputs.

Run:  pytest benchmarks/test_bench_derivs.py --benchmark-only -s
Cases: MNIST CNN B=32 K=15 N=6; sigmoid MLP B=128 K=15 N=6;
tanh MLP 784-768-768-512-512-10 B=64 K=8 N=4; all float32. ``floor`` = K+1 plain
forward passes (one primal batch plus the K·B tangent batch).
Shared directions: the λ-diagnostic's measurement (MNIST CNN, 25-point chunk, K=15, N=6; and the
sigmoid MLP B=128) with directions ``[K, *S]`` shared by all points against the same directions expanded to
``[K, B, *S]`` (variant ``expanded``; ``speedup_vs_expanded`` in the table), for taylor and fused.
"""
import pytest
import torch
from torch import nn

import lamda_ext
from _bench import derivs_fn
from lamda.models import MnistCNN, SigmoidMLP

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _tanh_mlp():
    return SigmoidMLP(hidden=(768, 768, 512, 512), activation="tanh")


CASES = {
    "mnist_cnn_B32_K15_N6": (lambda: MnistCNN().eval(), 32, 15, 6),
    "sigmoid_mlp_B128_K15_N6": (lambda: SigmoidMLP().eval(), 128, 15, 6),
    "tanh_mlp_B64_K8_N4": (lambda: _tanh_mlp().eval(), 64, 8, 4),
}
BACKENDS = ["floor", "autograd", "taylor", "fused"]


def _fused_available():
    from lamda_ext import ops
    return ops.available()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_directional_derivs(record, case, backend):
    make, b, k, n = CASES[case]
    if backend == "fused" and not _fused_available():
        pytest.skip("extension lamda_ext._C not built")
    torch.manual_seed(0)
    model = make().to(DEVICE)
    x = torch.randn(b, 1, 28, 28, device=DEVICE)
    y = torch.randint(0, 10, (b,), device=DEVICE)
    u = lamda_ext.random_directions(x, k, torch.Generator(device=DEVICE).manual_seed(0))
    fn = derivs_fn(model, x, y, u, n, backend)
    record(case, backend, fn, rounds=3 if backend == "autograd" else 10)


def _penalty_step(model, opt, x, y, backend):
    """One Adam step on CE (+ 0.01·mean|d_1..3| over K=2 input directions, sharing the forward pass)."""
    opt.zero_grad(set_to_none=True)
    if backend is None:
        loss = nn.functional.cross_entropy(model(x), y)
    else:
        d, per_sample = lamda_ext.directional_derivs(model, x, y, order=3, directions=2, backend=backend,
                                                     return_loss=True)
        loss = per_sample.mean() + 0.01 * d.abs().mean()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("variant", ["plain", "autograd", "taylor", "fused"])
def test_lambda_penalty_training_step(record, variant):
    if variant == "fused" and not _fused_available():
        pytest.skip("extension lamda_ext._C not built")
    torch.manual_seed(0)
    model = MnistCNN().to(DEVICE).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(128, 1, 28, 28, device=DEVICE)
    y = torch.randint(0, 10, (128,), device=DEVICE)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def fn():
        _penalty_step(model, opt, x, y, None if variant == "plain" else variant)
        sync()
    # the table's "floor" column for this case is the plain step
    record("lambda_penalty_step_MnistCNN_B128", "floor" if variant == "plain" else variant, fn,
           rounds=3 if variant == "autograd" else 5)


SHARED_CASES = {
    "shared_dirs_mnist_cnn_B25_K15_N6": (lambda: MnistCNN().eval(), 25, 15, 6),
    "shared_dirs_sigmoid_mlp_B128_K15_N6": (lambda: SigmoidMLP().eval(), 128, 15, 6),
}


@pytest.mark.parametrize("variant", ["expanded", "taylor_shared", "fused_expanded", "fused_shared"])
@pytest.mark.parametrize("case", list(SHARED_CASES))
def test_shared_vs_expanded_directions(record, case, variant):
    """``expanded``/``taylor_shared``: backend taylor; ``fused_*``: backend fused. Same directions, same numbers."""
    backend = "fused" if variant.startswith("fused") else "taylor"
    if backend == "fused" and not _fused_available():
        pytest.skip("extension lamda_ext._C not built")
    make, b, k, n = SHARED_CASES[case]
    torch.manual_seed(0)
    model = make().to(DEVICE)
    x = torch.randn(b, 1, 28, 28, device=DEVICE)
    y = torch.randint(0, 10, (b,), device=DEVICE)
    u = lamda_ext.random_directions(x, k, torch.Generator(device=DEVICE).manual_seed(0), shared=True)
    dirs = u if variant.endswith("shared") else u.unsqueeze(1).expand((k,) + tuple(x.shape)).contiguous()
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def fn():
        with torch.no_grad():
            lamda_ext.directional_derivs(model, x, y, order=n, directions=dirs, backend=backend)
        sync()
    record(case, variant, fn, rounds=10)
