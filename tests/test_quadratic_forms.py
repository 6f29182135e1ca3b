"""lamda_ext.taylor.quadratic: vᵀHv by adjoint contraction against nested autograd (float64) on every
model family of the core tests, a causal transformer block and the MSE loss; the operator's fallback
against the dense Hessian."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests._helpers import dense_param_hessian, rel_err
from tests._models import build
from lamda_ext import directional_derivs
from lamda_ext.hessian import HessianOperator
from lamda_ext.taylor.impl import Composite, Fused
from lamda_ext.taylor.quadratic import QuadraticForms

IMPLS = {"taylor": Composite, "fused": Fused}


def _directions(model, k=3, seed=7):
    p = sum(q.numel() for q in model.parameters())
    return torch.randn(k, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(model, x, y, V, loss="cross_entropy"):
    return directional_derivs(model, x, y, order=2, directions=V, loss=loss, wrt="params", backend="autograd")[:, 1]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("name", ["sequential", "functional", "mnist_cnn", "sigmoid_mlp", "cifar_resnet", "tv_resnet"])
def test_matches_nested_autograd(name, impl):
    model, x, y = build(name)
    model.eval()                                   # deterministic: the two passes see one function
    V = _directions(model)
    got = QuadraticForms(model, x, y, impl=IMPLS[impl]())(V)
    assert got.shape == (3,) and got.dtype == torch.float64
    assert rel_err(got, _reference(model, x, y, V), dim=0) < 1e-12


def test_mse_and_label_smoothing():
    model, x, _ = build("functional")
    model.eval()
    V = _directions(model)
    target = torch.randn(x.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert rel_err(QuadraticForms(model, x, target, "mse")(V), _reference(model, x, target, V, "mse"), dim=0) < 1e-12
    y = torch.tensor([0, 3, 4])
    ref = directional_derivs(model, x, y, order=2, directions=V, wrt="params", backend="autograd",
                             label_smoothing=0.2)[:, 1]
    assert rel_err(QuadraticForms(model, x, y, label_smoothing=0.2)(V), ref, dim=0) < 1e-12


class _Block(nn.Module):
    """Pre-norm causal attention + GELU MLP: products of two series (q·k, attention·v), softmax, layer norm."""

    def __init__(self, d=8, heads=2, classes=4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out, self.head = nn.Linear(d, 2 * d), nn.Linear(2 * d, d), nn.Linear(d, classes)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        x = x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return self.head(x.mean(dim=1))


def test_transformer_block():
    torch.manual_seed(0)
    model = _Block().double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    y = torch.tensor([1, 0, 3])
    V = _directions(model, k=4)
    for impl in IMPLS.values():
        assert rel_err(QuadraticForms(model, x, y, impl=impl())(V), _reference(model, x, y, V), dim=0) < 1e-12


class _Branchy(nn.Module):
    """Runs a different op on its second call: the forward pass does not match the adjoint pass."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.fc(x)
        return torch.tanh(h) if self.calls == 1 else torch.sigmoid(h)


def test_refusals_and_operator_fallback():
    model = _Branchy().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    forms = QuadraticForms(model, x, y)
    with pytest.raises(RuntimeError, match="op sequence"):
        forms(_directions(model))
    with pytest.raises(NotImplementedError, match="loss"):
        QuadraticForms(model, x, y, loss=lambda out, t: (out ** 2).sum(dim=1))
    with pytest.raises(ValueError, match="shape"):
        QuadraticForms(nn.Linear(4, 3).double(), x, y)(torch.zeros(2, 5, dtype=torch.float64))
    # the operator falls back to the plain order-2 Taylor run (the same numbers) where contraction cannot run
    lin = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    op = HessianOperator(lin, lambda out, t: F.cross_entropy(out, t, reduction="none"), (x, y))
    Z = _directions(lin, k=2)
    H = dense_param_hessian(lin, x, y)
    assert rel_err(op.quadratic_forms(Z), ((Z @ H) * Z).sum(dim=1), dim=0) < 1e-10
    assert not op._work._contract_ok     # the Hessian products fell back to order-2 Taylor runs


def test_operator_keeps_adjoints_per_batch_until_parameters_change(monkeypatch):
    import lamda_ext.taylor.quadratic as quadratic
    passes = []
    original = quadratic.QuadraticForms._adjoints
    monkeypatch.setattr(quadratic.QuadraticForms, "_adjoints", lambda self: passes.append(1) or original(self))
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    op = HessianOperator(model, "cross_entropy", [(x[:5], y[:5]), (x[5:], y[5:])])
    Z = _directions(model, k=3)
    op.memory_plan("forms")              # measured on trial slices of the first batch
    passes.clear()
    for _ in range(2):
        H = dense_param_hessian(model, x, y)
        for _ in range(2):
            assert rel_err(op.quadratic_forms(Z), ((Z @ H) * Z).sum(dim=1), dim=0) < 1e-10
        with torch.no_grad():
            model[0].weight.mul_(1.5)        # an in-place update: the kept adjoints are stale
    assert len(passes) == 4 and op.cached_bytes > 0      # one adjoint pass per batch and parameter value
    op.clear_cache()
    assert op.cached_bytes == 0
