"""Bad input gets a clear error (type and a phrase of the message), never a silent NaN."""
import warnings

import pytest
import torch
from torch import nn

import lamda_ext


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
    with pytest.raises(ValueError, match=r"directions must have shape \[K, \*x.shape\]"):
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
