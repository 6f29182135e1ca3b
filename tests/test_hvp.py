"""lamda_ext.hvp: forward-over-reverse HVPs against dense torch.func.hessian products (float64)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lamda_ext.hvp import hvp
from lamda_ext.hvp_reference import hvp_double_backward, hvp_finite_difference
from lamda_ext.params import flatten_params, trainable_parameters, unflatten_params

from tests._helpers import DT, batch, dense_param_hessian, mlp, tiny_cnn
from tests._helpers import rel_norm as rel


@pytest.mark.parametrize("make", [mlp, tiny_cnn])
def test_hvp_matches_dense_hessian_one_vector_and_batch_of_8(make):
    model = make()
    x, y = batch(model)
    H = dense_param_hessian(model, x, y)
    P = H.shape[0]
    g = torch.Generator().manual_seed(3)
    v = torch.randn(P, generator=g, dtype=DT)
    V = torch.randn(8, P, generator=g, dtype=DT)
    hv = hvp(model, x, y, v)
    assert hv.shape == (P,)
    torch.testing.assert_close(hv, H @ v, rtol=1e-8, atol=1e-12)
    HV = hvp(model, x, y, V)
    assert HV.shape == (8, P)
    torch.testing.assert_close(HV, V @ H, rtol=1e-8, atol=1e-12)


def test_references_agree_with_forward_over_reverse():
    model = tiny_cnn()
    x, y = batch(model)
    P = sum(p.numel() for p in model.parameters())
    V = torch.randn(3, P, generator=torch.Generator().manual_seed(4), dtype=DT)
    fwd = hvp(model, x, y, V)
    assert rel(hvp_double_backward(model, x, y, V), fwd) < 1e-12
    assert rel(hvp_double_backward(model, x, y, V[0]), fwd[0]) < 1e-12
    assert rel(hvp_finite_difference(model, x, y, V), fwd) < 1e-6
    assert rel(hvp_finite_difference(model, x, y, V[1]), fwd[1]) < 1e-6


class _InplaceReluBlock(nn.Module):
    """Residual block calling in-place ReLU three ways (module, functional, tensor method)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(2 * 16, 3)

    def forward(self, x):
        h = self.relu(self.conv1(x))
        h = nn.functional.relu(self.conv2(h), inplace=True) + x
        return self.head(torch.flatten(h.relu_(), 1))


def _relu_models():
    torch.manual_seed(5)
    return {"relu_mlp": nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.SiLU(),
                                      nn.Linear(12, 4)).to(DT),
            "inplace_relu_block": _InplaceReluBlock().to(DT)}


@pytest.mark.parametrize("name", ["relu_mlp", "inplace_relu_block"])
def test_relu_route_matches_dense_hessian(name):
    """hvp computes ReLU through its own formulation (lamda_ext._hvp_ops): same Hessian, params and input."""
    model = _relu_models()[name]
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(7, 6, generator=g, dtype=DT) if name == "relu_mlp"
         else torch.randn(7, 2, 4, 4, generator=g, dtype=DT))
    y = torch.randint(0, model[-1].out_features if name == "relu_mlp" else 3, (7,), generator=g)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    H = dense_param_hessian(model, x, y)
    V = torch.randn(4, H.shape[0], generator=g, dtype=DT)
    torch.testing.assert_close(hvp(model, x, y, V), V @ H, rtol=1e-10, atol=1e-13)
    U = torch.randn(2, *x.shape, generator=g, dtype=DT)
    assert rel(hvp(model, x, y, U, wrt="input"), hvp_double_backward(model, x, y, U, wrt="input")) < 1e-12
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())


@pytest.mark.parametrize("loss,ls", [("mse", 0.0), ("cross_entropy", 0.1), ("callable", 0.0)])
def test_losses_and_label_smoothing(loss, ls):
    model = mlp()
    x, y = batch(model)
    if loss == "mse":
        y = torch.randn(x.shape[0], 4, generator=torch.Generator().manual_seed(5), dtype=DT)
        ref = lambda out, t: ((out - t) ** 2).mean(dim=1)
        spec = "mse"
    elif loss == "callable":
        spec = ref = lambda out, t: torch.logsumexp(out, dim=1) - out[torch.arange(len(t)), t] + 0.1 * (out ** 4).sum(1)
    else:
        spec = "cross_entropy"
        ref = lambda out, t: nn.functional.cross_entropy(out, t, reduction="none", label_smoothing=ls)
    H = dense_param_hessian(model, x, y, ref)
    V = torch.randn(2, H.shape[0], generator=torch.Generator().manual_seed(6), dtype=DT)
    torch.testing.assert_close(hvp(model, x, y, V, loss=spec, label_smoothing=ls), V @ H, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("make", [mlp, tiny_cnn])
def test_input_space_per_sample_hvp(make):
    model = make()
    x, y = batch(model, B=4)
    g = torch.Generator().manual_seed(7)
    V = torch.randn(3, *x.shape, generator=g, dtype=DT)
    out = hvp(model, x, y, V, wrt="input")
    one = hvp(model, x, y, V[0], wrt="input")
    assert out.shape == V.shape and one.shape == x.shape
    torch.testing.assert_close(one, out[0], rtol=1e-12, atol=1e-14)
    for b in range(x.shape[0]):
        def f(xb):
            return nn.functional.cross_entropy(model(xb.unsqueeze(0)), y[b:b + 1])
        Hb = torch.func.hessian(f)(x[b]).reshape(x[b].numel(), x[b].numel())
        for k in range(3):
            torch.testing.assert_close(out[k, b].reshape(-1), Hb @ V[k, b].reshape(-1), rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(hvp_double_backward(model, x, y, V, wrt="input"), out, rtol=1e-10, atol=1e-13)
    assert rel(hvp_finite_difference(model, x, y, V, wrt="input"), out) < 1e-6


def test_train_mode_batch_norm_uses_batch_stats_and_mutates_nothing():
    model = tiny_cnn().train()
    x, y = batch(model)
    before = {k: b.clone() for k, b in model.named_buffers()}
    params = trainable_parameters(model)
    theta = flatten_params(params).detach()

    def f(flat):  # batch statistics, no running-stat update: track_running_stats off on a copy
        import copy
        m2 = copy.deepcopy(model)
        for mod in m2.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.track_running_stats = False
                mod.running_mean = mod.running_var = None
        return nn.functional.cross_entropy(functional_call(m2, unflatten_params(flat, params), (x,)), y)

    # reverse-over-reverse dense reference: torch.func.hessian (jacfwd of jacrev) disagrees with autograd
    # for train-mode batch norm in torch 2.14 (relative error ~5e-2), so it is not used here
    H = torch.autograd.functional.hessian(f, theta, vectorize=True)
    V = torch.randn(2, H.shape[0], generator=torch.Generator().manual_seed(8), dtype=DT)
    torch.testing.assert_close(hvp(model, x, y, V), V @ H, rtol=1e-8, atol=1e-12)
    for k, b in model.named_buffers():
        assert torch.equal(b, before[k]), f"buffer {k} was mutated"


def test_dropout_mask_shared_across_vmapped_directions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 4)).to(DT).train()
    x, y = batch(mlp())
    P = sum(p.numel() for p in model.parameters())
    v = torch.randn(P, dtype=DT)
    out = hvp(model, x, y, torch.stack([v, v, v]))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)
    # the mask is the one a single-direction HVP (and the double-backward reference) draws from the same
    # seed, whether the directions run one at a time or vmapped; the generator advances by one draw
    V = torch.stack([v, 2 * v, -v])
    results = []
    for chunk in (None, 1, 2, 3):
        torch.manual_seed(11)
        results.append(hvp(model, x, y, V, chunk_size=chunk))
        results.append(torch.rand(1))
    torch.manual_seed(11)
    one = hvp(model, x, y, v)
    after_one = torch.rand(1)
    torch.manual_seed(11)
    ref = hvp_double_backward(model, x, y, v)
    assert rel(one, ref) < 1e-12
    for i in range(0, len(results), 2):
        torch.testing.assert_close(results[i], torch.stack([one, 2 * one, -one]), rtol=1e-12, atol=1e-14)
        assert torch.equal(results[i + 1], after_one)


def test_chunk_size_validation():
    model = mlp()
    x, y = batch(model)
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=DT)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            hvp(model, x, y, V, chunk_size=bad)


def test_parameters_without_grad_are_excluded():
    model = mlp()
    model[0].weight.requires_grad_(False)
    x, y = batch(model)
    P = sum(p.numel() for p in model.parameters() if p.requires_grad)
    H = dense_param_hessian(model, x, y)
    assert H.shape == (P, P)
    v = torch.randn(P, dtype=DT)
    torch.testing.assert_close(hvp(model, x, y, v), H @ v, rtol=1e-8, atol=1e-12)


def test_bad_inputs():
    model = mlp()
    x, y = batch(model)
    P = sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="v must have shape"):
        hvp(model, x, y, torch.zeros(P + 1, dtype=DT))
    with pytest.raises(ValueError, match="v must have shape"):
        hvp(model, x, y, torch.zeros(2, 3, P, dtype=DT))
    with pytest.raises(TypeError, match="dtype mismatch"):
        hvp(model, x, y, torch.zeros(P, dtype=torch.float32))
    with pytest.raises(TypeError, match="dtype mismatch"):
        hvp(model, x.float(), y, torch.zeros(P, dtype=DT))
    with pytest.raises(ValueError, match="v must have shape"):
        hvp(model, x, y, torch.zeros(3, 5, dtype=DT), wrt="input")
    with pytest.raises(ValueError, match="wrt must be"):
        hvp(model, x, y, torch.zeros(P, dtype=DT), wrt="weights")
    with pytest.raises(ValueError, match="needs targets"):
        hvp(model, x, None, torch.zeros(P, dtype=DT))
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        hvp(model, x, y, [0.0] * P)
    with pytest.raises(ValueError, match="NaN"):
        hvp(model, x * float("nan"), y, torch.zeros(P, dtype=DT))


@pytest.mark.parametrize("make", [mlp, tiny_cnn])
def test_linearized_hvp_replays_the_tangent_pass(make):
    """LinearizedHVP (linearise once, replay per product) against the dense Hessian, one vector and rows."""
    from lamda_ext.hvp import LinearizedHVP
    from lamda_ext.params import model_loss_fn

    model = make()
    x, y = batch(model, B=12)
    H = dense_param_hessian(model, x, y)
    params = trainable_parameters(model)
    f = model_loss_fn(model, x, y, lambda out, t: nn.functional.cross_entropy(out, t, reduction="none"), list(params))
    lin = LinearizedHVP(f, params)
    V = torch.randn(5, H.shape[0], generator=torch.Generator().manual_seed(0), dtype=DT)
    for _ in range(2):                                          # replays give the same products
        assert rel(lin(V), V @ H) < 1e-10
        assert rel(lin(V[0]), H @ V[0]) < 1e-10
        assert rel(lin(V, chunk_size=5), V @ H) < 1e-10
    assert lin.nbytes > 0


def test_reduction_sum():
    model = mlp()
    x, y = batch(model, B=9)
    H = dense_param_hessian(model, x, y)
    V = torch.randn(3, H.shape[0], generator=torch.Generator().manual_seed(1), dtype=DT)
    assert rel(hvp(model, x, y, V, reduction="sum"), 9 * (V @ H)) < 1e-10
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        hvp(model, x, y, V, reduction="max")
    with pytest.raises(ValueError, match="reduction applies to wrt='params'"):
        hvp(model, x, y, torch.zeros_like(x), wrt="input", reduction="sum")
