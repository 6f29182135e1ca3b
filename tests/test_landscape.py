"""lamda.landscape: sharpness, mode connectivity, loss surfaces, curvature probe and the adaptive-lr wrapper."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lamda.landscape import (CurvatureAdaptiveLR, CurvatureEstimate, CurvatureProbe, evaluate, loss_surface, path_barrier,
                             mode_connectivity, plot_contour, plot_surface_1d, plot_surface_3d, random_direction,
                             sharpness)
from lamda_ext.hvp import hvp
from lamda_ext.params import flatten_params

from tests._helpers import DT, tiny_cnn, train_briefly

pytestmark = pytest.mark.xdist_group("landscape")      # its module fixture is computed once, on one worker


def teacher_data(n=200, seed=0):
    """Learnable 3-class data: labels from a random linear teacher."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=DT)
    y = (x @ torch.randn(6, 3, generator=g, dtype=DT)).argmax(1)
    return x, y


def student(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3)).to(DT)


def bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)).to(DT)


@pytest.fixture(scope="module")
def trained():
    x, y = teacher_data()
    model = train_briefly(student(), x, y, steps=150, lr=3e-2)
    return model, x, y


def _snapshot(model):
    return [t.clone() for t in model.state_dict().values()]


def _unchanged(model, snap):
    return all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), snap))


# ------------------------------------------------------------------------------------------ sharpness
def test_sharpness_adversarial_at_least_random(trained):
    model, x, y = trained
    snap = _snapshot(model)
    assert evaluate(model, (x, y))[1] > 0.8   # it did learn
    for rho in (0.05, 0.2):
        adv = sharpness(model, "cross_entropy", (x, y), rho, kind="adversarial")
        rnd = sharpness(model, "cross_entropy", (x, y), rho, kind="random", n_random=10,
                        generator=torch.Generator().manual_seed(1))
        assert adv >= rnd
        assert adv > 0
    assert _unchanged(model, snap)


def test_adversarial_sharpness_matches_second_order_taylor(trained):
    model, x, y = trained
    params = [p for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    g = flatten_params(torch.autograd.grad(loss, params))
    u = g / g.norm()
    curv = float(u @ hvp(model, x, y, u))
    for rho in (1e-3, 2e-3):
        taylor = rho * float(g.norm()) + 0.5 * rho ** 2 * curv
        got = sharpness(model, "cross_entropy", (x, y), rho)
        assert abs(got - taylor) < 20 * rho ** 3 * max(1.0, abs(curv)), (got, taylor)
    # batches of an iterable are sample-weighted: same as one batch
    parts = [(x[:50], y[:50]), (x[50:], y[50:])]
    assert sharpness(model, "cross_entropy", parts, 0.1) == pytest.approx(sharpness(model, "cross_entropy", (x, y), 0.1),
                                                                          rel=1e-10)


def test_sharpness_errors():
    x, y = teacher_data(20)
    drop = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 3)).to(DT).train()
    with pytest.raises(ValueError, match="non-deterministic"):
        sharpness(drop, "cross_entropy", (x, y), 0.1)
    with pytest.raises(ValueError, match="kind must be"):
        sharpness(student(), "cross_entropy", (x, y), 0.1, kind="worst")
    with pytest.raises(ValueError, match="rho must be > 0"):
        sharpness(student(), "cross_entropy", (x, y), 0.0)


# -------------------------------------------------------------------------------------- connectivity
@pytest.mark.parametrize("make", [student, bn_model])
def test_mode_connectivity_with_itself_has_zero_barrier(make):
    x, y = teacher_data(120)
    model = make().eval()
    res = mode_connectivity(model, model, [(x[:60], y[:60]), (x[60:], y[60:])], steps=7)
    assert res.barrier == 0.0
    assert np.all(res.losses == res.losses[0])
    assert res.alphas.shape == res.losses.shape == res.accuracies.shape == (7,)


def test_mode_connectivity_endpoints_midpoint_and_barrier():
    x, y = teacher_data(120)
    a = train_briefly(student(0), x, y, steps=60, lr=3e-2)
    b = train_briefly(student(1), x, y, steps=60, lr=3e-2)
    sa, sb = _snapshot(a), _snapshot(b)
    res = mode_connectivity(a, b, (x, y), steps=5)
    assert _unchanged(a, sa) and _unchanged(b, sb)
    assert res.losses[0] == pytest.approx(evaluate(a, (x, y))[0], rel=1e-12)
    assert res.losses[-1] == pytest.approx(evaluate(b, (x, y))[0], rel=1e-12)
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for pm, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters()):
            pm.copy_((pa + pb) / 2)
    assert res.losses[2] == pytest.approx(evaluate(mid, (x, y))[0], rel=1e-10)
    line = res.losses[0] + res.alphas * (res.losses[-1] - res.losses[0])
    assert res.excess == pytest.approx(float(np.max(res.losses - line)))
    assert res.barrier == pytest.approx(float(res.losses.max() - min(res.losses[0], res.losses[-1])))
    assert res.excess > 0   # two independently trained tanh students: a bump between them
    assert res.bn_reestimated is False   # no batch norm in the student


def test_path_barrier_hand_computed():
    # L = [1.0, 1.9, 1.8, 0.2, 0.0] at α = 0, ¼, ½, ¾, 1: the study's barrier is max L − min(L(0), L(1))
    # = 1.9 − 0.0 at α = ¼; the straight line is 1 − α, so the excess is [0, 1.15, 1.3, −0.05, 0] → 1.3 at ½
    b = path_barrier([0.0, 0.25, 0.5, 0.75, 1.0], [1.0, 1.9, 1.8, 0.2, 0.0])
    assert (b.barrier, b.barrier_alpha) == (pytest.approx(1.9), 0.25)
    assert (b.excess, b.excess_alpha) == (pytest.approx(1.3), 0.5)
    # a monotone path: no excess, and the study's barrier is the end-point difference
    b = path_barrier([0.0, 0.5, 1.0], [0.3, 0.6, 2.0])
    assert b.barrier == pytest.approx(1.7) and b.barrier_alpha == 1.0
    assert b.excess == 0.0
    for alphas, losses, msg in (([0.0, 1.0], [1.0], "same length"), ([0.0, 0.7], [1.0, 2.0], "from 0 to 1"),
                                ([0.0, 0.6, 0.5, 1.0], [1, 2, 3, 4], "increase"),
                                ([0.0, 0.5, 1.0], [1.0, np.nan, 1.0], "non-finite")):
        with pytest.raises(ValueError, match=msg):
            path_barrier(alphas, losses)


def test_mode_connectivity_barrier_on_an_analytic_path():
    # f(x) = w2 · w1 · x with (w1, w2) = (1, 2) → (2, 1): both fit y = 2x exactly; on the path the product is
    # (1 + α)(2 − α) = 2 + α − α², so the MSE on (x, y) = (1, 2) is (α − α²)²: ¹⁄₁₆ at α = ½, 0 at the ends
    def net(w1, w2):
        m = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)).double()
        with torch.no_grad():
            m[0].weight.fill_(w1)
            m[1].weight.fill_(w2)
        return m.eval()

    x, y = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 2.0, dtype=torch.float64)
    res = mode_connectivity(net(1.0, 2.0), net(2.0, 1.0), (x, y), steps=5, loss="mse")
    a = res.alphas
    np.testing.assert_allclose(res.losses, (a - a ** 2) ** 2, atol=1e-15)
    assert res.barrier == pytest.approx(1 / 16) and res.barrier_alpha == 0.5
    assert res.excess == pytest.approx(1 / 16) and res.excess_alpha == 0.5


def test_mode_connectivity_recomputes_batch_norm_statistics():
    x, y = teacher_data(100)
    model = bn_model().eval()
    with torch.no_grad():   # garbage running statistics
        model[1].running_mean.fill_(5.0)
        model[1].running_var.fill_(100.0)
    res = mode_connectivity(model, model, (x, y), steps=3)
    assert res.bn_reestimated is True
    ref = copy.deepcopy(model)
    ref[1].momentum = 1.0   # one train-mode pass with momentum 1 = this batch's statistics
    ref.train()
    with torch.no_grad():
        ref(x)
    ref.eval()
    assert res.losses[1] == pytest.approx(evaluate(ref, (x, y))[0], rel=1e-10)
    assert model[1].running_mean[0] == 5.0   # the input model is untouched


# ------------------------------------------------------------------------------------------- surface
def test_filter_normalised_directions():
    model = tiny_cnn()
    d = random_direction(model, generator=torch.Generator().manual_seed(0))
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name   # biases and BN excluded by default
        else:
            torch.testing.assert_close(d[name].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
    d2 = random_direction(model, include_bias_bn=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d2["1.weight"].abs(), model[1].weight.detach().abs())
    d3 = random_direction(model, normalization="layer", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(d3["0.weight"].norm(), model[0].weight.detach().norm())
    d4 = random_direction(model, normalization="none", generator=torch.Generator().manual_seed(0))
    assert float(torch.sqrt(sum((t ** 2).sum() for t in d4.values()))) == pytest.approx(1.0)


def test_loss_surface_values_and_plots(tmp_path, trained):
    from PIL import Image
    model, x, y = trained
    snap = _snapshot(model)
    base_loss, base_acc = evaluate(model, (x, y))
    r1 = loss_surface(model, (x, y), directions=1, span=0.5, resolution=5, generator=torch.Generator().manual_seed(0))
    assert r1.losses.shape == (5,) and r1.losses[2] == pytest.approx(base_loss, rel=1e-12)
    r2 = loss_surface(model, (x, y), directions=2, span=0.5, resolution=5, generator=torch.Generator().manual_seed(0))
    assert r2.losses.shape == (5, 5) and r2.accuracies.shape == (5, 5)
    assert r2.losses[2, 2] == pytest.approx(base_loss, rel=1e-12)
    # entry [i, j] is θ + α_i d1 + β_j d2
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in moved.named_parameters():
            p.add_(r2.alphas[0] * r2.directions[0][n] + r2.betas[3] * r2.directions[1][n])
    assert r2.losses[0, 3] == pytest.approx(evaluate(moved, (x, y))[0], rel=1e-12)
    assert r2.losses.max() > base_loss
    assert _unchanged(model, snap)
    for fn, res in ((plot_surface_1d, r1), (plot_contour, r2), (plot_surface_3d, r2)):
        path = fn(res, tmp_path / f"{fn.__name__}.png", dpi=150)
        with Image.open(path) as im:
            assert im.format == "PNG" and round(im.info["dpi"][0]) == 150
    with pytest.raises(ValueError, match="2-D result"):
        plot_contour(r1, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="dpi"):
        plot_surface_1d(r1, tmp_path / "bad.png", dpi=72)


# --------------------------------------------------------------------------------------------- probe
def test_curvature_probe_matches_hvp(trained):
    model, x, y = trained
    probe = CurvatureProbe(model, n_directions=3, eps=1e-6, generator=torch.Generator().manual_seed(5))
    est = probe(x, y)
    # regenerate the probe's directions: one seed draw, then the unit directions
    g = torch.Generator().manual_seed(5)
    torch.randint(0, 2 ** 62, (1,), generator=g)
    P = sum(p.numel() for p in model.parameters())
    us = [(lambda u: u / u.norm())(torch.randn(P, generator=g, dtype=torch.float64)) for _ in range(3)]
    hu = hvp(model, x, y, torch.stack(us))
    ref_norms = hu.norm(dim=1)
    np.testing.assert_allclose(est.per_direction, ref_norms.numpy(), rtol=1e-4)
    assert est.curvature == pytest.approx(float(ref_norms.mean()), rel=1e-4)
    assert est.directional == pytest.approx(float(sum(u @ h for u, h in zip(us, hu)) / 3), rel=1e-3, abs=1e-6)


def test_curvature_probe_shares_dropout_masks():
    x, y = teacher_data(64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Dropout(0.5), nn.Linear(32, 3)).to(DT).train()
    est = CurvatureProbe(model, n_directions=2, eps=1e-6, generator=torch.Generator().manual_seed(0))(x, y)
    # with independent masks the gradient change would be O(1)/eps ~ 1e6; shared masks give O(‖H‖)
    assert est.curvature < 100


class _ScriptedProbe:
    """A stand-in probe returning given curvatures (to test the lr rule exactly)."""

    def __init__(self, values):
        self.values = list(values)
        self.generator = torch.Generator().manual_seed(0)

    def __call__(self, x, y):
        c = self.values.pop(0)
        return CurvatureEstimate(c, c, [c])


def test_adaptive_lr_rule():
    p = nn.Parameter(torch.zeros(1, dtype=DT))
    opt = torch.optim.SGD([p], lr=0.1)
    wrap = CurvatureAdaptiveLR(opt, _ScriptedProbe([1.0, 4.0, 0.25, 100.0, 100.0]), every=2, power=0.5,
                               min_scale=0.2, max_scale=2.0)
    lrs = []
    for step in range(8):
        p.grad = torch.ones(1, dtype=DT)
        before = p.item()
        wrap.step(batch=(None, None))
        lrs.append(before - p.item())   # SGD: Δ = lr · grad
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.05, 0.05, 0.2, 0.2, 0.02, 0.02], rtol=1e-12)
    assert [h["probed"] for h in wrap.history] == [True, False] * 4
    assert [h["curvature"] for h in wrap.history] == [1.0, 1.0, 4.0, 4.0, 0.25, 0.25, 100.0, 100.0]
    # an outside change of the lr (e.g. a scheduler) becomes the new base
    opt.param_groups[0]["lr"] = 0.5
    p.grad = torch.ones(1, dtype=DT)
    wrap.step(batch=(None, None))
    assert wrap.history[-1]["lr"] == pytest.approx(0.5 * 0.2)
    wrap.step()   # step 9 does not probe: no batch needed
    with pytest.raises(ValueError, match="batch"):
        wrap.step()   # step 10 probes


def test_adaptive_lr_trains_with_real_probe():
    x, y = teacher_data(128)
    model = student()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    wrap = CurvatureAdaptiveLR(opt, CurvatureProbe(model, n_directions=2, eps=1e-4,
                                                   generator=torch.Generator().manual_seed(0)), every=5)
    first = None
    for _ in range(20):
        wrap.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        wrap.step(batch=(x, y))
        first = first if first is not None else loss.item()
    assert nn.functional.cross_entropy(model(x), y).item() < first
    assert len(wrap.history) == 20 and all(h["curvature"] > 0 for h in wrap.history)
    assert all(0.1 <= h["scale"] <= 1.0 for h in wrap.history)
