"""lamda_ext.hessian: operator, eigenpairs, trace and SLQ density against the dense float64 Hessian."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from lamda_ext.hessian import HessianOperator, hessian_density, hessian_eigs, hessian_trace, slq_nodes

from tests._helpers import DT, batch, dense_param_hessian, mlp, tiny_cnn, train_briefly
from tests._helpers import rel_norm as rel

pytestmark = pytest.mark.xdist_group("hessian")      # its module fixture is computed once, on one worker

MODELS = {"mlp": mlp, "cnn": tiny_cnn}


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    model = MODELS[request.param]()
    x, y = batch(model, B=64)
    # a briefly trained point (where the landscape tools are used): its Hessian is dominated by the
    # Gauss-Newton part, so 2000 Rademacher probes give Hutchinson a relative std below 1%
    train_briefly(model, x, y, steps=100)
    H = dense_param_hessian(model, x, y)
    ev = torch.linalg.eigvalsh(H)
    return model, x, y, H, ev


def test_operator_matches_dense_hessian(setup):
    model, x, y, H, _ = setup
    op = HessianOperator(model, "cross_entropy", (x, y))
    assert op.shape == H.shape and op.size <= 3000
    g = torch.Generator().manual_seed(0)
    v = torch.randn(op.size, generator=g, dtype=DT)
    V = torch.randn(5, op.size, generator=g, dtype=DT)        # rows [K, P]
    assert rel(op @ v, H @ v) < 1e-10
    assert rel(op @ V, V @ H) < 1e-10
    with pytest.raises(ValueError, match=r"old column layout \[P, K\].*rows \[K, P\]"):
        op @ V.t()
    V = V.t().contiguous()                                     # scipy's matmat takes columns [P, K]
    A = op.to_scipy()
    assert A.shape == H.shape
    assert rel(torch.from_numpy(A.matvec(v.numpy())), H @ v) < 1e-10
    assert rel(torch.from_numpy(A.matmat(V.numpy())), H @ V) < 1e-10


def test_iterable_data_is_sample_weighted():
    model = mlp()
    x, y = batch(model, B=30)
    H = dense_param_hessian(model, x, y)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(1), dtype=DT)
    parts = [(x[:7], y[:7]), (x[7:20], y[7:20]), (x[20:], y[20:])]  # unequal batch sizes
    assert rel(HessianOperator(model, "cross_entropy", parts) @ v, H @ v) < 1e-10
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)
    assert rel(HessianOperator(model, "cross_entropy", loader) @ v, H @ v) < 1e-10


def test_parameter_subset():
    model = mlp()
    x, y = batch(model)
    H = dense_param_hessian(model, x, y)
    last = [model[4].weight, model[4].bias]
    n_before = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in last)
    op = HessianOperator(model, "cross_entropy", (x, y), params=last)
    Hsub = H[n_before:, n_before:]
    v = torch.randn(op.size, dtype=DT)
    assert op.size == Hsub.shape[0]
    assert rel(op @ v, Hsub @ v) < 1e-10
    op_names = HessianOperator(model, "cross_entropy", (x, y), params=["4.weight", "4.bias"])
    assert rel(op_names @ v, Hsub @ v) < 1e-10


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
def test_top10_eigenpairs(setup, method):
    model, x, y, H, ev = setup
    vals, vecs = hessian_eigs(model, "cross_entropy", (x, y), k=10, method=method,
                              generator=torch.Generator().manual_seed(2))
    ref = ev.flip(0)[:10]
    torch.testing.assert_close(vals, ref, rtol=1e-6, atol=1e-10 * float(ref.abs().max()))
    assert vecs.shape == (10, H.shape[0])
    # eigen-residuals and orthonormality
    res = (vecs @ H - vals[:, None] * vecs).norm(dim=1)
    assert float(res.max()) < 1e-5 * float(ref.abs().max())
    torch.testing.assert_close(vecs @ vecs.t(), torch.eye(10, dtype=DT), rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["SA", "LM"])
def test_smallest_and_largest_magnitude(setup, which):
    model, x, y, H, ev = setup
    op = HessianOperator(model, "cross_entropy", (x, y))
    vals, _ = hessian_eigs(op, k=4, which=which, generator=torch.Generator().manual_seed(3))
    ref = ev[:4] if which == "SA" else ev[ev.abs().argsort(descending=True)][:4]
    torch.testing.assert_close(vals, ref, rtol=1e-6, atol=1e-9 * float(ev.abs().max()))
    vals2, _ = hessian_eigs(op, k=4, which=which, method="eigsh", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(vals2, ref, rtol=1e-6, atol=1e-9 * float(ev.abs().max()))


def test_hutchinson_and_hutchpp(setup):
    model, x, y, H, _ = setup
    exact = float(H.trace())
    # predicted relative std of the 2000-probe estimate: sqrt(2 Σ_{i≠j} H_ij² / 2000) / tr(H);
    # below 1% makes the 3% bound a ≥ 3σ check
    off = float((H ** 2).sum() - (H.diagonal() ** 2).sum())
    assert (2 * off / 2000) ** 0.5 / abs(exact) < 0.01
    op = HessianOperator(model, "cross_entropy", (x, y))
    est = hessian_trace(op, probes=2000, generator=torch.Generator().manual_seed(4), block=500)
    assert abs(est - exact) <= 0.03 * abs(exact)
    estpp = hessian_trace(op, probes=300, method="hutch++", generator=torch.Generator().manual_seed(4), block=100)
    assert abs(estpp - exact) <= 0.03 * abs(exact)
    # Hutchinson is exactly the mean of z^T H z over the generator's Rademacher probes
    g = torch.Generator().manual_seed(5)
    Z = (torch.randint(0, 2, (6, op.size), generator=g, dtype=torch.int8).to(DT) * 2 - 1)   # rows [K, P]
    manual = float((Z * (Z @ H)).sum() / 6)
    assert abs(hessian_trace(op, probes=6, generator=torch.Generator().manual_seed(5)) - manual) < 1e-9 * abs(manual) + 1e-12


def test_slq_density(setup):
    model, x, y, H, _ = setup
    op = HessianOperator(model, "cross_entropy", (x, y))
    P = op.size
    # the density's first moment is the Hutchinson estimate of its probes (exact for any iters; see
    # below), so 1000 probes give it a relative std of ~1% here (≤ 0.7% for 2000, checked in the
    # Hutchinson test) and the 5% bound is a > 3σ check; the shape needs only a few Lanczos steps
    grid, dens = hessian_density(op, iters=3, probes=1000, block=1000, generator=torch.Generator().manual_seed(6))
    assert grid.shape == dens.shape and grid.dtype == torch.float64
    assert bool((dens >= 0).all())
    assert abs(float(torch.trapezoid(dens, grid)) - 1.0) < 1e-6
    mean = float(torch.trapezoid(grid * dens, grid))
    assert abs(mean - float(H.trace()) / P) <= 0.05 * abs(float(H.trace()) / P)
    # the quadrature's first moment is exactly the Hutchinson estimate with the same probes
    nodes, weights = slq_nodes(op, iters=30, probes=8, block=8, generator=torch.Generator().manual_seed(7))
    for w in weights:
        assert abs(float(w.sum()) - 1.0) < 1e-10
    m1 = sum(float((n * w).sum()) for n, w in zip(nodes, weights)) / 8
    hutch = hessian_trace(op, probes=8, block=8, generator=torch.Generator().manual_seed(7)) / P
    assert abs(m1 - hutch) < 1e-9 * max(abs(hutch), 1e-12)
    # with as many steps as P the Ritz values of one probe are eigenvalues of H
    ev = torch.linalg.eigvalsh(H)
    n_full, _ = slq_nodes(op, iters=P, probes=1, generator=torch.Generator().manual_seed(8))
    top = n_full[0].max()
    assert abs(float(top - ev.max())) < 1e-8 * float(ev.abs().max())


def test_refuses_nondeterministic_setups():
    x, y = batch(mlp())
    drop = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 4)).to(DT).train()
    with pytest.raises(ValueError, match="dropout.*active"):
        HessianOperator(drop, "cross_entropy", (x, y))
    HessianOperator(drop.eval(), "cross_entropy", (x, y))  # eval mode is fine
    cnn = tiny_cnn().train()
    xc, yc = batch(cnn)
    with pytest.raises(ValueError, match="batch norm.*train mode"):
        HessianOperator(cnn, "cross_entropy", (xc, yc))
    op = HessianOperator(cnn, "cross_entropy", (xc, yc), allow_nondeterministic=True)
    before = {k: b.clone() for k, b in cnn.named_buffers()}
    op @ torch.ones(op.size, dtype=DT)
    assert all(torch.equal(b, before[k]) for k, b in cnn.named_buffers())
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="shuffle"):
        HessianOperator(mlp(), "cross_entropy", loader)
    HessianOperator(mlp(), "cross_entropy", loader, allow_nondeterministic=True)


def test_bad_inputs():
    model = mlp()
    x, y = batch(model)
    op = HessianOperator(model, "cross_entropy", (x, y))
    with pytest.raises(ValueError, match=r"v must have shape \[P\]"):
        op @ torch.zeros(op.size + 1, dtype=DT)
    with pytest.raises(TypeError, match="dtype mismatch"):
        op @ torch.zeros(op.size)
    with pytest.raises(ValueError, match="data is required"):
        HessianOperator(model, "cross_entropy", None)
    with pytest.raises(TypeError, match="iterable of"):
        HessianOperator(model, "cross_entropy", 3.0) @ torch.zeros(op.size, dtype=DT)
    with pytest.raises(ValueError, match="which must be"):
        hessian_eigs(op, k=2, which="BE")
    with pytest.raises(ValueError, match="k must be"):
        hessian_eigs(op, k=0)
    with pytest.raises(ValueError, match="method must be"):
        hessian_trace(op, probes=3, method="exact")
    with pytest.raises(ValueError, match="not parameters of the model"):
        HessianOperator(model, "cross_entropy", (x, y), params=[torch.zeros(3, requires_grad=True)])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model = mlp()
    x, y = batch(model, B=32)
    op = HessianOperator(model, "cross_entropy", (x, y))
    gpu = mlp().cuda()
    opg = HessianOperator(gpu, "cross_entropy", (x.cuda(), y.cuda()))
    v = torch.randn(op.size, dtype=DT)
    assert rel((opg @ v.cuda()).cpu(), op @ v) < 1e-10
    vals, vecs = hessian_eigs(op, k=4, generator=torch.Generator().manual_seed(0))
    vals_g, vecs_g = hessian_eigs(opg, k=4, generator=torch.Generator().manual_seed(0))
    assert vecs_g.device.type == "cuda"
    torch.testing.assert_close(vals_g, vals, rtol=1e-8, atol=1e-12)
    t = hessian_trace(op, probes=20, generator=torch.Generator().manual_seed(1))
    assert hessian_trace(opg, probes=20, generator=torch.Generator().manual_seed(1)) == pytest.approx(t, rel=1e-10)
    g, d = hessian_density(opg, iters=10, probes=3, grid=64, generator=torch.Generator().manual_seed(2))
    g2, d2 = hessian_density(op, iters=10, probes=3, grid=64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(d, d2, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------- known Hessians: residuals, flags, errors

def _linear_mse(X: torch.Tensor):
    """A bias-free linear model under MSE: H = (2/B) XᵀX exactly (mean reduction)."""
    d = X.shape[1]
    model = nn.Linear(d, 1, bias=False).to(DT)
    y = torch.zeros(X.shape[0], 1, dtype=DT)
    return model, y, 2.0 / X.shape[0] * X.t() @ X


def _spectrum_X(eigs, seed=0):
    """X [n, n] with (2/n) XᵀX = Q diag(eigs) Qᵀ for a random orthogonal Q."""
    n = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=DT))
    return (torch.tensor(eigs, dtype=DT) * n / 2).sqrt()[:, None] * Q.t()


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
def test_eigs_residuals_and_converged_flags_on_a_known_hessian(method):
    X = _spectrum_X([10.0, 7.0, 5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.1, 0.05, 0.01])
    model, y, H = _linear_mse(X)
    op = HessianOperator(model, "mse", (X, y))
    assert rel(op @ torch.eye(12, dtype=DT), H) < 1e-12
    res = hessian_eigs(op, k=3, method=method, generator=torch.Generator().manual_seed(0))
    vals, vecs = res                                        # still unpacks as a pair
    torch.testing.assert_close(vals, torch.tensor([10.0, 7.0, 5.0], dtype=DT), rtol=1e-10, atol=0)
    true_res = (vecs @ H - vals[:, None] * vecs).norm(dim=1)
    assert res.residuals.shape == (3,) and res.residuals.dtype == torch.float64
    assert bool((res.residuals <= 1e-8 * 10).all()) and bool((true_res <= 1e-8 * 10).all())
    assert res.converged.dtype == torch.bool and bool(res.converged.all())


def test_eigs_unconverged_pairs_warn_and_report_true_residuals():
    X = _spectrum_X([10.0, 9.9, 9.8, 9.7, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1], seed=1)
    model, y, H = _linear_mse(X)
    op = HessianOperator(model, "mse", (X, y))
    with pytest.warns(RuntimeWarning, match=r"did not converge after 4 Lanczos steps \(pairs \["):
        res = hessian_eigs(op, k=3, max_iter=4, generator=torch.Generator().manual_seed(0))
    vals, vecs = res
    assert not bool(res.converged.all()) and res.steps == 4
    # the reported residuals are ‖H y − θ y‖ of the returned (Ritz) pairs
    true_res = (vecs @ H - vals[:, None] * vecs).norm(dim=1)
    torch.testing.assert_close(res.residuals, true_res, rtol=1e-6, atol=1e-12)
    assert bool(res.converged[0]) or not bool(res.converged.any())   # flags are ordered by convergence here
    assert float(res.residuals[~res.converged].min()) > res.tol * float(vals.abs().max())


def test_trace_standard_error_on_known_hessians():
    # diagonal H: every Rademacher zᵀHz equals tr(H), so the estimate is exact and its standard error 0
    a = torch.tensor([3.0, 1.0, 0.5, 2.0, 0.25, 4.0], dtype=DT)
    X = torch.diag((a * 3).sqrt())                            # (2/6) XᵀX = diag(a)
    model, y, H = _linear_mse(X)
    op = HessianOperator(model, "mse", (X, y))
    t = hessian_trace(op, probes=10, generator=torch.Generator().manual_seed(0))
    assert isinstance(t, float) and t == pytest.approx(float(a.sum()), rel=1e-12)
    assert t.std_error == pytest.approx(0.0, abs=1e-12) and t.samples.shape == (10,)
    # a dense H: the standard error is std(zᵀHz)/sqrt(n) of the very probes drawn (hand-computed), and
    # over many probes it matches the exact Rademacher variance 2 Σ_{i≠j} H_ij²
    X = _spectrum_X([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.2], seed=2)
    model, y, H = _linear_mse(X)
    op = HessianOperator(model, "mse", (X, y))
    g = torch.Generator().manual_seed(3)
    Z = torch.randint(0, 2, (7, 8), generator=g, dtype=torch.int8).to(DT) * 2 - 1
    q = ((Z @ H) * Z).sum(dim=1)
    t = hessian_trace(op, probes=7, block=3, generator=torch.Generator().manual_seed(3))
    assert float(t) == pytest.approx(float(q.mean()), rel=1e-12)
    assert t.std_error == pytest.approx(float(q.std()) / 7 ** 0.5, rel=1e-10)
    big = hessian_trace(op, probes=4000, block=1000, generator=torch.Generator().manual_seed(4))
    exact_sd = float(2 * ((H ** 2).sum() - (H.diagonal() ** 2).sum())) ** 0.5
    assert big.std_error * 4000 ** 0.5 == pytest.approx(exact_sd, rel=0.1)   # sample sd of 4000: ±~3%
    assert abs(float(big) - float(H.trace())) < 4 * big.std_error
    assert math.isnan(hessian_trace(op, probes=1, generator=g).std_error)   # one probe: no spread


def test_hutchpp_standard_error():
    # rank-2 H (2 samples): the sketch of s = 3 probes captures all of it, the deflated rest is 0
    X = torch.randn(2, 8, generator=torch.Generator().manual_seed(5), dtype=DT)
    model, y, H = _linear_mse(X)
    op = HessianOperator(model, "mse", (X, y))
    t = hessian_trace(op, probes=9, method="hutch++", generator=torch.Generator().manual_seed(0))
    assert float(t) == pytest.approx(float(H.trace()), rel=1e-10)
    assert t.std_error < 1e-10 * float(H.trace()) and t.samples.shape == (3,)
    # full rank: the standard error is that of the deflated probes' quadratic forms, hand-computed
    X = _spectrum_X([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.2], seed=2)
    model, y, H = _linear_mse(X)
    op = HessianOperator(model, "mse", (X, y))
    g = torch.Generator().manual_seed(6)
    draw = lambda n: torch.randint(0, 2, (n, 8), generator=g, dtype=torch.int8).to(DT) * 2 - 1
    S, G = draw(2), draw(3)
    Q = torch.linalg.qr((S @ H).t())[0].t()
    Gp = G - (G @ Q.t()) @ Q
    rest = ((Gp @ H) * Gp).sum(dim=1)
    t = hessian_trace(op, probes=7, method="hutch++", generator=torch.Generator().manual_seed(6))
    assert float(t) == pytest.approx(float(((Q @ H) * Q).sum() + rest.mean()), rel=1e-10)
    assert t.std_error == pytest.approx(float(rest.std()) / 3 ** 0.5, rel=1e-8)


# ---------------------------------------------------------------- reduction, loss_fn form, linearisation cache

def test_reduction_sum_and_mean(setup):
    model, x, y, H, _ = setup
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(9), dtype=DT)
    parts = [(x[:20], y[:20]), (x[20:], y[20:])]
    op_sum = HessianOperator(model, "cross_entropy", parts, reduction="sum")
    assert rel(op_sum @ v, x.shape[0] * (H @ v)) < 1e-10
    t_mean = hessian_trace(model, None, (x, y), probes=4, generator=torch.Generator().manual_seed(1))
    t_sum = hessian_trace(op_sum, probes=4, generator=torch.Generator().manual_seed(1))
    assert float(t_sum) == pytest.approx(x.shape[0] * float(t_mean), rel=1e-10)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        HessianOperator(model, "cross_entropy", (x, y), reduction="none")


class _DictNet(nn.Module):
    """An HF-style model: a dict of two tensors in, logits out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(3, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, inputs):
        return self.head(torch.tanh(self.a(inputs["x"]) + self.b(inputs["extra"])))


def test_loss_fn_form_with_dict_batches():
    model = _DictNet().to(DT)
    g = torch.Generator().manual_seed(2)
    x, e = torch.randn(30, 6, generator=g, dtype=DT), torch.randn(30, 3, generator=g, dtype=DT)
    y = torch.randint(0, 4, (30,), generator=g)
    params = dict(model.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()])

    def dense(reduce):
        def f(flat):
            from lamda_ext.params import unflatten_params
            out = functional_call(model, unflatten_params(flat, params), ({"x": x, "extra": e},))
            return nn.functional.cross_entropy(out, y, reduction=reduce)
        return torch.func.hessian(f)(theta)

    def loss_fn(m, batch):
        return nn.functional.cross_entropy(m({"x": batch["x"], "extra": batch["extra"]}), batch["y"])

    def loss_sum(m, batch):
        return nn.functional.cross_entropy(m(batch), batch["y"], reduction="sum")

    one = {"x": x, "extra": e, "y": y}
    parts = [{"x": x[i:j], "extra": e[i:j], "y": y[i:j]} for i, j in ((0, 7), (7, 19), (19, 30))]
    V = torch.randn(3, theta.numel(), generator=g, dtype=DT)
    Hm, Hs = dense("mean"), dense("sum")
    for data in (one, parts):
        assert rel(HessianOperator(model, loss_fn=loss_fn, data=data) @ V, V @ Hm) < 1e-10
        assert rel(HessianOperator(model, loss_fn=loss_sum, data=data, reduction="sum") @ V, V @ Hs) < 1e-10
    # every spectral tool takes the form
    vals, _ = hessian_eigs(model, data=parts, loss_fn=loss_fn, k=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(vals, torch.linalg.eigvalsh(Hm).flip(0)[:3], rtol=1e-6, atol=1e-12)
    t = hessian_trace(model, data=parts, loss_fn=loss_fn, probes=5, generator=torch.Generator().manual_seed(1))
    Z = torch.randint(0, 2, (5, theta.numel()), generator=torch.Generator().manual_seed(1), dtype=torch.int8).to(DT) * 2 - 1
    assert float(t) == pytest.approx(float(((Z @ Hm) * Z).sum(1).mean()), rel=1e-10)
    grid, dens = hessian_density(model, data=one, loss_fn=loss_fn, iters=5, probes=2, grid=50,
                                 generator=torch.Generator().manual_seed(2))
    assert abs(float(torch.trapezoid(dens, grid)) - 1.0) < 1e-6
    with pytest.raises(ValueError, match="either loss.*or loss_fn"):
        HessianOperator(model, "cross_entropy", one, loss_fn=loss_fn)
    with pytest.raises(ValueError, match="must return a scalar"):
        HessianOperator(model, data=one, loss_fn=lambda m, b: nn.functional.cross_entropy(
            m(b), b["y"], reduction="none")) @ V[0]


def test_linearisation_cache_reuses_batches_and_tracks_changes():
    model = mlp()
    x, y = batch(model, B=30)
    parts = [(x[:12], y[:12]), (x[12:], y[12:])]
    H = dense_param_hessian(model, x, y)
    op = HessianOperator(model, "cross_entropy", parts)
    V = torch.randn(4, op.size, generator=torch.Generator().manual_seed(0), dtype=DT)
    for _ in range(3):
        assert rel(op @ V, V @ H) < 1e-10
        assert rel(op @ V[0], H @ V[0]) < 1e-10
    assert op.n_linearizations == 2 and op.cached_bytes > 0          # one per batch, then replays only
    # a Lanczos run on the cached operator linearises nothing more
    hessian_eigs(op, k=3, generator=torch.Generator().manual_seed(1))
    assert op.n_linearizations == 2
    # a parameter changed in place (as an optimizer step does): the cache is rebuilt
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    H2 = dense_param_hessian(model, x, y)
    assert rel(op @ V, V @ H2) < 1e-10 and op.n_linearizations == 4
    # also through .data, which bypasses the version counter
    next(model.parameters()).data.add_(0.1)
    H3 = dense_param_hessian(model, x, y)
    assert rel(op @ V, V @ H3) < 1e-10 and op.n_linearizations == 6
    # a batch whose contents changed is linearised again
    parts[1] = (x[12:].flip(0), y[12:].flip(0))
    assert rel(op @ V, V @ H3) < 1e-10 and op.n_linearizations == 7
    # nothing kept (memory_budget=0): recomputed every product, same numbers
    op0 = HessianOperator(model, "cross_entropy", parts, memory_budget=0)
    for _ in range(2):
        assert rel(op0 @ V, V @ H3) < 1e-10
    assert op0.cached_bytes == 0 and op0.n_linearizations == 0
    # a budget too small for one sample and one direction: refused at the first product, naming one that works
    op1 = HessianOperator(model, "cross_entropy", parts, memory_budget=1)
    with pytest.raises(ValueError, match=r"too small for even one sample .* smallest budget that works is about"):
        op1 @ V
    with pytest.raises(ValueError, match="memory_budget"):
        HessianOperator(model, "cross_entropy", parts, memory_budget=-1)


def test_quadratic_forms_by_taylor_match_hvps(setup):
    model, x, y, H, _ = setup
    op = HessianOperator(model, "cross_entropy", (x, y))
    Z = torch.randn(5, op.size, generator=torch.Generator().manual_seed(3), dtype=DT)
    exact = ((Z @ H) * Z).sum(dim=1)
    assert op.taylor_quadratic_forms
    before = op.n_products
    q = op.quadratic_forms(Z)
    assert op.n_products == before and op.n_quadratic_forms == 5      # no HVP was needed
    torch.testing.assert_close(q, exact, rtol=1e-10, atol=1e-12)
    # a parameter subset is not a directional derivative of the model: HVPs are used
    sub = HessianOperator(model, "cross_entropy", (x, y), params=[list(model.parameters())[-1]])
    assert not sub.taylor_quadratic_forms


def test_results_pickle_with_their_attributes():
    import pickle

    from lamda_ext.hessian import EigResult, TraceEstimate
    t = TraceEstimate(2.5, torch.tensor([2.0, 3.0], dtype=DT), "hutchinson", 2)
    t2 = pickle.loads(pickle.dumps(t))
    assert float(t2) == 2.5 and t2.std_error == t.std_error and t2.method == "hutchinson"
    r = EigResult(torch.ones(2, dtype=DT), torch.eye(2), torch.zeros(2, dtype=DT), torch.ones(2, dtype=torch.bool), 1e-8, 3)
    r2 = pickle.loads(pickle.dumps(r))
    vals, vecs = r2
    assert torch.equal(vals, r.eigenvalues) and r2.steps == 3 and bool(r2.converged.all())


@pytest.mark.parametrize("name", ["block", "mobilenet"])
def test_products_of_eval_attention_and_mobilenet_equal_nested_autograd(name):
    """An eval-mode transformer block (nn.MultiheadAttention takes the fused CPU attention kernel) and MobileNetV3
    (hardsigmoid) have no forward-mode rule in their native backward kernels; the operator's products, one row and
    a block of rows, equal nested autograd's HVP (float64) through the routed forms."""
    from lamda_ext.routing import HigherOrderSafe
    from tests.test_memory_budget import _case
    m, x, y = _case(name)
    m.eval()
    op = HessianOperator(m, "cross_entropy", (x, y))
    v = torch.randn(op.size, dtype=DT, generator=torch.Generator().manual_seed(0))
    params = [p for p in m.parameters() if p.requires_grad]
    with HigherOrderSafe():     # the reference's double backward through the composites
        g = torch.autograd.grad(nn.functional.cross_entropy(m(x), y), params, create_graph=True)
        ref = torch.autograd.grad(sum((gi * vi.view_as(gi)).sum()
                                      for gi, vi in zip(g, torch.split(v, [p.numel() for p in params]))), params)
    ref = torch.cat([r.reshape(-1) for r in ref])
    assert rel(op @ v, ref) <= 1e-12
    block = op @ torch.stack([v, -2 * v])
    assert rel(block[0], ref) <= 1e-12 and rel(block[1], -2 * ref) <= 1e-12
