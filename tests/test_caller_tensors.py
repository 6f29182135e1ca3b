"""Models that change tensors in place. A model that changes its input: every entry point leaves the caller's tensors
as they were and gives the derivatives of the function the model computes, on the first call with a fresh model
object as on later ones. A model that changes an intermediate (``h += r``, as residual blocks do): every HVP
direction and every product of a kept linearisation is that of the same function.

The references are nested autograd (derivatives), double backward (HVPs) and a dense Hessian, all in float64 on a
twin model that computes the same function without in-place ops.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import lamda_ext
from lamda_ext import ops
from lamda_ext.hvp_reference import hvp_double_backward, hvp_finite_difference

DT = torch.float64
BACKENDS = ["autograd", "func", "taylor", "fused", "auto"]
KINDS = ["flatten_add_", "slice_mul_"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class Net(nn.Module):
    """``t = x.flatten(1)``, then ``t.add_(1.0)`` or ``t[:, :3].mul_(2.0)`` (both write into x), then an MLP;
    ``pure=True`` computes the same function out of place."""

    def __init__(self, kind: str, pure: bool = False):
        super().__init__()
        self.kind, self.pure = kind, pure
        self.fc1 = nn.Linear(12, 5)
        self.fc2 = nn.Linear(5, 4)

    def forward(self, x):
        t = x.flatten(1)
        if self.kind == "flatten_add_":
            t = t + 1.0 if self.pure else t.add_(1.0)
        elif self.pure:
            t = torch.cat([t[:, :3] * 2.0, t[:, 3:]], 1)
        else:
            t[:, :3].mul_(2.0)
        return self.fc2(torch.tanh(self.fc1(t)))


class Residual(Net):
    """``h = fc1(x)``, ``h += tanh(h)`` in place (``pure``: out of place), then ``fc2``."""

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        if self.pure:
            h = h + torch.tanh(h)
        else:
            h += torch.tanh(h)
        return self.fc2(h)


def make(kind: str, pure: bool = False, device: str = "cpu") -> nn.Module:
    """A fresh model object; the same parameters for every call (and for the twin)."""
    torch.manual_seed(0)
    return (Residual if kind == "residual" else Net)(kind, pure).to(DT).to(device)


def data():
    """x ``[3, 2, 6]`` float64, y ``[3]`` class labels (on the CPU: the references run there)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 6, generator=g, dtype=DT)
    y = torch.randint(0, 4, (3,), generator=g)
    return x, y


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.clone().view(torch.int64) if t.dtype == DT else t.clone()


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-10):
    got, want = got.detach().cpu(), want.detach().cpu()
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(want.abs().max()))
    assert float((got - want).abs().max()) <= tol * scale, float((got - want).abs().max()) / scale


def nested(s: torch.Tensor, t: torch.Tensor, order: int) -> torch.Tensor:
    out = []
    for _ in range(order):
        s = torch.autograd.grad(s, t, create_graph=True)[0]
        out.append(s)
    return torch.stack(out)


def ref_input_derivs(kind, x, y, u, order):
    """[B, K, N] by nested autograd of each sample's loss along u_k (twin model)."""
    m = make(kind, pure=True)
    out = torch.zeros(x.shape[0], u.shape[0], order, dtype=DT)
    for k in range(u.shape[0]):
        for b in range(x.shape[0]):
            t = torch.zeros((), dtype=DT, requires_grad=True)
            loss = F.cross_entropy(m(x + t * u[k]), y, reduction="none")[b]
            out[b, k] = nested(loss, t, order)
    return out


def perturbed(m, v, t):
    params, i = {}, 0
    for name, p in m.named_parameters():
        params[name] = p + t * v[i:i + p.numel()].reshape(p.shape)
        i += p.numel()
    return params


def ref_params_derivs(kind, x, y, v, order):
    """[K, N] by nested autograd of the batch-mean loss along v_k (twin model)."""
    m = make(kind, pure=True)
    out = []
    for k in range(v.shape[0]):
        t = torch.zeros((), dtype=DT, requires_grad=True)
        out.append(nested(F.cross_entropy(functional_call(m, perturbed(m, v[k], t), (x,)), y), t, order))
    return torch.stack(out)


def dense_hessian(kind, x, y) -> torch.Tensor:
    """[P, P] Hessian of the batch-mean loss (twin model)."""
    m = make(kind, pure=True)
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i:i + s.numel()].reshape(s)
            i += s.numel()
        return F.cross_entropy(functional_call(m, params, (x,)), y)
    return torch.autograd.functional.hessian(f, flat)


def input_hessians(kind, x, y) -> torch.Tensor:
    """Per-sample input Hessians [B, S, S] (S = x[0].numel()) of the twin model."""
    m = make(kind, pure=True)
    out = []
    for b in range(x.shape[0]):
        def f(xb):
            return F.cross_entropy(m(xb.reshape((1,) + tuple(x.shape[1:]))), y[b:b + 1])
        out.append(torch.autograd.functional.hessian(f, x[b].reshape(-1)))
    return torch.stack(out)


def _skip_unbuilt(backend, device):
    if backend == "fused" and not (ops.available() and (device == "cpu" or lamda_ext.build_info()["cuda_compiled"])):
        pytest.skip(f"extension without {device} kernels")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_directional_derivs_input(kind, backend, device):
    _skip_unbuilt(backend, device)
    x, y = data()
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(2))
    want = ref_input_derivs(kind, x, y, u, 4)
    x, y, u = x.to(device), y.to(device), u.to(device)
    x0, y0 = bits(x), bits(y)
    for _ in range(2):      # a fresh model object every call: the input check runs every time
        got = lamda_ext.directional_derivs(make(kind, device=device), x, y, order=4, directions=u, backend=backend)
        assert_close(got, want)
        assert torch.equal(bits(x), x0) and torch.equal(bits(y), y0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_directional_derivs_params(kind, backend, device):
    _skip_unbuilt(backend, device)
    x, y = data()
    v = lamda_ext.random_param_directions(make(kind), 3, torch.Generator().manual_seed(3))
    want = ref_params_derivs(kind, x, y, v, 4)
    x, y, v = x.to(device), y.to(device), v.to(device)
    x0, y0 = bits(x), bits(y)
    got = lamda_ext.directional_derivs(make(kind, device=device), x, y, order=4, directions=v, wrt="params",
                                       backend=backend)
    assert_close(got, want)
    assert torch.equal(bits(x), x0) and torch.equal(bits(y), y0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_hvp_and_references(kind, device):
    x, y = data()
    H = dense_hessian(kind, x, y)
    V = torch.randn(3, H.shape[0], generator=torch.Generator().manual_seed(4), dtype=DT)
    x, y, V = x.to(device), y.to(device), V.to(device)
    x0, y0 = bits(x), bits(y)
    for fn in (lamda_ext.hvp, hvp_double_backward):
        assert_close(fn(make(kind, device=device), x, y, V[0]), H @ V[0].cpu())
        assert_close(fn(make(kind, device=device), x, y, V), V.cpu() @ H)
        assert torch.equal(bits(x), x0) and torch.equal(bits(y), y0)
    assert_close(hvp_finite_difference(make(kind, device=device), x, y, V), V.cpu() @ H, tol=1e-6)
    assert torch.equal(bits(x), x0) and torch.equal(bits(y), y0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_input_hvp_and_references(kind, device):
    x, y = data()
    Hb = input_hessians(kind, x, y)
    V = torch.randn((2,) + tuple(x.shape), generator=torch.Generator().manual_seed(5), dtype=DT)
    want = torch.einsum("bij,kbj->kbi", Hb, V.reshape(2, x.shape[0], -1)).reshape(V.shape)
    x, y, V = x.to(device), y.to(device), V.to(device)
    x0 = bits(x)
    for fn in (lamda_ext.hvp, hvp_double_backward):
        assert_close(fn(make(kind, device=device), x, y, V[0], wrt="input"), want[0])
        assert_close(fn(make(kind, device=device), x, y, V, wrt="input"), want)
        assert torch.equal(bits(x), x0)
    assert_close(hvp_finite_difference(make(kind, device=device), x, y, V, wrt="input"), want, tol=1e-6)
    assert torch.equal(bits(x), x0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
def test_hessian_operator_and_spectra(kind, device):
    x, y = data()
    H = dense_hessian(kind, x, y)
    V = torch.randn(3, H.shape[0], generator=torch.Generator().manual_seed(6), dtype=DT)
    top = torch.linalg.eigvalsh(H).flip(0)[:2]
    x, y, V, H = x.to(device), y.to(device), V.to(device), H.to(device)
    x0, y0 = bits(x), bits(y)
    for kw in ({}, {"memory_budget": 0}):
        op = lamda_ext.HessianOperator(make(kind, device=device), "cross_entropy", (x, y), **kw)
        assert_close(op.matvec(V[0]), H @ V[0])
        assert_close(op.matvec(V), V @ H)
        assert_close(op.matvec(V), V @ H)       # a kept linearisation replays the same function
    batch_op = lamda_ext.HessianOperator(make(kind, device=device), data=(x, y),
                                         loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
    assert_close(batch_op.matvec(V), V @ H)
    assert torch.equal(bits(x), x0) and torch.equal(bits(y), y0)
    vals, _ = lamda_ext.hessian_eigs(make(kind, device=device), "cross_entropy", (x, y), k=2,
                                     generator=torch.Generator().manual_seed(7))
    assert_close(vals, top, tol=1e-8)
    g = lambda: torch.Generator().manual_seed(8)  # noqa: E731
    tr = lamda_ext.hessian_trace(make(kind, device=device), "cross_entropy", (x, y), probes=6, generator=g())
    tr_ref = lamda_ext.hessian_trace(make(kind, True, device), "cross_entropy", (x, y), probes=6, generator=g())
    assert math.isclose(float(tr), float(tr_ref), rel_tol=1e-10)
    dens = lamda_ext.hessian_density(make(kind, device=device), "cross_entropy", (x, y), iters=6, probes=2, grid=50,
                                     generator=g())
    dens_ref = lamda_ext.hessian_density(make(kind, True, device), "cross_entropy", (x, y), iters=6, probes=2,
                                         grid=50, generator=g())
    assert_close(dens[1], dens_ref[1], tol=1e-8)
    assert torch.equal(bits(x), x0) and torch.equal(bits(y), y0)


@pytest.mark.parametrize("device", DEVICES)
def test_inplace_intermediate_hvp(device):
    """The in-place add acts on a value of the point that a linearised graph keeps: the graph replays its out-of-place
    form, so every direction and every product of a kept linearisation is that of the same function."""
    from lamda_ext.hvp import LinearizedHVP
    from lamda_ext.losses import resolve_loss
    from lamda_ext.params import model_loss_fn
    x, y = data()
    H = dense_hessian("residual", x, y)
    V = torch.randn(3, H.shape[0], generator=torch.Generator().manual_seed(9), dtype=DT)
    top = torch.linalg.eigvalsh(H).flip(0)[:2]
    x, y, V, H = x.to(device), y.to(device), V.to(device), H.to(device)
    for chunk in (None, 1, 3):
        assert_close(lamda_ext.hvp(make("residual", device=device), x, y, V, chunk_size=chunk), V @ H)
    op = lamda_ext.HessianOperator(make("residual", device=device), "cross_entropy", (x, y))
    for _ in range(2):
        assert_close(op.matvec(V), V @ H)
    vals, _ = lamda_ext.hessian_eigs(make("residual", device=device), "cross_entropy", (x, y), k=2,
                                     generator=torch.Generator().manual_seed(7))
    assert_close(vals, top, tol=1e-8)
    for pure in (False, True):
        m = make("residual", pure, device)
        params = {k: p.detach() for k, p in m.named_parameters()}
        lin = LinearizedHVP(model_loss_fn(m, x, y, resolve_loss("cross_entropy"), list(params)), params)
        assert lin.replays
        assert_close(lin(V), V @ H)
        assert_close(lin(V), V @ H)


def test_fresh_input_copies_every_tensor_and_keeps_the_structure():
    from collections import namedtuple

    from lamda_ext._state import fresh_input
    Pair = namedtuple("Pair", "a b")
    x = {"a": [torch.zeros(2)], "b": (torch.ones(1), 3), "c": Pair(torch.arange(3), "s")}
    c = fresh_input(x)
    assert type(c) is dict and type(c["a"]) is list and type(c["b"]) is tuple and type(c["c"]) is Pair
    for got, src in ((c["a"][0], x["a"][0]), (c["b"][0], x["b"][0]), (c["c"].a, x["c"].a)):
        assert torch.equal(got, src) and got.data_ptr() != src.data_ptr()
    assert c["b"][1] == 3 and c["c"].b == "s"
    transformers = pytest.importorskip("transformers")
    enc = transformers.BatchEncoding({"input_ids": torch.ones(2, 3, dtype=torch.long)})
    copy = fresh_input(enc)
    assert isinstance(copy, transformers.BatchEncoding)
    assert torch.equal(copy.input_ids, enc.input_ids) and copy.input_ids.data_ptr() != enc.input_ids.data_ptr()
