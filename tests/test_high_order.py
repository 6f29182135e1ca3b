"""Any order: taylor up to order 32, fused past its compiled maximum through the composite rules with
the same numbers, and order 10 against nested autograd on the sigmoid MLP and the MNIST CNN (float64)."""
import pytest
import torch

from tests._helpers import rel_err
from tests._models import build
from lamda_ext import directional_derivs, ops
from lamda_ext.checks import MAX_ORDERS


@pytest.mark.parametrize("name", ["sigmoid_mlp", "mnist_cnn"])
def test_order_10_matches_autograd(name):
    model, x, y = build(name)
    model.eval()
    x, y = x[:1], y[:1]
    u = torch.randn((1,) + tuple(x.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = directional_derivs(model, x, y, order=10, directions=u, backend="autograd")
    assert ref.abs().amax() > 0
    for backend in ("taylor", "fused"):
        assert rel_err(directional_derivs(model, x, y, order=10, directions=u, backend=backend), ref) < 1e-8


def test_order_16_taylor_and_fused_agree_past_the_kernels_maximum():
    model, x, y = build("functional")
    model.eval()
    assert 16 > ops.MAX_COEFFS - 1
    u = torch.randn((2,) + tuple(x.shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a = directional_derivs(model, x, y, order=16, directions=u, backend="taylor")
    b = directional_derivs(model, x, y, order=16, directions=u, backend="fused")
    assert torch.isfinite(a).all()
    assert rel_err(b, a) < 1e-12
    low = directional_derivs(model, x, y, order=6, directions=u, backend="fused")   # kernels; same prefix
    assert rel_err(a[..., :6], low) < 1e-10


def test_order_limits_per_backend():
    model, x, y = build("sequential")
    assert MAX_ORDERS["taylor"] >= 16 and MAX_ORDERS["fused"] >= 16
    with pytest.raises(ValueError, match="for backend='func'"):
        directional_derivs(model, x, y, order=MAX_ORDERS["func"] + 1, backend="func")
    with pytest.raises(ValueError, match="1..32"):
        directional_derivs(model, x, y, order=33, backend="taylor")
