"""Trace and diagonal estimators (Hutchinson, Hutch++, XTrace) against exact traces of dense float64 matrices.

The statistical checks use fixed seeds; every bound is a multiple of a standard error: of the estimate (reported),
of a mean over R repetitions (empirical sd / sqrt(R)), or of a standard deviation estimated from R repetitions
(relative sd ≈ 1/sqrt(2R)). 4σ bounds fail by chance with probability < 1e-4.
"""
from __future__ import annotations

import math
import pickle

import pytest
import torch

from lamda_ext.hessian import (MatrixOperator, TraceEstimate, hessian_diagonal, hessian_trace, hutchinson_diagonal,
                               hutchinson_trace, hutchpp_trace, xtrace)
from lamda_ext.hessian.hutchpp import Sketch
from lamda_ext.hessian.xtrace import xtrace_estimates

from tests._helpers import DT, batch, dense_param_hessian, mlp

ESTIMATORS = {"hutchinson": hutchinson_trace, "hutch++": hutchpp_trace, "xtrace": xtrace}


def _matrix(P=200, power=1.0, seed=0, signs=False):
    """A dense symmetric ``[P, P]`` with eigenvalues ``±1/i^power`` (random eigenvectors) and its exact trace."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=DT))
    lam = 1.0 / torch.arange(1, P + 1, dtype=DT) ** power
    if signs:
        lam = lam * torch.where(torch.arange(P) % 3 == 2, -1.0, 1.0).to(DT)
    return (Q * lam) @ Q.t(), float(lam.sum())


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_xtrace_equals_its_leave_one_out_definition():
    A, _ = _matrix(P=40, signs=True)
    m = 7
    Om = torch.randn(m, 40, generator=_gen(1), dtype=DT)
    Y = Om @ A
    Q = torch.linalg.qr(Y.t())[0].t()
    fast = xtrace_estimates(Q @ A @ Q.t(), Q @ Y.t(), Q @ Om.t(), (Om * Y).sum(dim=1))
    direct = []
    for i in range(m):   # t_i = tr(Q_iᵀ A Q_i) + r_iᵀ A r_i, Q_i = orth(A Ω without ω_i), r_i = (I − Q_i Q_iᵀ) ω_i
        Qi = torch.linalg.qr(Y[[j for j in range(m) if j != i]].t())[0]
        r = Om[i] - Qi @ (Qi.t() @ Om[i])
        direct.append(torch.trace(Qi.t() @ A @ Qi) + r @ A @ r)
    torch.testing.assert_close(fast, torch.stack(direct), rtol=1e-10, atol=1e-12)
    # and the estimator returns their mean, with std / sqrt(m)
    est = xtrace(MatrixOperator(A), matvecs=2 * m, generator=_gen(2))
    assert est.samples.shape == (m,) and float(est) == pytest.approx(float(est.samples.mean()), rel=1e-12)
    assert est.std_error == pytest.approx(float(est.samples.std()) / math.sqrt(m), rel=1e-12)
    assert est.matvecs == 2 * m and est.probes == m and est.sketch == m


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_unbiased_and_standard_errors_calibrated(method):
    A, exact = _matrix(signs=True)
    op = MatrixOperator(A)
    R = 300
    res = [ESTIMATORS[method](op, matvecs=60, generator=_gen(100 + s)) for s in range(R)]
    est = torch.tensor([float(r) for r in res], dtype=DT)
    se = torch.tensor([r.std_error for r in res], dtype=DT)
    assert abs(float(est.mean()) - exact) <= 4 * float(est.std()) / math.sqrt(R)
    assert all(r.matvecs <= 60 for r in res)
    if method != "xtrace":   # XTrace's std(t_i)/sqrt(m) treats its dependent t_i as independent: no such check
        rms = float(se.pow(2).mean().sqrt())
        assert abs(rms / float(est.std()) - 1) <= 4 / math.sqrt(2 * R)
    # the sketch pays on a decaying spectrum: Hutch++ and XTrace spread less than Hutchinson
    if method != "hutchinson":
        plain = torch.tensor([float(hutchinson_trace(op, matvecs=60, generator=_gen(100 + s))) for s in range(60)])
        assert float(est.std()) < float(plain.std()) / 2


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_rtol_target(method):
    A, exact = _matrix()
    op = MatrixOperator(A)
    est = ESTIMATORS[method](op, rtol=0.01, generator=_gen(7), block=8)
    assert isinstance(est, TraceEstimate) and est.converged and est.rtol == 0.01
    assert est.std_error <= 0.01 * abs(float(est))
    assert abs(float(est) - exact) <= 4 * est.std_error
    assert est.matvecs == op.n_products           # every quadratic form and block-product row counted once
    if method != "hutchinson":
        plain = hutchinson_trace(op, rtol=0.01, generator=_gen(7), block=8)
        assert est.matvecs * 3 <= plain.matvecs


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_rtol_target_draws_what_the_spread_asks(method):
    # a target that asks about 400 plain probes (Var zᵀAz = 2(‖A‖_F² − Σ A_ii²) for Rademacher z): after each
    # block of 64, the estimators add what the spread asks, so they stop between multiples of the block
    A, exact = _matrix(P=200, power=0.5, seed=3)
    var = 2 * (float((A ** 2).sum()) - float((A.diagonal() ** 2).sum()))
    rtol = math.sqrt(var / 400) / exact
    for seed in (20, 22):
        op = MatrixOperator(A)
        est = ESTIMATORS[method](op, rtol=rtol, generator=_gen(seed), block=64)
        assert est.converged and abs(float(est) - exact) <= 4 * est.std_error
        assert est.samples.numel() % 64 != 0 and op.n_products == est.matvecs


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_budget_caps_an_unreachable_target(method):
    A, _ = _matrix(power=0.0, signs=True)        # flat spectrum, trace near 0: 1e-4 is out of reach
    op = MatrixOperator(A)
    with pytest.warns(RuntimeWarning, match="rtol=0.0001 after"):
        est = ESTIMATORS[method](op, rtol=1e-4, matvecs=40, generator=_gen(3), block=8)
    assert not est.converged and est.matvecs <= 40 and op.n_products <= 40


def test_hutchpp_sketch_forms_and_fallback():
    # the sketch's vectors give their plain samples sᵀAs; its trace and the deflated probes take one form a row
    A, _ = _matrix(P=50, signs=True)
    op = MatrixOperator(A)
    sk = Sketch(op, block=4)
    S = torch.randn(6, 50, generator=_gen(1), dtype=DT)
    torch.testing.assert_close(sk.grow(S), ((S @ A) * S).sum(dim=1), rtol=1e-12, atol=1e-12)
    assert sk.Q.shape[0] == 6 and sk.matvecs == 12 and op.n_products == 12
    torch.testing.assert_close(sk.Q @ sk.Q.t(), torch.eye(6, dtype=DT), rtol=0, atol=1e-12)
    assert sk.trace == pytest.approx(float(torch.trace(sk.Q @ A @ sk.Q.t())), rel=1e-12)
    G = torch.randn(5, 50, generator=_gen(2), dtype=DT)
    d = sk.probe(G)
    assert op.n_products == 17                              # one quadratic form per probe, nothing more
    Gp = G - (G @ sk.Q.t()) @ sk.Q
    torch.testing.assert_close(d, ((Gp @ A) * Gp).sum(dim=1), rtol=1e-12, atol=1e-12)
    # growing adds only the new directions, each measured once
    sk.grow(torch.randn(3, 50, generator=_gen(3), dtype=DT))
    assert sk.Q.shape[0] == 9 and sk.matvecs == 12 + 3 + 3
    assert sk.trace == pytest.approx(float(torch.trace(sk.Q @ A @ sk.Q.t())), rel=1e-12)
    # a diagonally dominant A with a flat spectrum: deflation adds off-diagonal mass, the plain samples spread
    # less; the adaptive estimate falls back to them (sketch 0) and costs little more than Hutchinson
    g = _gen(3)
    N = torch.randn(200, 200, generator=g, dtype=DT) * 0.02
    D = torch.diag(torch.linspace(1.0, 2.0, 200, dtype=DT)) + (N + N.t()) / 2
    exact = float(D.trace())
    est = hutchpp_trace(MatrixOperator(D), rtol=0.002, generator=_gen(4), block=16)
    plain = hutchinson_trace(MatrixOperator(D), rtol=0.002, generator=_gen(4), block=16)
    assert est.sketch == 0 and est.converged and abs(float(est) - exact) <= 4 * est.std_error
    assert est.samples.numel() == est.probes - 16 and est.matvecs <= plain.matvecs + 3 * 16


def test_exact_cases():
    # rank 5 < test vectors: XTrace's sketch holds the range, the trace is exact; likewise when m = P
    g = _gen(4)
    B = torch.randn(5, 30, generator=g, dtype=DT)
    A = B.t() @ B
    est = xtrace(MatrixOperator(A), matvecs=20, generator=g)
    assert float(est) == pytest.approx(float(A.trace()), rel=1e-10) and est.std_error == 0 and est.sketch == 5
    full, exact = _matrix(P=12, signs=True)
    est = xtrace(MatrixOperator(full), matvecs=24, generator=g)
    assert float(est) == pytest.approx(exact, rel=1e-10) and est.std_error == 0
    # a diagonal matrix: every Hutchinson sample is exact (trace and diagonal)
    d = torch.linspace(-1, 3, 20, dtype=DT)
    est = hutchinson_trace(MatrixOperator(torch.diag(d)), matvecs=5, generator=g)
    assert float(est) == pytest.approx(float(d.sum()), rel=1e-12) and est.std_error == pytest.approx(0, abs=1e-12)
    diag = hutchinson_diagonal(MatrixOperator(torch.diag(d)), matvecs=3, generator=g)
    torch.testing.assert_close(diag.estimate, d, rtol=0, atol=1e-12)
    assert float(diag.std_error.max()) < 1e-12


def test_hutchinson_diagonal_standard_errors():
    A, _ = _matrix(P=60, signs=True)
    n = 400
    est = hutchinson_diagonal(MatrixOperator(A), matvecs=n, generator=_gen(5), block=64)
    assert est.matvecs == n and est.method == "hutchinson"
    # per entry: Var(z_i (Az)_i) = Σ_{j≠i} A_ij²; 4 standard errors per entry (max over 60 entries)
    exact_se = ((A ** 2).sum(dim=1) - A.diagonal() ** 2).sqrt() / math.sqrt(n)
    assert float(((est.estimate - A.diagonal()).abs() / exact_se).max()) <= 4.5
    # the reported standard errors estimate those: relative sd of a sample sd ≈ 1/sqrt(2n), 4σ over the entries
    assert float((est.std_error / exact_se - 1).abs().max()) <= 4.5 / math.sqrt(2 * n)


def test_trace_of_the_hessian_by_every_method():
    model = mlp()
    x, y = batch(model, B=30)
    H = dense_param_hessian(model, x, y)
    exact = float(H.trace())
    for method in ESTIMATORS:
        est = hessian_trace(model, "cross_entropy", (x, y), method=method, rtol=0.05, block=16, generator=_gen(8))
        assert est.method == method and est.converged and abs(float(est) - exact) <= 4 * est.std_error
    # per parameter block: XTrace with two products per parameter of a block is exact; the blocks sum to the trace
    blocks = hessian_trace(model, "cross_entropy", (x, y), method="xtrace", matvecs=2 * H.shape[0], per_layer=True,
                           generator=_gen(9))
    assert list(blocks) == ["0", "2", "4"]
    assert sum(float(b) for b in blocks.values()) == pytest.approx(exact, rel=1e-10)
    sizes = [sum(p.numel() for p in model[i].parameters()) for i in (0, 2, 4)]
    lo = 0
    for (name, b), s in zip(blocks.items(), sizes):
        assert float(b) == pytest.approx(float(H[lo:lo + s, lo:lo + s].trace()), rel=1e-10)
        lo += s
    d = hessian_diagonal(model, "cross_entropy", (x, y), matvecs=200, generator=_gen(10), block=100)
    exact_se = ((H ** 2).sum(dim=1) - H.diagonal() ** 2).sqrt() / math.sqrt(200)
    assert float(((d.estimate - H.diagonal()).abs() / exact_se.clamp_min(1e-300)).max()) <= 5


def test_trace_arguments_and_results():
    model = mlp()
    x, y = batch(model)
    with pytest.raises(ValueError, match="probes and matvecs"):
        hessian_trace(model, "cross_entropy", (x, y), probes=4, matvecs=4)
    with pytest.raises(ValueError, match="method must be one of"):
        hessian_trace(model, "cross_entropy", (x, y), method="hutch+")
    with pytest.raises(ValueError, match="rtol must be"):
        hessian_trace(model, "cross_entropy", (x, y), rtol=1.5)
    with pytest.raises(ValueError, match="xtrace needs matvecs ≥ 4"):
        xtrace(MatrixOperator(torch.eye(3, dtype=DT)), matvecs=3)
    with pytest.raises(ValueError, match="hutch\\+\\+ needs matvecs ≥ 3"):
        hutchpp_trace(MatrixOperator(torch.eye(3, dtype=DT)), matvecs=2)
    with pytest.raises(ValueError, match="method must be 'hutchinson' or 'exact'"):
        hessian_diagonal(model, "cross_entropy", (x, y), method="dense")
    with pytest.raises(NotImplementedError, match="for the Hessian use method='hutchinson'"):
        hessian_diagonal(model, "cross_entropy", (x, y), method="exact")
    with pytest.raises(ValueError, match="square matrix"):
        MatrixOperator(torch.zeros(3, 4))
    est = hessian_trace(model, "cross_entropy", (x, y), method="hutch++", matvecs=12, generator=_gen(0))
    assert est.matvecs <= 12 and est.sketch == 4 and est.probes == 8 and est.rtol is None and est.converged
    back = pickle.loads(pickle.dumps(est))
    assert (float(back), back.std_error, back.matvecs, back.sketch, back.probes) == \
        (float(est), est.std_error, est.matvecs, est.sketch, est.probes)
