"""Bad input gets a clear error (type and a phrase of the message), never a silent NaN or a wrong number.

The first part is table-driven over the public API (``directional_derivs`` on every backend and both ``wrt``,
``hvp`` and its reference, ``HessianOperator``, ``hessian_eigs/trace/density``): each bad target, odd model or
non-finite state must raise the listed exception with the listed phrase at every entry point; the cases that
used to be silently wrong and now compute (other integer label dtypes, ``torch.inference_mode()``) are checked
against the plain float64 result / autograd.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lamda_ext
import lamda_ext.ops
from lamda_ext import HessianOperator, curvature_rate, hessian_density, hessian_eigs, hessian_trace, hvp
from lamda_ext.hvp_reference import hvp_double_backward, hvp_finite_difference

from tests._helpers import rel_err

pytestmark = pytest.mark.filterwarnings("ignore:hessian_eigs. Lanczos stopped:RuntimeWarning")

DT = torch.float64
BACKENDS = ["autograd", "func", "taylor"] + (["fused"] if lamda_ext.ops.available() else [])


# ----------------------------------------------------------------------------------------------- fixtures
def _net(bn: bool = False):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(6, 5)] + ([nn.BatchNorm1d(5)] if bn else []) + [nn.Tanh(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).to(DT).eval()


def _xy():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 2, 3, generator=g, dtype=DT), torch.tensor([0, 2, 1, 2])


class _Wrap(nn.Module):
    """The test net with a post-processed output (tuple, dict, 1-D, wrong batch size)."""

    def __init__(self, post):
        super().__init__()
        self.net, self.post = _net(), post

    def forward(self, x):
        return self.post(self.net(x))


def _n_params(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def _v(m, x, wrt):
    g = torch.Generator().manual_seed(3)
    return torch.randn(_n_params(m) if wrt == "params" else x.shape, generator=g, dtype=DT)


# every public entry point, as f(model, x, y, loss) -> tensor
def _derivs_call(backend, wrt):
    def f(m, x, y, loss):
        return lamda_ext.directional_derivs(m, x, y, order=3, directions=2, loss=loss, wrt=wrt, backend=backend,
                                            generator=torch.Generator().manual_seed(5))
    return f


CALLERS = {f"derivs-{wrt}-{b}": _derivs_call(b, wrt) for b in BACKENDS for wrt in ("input", "params")}
CALLERS.update({
    "hvp-params": lambda m, x, y, loss: hvp(m, x, y, _v(m, x, "params"), loss=loss),
    "hvp-input": lambda m, x, y, loss: hvp(m, x, y, _v(m, x, "input"), loss=loss, wrt="input"),
    "hvp_double_backward": lambda m, x, y, loss: hvp_double_backward(m, x, y, _v(m, x, "params"), loss=loss),
    "hvp_finite_difference": lambda m, x, y, loss: hvp_finite_difference(m, x, y, _v(m, x, "input"), loss=loss,
                                                                         wrt="input"),
    "HessianOperator": lambda m, x, y, loss: HessianOperator(m, loss, (x, y)) @ _v(m, x, "params"),
    "hessian_eigs": lambda m, x, y, loss: hessian_eigs(m, loss, (x, y), k=1, max_iter=4,
                                                       generator=torch.Generator().manual_seed(0))[0],
    "hessian_trace": lambda m, x, y, loss: torch.tensor(hessian_trace(m, loss, (x, y), probes=1,
                                                                      generator=torch.Generator().manual_seed(0))),
    "hessian_density": lambda m, x, y, loss: hessian_density(m, loss, (x, y), iters=3, probes=1, grid=50,
                                                             generator=torch.Generator().manual_seed(0))[1],
})


def _set(m, name, index, value):
    with torch.no_grad():
        dict(m.named_parameters(), **dict(m.named_buffers()))[name].view(-1)[index] = value
    return m


def _label(y, i, value):
    y = y.clone()
    y[i] = value
    return y


def _scalar_loss(out, y):
    return F.cross_entropy(out, y)


def _matrix_loss(out, y):
    return out * out


# case name -> (f(model, x, y) -> (model, x, y, loss), exception, phrase)
CASES = {
    "negative_not_ignore_index": (lambda m, x, y: (m, x, _label(y, 1, -7), "cross_entropy"), ValueError,
                                  "only -100 may be negative"),
    "negative_label": (lambda m, x, y: (m, x, _label(y, 2, -1), "cross_entropy"), ValueError,
                       "class labels must be ≥ 0, got label -1 at position 2"),
    "label_too_large": (lambda m, x, y: (m, x, _label(y, 3, 3), "cross_entropy"), ValueError,
                        "class label 3 at position 3 is out of range for a model with 3 classes"),
    "float_labels": (lambda m, x, y: (m, x, y.to(DT), "cross_entropy"), TypeError, "integer class labels"),
    "label_shape": (lambda m, x, y: (m, x, y[:2], "cross_entropy"), ValueError, "targets must have shape [B]=[4]"),
    "no_targets": (lambda m, x, y: (m, x, None, "cross_entropy"), ValueError, "needs targets y"),
    "mse_y_[3]": (lambda m, x, y: (m, x, torch.zeros(3, dtype=DT), "mse"), ValueError,
                  "mse targets must have the model output's shape [4, 3], got [3]"),
    "mse_y_[4,1]": (lambda m, x, y: (m, x, torch.zeros(4, 1, dtype=DT), "mse"), ValueError,
                    "mse targets must have the model output's shape [4, 3], got [4, 1]"),
    "mse_y_[1,3]": (lambda m, x, y: (m, x, torch.zeros(1, 3, dtype=DT), "mse"), ValueError,
                    "mse targets must have the model output's shape [4, 3], got [1, 3]"),
    "mse_int_y": (lambda m, x, y: (m, x, torch.zeros(4, 3, dtype=torch.long), "mse"), TypeError,
                  "mse targets must be floating point"),
    "mse_float32_y": (lambda m, x, y: (m, x, torch.zeros(4, 3), "mse"), TypeError,
                      "mse targets are torch.float32 but the model output is torch.float64"),
    "mse_nan_y": (lambda m, x, y: (m, x, torch.full((4, 3), float("nan"), dtype=DT), "mse"), ValueError,
                  "mse targets y contain NaN or inf"),
    "callable_scalar": (lambda m, x, y: (m, x, y, _scalar_loss), ValueError,
                        "a callable loss must return per-sample losses of shape [B]=[4], got []"),
    "callable_[B,C]": (lambda m, x, y: (m, x, y, _matrix_loss), ValueError,
                       "a callable loss must return per-sample losses of shape [B]=[4], got [4, 3]"),
    "nan_weight": (lambda m, x, y: (_set(m, "1.weight", 3, float("nan")), x, y, "cross_entropy"), ValueError,
                   "the model's parameter '1.weight' contains NaN or inf"),
    "inf_bias": (lambda m, x, y: (_set(m, "3.bias", 0, float("inf")), x, y, "cross_entropy"), ValueError,
                 "the model's parameter '3.bias' contains NaN or inf"),
    "inf_bn_buffer": (lambda m, x, y: (_set(_net(bn=True), "2.running_var", 1, float("inf")), x, y,
                                       "cross_entropy"), ValueError,
                      "the model's buffer '2.running_var' contains NaN or inf"),
    "wrong_x_shape": (lambda m, x, y: (m, x.reshape(4, 6)[:, :5].contiguous(), y, "cross_entropy"), ValueError,
                      "x of shape [4, 5] does not fit the model: module '1' (Linear) failed with: mat1 and mat2"),
    "returns_tuple": (lambda m, x, y: (_Wrap(lambda o: (o, o)), x, y, "cross_entropy"), TypeError,
                      "the model returned a tuple, not a tensor"),
    "returns_dict": (lambda m, x, y: (_Wrap(lambda o: {"logits": o}), x, y, "cross_entropy"), TypeError,
                     "the model returned a dict, not a tensor"),
    "returns_1d": (lambda m, x, y: (_Wrap(lambda o: o.sum(1)), x, y, "cross_entropy"), ValueError,
                   "cross-entropy needs logits of shape [B, classes], the model returned [4]"),
    "returns_0d": (lambda m, x, y: (_Wrap(lambda o: o.sum()), x, torch.zeros(4, dtype=DT), "mse"), ValueError,
                   "the model's output has shape [] but x has 4 points"),
    "batch_mismatch": (lambda m, x, y: (_Wrap(lambda o: o[:2]), x, y, "cross_entropy"), ValueError,
                       "the model's output has shape [2, 3] but x has 4 points"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("caller", list(CALLERS))
def test_bad_input_table(caller, case):
    """Every bad target / odd model / non-finite state raises the same clear error at every entry point."""
    make, exc, phrase = CASES[case]
    m, x, y = _net(), *_xy()
    m, x, y, loss = make(m, x, y)
    with pytest.raises(exc) as err:
        CALLERS[caller](m, x, y, loss)
    assert phrase in str(err.value), str(err.value)


def _masked_ce(out, y):
    """Cross-entropy with -100 labels counting 0, written without ignore_index (the reference)."""
    return F.cross_entropy(out, y.clamp_min(0), reduction="none") * (y != -100).to(out.dtype)


@pytest.mark.parametrize("caller", list(CALLERS))
def test_ignore_index_counts_zero_at_every_entry_point(caller):
    """Label -100 (F.cross_entropy's ignore_index) is accepted everywhere: the sample's loss and derivatives are 0,
    the same numbers as a loss that masks it out by hand."""
    m, (x, y) = _net(), _xy()
    y = _label(y, 1, -100)
    got = CALLERS[caller](m, x, y, "cross_entropy")
    want = CALLERS[caller](m, x, y, _masked_ce)
    assert rel_err(got.detach().reshape(1, -1), want.detach().reshape(1, -1), dim=0) < 1e-10
    if caller.startswith("derivs-input"):
        assert float(got[1].abs().max()) == 0.0 and float(got.abs().max()) > 0


def test_table_cases_are_fine_when_repaired():
    """The unmodified fixture computes at every entry point (so the table's errors come from the bad input)."""
    for name, f in CALLERS.items():
        m, (x, y) = _net(), _xy()
        out = f(m, x, y, "cross_entropy")
        assert torch.isfinite(out).all() and out.abs().sum() > 0, name
        out = f(_net(), x, torch.randn(4, 3, dtype=DT), "mse")
        assert torch.isfinite(out).all(), name


# ------------------------------------------------------------- silently wrong before: now the right number
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
@pytest.mark.parametrize("caller", list(CALLERS))
def test_integer_label_dtypes_give_the_int64_result(caller, dtype):
    m, (x, y) = _net(), _xy()
    want = CALLERS[caller](m, x, y, "cross_entropy")
    got = CALLERS[caller](m, x, y.to(dtype), "cross_entropy")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("wrt", ["input", "params"])
def test_integer_labels_match_autograd_in_float64(backend, wrt):
    m, (x, y) = _net(), _xy()
    ref = CALLERS[f"derivs-{wrt}-autograd"](m, x, y, "cross_entropy")
    got = CALLERS[f"derivs-{wrt}-{backend}"](m, x, y.to(torch.int32), "cross_entropy")
    assert ref.abs().amax() > 0
    assert rel_err(got, ref) <= 1e-8


@pytest.mark.parametrize("caller", list(CALLERS) + ["derivs-input-auto"])
def test_inference_mode_computes_the_plain_result(caller):
    """Under torch.inference_mode() the autograd backend (and auto's fallback) returned zeros; every entry
    point now leaves inference mode for the measurement and returns the numbers computed outside it."""
    f = _derivs_call("auto", "input") if caller == "derivs-input-auto" else CALLERS[caller]
    m, (x, y) = _net(), _xy()
    want = f(m, x, y, "cross_entropy")
    with torch.inference_mode():
        xi, yi = x.clone(), y.clone()      # inference tensors
        got = f(m, xi, yi, "cross_entropy")
    assert want.abs().amax() > 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert not got.requires_grad


class _Cumsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.cumsum(x.flatten(1), dim=1))


def test_inference_mode_auto_fallback_to_autograd_matches_autograd():
    m = _Cumsum().to(DT)
    x, y = _xy()
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0))
    ref = lamda_ext.directional_derivs(m, x, y, order=3, directions=u, backend="autograd")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = lamda_ext.directional_derivs(m, x.clone(), y.clone(), order=3, directions=u.clone(), backend="auto")
    assert ref.abs().amax() > 0
    assert rel_err(got, ref.detach()) <= 1e-12


def test_inference_mode_model_is_refused():
    with torch.inference_mode():
        m = _net()
    x, y = _xy()
    with pytest.raises(ValueError, match="created under torch.inference_mode"):
        CALLERS["derivs-input-autograd"](m, x, y, "cross_entropy")
    with pytest.raises(ValueError, match="created under torch.inference_mode"):
        CALLERS["hvp-params"](m, x, y, "cross_entropy")


def test_check_forward_leaves_rng_and_batchnorm_untouched():
    """The output check's forward pass restores the RNG and freezes BN statistics: a train-mode measurement
    with dropout and batch norm still matches autograd, and the running statistics are unchanged."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Tanh(),
                      nn.Linear(8, 3)).to(DT).train()
    x, y = _xy()
    stats = [b.clone() for b in m.buffers()]
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0))
    rng = torch.get_rng_state()
    results = {}
    for b in BACKENDS:
        torch.set_rng_state(rng)
        results[b] = lamda_ext.directional_derivs(m, x, y, order=4, directions=u, backend=b)
    for b in BACKENDS:
        assert rel_err(results[b], results["autograd"]) <= 1e-8, b
    for a, b in zip(stats, m.buffers()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ v, grid, arguments
def test_nan_in_v():
    m, (x, y) = _net(), _xy()
    v = _v(m, x, "params")
    v[3] = float("nan")
    for f in (hvp, hvp_double_backward, hvp_finite_difference):
        with pytest.raises(ValueError, match="v contains NaN or inf"):
            f(m, x, y, v)
    with pytest.raises(ValueError, match="v contains NaN or inf"):
        HessianOperator(m, "cross_entropy", (x, y)) @ v
    vi = _v(m, x, "input")
    vi[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="v contains NaN or inf"):
        hvp(m, x, y, vi, wrt="input")


def _hess(fn, **kw):
    m, (x, y) = _net(), _xy()
    return fn(m, "cross_entropy", (x, y), **kw)


@pytest.mark.parametrize("fn, kw, exc, phrase", [
    (hessian_eigs, dict(k=2.7), TypeError, "k must be an int ≥ 1, got 2.7"),
    (hessian_eigs, dict(k=True), TypeError, "k must be an int"),
    (hessian_eigs, dict(k="3"), TypeError, "k must be an int"),
    (hessian_eigs, dict(k=0), ValueError, "k must be ≥ 1"),
    (hessian_eigs, dict(k=99), ValueError, "k must be in [1, P=53]"),
    (hessian_eigs, dict(k=2, max_iter=5.5), TypeError, "max_iter must be an int"),
    (HessianOperator, dict(chunk="a"), TypeError, "chunk must be an int ≥ 1 or None, got 'a'"),
    (HessianOperator, dict(chunk=2.5), TypeError, "chunk must be an int"),
    (HessianOperator, dict(chunk=0), ValueError, "chunk must be ≥ 1"),
    (hessian_trace, dict(probes=2.5), TypeError, "probes must be an int"),
    (hessian_trace, dict(probes=0), ValueError, "probes must be ≥ 1"),
    (hessian_trace, dict(block="4"), TypeError, "block must be an int"),
    (hessian_density, dict(iters=0), ValueError, "iters must be ≥ 1"),
    (hessian_density, dict(probes=1.5), TypeError, "probes must be an int"),
    (hessian_density, dict(grid=torch.tensor([0.0, float("nan"), 1.0], dtype=DT)), ValueError,
     "grid contains NaN or inf"),
    (hessian_density, dict(grid=torch.tensor([float("inf"), 1.0], dtype=DT)), ValueError,
     "grid contains NaN or inf"),
    (hessian_density, dict(grid=1), ValueError, "grid (a number of points) must be ≥ 2"),
    (hessian_density, dict(grid=10.5), TypeError, "grid (a number of points) must be an int"),
    (hessian_density, dict(sigma=float("nan")), ValueError, "sigma must be a finite number > 0"),
    (hessian_density, dict(sigma=-1.0), ValueError, "sigma must be a finite number > 0"),
])
def test_hessian_argument_types(fn, kw, exc, phrase):
    with pytest.raises(exc) as err:
        _hess(fn, **kw)
    assert phrase in str(err.value), str(err.value)


def test_hessian_integer_like_arguments_still_accepted():
    import numpy as np
    vals, _ = _hess(hessian_eigs, k=np.int64(2), max_iter=38, generator=torch.Generator().manual_seed(0))
    assert vals.shape == (2,)


# ------------------------------------------------------------------------------------------ curvature_rate
def _d(shape=(2, 3, 6)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g, dtype=DT)


def _with(d, index, value):
    d = d.clone()
    d[index] = value
    return d


@pytest.mark.parametrize("derivs, kw, exc, phrase", [
    (_with(_d(), (0, 1, 2), float("nan")), {}, ValueError, "derivs contains 1 NaN or inf value(s)"),
    (_with(_d(), (1, 0, 0), float("inf")), {}, ValueError, "derivs contains 1 NaN or inf value(s)"),
    (_with(_d((3, 6)), (0, 0), -float("inf")), {}, ValueError, "NaN or inf"),
    (_d((0, 3, 6)), {}, ValueError, "derivs is empty (shape [0, 3, 6])"),
    (_d((2, 0, 6)), {}, ValueError, "derivs is empty"),
    (_d((2, 3, 0)), {}, ValueError, "derivs is empty"),
    (_d(), dict(orders=(1.5, 3)), TypeError, "orders must be a window (lo, hi) of two ints, got (1.5, 3)"),
    (_d(), dict(orders=3), TypeError, "orders must be a window (lo, hi) of two ints, got 3"),
    (_d(), dict(orders=(1, 2, 3)), TypeError, "orders must be a window (lo, hi) of two ints"),
    (_d(), dict(orders=(True, 3)), TypeError, "orders must be a window (lo, hi) of two ints"),
    (_d(), dict(orders="13"), TypeError, "orders must be a window (lo, hi) of two ints"),
    (_d(), dict(orders=(3, 3)), ValueError, "1 ≤ lo < hi ≤ 6"),
    (_d(), dict(orders=(0, 3)), ValueError, "1 ≤ lo < hi ≤ 6"),
    (_d(), dict(orders=(2, 7)), ValueError, "1 ≤ lo < hi ≤ 6"),
    (_d(), dict(pool="mean"), ValueError, "pool must be"),
    (_d().long(), {}, TypeError, "derivs must be floating point"),
    (_d()[0, 0], {}, ValueError, "derivs must be a tensor [B, K, N] or [K, N]"),
])
def test_curvature_rate_errors(derivs, kw, exc, phrase):
    with pytest.raises(exc) as err:
        curvature_rate(derivs, **kw)
    assert phrase in str(err.value), str(err.value)


def test_curvature_rate_window_as_list_matches_hand_fit():
    """A valid window (tuple or list) gives the least-squares slope computed by hand."""
    d = torch.tensor([[[1.0, 2.0, 8.0, 64.0]]], dtype=DT)     # log|d| = (0, 1, 3, 6)·log 2
    import math
    # slope over orders 2..4 of (1, 3, 6)·log 2: x̄ = 3, ȳ = 10/3·log 2, Sxy = 5·log 2, Sxx = 2
    want = 2.5 * math.log(2.0)
    for orders in ((2, 4), [2, 4]):
        assert abs(float(curvature_rate(d, orders=orders)[0, 0]) - want) < 1e-12


def _setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(4, 2, 3)
    y = torch.randint(0, 3, (4,))
    return m, x, y


def call(m, x, y, **kw):
    return lamda_ext.directional_derivs(m, x, y, **{"order": 2, "directions": 2, **kw})


@pytest.mark.parametrize("kw, exc, phrase", [
    (dict(order=0), ValueError, "order must be in 1..32"),
    (dict(order=33), ValueError, "order must be in 1..32"),
    (dict(order=2.0), TypeError, "order must be an int"),
    (dict(directions=0), ValueError, "directions (K) must be ≥ 1"),
    (dict(directions=-3), ValueError, "directions (K) must be ≥ 1"),
    (dict(directions="many"), TypeError, "directions must be an int"),
    (dict(wrt="weights"), ValueError, "wrt must be 'input' or 'params'"),
    (dict(backend="jax"), ValueError, "backend must be one of"),
    (dict(loss="hinge"), ValueError, "loss must be one of"),
    (dict(label_smoothing=1.5), ValueError, "label_smoothing must be in [0, 1)"),
    (dict(loss="mse", label_smoothing=0.1), ValueError, "label_smoothing applies to loss='cross_entropy' only"),
    (dict(generator=123), TypeError, "generator must be a torch.Generator"),
])
def test_bad_arguments(kw, exc, phrase):
    m, x, y = _setup()
    with pytest.raises(exc) as err:
        call(m, x, y, **kw)
    assert phrase in str(err.value)


def test_missing_targets():
    m, x, _ = _setup()
    with pytest.raises(ValueError, match="needs targets y"):
        call(m, x, None)


def test_wrong_target_shape_and_dtype():
    m, x, y = _setup()
    with pytest.raises(ValueError, match=r"targets must have shape \[B\]"):
        call(m, x, y[:2])
    with pytest.raises(TypeError, match="integer class labels"):
        call(m, x, y.float())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_inf_input(bad):
    m, x, y = _setup()
    x[1, 0, 0] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        call(m, x, y)


def test_dtype_mismatch_model_and_x():
    m, x, y = _setup()
    with pytest.raises(TypeError, match="dtype mismatch: model parameters are torch.float32 but x is torch.float64"):
        call(m, x.double(), y)


def test_integer_input():
    m, x, y = _setup()
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        call(m, x.long(), y)


def test_not_a_module_or_tensor():
    m, x, y = _setup()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        call(lambda t: t, x, y)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        call(m, x.tolist(), y)


def test_direction_tensor_shape_and_dtype():
    m, x, y = _setup()
    with pytest.raises(ValueError, match=r"directions must have shape \[K, \*x.shape\[1:\]\] = \[K, 2, 3\] \(shared\) or \[K, \*x.shape\]"):
        call(m, x, y, directions=torch.randn(2, 4, 6))
    with pytest.raises(TypeError, match="directions are torch.float64 but x is torch.float32"):
        call(m, x, y, directions=torch.randn(2, 4, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"directions must have shape \[K, P\] = \[K, 53\]"):
        call(m, x, y, directions=torch.randn(2, 37), wrt="params")
    d = torch.randn(2, 4, 2, 3)
    d[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="directions contain NaN or inf"):
        call(m, x, y, directions=d)


def test_device_mismatch_is_reported():
    m, x, y = _setup()
    meta = torch.randn(2, 4, 2, 3, device="meta")
    with pytest.raises(ValueError, match="device mismatch: directions are on meta"):
        call(m, x, y, directions=meta)
    with pytest.raises(ValueError, match="device mismatch: y is on meta"):
        call(m, x, torch.zeros(4, dtype=torch.long, device="meta"))


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(torch.cumsum(x.flatten(1), dim=1))


def test_unsupported_op_names_op_and_module_and_fallback():
    m = nn.Sequential(nn.Identity(), _Unsupported())
    x, y = torch.randn(4, 2, 3), torch.randint(0, 3, (4,))
    with pytest.raises(NotImplementedError) as err:
        call(m, x, y, backend="taylor")
    msg = str(err.value)
    assert "'cumsum'" in msg and "module '1' (_Unsupported)" in msg and "backend='autograd'" in msg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = call(m, x, y, backend="auto", directions=lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0)))
    assert any("cumsum" in str(w.message) and "Falling back" in str(w.message) for w in caught)
    ref = call(m, x, y, backend="autograd", directions=lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(auto, ref)


def test_control_flow_on_primal_values_matches_autograd():
    """Branches read the primal (t = 0) value, exactly as autograd sees them."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            x = x.flatten(1)
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    torch.manual_seed(0)
    m = Branchy()
    x, y = torch.randn(4, 2, 3), torch.randint(0, 3, (4,))
    u = lamda_ext.random_directions(x, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(call(m, x, y, backend="taylor", directions=u),
                               call(m, x, y, backend="autograd", directions=u))


# ------------------------------------------------------------------------------- damaged MNIST files
def _idx(path, magic, shape, payload: bytes):
    head = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in shape)
    path.write_bytes(head + payload)


def _fake_mnist(root, n_train=3, n_test=2):
    """A tiny but valid MNIST tree (root/MNIST/raw, uncompressed idx files)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _idx(raw / f"{split}-images-idx3-ubyte", 2051, (n, 28, 28), bytes(n * 784))
        _idx(raw / f"{split}-labels-idx1-ubyte", 2049, (n,), bytes([i % 10 for i in range(n)]))
    return raw


def test_fake_mnist_loads(tmp_path):
    from lamda.data import load_dataset
    _fake_mnist(tmp_path)
    d = load_dataset("mnist", root=tmp_path)
    assert d.x_train.shape == (3, 1, 28, 28) and d.y_test.shape == (2,)
    assert sorted(d.y_train.tolist()) == [0, 1, 2]


def _truncate(path, drop):
    path.write_bytes(path.read_bytes()[:-drop])


@pytest.mark.parametrize("damage, exc, phrase", [
    (lambda raw: _truncate(raw / "train-images-idx3-ubyte", 100), ValueError,
     "train-images-idx3-ubyte: truncated MNIST file"),
    (lambda raw: _truncate(raw / "t10k-labels-idx1-ubyte", 1), ValueError,
     "t10k-labels-idx1-ubyte: truncated MNIST file"),
    (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00"), ValueError,
     "train-labels-idx1-ubyte: corrupt MNIST file: 2 bytes, shorter than its header"),
    (lambda raw: _idx(raw / "t10k-images-idx3-ubyte", 2049, (2, 28, 28), bytes(2 * 784)), ValueError,
     "t10k-images-idx3-ubyte: not an MNIST image file (bad magic number 0x00000801"),
    (lambda raw: _idx(raw / "train-images-idx3-ubyte", 2051, (3, 27, 29), bytes(3 * 27 * 29)), ValueError,
     "train-images-idx3-ubyte: corrupt MNIST file: items of shape [27, 29]"),
    (lambda raw: _idx(raw / "train-labels-idx1-ubyte", 2049, (3,), bytes([1, 10, 2])), ValueError,
     "train-labels-idx1-ubyte: label byte 10 at item 1 is not a digit 0..9"),
    (lambda raw: _idx(raw / "t10k-labels-idx1-ubyte", 2049, (3,), bytes([1, 2, 3])), ValueError,
     "t10k-labels-idx1-ubyte: 3 labels for 2 images"),
    (lambda raw: (raw / "t10k-images-idx3-ubyte").unlink(), FileNotFoundError,
     "MNIST is incomplete under"),
])
def test_damaged_mnist_files_are_named(tmp_path, damage, exc, phrase):
    from lamda.data import load_dataset
    raw = _fake_mnist(tmp_path)
    damage(raw)
    with pytest.raises(exc) as err:
        load_dataset("mnist", root=tmp_path)
    assert phrase in str(err.value), str(err.value)
    assert "MNIST not found" not in str(err.value)


def test_missing_mnist_still_says_not_found(tmp_path):
    from lamda.data import load_dataset
    with pytest.raises(FileNotFoundError, match="MNIST not found under"):
        load_dataset("mnist", root=tmp_path)
