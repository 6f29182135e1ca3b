"""The fused Taylor kernels (lamda_ext.ops, backed by lamda_ext._C) against the composite
recurrences (lamda_ext.taylor.recurrences) in float64, gradcheck, opcheck and bad input.

CUDA variants run when a CUDA device is present and the extension was compiled with CUDA;
otherwise they skip with the reason.
"""
from __future__ import annotations

import functools
import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from lamda_ext import _ext, ops
from lamda_ext.taylor import recurrences

from tests._helpers import rel_err

pytestmark = pytest.mark.skipif(not ops.available(), reason=f"extension lamda_ext._C not built: {_ext.load_error()}")

_CUDA_REASON = ("no CUDA device" if not torch.cuda.is_available()
                else "extension compiled without CUDA (LAMDA_EXT_CUDA=0)")
_CUDA_OK = torch.cuda.is_available() and _ext.build_info()["cuda_compiled"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not _CUDA_OK, reason=_CUDA_REASON))]

TOL = 1e-10


# per-coefficient relative error (the shared one), slices along dim 0 by default, absolute below 1e-6
_rel_err = functools.partial(rel_err, dim=0, floor=1e-6)


def _series(C, shape, kind, gen, dtype=torch.float64, device="cpu"):
    """Random input series [C, *shape] in the domain of ``kind`` (higher coefficients scaled down)."""
    x = torch.randn((C,) + tuple(shape), generator=gen, dtype=torch.float64)
    x[1:] *= 0.6
    if kind == "log":
        x[0] = x[0].abs() + 0.5
    if kind == "elu":  # keep the primal away from the kink so finite differences stay on one branch
        x[0] = torch.where(x[0] >= 0, x[0] + 0.2, x[0] - 0.2)
    return x.to(device=device, dtype=dtype)


# ---- public surface -----------------------------------------------------------------------------

def test_signatures_match_rules():
    for name in ("unary_coeffs", "cross_entropy_coeffs", "cross_entropy_deg1"):
        fused = inspect.signature(getattr(ops, name))
        ref = inspect.signature(getattr(recurrences, name))
        assert list(fused.parameters) == list(ref.parameters), name
        for p in ref.parameters.values():
            assert fused.parameters[p.name].default == p.default, (name, p.name)
    assert tuple(ops.UNARY_KINDS) == tuple(recurrences.UNARY_KINDS)


def test_kernel_kinds_are_the_python_list():
    """The X-macro list (LX_UNARY_KINDS) names exactly recurrences.UNARY, in order: the unknown-kind message lists it."""
    with pytest.raises(ValueError, match="expected one of " + ", ".join(recurrences.UNARY_KINDS) + "$"):
        ops.unary_coeffs("nosuchkind", torch.zeros(2, 3, dtype=torch.float64))
    for kind in recurrences.UNARY_KINDS:
        ops.unary_coeffs(kind, torch.ones(2, 3, dtype=torch.float64))


def _compile_header(tmp_path, extra_kind: bool):
    import shutil
    import subprocess
    from pathlib import Path
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    src = (Path(__file__).resolve().parents[1] / "csrc" / "taylor_recurrences.h").read_text()
    if extra_kind:   # a kind added to the list without any recurrence
        src = src.replace('X(Log, "log")', 'X(Log, "log") X(Cosh, "cosh")')
        assert "Cosh" in src
    (tmp_path / "taylor_recurrences.h").write_text(src)
    (tmp_path / "use.cpp").write_text(
        '#include "taylor_recurrences.h"\nusing namespace lamda_ext::taylor;\n'
        "template <int I> void all() { if constexpr (I < kNumKinds) {\n"
        "  double x[kMaxCoeffs] = {1}, y[kMaxCoeffs], g[kMaxCoeffs];\n"
        "  unary_series<static_cast<Kind>(I), double>(x, y, g, 3, 1.0); all<I + 1>(); } }\n"
        "int main() { all<0>(); return 0; }\n")
    return subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror=switch", str(tmp_path / "use.cpp")],
                          capture_output=True, text=True, timeout=120)


def test_a_kind_without_a_recurrence_fails_to_compile(tmp_path):
    ok = _compile_header(tmp_path, extra_kind=False)
    assert ok.returncode == 0, ok.stderr
    bad = _compile_header(tmp_path, extra_kind=True)
    assert bad.returncode != 0 and "has no recurrence" in bad.stderr


# ---- forward values against the composite rules (float64) -------------------------------------

SHAPES = [(), (5,), (2, 3, 4)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", recurrences.UNARY_KINDS)
def test_unary_matches_rules(kind, device):
    gen = torch.Generator().manual_seed(11)
    for C in range(1, 10):
        for shape in SHAPES:
            x = _series(C, shape, kind, gen, device=device)
            got = ops.unary_coeffs(kind, x, alpha=0.7)
            assert got.shape == x.shape and got.dtype == torch.float64 and got.device == x.device
            assert _rel_err(got, recurrences.unary_coeffs(kind, x, alpha=0.7)) <= TOL, (kind, C, shape)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", recurrences.UNARY_KINDS)
def test_unary_noncontiguous_input(kind, device):
    gen = torch.Generator().manual_seed(12)
    base = _series(7, (6, 5, 4), kind, gen, device=device)
    for x in (base.transpose(1, 3), base[:, ::2, :, 1:], base.movedim(0, 3).contiguous().movedim(3, 0)):
        assert not x.is_contiguous()
        got = ops.unary_coeffs(kind, x, alpha=1.3)
        assert _rel_err(got, recurrences.unary_coeffs(kind, x.contiguous(), alpha=1.3)) <= TOL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", recurrences.UNARY_KINDS)
def test_unary_float32(kind, device):
    gen = torch.Generator().manual_seed(13)
    x = _series(7, (50,), kind, gen, device=device)
    got = ops.unary_coeffs(kind, x.float())
    assert got.dtype == torch.float32
    assert _rel_err(got, recurrences.unary_coeffs(kind, x)) <= 1e-4


def test_unary_known_values():
    # sigmoid(t) = 1/2 + t/4 − t³/48 + t⁵/480 − 17 t⁷/80640; log(1 + t) = Σ (−1)^{n+1} tⁿ / n
    t = torch.zeros(9, dtype=torch.float64)
    t[1] = 1.0
    want = torch.tensor([0.5, 0.25, 0, -1 / 48, 0, 1 / 480, 0, -17 / 80640, 0], dtype=torch.float64)
    torch.testing.assert_close(ops.unary_coeffs("sigmoid", t), want, rtol=1e-14, atol=1e-16)
    one_t = t.clone()
    one_t[0] = 1.0
    want = torch.tensor([0] + [(-1) ** (n + 1) / n for n in range(1, 9)], dtype=torch.float64)
    torch.testing.assert_close(ops.unary_coeffs("log", one_t), want, rtol=1e-14, atol=1e-16)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_matches_rules(device):
    gen = torch.Generator().manual_seed(21)
    for C in range(1, 10):
        for M, classes in ((1, 1), (4, 3), (7, 10), (3, 40)):
            z = torch.randn(C, M, classes, generator=gen, dtype=torch.float64)
            z[1:] *= 0.5
            target = torch.randint(0, classes, (M,), generator=gen)
            z, target = z.to(device), target.to(device)
            for ls in (0.0, 0.1):
                got = ops.cross_entropy_coeffs(z, target, label_smoothing=ls)
                assert got.shape == (C, M)
                # one class: the loss is exactly 0, so compare absolutely (1e-13 on O(1) logits)
                floor = 1e-3 if classes == 1 else 1e-6
                want = recurrences.cross_entropy_coeffs(z, target, ls)
                assert _rel_err(got, want, floor=floor) <= TOL, (C, M, classes, ls)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_noncontiguous_and_large_logits(device):
    gen = torch.Generator().manual_seed(22)
    zt = torch.randn(6, 12, 7, generator=gen, dtype=torch.float64).to(device)  # [M, classes, C]
    z = zt.permute(2, 0, 1)  # [C, M, classes], non-contiguous
    z = z + torch.tensor([500.0] + [0.0] * 6, dtype=torch.float64, device=device).view(7, 1, 1)
    target = torch.randint(0, 12, (6,), generator=gen).to(device)
    got = ops.cross_entropy_coeffs(z, target, 0.2)
    assert torch.isfinite(got).all()
    assert _rel_err(got, recurrences.cross_entropy_coeffs(z.contiguous(), target, 0.2)) <= TOL
    # constant term equals torch's own cross-entropy
    ref0 = F.cross_entropy(z[0], target, reduction="none", label_smoothing=0.2)
    torch.testing.assert_close(got[0], ref0, rtol=1e-12, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_deg1_matches_rules(device):
    gen = torch.Generator().manual_seed(31)
    for order in range(1, 9):
        for K, B, classes in ((1, 1, 2), (3, 6, 10), (2, 4, 37)):
            z0 = torch.randn(B, classes, generator=gen, dtype=torch.float64).to(device)
            v = torch.randn(K, B, classes, generator=gen, dtype=torch.float64).to(device)
            target = torch.randint(0, classes, (B,), generator=gen).to(device)
            for ls in (0.0, 0.15):
                got = ops.cross_entropy_deg1(z0, v, target, order, label_smoothing=ls)
                assert got.shape == (K, B, order)
                want = recurrences.cross_entropy_deg1(z0, v, target, order, ls)
                assert _rel_err(got, want, dim=2) <= TOL, (order, K, B, classes, ls)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_deg1_agrees_with_series_head_and_autograd(device):
    """deg-1 head == n!·(series head on z0 + t·v) == nested autograd of F.cross_entropy."""
    gen = torch.Generator().manual_seed(32)
    K, B, classes, order = 2, 3, 5, 6
    z0 = torch.randn(B, classes, generator=gen, dtype=torch.float64).to(device)
    vt = torch.randn(B, K, classes, generator=gen, dtype=torch.float64).to(device)
    v = vt.transpose(0, 1)  # non-contiguous [K, B, classes]
    target = torch.randint(0, classes, (B,), generator=gen).to(device)
    d = ops.cross_entropy_deg1(z0, v, target, order, 0.1)
    z = torch.zeros(order + 1, K * B, classes, dtype=torch.float64, device=device)
    z[0] = z0.repeat(K, 1)
    z[1] = v.reshape(K * B, classes)
    series = ops.cross_entropy_coeffs(z, target.repeat(K), 0.1)[1:]  # [order, K*B]
    fact = torch.tensor([math.factorial(n) for n in range(1, order + 1)], dtype=torch.float64, device=device)
    assert _rel_err(d, (series.T * fact).reshape(K, B, order), dim=2) <= TOL
    # nested autograd for the first 4 orders of one direction
    t = torch.zeros((), dtype=torch.float64, device=device, requires_grad=True)
    f = F.cross_entropy(z0 + t * v[1], target, reduction="none", label_smoothing=0.1).sum()
    for n in range(4):
        (f,) = torch.autograd.grad(f, t, create_graph=True)
        torch.testing.assert_close(f.detach(), d[1, :, n].sum(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_heads_float32(device):
    gen = torch.Generator().manual_seed(33)
    z = torch.randn(7, 9, 10, generator=gen, dtype=torch.float64).to(device)
    target = torch.randint(0, 10, (9,), generator=gen).to(device)
    got = ops.cross_entropy_coeffs(z.float(), target, 0.1)
    assert got.dtype == torch.float32
    assert _rel_err(got, recurrences.cross_entropy_coeffs(z, target, 0.1)) <= 1e-4
    v = torch.randn(4, 9, 10, generator=gen, dtype=torch.float64).to(device)
    got = ops.cross_entropy_deg1(z[0].float(), v.float(), target, 6, 0.1)
    assert got.dtype == torch.float32
    assert _rel_err(got, recurrences.cross_entropy_deg1(z[0], v, target, 6, 0.1), dim=2) <= 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_backward_with_expanded_grad(device):
    """Gradients arriving as stride-0 views (from .sum()) are handled like dense ones."""
    gen = torch.Generator().manual_seed(34)
    x = _series(6, (4, 9), "silu", gen, device=device).requires_grad_()
    ops.unary_coeffs("silu", x).sum().backward()
    (want,) = torch.autograd.grad(recurrences.unary_coeffs("silu", x).sum(), x)
    assert _rel_err(x.grad, want) <= TOL
    z0 = torch.randn(4, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    v = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    target = torch.randint(0, 6, (4,), generator=gen).to(device)
    ops.cross_entropy_deg1(z0, v, target, 5).sum().backward()
    want = torch.autograd.grad(recurrences.cross_entropy_deg1(z0, v, target, 5).sum(), (z0, v))
    assert _rel_err(z0.grad, want[0]) <= 1e-9 and _rel_err(v.grad, want[1]) <= 1e-9


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batches(device):
    x = torch.zeros(4, 0, 3, dtype=torch.float64, device=device)
    assert ops.unary_coeffs("tanh", x).shape == (4, 0, 3)
    z = torch.zeros(3, 0, 5, dtype=torch.float64, device=device)
    t = torch.zeros(0, dtype=torch.long, device=device)
    assert ops.cross_entropy_coeffs(z, t).shape == (3, 0)
    z0 = torch.zeros(0, 5, dtype=torch.float64, device=device)
    assert ops.cross_entropy_deg1(z0, torch.zeros(2, 0, 5, dtype=torch.float64, device=device), t, 3).shape == (2, 0, 3)


# ---- gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", recurrences.UNARY_KINDS)
def test_unary_gradcheck(kind, device):
    gen = torch.Generator().manual_seed(41)
    x = _series(5, (2, 3), kind, gen, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: ops.unary_coeffs(kind, x, 0.8), (x,))
    # the kernel backward also matches autograd through the composite rule
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    (got,) = torch.autograd.grad(ops.unary_coeffs(kind, x, 0.8), x, g)
    (want,) = torch.autograd.grad(recurrences.unary_coeffs(kind, x, 0.8), x, g)
    assert _rel_err(got, want) <= TOL


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_gradcheck(device):
    gen = torch.Generator().manual_seed(42)
    z = (0.7 * torch.randn(4, 3, 6, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
    target = torch.randint(0, 6, (3,), generator=gen).to(device)
    assert torch.autograd.gradcheck(lambda z: ops.cross_entropy_coeffs(z, target, 0.1), (z,))
    g = torch.randn(4, 3, generator=gen, dtype=torch.float64).to(device)
    (got,) = torch.autograd.grad(ops.cross_entropy_coeffs(z, target, 0.1), z, g)
    (want,) = torch.autograd.grad(recurrences.cross_entropy_coeffs(z, target, 0.1), z, g)
    assert _rel_err(got, want) <= TOL


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("order", [1, 3, 8])
def test_cross_entropy_deg1_gradcheck(order, device):
    gen = torch.Generator().manual_seed(43)
    z0 = torch.randn(3, 5, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    v = (0.5 * torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)).to(device).requires_grad_()
    target = torch.randint(0, 5, (3,), generator=gen).to(device)
    assert torch.autograd.gradcheck(lambda a, b: ops.cross_entropy_deg1(a, b, target, order, 0.1), (z0, v))
    g = torch.randn(2, 3, order, generator=gen, dtype=torch.float64).to(device)
    got = torch.autograd.grad(ops.cross_entropy_deg1(z0, v, target, order, 0.1), (z0, v), g)
    want = torch.autograd.grad(recurrences.cross_entropy_deg1(z0, v, target, order, 0.1), (z0, v), g)
    for a, b in zip(got, want):
        assert _rel_err(a, b) <= 1e-9


# ---- torch.library.opcheck (schema, fake/meta, autograd registration, AOT dispatch) ---------------

@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(51)
    lib = torch.ops.lamda_ext
    dd = dict(dtype=torch.float64, device=device)
    for kind in ("tanh", "gelu", "elu"):
        x = _series(4, (3, 2), kind, gen, device=device).requires_grad_()
        torch.library.opcheck(lib.taylor_unary.default, (x, kind, 0.9))
        torch.library.opcheck(lib.taylor_unary_backward.default, (torch.ones(4, 3, 2, **dd), x.detach(), kind, 0.9))
    z = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    target = torch.randint(0, 6, (4,), generator=gen).to(device)
    torch.library.opcheck(lib.taylor_cross_entropy.default, (z, target, 0.1))
    torch.library.opcheck(lib.taylor_cross_entropy_backward.default, (torch.ones(3, 4, **dd), z.detach(), target, 0.1))
    z0 = torch.randn(4, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    v = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    torch.library.opcheck(lib.taylor_cross_entropy_deg1.default, (z0, v, target, 4, 0.1))
    torch.library.opcheck(lib.taylor_cross_entropy_deg1_backward.default,
                          (torch.ones(2, 4, 4, **dd), z0.detach(), v.detach(), target, 4, 0.1))


# ---- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_bad_input(device):
    dd = dict(dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="1..9 Taylor coefficients"):
        ops.unary_coeffs("tanh", torch.zeros(10, 3, **dd))
    with pytest.raises(ValueError, match="leading coefficient axis"):
        ops.unary_coeffs("tanh", torch.zeros((), **dd))
    with pytest.raises(ValueError, match="unknown kind 'relu'"):
        ops.unary_coeffs("relu", torch.zeros(3, 2, **dd))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.unary_coeffs("tanh", torch.zeros(3, 2, dtype=torch.float16, device=device))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.unary_coeffs("exp", torch.zeros(3, 2, dtype=torch.long, device=device))

    z = torch.zeros(3, 4, 5, **dd)
    t = torch.zeros(4, dtype=torch.long, device=device)
    with pytest.raises(ValueError, match=r"shape \[C, M, classes\]"):
        ops.cross_entropy_coeffs(z[0], t)
    with pytest.raises(ValueError, match=r"target must have shape \[4\]"):
        ops.cross_entropy_coeffs(z, t[:3])
    with pytest.raises(TypeError, match="int64 class indices"):
        ops.cross_entropy_coeffs(z, t.float())
    with pytest.raises(ValueError, match="1..9 Taylor coefficients"):
        ops.cross_entropy_coeffs(torch.zeros(10, 4, 5, **dd), t)
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        ops.cross_entropy_coeffs(z, t, 1.5)

    z0 = torch.zeros(4, 5, **dd)
    v = torch.zeros(2, 4, 5, **dd)
    with pytest.raises(ValueError, match=r"v must have shape \[K, B, classes\]"):
        ops.cross_entropy_deg1(z0, v[:, :3], t, 3)
    with pytest.raises(ValueError, match="order must be in 1..8"):
        ops.cross_entropy_deg1(z0, v, t, 9)
    with pytest.raises(ValueError, match="order must be in 1..8"):
        ops.cross_entropy_deg1(z0, v, t, 0)
    with pytest.raises(TypeError, match="same dtype"):
        ops.cross_entropy_deg1(z0, v.float(), t, 3)


def test_bad_target_values_cpu():
    z = torch.zeros(3, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"target\[2\] = 5 is not a class index"):
        ops.cross_entropy_coeffs(z, torch.tensor([0, 1, 5, 2]))
    with pytest.raises(ValueError, match="is not a class index"):
        ops.cross_entropy_deg1(z[0], z, torch.tensor([0, -1, 1, 2]), 3)


@pytest.mark.skipif(not _CUDA_OK, reason=_CUDA_REASON)
def test_device_mismatch_cuda():
    z = torch.zeros(3, 4, 5, dtype=torch.float64, device="cuda")
    with pytest.raises(ValueError, match="same device|device of the logits"):
        ops.cross_entropy_coeffs(z, torch.zeros(4, dtype=torch.long))
