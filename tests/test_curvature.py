"""curvature_rate: least-squares slopes, masking of exact zeros, pooling, order windows."""
import math
import warnings

import numpy as np
import pytest
import torch

import lamda_ext


def test_exact_geometric_sequence():
    n = torch.arange(1, 7, dtype=torch.float64)
    d = (torch.exp(-0.7 * n) * torch.tensor([1, -1, 1, -1, 1, -1.0], dtype=torch.float64)).expand(2, 3, 6)
    lam = lamda_ext.curvature_rate(d)
    assert lam.shape == (2, 3)
    torch.testing.assert_close(lam, torch.full((2, 3), -0.7, dtype=torch.float64))


def test_matches_numpy_polyfit_with_window():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)
    lam = lamda_ext.curvature_rate(d, orders=(2, 5))
    for b in range(4):
        for k in range(5):
            slope = np.polyfit(np.arange(2, 6), np.log(np.abs(d[b, k, 1:5].numpy())), 1)[0]
            assert math.isclose(lam[b, k].item(), slope, rel_tol=1e-10)


def test_zeros_are_masked_not_clamped():
    d = torch.tensor([[math.exp(-1), 0.0, math.exp(-3), math.exp(-4)]], dtype=torch.float64)
    torch.testing.assert_close(lamda_ext.curvature_rate(d), torch.tensor([-1.0], dtype=torch.float64))


def test_too_few_orders_gives_nan_and_warns():
    d = torch.tensor([[0.5, 0.0, 0.0], [0.5, 0.25, 0.125]], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lam = lamda_ext.curvature_rate(d)
    assert torch.isnan(lam[0]) and torch.isclose(lam[1], torch.tensor(-math.log(2), dtype=torch.float64))
    assert any("1 fit(s)" in str(w.message) for w in caught)


def test_pooling():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    logs = d.abs().log()
    n = np.arange(1, 7)
    pts = lamda_ext.curvature_rate(d, pool="points")
    assert pts.shape == (4,)
    for k in range(4):
        assert math.isclose(pts[k].item(), np.polyfit(n, logs[:, k].mean(0).numpy(), 1)[0], rel_tol=1e-10)
    allp = lamda_ext.curvature_rate(d, pool="all")
    assert allp.dim() == 0
    assert math.isclose(allp.item(), np.polyfit(n, logs.reshape(-1, 6).mean(0).numpy(), 1)[0], rel_tol=1e-10)


def test_bad_arguments():
    d = torch.randn(2, 3, 6)
    with pytest.raises(ValueError, match="orders must be a window"):
        lamda_ext.curvature_rate(d, orders=(0, 3))
    with pytest.raises(ValueError, match="orders must be a window"):
        lamda_ext.curvature_rate(d, orders=(3, 3))
    with pytest.raises(ValueError, match="pool must be"):
        lamda_ext.curvature_rate(d, pool="mean")
    with pytest.raises(ValueError, match="pool='points' needs input-space"):
        lamda_ext.curvature_rate(d[0], pool="points")
    with pytest.raises(ValueError, match="derivs must be a tensor"):
        lamda_ext.curvature_rate(torch.randn(6))


def test_curvature_is_differentiable():
    d = torch.tensor([[0.5, -0.2, 0.1, 0.04]], dtype=torch.float64, requires_grad=True)
    lamda_ext.curvature_rate(d).sum().backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0
