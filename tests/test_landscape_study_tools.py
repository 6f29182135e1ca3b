"""The landscape/spectrum studies' tools: the residual-checked eigenpairs against a dense float64 Hessian, the
surface grid with the trained point on a node, and the shared-scale contour panels."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lamda.landscape import (
    SurfaceResult,
    loss_surface,
    plot_contour_panels,
    surface_grid,
)
from lamda.landscape.eigcheck import checked_eigs
from lamda_ext.hessian import HessianOperator
from torch import nn
from torch.func import functional_call

DT = torch.float64


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 5, generator=g, dtype=DT)
    y = (x @ torch.randn(5, 3, generator=g, dtype=DT)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(DT).eval()
    return model, x, y


def _dense_hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            parts[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    H = torch.autograd.functional.hessian(loss, flat0)
    return 0.5 * (H + H.T)


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_checked_eigs_against_dense_hessian(which):
    model, x, y = _problem()
    H = _dense_hessian(model, x, y)                                   # P = 5·6 + 6 + 6·3 + 3 = 57
    ev, U = torch.linalg.eigh(H)
    order = {"LA": torch.argsort(ev, descending=True), "SA": torch.argsort(ev),
             "LM": torch.argsort(ev.abs(), descending=True)}[which]
    ce = checked_eigs(model, "cross_entropy", (x, y), k=4, which=which, tol=1e-9, max_iter=57,
                      generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(ce.values, ev[order][:4].numpy(), rtol=1e-8, atol=1e-10)
    assert ce.converged.all() and ce.all_converged and (ce.rel_residual <= 1e-9).all()
    # the residual is recomputed from the dense matrix exactly as defined
    Y = ce.vectors
    ref = torch.linalg.vector_norm(Y @ H - torch.as_tensor(ce.values)[:, None] * Y, dim=1) / ce.values.__abs__().max()
    np.testing.assert_allclose(ce.rel_residual, ref.numpy(), rtol=1e-6, atol=1e-13)
    assert ce.hvps >= 4


def test_checked_eigs_on_one_operator_equal_separate_solves():
    """Both ends of the spectrum from one HessianOperator: the numbers of two separately built operators, each
    solve counting only its own products; an operator with extra operator arguments is refused."""
    model, x, y = _problem()
    kw = dict(k=3, tol=1e-9, max_iter=57)
    op = HessianOperator(model, "cross_entropy", (x, y))
    counted = 0
    for which in ("LA", "SA"):
        shared = checked_eigs(op, which=which, generator=torch.Generator().manual_seed(1), **kw)
        alone = checked_eigs(model, "cross_entropy", (x, y), which=which, generator=torch.Generator().manual_seed(1),
                             **kw)
        np.testing.assert_allclose(shared.values, alone.values, rtol=1e-12, atol=1e-14)
        assert shared.hvps == alone.hvps > 0
        counted += shared.hvps
    assert op.n_products == counted
    with pytest.raises(ValueError, match="takes no loss"):
        checked_eigs(op, "cross_entropy", which="LA", **kw)
    with pytest.raises(ValueError, match="takes no loss"):
        checked_eigs(op, which="LA", curvature="ggn", **kw)


def test_checked_eigs_flags_unconverged_pairs():
    model, x, y = _problem(3)
    # 6 Lanczos steps for 5 pairs of a 57-dimensional Hessian at tol 1e-12: the inner Ritz pairs cannot converge
    ce = checked_eigs(model, "cross_entropy", (x, y), k=5, which="LA", tol=1e-12, max_iter=6,
                      generator=torch.Generator().manual_seed(0))
    assert not ce.converged.all()
    np.testing.assert_array_equal(ce.converged, ce.rel_residual <= 1e-12)
    assert any("hessian_eigs" in n for n in ce.notes)                # the solver's warning is kept


def test_surface_grid_puts_the_trained_point_on_a_node():
    for R in (3, 5, 13, 31):
        g = surface_grid(1.5, R)
        assert g.shape == (R,) and g[R // 2] == 0.0 and g[0] == -1.5 and g[-1] == 1.5
        np.testing.assert_array_equal(g, -g[::-1])
        np.testing.assert_allclose(np.diff(g), 3.0 / (R - 1), rtol=1e-12)
    assert 0.0 not in surface_grid(1.0, 4)                             # even: no centre node
    with pytest.raises(ValueError, match="resolution"):
        surface_grid(1.0, 1)
    model, x, y = _problem()
    r = loss_surface(model, (x, y), directions=2, resolution=5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert r.losses[2, 2] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-12)


def test_contour_panels_share_one_colour_scale(tmp_path, monkeypatch):
    from lamda.landscape import surface as surface_mod
    from PIL import Image
    g = surface_grid(1.0, 5)
    a = SurfaceResult(g, 1.0 + np.add.outer(g ** 2, g ** 2), np.full((5, 5), 0.5), g.copy())
    b = SurfaceResult(g, 10.0 * (1.0 + np.add.outer(g ** 2, g ** 2)), np.full((5, 5), 0.5), g.copy())
    seen = []
    real = surface_mod._plt

    def spy():
        plt = real()
        orig = plt.Axes.contourf

        def contourf(self, *args, **kw):
            cs = orig(self, *args, **kw)
            seen.append((tuple(np.round(cs.levels, 12)), kw.get("norm")))
            return cs
        monkeypatch.setattr(plt.Axes, "contourf", contourf)
        return plt

    monkeypatch.setattr(surface_mod, "_plt", spy)
    path = plot_contour_panels({"a": a, "b": b}, tmp_path / "panels.png", title="t")
    assert len(seen) == 2 and seen[0][0] == seen[1][0]                # the same levels in both panels
    assert seen[0][0][0] == pytest.approx(1.0) and seen[0][0][-1] == pytest.approx(30.0)   # min of a … max of b
    assert seen[0][1].vmin == seen[1][1].vmin == pytest.approx(1.0)   # one log norm
    with Image.open(path) as im:
        assert round(im.info["dpi"][0]) == 300
    with pytest.raises(ValueError, match="1-D"):
        plot_contour_panels({"a": SurfaceResult(g, g, g)}, tmp_path / "bad.png")
