"""Property test: on randomly drawn small architectures the Taylor backends equal nested autograd (float64).

Hypothesis draws the architecture (MLP or CNN body, depth, widths, activation, normalisation, dropout,
residual connections, pooling), the mode (eval/train), the order (1..5), ``wrt`` and the loss; ``taylor`` and
(when the extension is built) ``fused`` must match ``autograd`` to a relative error ≤ 1e-8 per order. The run
is derandomised and bounded (``max_examples``; each example is a few-parameter model on 3 points), so it
stays well within two minutes.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lamda_ext
import lamda_ext.ops

from tests._helpers import rel_err

DT = torch.float64
TOL = 1e-8
BACKENDS = ["taylor"] + (["fused"] if lamda_ext.ops.available() else [])
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "softplus": nn.Softplus,
               "silu": nn.SiLU, "elu": nn.ELU, "leaky_relu": lambda: nn.LeakyReLU(0.1)}
CLASSES = 3


class Residual(nn.Module):
    """``proj(h) + body(h)`` (proj is the identity when the widths agree)."""

    def __init__(self, body: nn.Module, proj: nn.Module):
        super().__init__()
        self.body, self.proj = body, proj

    def forward(self, h):
        return self.proj(h) + self.body(h)


def _norm(kind: str, width: int, cnn: bool, side: int):
    """Batch norm over channels/features, or layer norm over the last axis (features; image rows of a CNN)."""
    if kind == "batch":
        return nn.BatchNorm2d(width) if cnn else nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(side if cnn else width)
    return nn.Identity()


def build(arch: dict) -> tuple[nn.Module, torch.Tensor]:
    """The drawn architecture (float64, seeded) and its input shape ``[C, H, W]`` or ``[F]``."""
    torch.manual_seed(arch["seed"])
    cnn = arch["kind"] == "cnn"
    act = ACTIVATIONS[arch["activation"]]
    layers: list[nn.Module] = []
    width, side = (2 if cnn else 5), 6
    for i, w in enumerate(arch["widths"]):
        lin = nn.Conv2d(width, w, 3, padding=1) if cnn else nn.Linear(width, w)
        body = nn.Sequential(lin, _norm(arch["norm"], w, cnn, side), act())
        if arch["dropout"] > 0:
            body.append(nn.Dropout(arch["dropout"]))
        if arch["residual"]:
            proj = nn.Identity() if w == width else (nn.Conv2d(width, w, 1) if cnn else nn.Linear(width, w))
            body = Residual(body, proj)
        layers.append(body)
        if cnn and i == 0 and arch["pool"] != "none":
            layers.append(nn.MaxPool2d(2) if arch["pool"] == "max" else nn.AvgPool2d(2))
            side //= 2
        width = w
    if cnn:
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        width *= 4
    layers.append(nn.Linear(width, CLASSES))
    model = nn.Sequential(*layers).to(DT)
    with torch.no_grad():      # non-trivial running statistics for eval-mode batch norm
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
    return model.train(arch["train"]), ((2, 6, 6) if cnn else (5,))


ARCHS = st.fixed_dictionaries({
    "kind": st.sampled_from(["mlp", "cnn"]),
    "widths": st.lists(st.integers(2, 4), min_size=1, max_size=3),
    "activation": st.sampled_from(sorted(ACTIVATIONS)),
    "norm": st.sampled_from(["none", "batch", "layer"]),
    "dropout": st.sampled_from([0.0, 0.3]),
    "residual": st.booleans(),
    "pool": st.sampled_from(["none", "max", "avg"]),
    "train": st.booleans(),
    "seed": st.integers(0, 2**16),
})


def _derivs(model, x, y, u, backend, order, wrt, loss):
    torch.manual_seed(1234)     # one dropout mask for every backend
    return lamda_ext.directional_derivs(model, x, y, order=order, directions=u, backend=backend, wrt=wrt, loss=loss)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(arch=ARCHS, order=st.integers(1, 5), wrt=st.sampled_from(["input", "params"]),
       loss=st.sampled_from(["cross_entropy", "mse"]))
def test_taylor_backends_match_autograd_on_random_architectures(arch, order, wrt, loss):
    model, shape = build(arch)
    g = torch.Generator().manual_seed(arch["seed"] + 1)
    x = torch.randn((3,) + shape, generator=g, dtype=DT)
    y = (torch.randint(0, CLASSES, (3,), generator=g) if loss == "cross_entropy"
         else torch.randn(3, CLASSES, generator=g, dtype=DT))
    u = (lamda_ext.random_directions(x, 2, g) if wrt == "input" else lamda_ext.random_param_directions(model, 2, g))
    with torch.no_grad():
        ref = _derivs(model, x, y, u, "autograd", order, wrt, loss)
        assert torch.isfinite(ref).all()
        for backend in BACKENDS:
            got = _derivs(model, x, y, u, backend, order, wrt, loss)
            assert got.shape == ref.shape
            assert rel_err(got, ref) <= TOL, (backend, arch, order, wrt, loss)
