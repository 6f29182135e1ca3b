"""Composite Taylor recurrences against nested autograd, float64, orders up to 8."""
import math

import pytest
import torch
import torch.nn.functional as F

from lamda_ext.taylor import recurrences

FUNCS = {kind: ref for kind, (_, ref) in recurrences.UNARY.items()}   # derived from the one list of kinds


def _autograd_coeffs(f, x0, x1, x2, n):
    t = torch.zeros_like(x0, requires_grad=True)
    g = f(x0 + t * x1 + t * t * x2).sum()
    out = [f(x0)]
    for k in range(1, n):
        g = torch.autograd.grad(g, t, create_graph=True)[0]
        out.append(g / math.factorial(k))
        g = g.sum()
    return out


@pytest.mark.parametrize("kind", sorted(FUNCS))
def test_unary_rules_match_autograd(kind):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(7, generator=g, dtype=torch.float64) * 2 + (0.2 if kind == "log" else -1.0)
    x1, x2 = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    want = _autograd_coeffs(FUNCS[kind], x0, x1, x2, 9)
    got = recurrences.unary_list(kind, [x0, x1, x2], 9)
    for n in range(9):
        torch.testing.assert_close(got[n], want[n], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(recurrences.unary_coeffs(kind, torch.stack([x0, x1, x2])), torch.stack(got[:3]))


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_series_and_cumulant_head(smoothing):
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    v = torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g)
    d = recurrences.cross_entropy_deg1(z0, v, y, 8, smoothing)
    c = recurrences.cross_entropy_list([z0, v], y, 9, smoothing)
    for n in range(1, 9):
        torch.testing.assert_close(d[..., n - 1], c[n] * math.factorial(n), rtol=1e-10, atol=1e-12)
    for k in range(2):
        f = lambda tt: F.cross_entropy(z0 + tt * v[k], y, reduction="none", label_smoothing=smoothing)
        want = _autograd_coeffs(lambda s: f(s[0]).sum() + 0 * s, torch.zeros(1, dtype=torch.float64),
                                torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), 5)
        for n in range(1, 5):
            torch.testing.assert_close(d[k, :, n - 1].sum(), want[n][0] * math.factorial(n), rtol=1e-10, atol=1e-12)


def test_pow_recip_mul():
    g = torch.Generator().manual_seed(2)
    x = [torch.rand(4, generator=g, dtype=torch.float64) + 0.5, torch.randn(4, generator=g, dtype=torch.float64)]
    for a in (-0.5, 0.5, 2.5):
        want = _autograd_coeffs(lambda s: s ** a, x[0], x[1], torch.zeros_like(x[0]), 7)
        for n, w in enumerate(want):
            torch.testing.assert_close(recurrences.pow_list(x, a, 7)[n], w, rtol=1e-10, atol=1e-12)
    want = _autograd_coeffs(lambda s: 1 / s, x[0], x[1], torch.zeros_like(x[0]), 7)
    for n, w in enumerate(want):
        torch.testing.assert_close(recurrences.recip_list(x, 7)[n], w, rtol=1e-10, atol=1e-12)
    prod = recurrences.mul_list(x, x, 5)
    assert len(prod) == 3
    torch.testing.assert_close(prod[2], x[1] * x[1])


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown unary kind"):
        recurrences.unary_coeffs("cosh", torch.zeros(3, 2))
