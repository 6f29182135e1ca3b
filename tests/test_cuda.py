"""End to end on a CUDA device: every backend against the autograd reference run on the same device.

The kernel-level CUDA tests live in test_kernels.py (parametrised over devices); here the whole
engine runs on the GPU: input and parameter directions, dropout/batch norm in train mode, gradients
through the fused kernels, float32 against a float64 reference, and the HVP. Skipped without a GPU.
"""
import pytest
import torch

import lamda_ext
import lamda_ext.ops
from tests._helpers import rel_err
from tests._models import build

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
TOL = 1e-8


def _needs(backend):
    info = lamda_ext.build_info()
    if backend == "fused" and not (lamda_ext.ops.available() and info["cuda_compiled"]):
        pytest.skip("extension built without CUDA kernels: " + str(info.get("extension_error")))


def _on_cuda(name, train):
    m, x, y = build(name)
    return m.train(train).cuda(), x.cuda(), y.cuda()


def _derivs(model, x, y, u, backend, wrt="input", order=6):
    torch.manual_seed(1234)     # seeds the CUDA generator too: one dropout mask for every backend
    return lamda_ext.directional_derivs(model, x, y, order=order, directions=u, backend=backend, wrt=wrt)


@pytest.mark.parametrize("backend", ["taylor", "fused"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ["sequential", "mnist_cnn", "sigmoid_mlp", "cifar_resnet"])
def test_input_directions_match_autograd(name, train, backend):
    _needs(backend)
    m, x, y = _on_cuda(name, train)
    u = lamda_ext.random_directions(x, 3, torch.Generator(device="cuda").manual_seed(7))
    with torch.no_grad():
        ref = _derivs(m, x, y, u, "autograd")
        got = _derivs(m, x, y, u, backend)
    assert got.device.type == "cuda" and ref.abs().amax() > 0
    assert rel_err(got, ref) <= TOL


@pytest.mark.parametrize("backend", ["taylor", "fused"])
@pytest.mark.parametrize("name", ["sigmoid_mlp", "cifar_resnet"])
def test_param_directions_match_autograd(name, backend):
    _needs(backend)
    m, x, y = _on_cuda(name, True)
    v = lamda_ext.random_param_directions(m, 3, torch.Generator(device="cuda").manual_seed(5))
    with torch.no_grad():
        ref = _derivs(m, x, y, v, "autograd", "params")
        got = _derivs(m, x, y, v, backend, "params")
    assert rel_err(got, ref) <= TOL


def test_gradients_through_fused_match_autograd():
    """The λ penalty trains through the CUDA kernels' backward ops: same parameter gradients as autograd."""
    _needs("fused")
    m, x, y = _on_cuda("sigmoid_mlp", False)
    u = lamda_ext.random_directions(x, 2, torch.Generator(device="cuda").manual_seed(3))
    grads = {}
    for backend in ("autograd", "fused"):
        d = _derivs(m, x, y, u, backend, order=3)
        grads[backend] = torch.autograd.grad(d.abs().mean(), list(m.parameters()))
    for a, b in zip(grads["fused"], grads["autograd"]):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-12 * b.abs().max().item())


def test_float32_on_gpu_close_to_float64_cpu():
    """The fast path in float32 on the GPU against the float64 CPU reference (eval mode: no RNG involved)."""
    _needs("fused")
    m, x, y = build("mnist_cnn")
    m.eval()
    u = lamda_ext.random_directions(x, 3, torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = lamda_ext.directional_derivs(m, x, y, order=4, directions=u, backend="autograd")
        got = lamda_ext.directional_derivs(m.float().cuda(), x.float().cuda(), y.cuda(), order=4,
                                           directions=u.float().cuda(), backend="fused")
    assert got.dtype == torch.float32
    assert rel_err(got.double().cpu(), ref) < 1e-3


def test_hvp_cuda_matches_cpu():
    m, x, y = build("cifar_resnet")
    m.eval()
    P = lamda_ext.num_parameters(m)
    v = torch.randn(4, P, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = lamda_ext.hvp(m, x, y, v)
    got = lamda_ext.hvp(m.cuda(), x.cuda(), y.cuda(), v.cuda())
    assert got.device.type == "cuda"
    assert float((got.cpu() - ref).norm() / ref.norm()) < 1e-10
