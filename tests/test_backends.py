"""Every backend against the nested-autograd reference, float64."""
import pytest
import torch

import lamda_ext
import lamda_ext.ops
from tests._helpers import needs_backend, rel_err
from tests._models import build

MODELS = ["sequential", "functional", "mnist_cnn", "sigmoid_mlp", "cifar_resnet", "tv_resnet"]
TOL = 1e-8
# the func backend (nested jvp, ~2^N passes) on the conv models: orders 1-4 against the order-6 reference (orders 5
# and 6 of func are checked on the sequential model and the sigmoid MLP)
FUNC_ORDER = {"functional": 4, "mnist_cnn": 4, "cifar_resnet": 4, "tv_resnet": 4}

pytestmark = pytest.mark.xdist_group("backends")      # one worker computes each reference once


def _derivs(model, x, y, u, backend, wrt="input", order=6, **kw):
    torch.manual_seed(1234)     # same dropout mask for every backend
    return lamda_ext.directional_derivs(model, x, y, order=order, directions=u, backend=backend, wrt=wrt, **kw)


@pytest.fixture(scope="module")
def cases():
    return {}


def _reference(cases, name, train, wrt):
    key = (name, train, wrt)
    if key not in cases:
        m, x, y = build(name)
        m.train(train)
        g = torch.Generator().manual_seed(7)
        u = (lamda_ext.random_directions(x, 3, g) if wrt == "input"
             else lamda_ext.random_param_directions(m, 3, g))
        with torch.no_grad():
            ref = _derivs(m, x, y, u, "autograd", wrt)
        cases[key] = (m, x, y, u, ref)
    return cases[key]


@pytest.mark.parametrize("backend", ["taylor", "fused"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", MODELS)
def test_taylor_matches_autograd_input(cases, name, train, backend):
    needs_backend(backend)
    m, x, y, u, ref = _reference(cases, name, train, "input")
    assert ref.shape == (x.shape[0], 3, 6)
    assert ref.abs().amax() > 0
    with torch.no_grad():
        got = _derivs(m, x, y, u, backend)
    assert rel_err(got, ref) <= TOL


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", MODELS)
def test_func_matches_autograd_input(cases, name, train):
    """Nested jvp costs ~2^N passes: the conv models (``FUNC_ORDER``) are checked on their first 4 orders, the others
    on all 6."""
    m, x, y, u, ref = _reference(cases, name, train, "input")
    order = FUNC_ORDER.get(name, 6)
    with torch.no_grad():
        got = _derivs(m, x, y, u, "func", order=order)
    assert rel_err(got, ref[..., :order]) <= TOL


@pytest.mark.parametrize("backend", ["taylor", "fused", "func"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", ["sequential", "functional", "sigmoid_mlp", "cifar_resnet"])
def test_params_mode_matches_autograd(cases, name, train, backend):
    needs_backend(backend)
    m, x, y, v, ref = _reference(cases, name, train, "params")
    assert ref.shape == (3, 6)
    order = FUNC_ORDER.get(name, 6) if backend == "func" else 6
    with torch.no_grad():
        got = _derivs(m, x, y, v, backend, "params", order=order)
    assert rel_err(got, ref[..., :order]) <= TOL


def test_params_mode_mnist_cnn_taylor():
    m, x, y = build("mnist_cnn")
    m.eval()
    v = lamda_ext.random_param_directions(m, 2, torch.Generator().manual_seed(3), normalization="filter")
    with torch.no_grad():
        ref = _derivs(m, x[:1], y[:1], v, "autograd", "params", order=4)
        got = _derivs(m, x[:1], y[:1], v, "taylor", "params", order=4)
    assert rel_err(got, ref) <= TOL


@pytest.mark.parametrize("loss", ["mse", "callable", "smoothing"])
def test_other_losses(loss):
    m, x, y = build("functional")
    kw = {}
    if loss == "mse":
        kw = dict(loss="mse")
        y = torch.randn(x.shape[0], 5, dtype=x.dtype)
    elif loss == "callable":
        kw = dict(loss=lambda out, t: ((out - t) ** 2).sum(1) + torch.sigmoid(out).sum(1))
        y = torch.randn(x.shape[0], 5, dtype=x.dtype)
    else:
        kw = dict(label_smoothing=0.15)
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = _derivs(m, x, y, u, "autograd", **kw)
        for b in ("func", "taylor") + (("fused",) if lamda_ext.ops.available() else ()):
            assert rel_err(_derivs(m, x, y, u, b, **kw), ref) <= TOL, b


@pytest.mark.parametrize("backend", ["taylor", "fused"])
@pytest.mark.parametrize("name, k, order, orders_used", [("mnist_cnn", 3, 4, 3), ("cifar_resnet", 2, 3, 3)],
                         ids=["mnist_cnn-dropout-train", "cifar_resnet-batchnorm-train"])
def test_gradients_through_derivatives_match(backend, name, k, order, orders_used):
    """d(mean |d_1..3|)/dθ agrees with autograd (rtol 1e-6, float64), in train mode."""
    needs_backend(backend)
    grads = {}
    for b in ("autograd", backend):
        m, x, y = build(name)
        m.train()
        u = lamda_ext.random_directions(x, k, torch.Generator().manual_seed(5))
        d = _derivs(m, x, y, u, b, order=order)
        d[..., :orders_used].abs().mean().backward()
        grads[b] = [p.grad.clone() for p in m.parameters()]
    for ga, gt in zip(grads["autograd"], grads[backend]):
        torch.testing.assert_close(gt, ga, rtol=1e-6, atol=1e-12)


def test_measurement_leaves_model_unchanged():
    m, x, y = build("cifar_resnet")
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    for b in ("autograd", "func", "taylor"):
        _derivs(m, x, y, 2, b, order=2)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert m.training


def test_directions_regenerate_from_seed_and_unit_norm():
    m, x, y = build("sigmoid_mlp")
    a = lamda_ext.directional_derivs(m, x, y, order=3, directions=4, generator=torch.Generator().manual_seed(9))
    b = lamda_ext.directional_derivs(m, x, y, order=3, directions=4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    u = lamda_ext.random_directions(x, 4, torch.Generator().manual_seed(9))
    norms = u.reshape(4, x.shape[0], -1).norm(dim=2)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    c = lamda_ext.directional_derivs(m, x, y, order=3, directions=u)
    torch.testing.assert_close(a, c)


def test_first_and_second_derivative_closed_forms():
    """d_1 = ∇L·u and d_2 = uᵀ H u for one point, from torch.func directly."""
    m, x, y = build("sigmoid_mlp")
    m.eval()
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(2))
    d = lamda_ext.directional_derivs(m, x, y, order=2, directions=u, backend="taylor")
    f = lambda xi: torch.nn.functional.cross_entropy(m(xi[None]), y[:1])
    g = torch.func.grad(f)(x[0])
    h = torch.func.hessian(f)(x[0]).reshape(x[0].numel(), -1)
    for k in range(2):
        uk = u[k, 0].reshape(-1)
        torch.testing.assert_close(d[0, k, 0], (g.reshape(-1) * uk).sum())
        torch.testing.assert_close(d[0, k, 1], uk @ h @ uk)


@pytest.mark.parametrize("backend", ["autograd", "func", "taylor", "fused"])
def test_no_grad_mode_gives_the_same_numbers(backend):
    needs_backend(backend)
    m, x, y = build("sigmoid_mlp")
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0))
    with_grad = lamda_ext.directional_derivs(m, x, y, order=3, directions=u, backend=backend)
    with torch.no_grad():
        without = lamda_ext.directional_derivs(m, x, y, order=3, directions=u, backend=backend)
    assert not without.requires_grad
    torch.testing.assert_close(without, with_grad.detach())
    assert without.abs().amax() > 0


@pytest.mark.parametrize("wrt", ["input", "params"])
@pytest.mark.parametrize("backend", ["autograd", "func", "taylor", "fused"])
def test_return_loss_is_the_loss_at_t0_with_the_same_dropout_mask(backend, wrt):
    """The per-sample loss comes from the same pass (same dropout mask) and trains like a plain forward."""
    needs_backend(backend)
    m, x, y = build("sequential")
    m.train()
    torch.manual_seed(11)
    d, loss = lamda_ext.directional_derivs(m, x, y, order=3, directions=2, backend=backend, wrt=wrt,
                                           return_loss=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(11)
    want = torch.nn.functional.cross_entropy(m(x), y, reduction="none")
    torch.testing.assert_close(loss, want)
    assert d.shape == ((x.shape[0], 2, 3) if wrt == "input" else (2, 3))
    (loss.mean() + d.abs().mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_filter_normalised_parameter_directions():
    m, _, _ = build("mnist_cnn")
    v = lamda_ext.random_param_directions(m, 2, torch.Generator().manual_seed(0), normalization="filter")
    offset = 0
    for p in m.parameters():
        d = v[:, offset:offset + p.numel()].reshape((2,) + tuple(p.shape))
        offset += p.numel()
        if p.dim() <= 1:
            assert torch.count_nonzero(d) == 0
        else:
            torch.testing.assert_close(d.reshape(2, p.shape[0], -1).norm(dim=2),
                                       p.detach().reshape(p.shape[0], -1).norm(dim=1).expand(2, -1))
    u = lamda_ext.random_param_directions(m, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(u.norm(dim=1), torch.ones(3, dtype=u.dtype))


# ------------------------------------------------------------------ shared directions [K, *S]
SHARED_CASES = [(b, name) for b in ("taylor", "fused") for name in MODELS] + \
               [(b, name) for b in ("autograd", "func") for name in ("sequential", "functional", "sigmoid_mlp",
                                                                      "cifar_resnet")]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("backend,name", SHARED_CASES)
def test_shared_directions_equal_the_expanded_call(cases, backend, name, train):
    """[K, *S] broadcast over the batch gives the numbers of the same directions expanded to [K, B, *S]
    (float64, ≤ 1e-12 relative to the largest |d_n| per order), in eval and train mode (dropout, batch norm)."""
    needs_backend(backend)
    m, x, y = build(name)
    m.train(train)
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(5), shared=True)
    assert u.shape == (2,) + tuple(x.shape[1:])
    expanded = u.unsqueeze(1).expand((2,) + tuple(x.shape)).contiguous()
    order = 6 if backend in ("taylor", "fused") else 4
    with torch.no_grad():
        want = _derivs(m, x, y, expanded, backend, order=order)
        got = _derivs(m, x, y, u, backend, order=order)
    assert got.shape == want.shape == (x.shape[0], 2, order)
    assert want.abs().amax() > 0
    assert rel_err(got, want) <= 1e-12
    if backend != "autograd":      # and both agree with the reference (order 6, computed once per model and mode)
        key = (name, train, "shared")
        if key not in cases:
            with torch.no_grad():
                cases[key] = _derivs(m, x, y, expanded, "autograd")
        assert rel_err(got, cases[key][..., :order]) <= TOL


def test_shared_directions_gradients_match_the_expanded_call():
    """The shared path stays differentiable w.r.t. the parameters (taylor vs autograd on the expanded call)."""
    m, x, y = build("mnist_cnn")
    m.train()
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(3), shared=True)
    grads = []
    for backend, dirs in (("taylor", u), ("autograd", u.unsqueeze(1).expand((2,) + tuple(x.shape)))):
        m.zero_grad()
        _derivs(m, x, y, dirs, backend, order=3).abs().mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_shared_random_directions_unit_norm_seeded_and_checked():
    x = torch.zeros(5, 1, 4, 4, dtype=torch.float64)
    a = lamda_ext.random_directions(x, 3, torch.Generator().manual_seed(1), shared=True)
    b = lamda_ext.random_directions(x, 3, torch.Generator().manual_seed(1), shared=True)
    assert a.shape == (3, 1, 4, 4) and torch.equal(a, b)
    torch.testing.assert_close(a.reshape(3, -1).norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert not torch.allclose(a[0], a[1])
    m, _, y = build("sequential")
    xs = torch.randn(3, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[K, \*x.shape\[1:\]\]"):
        lamda_ext.directional_derivs(m, xs, y, order=2, directions=torch.randn(2, 3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="k \\(number of directions\\)"):
        lamda_ext.random_directions(xs, 0, shared=True)


def test_shared_directions_take_the_rowwise_path(monkeypatch):
    """The first conv/linear maps a shared direction once (not once per point), and the result still matches."""
    from lamda_ext.taylor.op_rules import linear
    seen = []
    orig = linear.is_batch_broadcast
    monkeypatch.setattr(linear, "is_batch_broadcast", lambda x: seen.append(orig(x)) or seen[-1])
    m, x, y = build("mnist_cnn")
    m.eval()
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0), shared=True)
    with torch.no_grad():
        got = lamda_ext.directional_derivs(m, x, y, order=4, directions=u, backend="taylor")
        seen_shared = list(seen)
        seen.clear()
        want = lamda_ext.directional_derivs(m, x, y, order=4, directions=u.unsqueeze(1).expand((2,) + tuple(x.shape)).contiguous(),
                                            backend="taylor")
    assert seen_shared[0] is True and not any(seen)
    assert rel_err(got, want) <= 1e-12
