"""GGN, Fisher, Monte-Carlo Fisher and empirical Fisher operators (float64) against dense Jᵀ H J, per-sample
gradients and curvlinops; parameter blocks and per-layer results; exact diagonals.

Scale conventions against curvlinops: our MSE per-sample loss averages the squared error over the C outputs and a
sample is one loss term; curvlinops' ``MSELoss(reduction="mean")`` gives the same loss and GGN, but its empirical
Fisher takes the gradient of each sample's *summed* squared error (C times ours) with weight 1/(N·C), i.e. C times
our empirical Fisher.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian, jacrev

from lamda_ext import hvp
from lamda_ext.hessian import HessianOperator, hessian_density, hessian_diagonal, hessian_eigs
from lamda_ext.loss_curvature import sample_targets
from lamda_ext.losses import resolve_loss
from lamda_ext.params import flatten_params, trainable_parameters, unflatten_params

from tests._helpers import DT, batch, dense_param_hessian, mlp, tiny_cnn
from tests._helpers import rel_norm as rel

try:
    import curvlinops
except ImportError:             # the peer of two tests; every other test here needs only torch
    curvlinops = None
needs_curvlinops = pytest.mark.skipif(curvlinops is None, reason="curvlinops is not installed (pip install .[test])")

CASES = ("mlp-mse", "cnn-ce")
GN = ("ggn", "fisher", "fisher_mc", "empirical_fisher")


def _case(name: str, B: int = 12):
    """(model, x, y, loss, torch criterion) in float64."""
    if name == "mlp-mse":
        model = mlp()
        x, _ = batch(model, B=B)
        y = torch.randn(B, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
        return model, x, y, "mse", nn.MSELoss()
    model = tiny_cnn()
    x, y = batch(model, B=B)
    return model, x, y, "cross_entropy", nn.CrossEntropyLoss()


def _dense(model, x, y, loss, label_smoothing=0.0):
    """The outputs, the output Jacobian ``[B·C, P]``, the batch-mean loss's output Hessian ``[B·C, B·C]``, the
    per-sample loss gradients ``[B, P]`` and the model as a function of the flat parameters."""
    params = trainable_parameters(model)
    bufs = dict(model.named_buffers())
    theta = flatten_params(params).detach()

    def f(th):
        return functional_call(model, (unflatten_params(th, params), bufs), (x,))

    lf = resolve_loss(loss, label_smoothing)
    out = f(theta).detach()
    J = jacrev(f)(theta).reshape(out.numel(), -1)
    HL = hessian(lambda o: lf(o, y).mean())(out).reshape(out.numel(), out.numel())
    G = jacrev(lambda th: lf(f(th), y))(theta)
    return out, J, HL, G, f, theta


@pytest.mark.parametrize("case", CASES)
def test_ggn_and_fishers_match_dense_products(case):
    model, x, y, loss, _ = _case(case)
    out, J, HL, G, _, _ = _dense(model, x, y, loss)
    ggn = J.t() @ HL @ J
    ef = G.t() @ G / x.shape[0]
    V = torch.randn(3, J.shape[1], generator=torch.Generator().manual_seed(0), dtype=DT)
    for curvature, dense in (("ggn", ggn), ("fisher", ggn), ("empirical_fisher", ef)):
        op = HessianOperator(model, loss, (x, y), curvature=curvature)
        assert rel(op @ V, V @ dense) < 1e-10, curvature
        assert rel(op @ V[0], dense @ V[0]) < 1e-10
        assert rel(hvp(model, x, y, V, loss=loss, curvature=curvature), V @ dense) < 1e-10
        total = HessianOperator(model, loss, [(x[:5], y[:5]), (x[5:], y[5:])], curvature=curvature, reduction="sum")
        assert rel(total @ V, x.shape[0] * (V @ dense)) < 1e-10
    # GGN with the network's curvature left out: the Hessian differs, the GGN is positive semi-definite
    assert rel(hvp(model, x, y, V[0], loss=loss), ggn @ V[0]) > 1e-3
    assert float(torch.linalg.eigvalsh(ggn).min()) > -1e-10 * float(ggn.abs().max())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("case", CASES)
def test_exact_fisher_equals_ggn(case, label_smoothing):
    if case == "mlp-mse" and label_smoothing:
        pytest.skip("label smoothing is for cross-entropy")
    model, x, y, loss, _ = _case(case)
    V = torch.randn(4, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(1),
                    dtype=DT)
    kw = dict(label_smoothing=label_smoothing)
    ggn = HessianOperator(model, loss, (x, y), curvature="ggn", **kw) @ V         # Jᵀ ∇²ℓ J by autograd
    fisher = HessianOperator(model, loss, (x, y), curvature="fisher", **kw) @ V   # closed-form predictive Fisher
    assert rel(fisher, ggn) < 1e-12


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("curvature", ["ggn", "empirical_fisher"])
@needs_curvlinops
def test_matvecs_match_curvlinops(case, curvature):
    model, x, y, loss, crit = _case(case)
    params = list(model.parameters())
    V = torch.randn(3, sum(p.numel() for p in params), generator=torch.Generator().manual_seed(2), dtype=DT)
    peer = {"ggn": curvlinops.GGNLinearOperator, "empirical_fisher": curvlinops.EFLinearOperator}[curvature]
    data = [(x[:7], y[:7]), (x[7:], y[7:])]
    ref = (peer(model, crit, params, data, check_deterministic=False) @ V.t().contiguous()).t()
    scale = y.shape[1] if (loss == "mse" and curvature == "empirical_fisher") else 1   # module docstring
    ours = HessianOperator(model, loss, data, curvature=curvature) @ V
    assert rel(scale * ours, ref) < 1e-12
    if loss == "cross_entropy":     # the summed loss's curvature: both sum over samples
        ref_sum = (peer(model, nn.CrossEntropyLoss(reduction="sum"), params, data, check_deterministic=False)
                   @ V.t().contiguous()).t()
        assert rel(HessianOperator(model, loss, data, curvature=curvature, reduction="sum") @ V, ref_sum) < 1e-12


def _mc_terms(model, x, y, loss, mc_samples, mc_seed, V):
    """The per-draw terms ``X_j v = (1/B) Σ_b J_bᵀ s_bj s_bjᵀ J_b v`` ``[m, K, P]`` of the MC Fisher (dense) for the
    rows v of ``V`` ``[K, P]``."""
    out, J, _, _, _, _ = _dense(model, x, y, loss)
    B = x.shape[0]
    Jb = J.reshape(B, -1, J.shape[1])                                    # [B, C, P]
    targets = sample_targets(loss, out, mc_samples, mc_seed)
    plain = resolve_loss(loss)
    S = torch.stack([torch.func.grad(lambda o, t=t: plain(o, t).sum())(out) for t in targets]).reshape(
        mc_samples, B, -1)                                              # [m, B, C] scores at sampled targets
    a = torch.einsum("mbc,bcp,kp->mbk", S, Jb, V)
    return torch.einsum("mbc,bcp,mbk->mkp", S, Jb, a) / B


@pytest.mark.parametrize("case", CASES)
def test_mc_fisher_is_the_empirical_fisher_at_sampled_targets(case):
    model, x, y, loss, _ = _case(case)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(4), dtype=DT)
    ours = HessianOperator(model, loss, (x, y), curvature="fisher_mc", mc_samples=3, mc_seed=11) @ v
    assert rel(ours, _mc_terms(model, x, y, loss, 3, 11, v[None]).mean(dim=0)[0]) < 1e-12
    # with one draw: the empirical Fisher of the sampled targets, from the operator itself
    targets = sample_targets(loss, model(x).detach(), 1, 5)[0]
    ef = HessianOperator(model, loss, (x, targets), curvature="empirical_fisher") @ v
    assert rel(HessianOperator(model, loss, (x, y), curvature="fisher_mc", mc_seed=5) @ v, ef) < 1e-12
    # seeded: the same seed gives the same matrix, another seed another one
    again = HessianOperator(model, loss, (x, y), curvature="fisher_mc", mc_samples=3, mc_seed=11) @ v
    other = HessianOperator(model, loss, (x, y), curvature="fisher_mc", mc_samples=3, mc_seed=12) @ v
    assert torch.equal(ours, again) and rel(other, ours) > 1e-3


@pytest.mark.parametrize("case", CASES)
@needs_curvlinops
def test_mc_fisher_agrees_with_curvlinops_in_distribution(case):
    """Ours and curvlinops' FisherMCLinearOperator with M draws both estimate the exact Fisher: each projection
    ``u·(F_M v)`` is within 4 standard errors (from the per-draw terms' spread / sqrt(M)) of ``u·(F v)``, and
    the two estimates within 4·sqrt(2) of each other."""
    model, x, y, loss, crit = _case(case)
    M = 400
    P = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(6)
    v = torch.randn(P, generator=g, dtype=DT)
    U = torch.stack([v, torch.randn(P, generator=g, dtype=DT), torch.randn(P, generator=g, dtype=DT)])
    exact = HessianOperator(model, loss, (x, y), curvature="fisher") @ v
    ours = HessianOperator(model, loss, (x, y), curvature="fisher_mc", mc_samples=M, mc_seed=1) @ v
    peer = curvlinops.FisherMCLinearOperator(model, crit, list(model.parameters()), [(x, y)], mc_samples=M, seed=7,
                                             check_deterministic=False) @ v
    se = (_mc_terms(model, x, y, loss, M, 1, v[None])[:, 0] @ U.t()).std(dim=0) / math.sqrt(M)    # [3]
    assert bool((((ours - exact) @ U.t()).abs() <= 4 * se).all())
    assert bool((((peer - exact) @ U.t()).abs() <= 4 * se).all())
    assert bool((((ours - peer) @ U.t()).abs() <= 4 * math.sqrt(2) * se).all())
    assert rel(ours, exact) > 1e-6          # a Monte-Carlo estimate, not the exact Fisher


def test_empirical_fisher_of_a_loss_fn_from_per_sample_gradients():
    model, x, y, loss, _ = _case("cnn-ce")
    V = torch.randn(3, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(8),
                    dtype=DT)
    ref = HessianOperator(model, loss, (x, y), curvature="empirical_fisher") @ V

    def mean_loss(m, b):
        return nn.functional.cross_entropy(m(b["x"]), b["y"])

    def sum_loss(m, b):
        return nn.functional.cross_entropy(m(b["x"]), b["y"], reduction="sum")

    parts = [{"x": x[:5], "y": y[:5]}, {"x": x[5:], "y": y[5:]}]
    op = HessianOperator(model, data=parts, loss_fn=mean_loss, curvature="empirical_fisher")
    for _ in range(2):
        assert rel(op @ V, ref) < 1e-12
    assert op.n_linearizations == 2 and op.cached_bytes >= x.shape[0] * V.shape[1] * 8   # gradients kept
    streamed = HessianOperator(model, data=parts, loss_fn=mean_loss, curvature="empirical_fisher", memory_budget=0)
    assert rel(streamed @ V, ref) < 1e-12 and streamed.cached_bytes == 0
    total = HessianOperator(model, data={"x": x, "y": y}, loss_fn=sum_loss, curvature="empirical_fisher",
                            reduction="sum")
    assert rel(total @ V, x.shape[0] * ref) < 1e-12
    Z = V[:2]
    torch.testing.assert_close(op.quadratic_forms(Z), (Z * ref[:2]).sum(dim=1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_exact_diagonals(case):
    model, x, y, loss, _ = _case(case)
    out, J, HL, G, _, _ = _dense(model, x, y, loss)
    dense = {"ggn": J.t() @ HL @ J, "empirical_fisher": G.t() @ G / x.shape[0]}
    dense["fisher"] = dense["ggn"]
    P = J.shape[1]
    dense["fisher_mc"] = _mc_terms(model, x, y, loss, 2, 3, torch.eye(P, dtype=DT)).mean(dim=0)
    for curvature in GN:    # the MC draws are seeded per batch position: one batch, as in the dense reference
        data = (x, y) if curvature == "fisher_mc" else [(x[:5], y[:5]), (x[5:], y[5:])]
        d = hessian_diagonal(model, loss, data, method="exact", curvature=curvature, mc_samples=2, mc_seed=3)
        assert d.method == "exact" and d.matvecs == 0 and float(d.std_error.abs().max()) == 0
        want = dense[curvature].diagonal()
        assert float((d.estimate - want).abs().max()) <= 1e-12 * float(want.abs().max()), curvature


def test_cache_quadratic_forms_and_spectra_of_the_ggn():
    model, x, y, loss, _ = _case("cnn-ce", B=16)
    _, J, HL, _, _, _ = _dense(model, x, y, loss)
    ggn = J.t() @ HL @ J
    parts = [(x[:9], y[:9]), (x[9:], y[9:])]
    op = HessianOperator(model, loss, parts, curvature="ggn")
    V = torch.randn(3, ggn.shape[0], generator=torch.Generator().manual_seed(9), dtype=DT)
    for _ in range(3):
        assert rel(op @ V, V @ ggn) < 1e-10
    assert op.n_linearizations == 2 and op.cached_bytes > 0
    before = op.n_products
    torch.testing.assert_close(op.quadratic_forms(V), ((V @ ggn) * V).sum(dim=1), rtol=1e-10, atol=0)
    assert op.n_products == before and op.n_quadratic_forms == 3     # tangent forwards only
    vals, _ = hessian_eigs(op, k=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(vals, torch.linalg.eigvalsh(ggn).flip(0)[:3], rtol=1e-8, atol=1e-12)
    assert op.n_linearizations == 2                                  # Lanczos replayed the kept batches
    grid, dens = hessian_density(op, iters=5, probes=2, grid=50, generator=torch.Generator().manual_seed(1))
    assert abs(float(torch.trapezoid(dens, grid)) - 1.0) < 1e-6
    with torch.no_grad():                                            # a parameter changed: linearised again
        next(model.parameters()).add_(0.05)
    _, J2, HL2, _, _, _ = _dense(model, x, y, loss)
    assert rel(op @ V, V @ (J2.t() @ HL2 @ J2)) < 1e-10 and op.n_linearizations == 4
    op0 = HessianOperator(model, loss, parts, curvature="ggn", memory_budget=0)
    assert rel(op0 @ V, V @ (J2.t() @ HL2 @ J2)) < 1e-10 and op0.cached_bytes == 0


class _ResidualBlock(nn.Module):
    """torchvision's BasicBlock pattern: an in-place residual sum and an in-place ReLU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.relu = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1), nn.ReLU(inplace=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        out = self.bn(self.conv(x))
        out += x
        return self.head(self.relu(out).flatten(1))


@pytest.mark.parametrize("head_only", [False, True])
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_in_place_models_give_the_same_products_on_every_replay(curvature, head_only):
    """Only the head differentiated: the in-place residual sum acts on values of fixed parameters and the batch."""
    model = _ResidualBlock().to(DT).eval()
    x, y = batch(tiny_cnn(), B=6)
    if curvature == "hessian":
        dense = dense_param_hessian(model, x, y)
    else:
        _, J, HL, _, _, _ = _dense(model, x, y, "cross_entropy")
        dense = J.t() @ HL @ J
    params = ["head.weight", "head.bias"] if head_only else None
    if head_only:
        dense = dense[-195:, -195:]
    op = HessianOperator(model, "cross_entropy", (x, y), curvature=curvature, params=params)
    V = torch.randn(2, dense.shape[0], generator=torch.Generator().manual_seed(1), dtype=DT)
    for _ in range(3):        # the kept linearisation is replayed: its primal values must stay as they were
        assert rel(op @ V, V @ dense) < 1e-10


def test_parameter_blocks_and_per_layer_eigenvalues():
    model = mlp()
    x, y = batch(model, B=20)
    H = dense_param_hessian(model, x, y)
    n0 = sum(p.numel() for p in model[0].parameters()) + sum(p.numel() for p in model[2].parameters())
    v = torch.randn(H.shape[0] - n0, generator=torch.Generator().manual_seed(2), dtype=DT)
    for params in (model[4], ["4.weight", "4.bias"], lambda name, p: name.startswith("4."),
                   dict(model[4].named_parameters())):
        op = HessianOperator(model, "cross_entropy", (x, y), params=params)
        assert rel(op @ v, H[n0:, n0:] @ v) < 1e-10
    res = hessian_eigs(model, "cross_entropy", (x, y), k=3, per_layer=True, generator=torch.Generator().manual_seed(3))
    assert list(res) == ["0", "2", "4"]
    lo = 0
    for name, r in res.items():
        s = sum(p.numel() for p in model[int(name)].parameters())
        assert r.eigenvectors.shape == (3, s)
        want = torch.linalg.eigvalsh(H[lo:lo + s, lo:lo + s]).flip(0)[:3]
        torch.testing.assert_close(r.eigenvalues, want, rtol=1e-7, atol=1e-10 * float(want.abs().max()))
        lo += s
    # a block smaller than k: k is capped at its size
    small = hessian_eigs(model, "cross_entropy", (x, y), k=3, per_layer=True, method="eigsh",
                         params=["4.bias"], generator=torch.Generator().manual_seed(4))
    assert list(small) == ["4"] and small["4"].eigenvalues.shape == (3,)


def test_errors_name_what_to_do():
    model, x, y, loss, _ = _case("cnn-ce")
    with pytest.raises(ValueError, match="curvature must be one of"):
        HessianOperator(model, loss, (x, y), curvature="gauss_newton")
    with pytest.raises(NotImplementedError, match="known likelihood.*curvature='ggn'"):
        HessianOperator(model, lambda o, t: ((o - 1) ** 4).sum(1), (x, y), curvature="fisher")
    with pytest.raises(NotImplementedError, match="known likelihood"):
        hvp(model, x, y, torch.zeros(sum(p.numel() for p in model.parameters()), dtype=DT),
            loss=lambda o, t: (o ** 2).sum(1), curvature="fisher_mc")

    def lf(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])
    with pytest.raises(ValueError, match="needs the model output and the loss apart"):
        HessianOperator(model, data=(x, y), loss_fn=lf, curvature="ggn")
    with pytest.raises(NotImplementedError, match="defined for wrt='params'"):
        hvp(model, x, y, torch.zeros_like(x), wrt="input", curvature="ggn")
    drop = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.3), nn.Linear(8, 3)).to(DT).train()
    with pytest.raises(ValueError, match="allow_nondeterministic applies to curvature='hessian' only"):
        HessianOperator(drop, loss, (x, y), curvature="ggn", allow_nondeterministic=True)
    with pytest.raises(ValueError, match="dropout.*active"):
        hvp(drop, x, y, torch.zeros(sum(p.numel() for p in drop.parameters()), dtype=DT), curvature="ggn")
    with pytest.raises(ValueError, match="not a submodule"):
        HessianOperator(model, loss, (x, y), params=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="selects no parameter"):
        HessianOperator(model, loss, (x, y), params=lambda name, p: False)
    with pytest.raises(TypeError, match="predicate"):
        HessianOperator(model, loss, (x, y), params=[3])
    with pytest.raises(ValueError, match="mc_samples must be ≥ 1"):
        HessianOperator(model, loss, (x, y), curvature="fisher_mc", mc_samples=0)
