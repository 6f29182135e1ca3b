"""Shared test helpers (``from tests._helpers import ...``): the relative errors every comparison uses, the skip of
the fused backend without the extension, the small float64 models and batches of the HVP/Hessian tests, and the
study-runner contract of the study tests."""
from __future__ import annotations

import warnings

import pytest

import torch
from torch import nn
from torch.func import functional_call

import lamda_ext
import lamda_ext.ops
from lamda_ext.params import flatten_params, trainable_parameters, unflatten_params

DRAFT_DPI = 150                          # the figure resolution of the study runs in tests (`--dpi`)
DRAFT = ["--dpi", str(DRAFT_DPI)]

__all__ = ["DT", "rel_err", "needs_backend", "rel_norm", "mlp", "tiny_cnn", "batch", "train_briefly", "dense_param_hessian"]


def needs_backend(backend: str) -> None:
    """Skip the calling test when ``backend`` is ``"fused"`` and the extension ``lamda_ext._C`` is not built."""
    if backend == "fused" and not lamda_ext.ops.available():
        pytest.skip("extension lamda_ext._C not built: " + str(lamda_ext.build_info().get("extension_error")))


def rel_err(got: torch.Tensor, want: torch.Tensor, dim: int = -1, floor: float = 1e-300) -> float:
    """Max over slices along ``dim`` of ``max|got − want| / max(max|want|, floor)``: each slice (an order n of
    ``[..., N]`` derivatives, a Taylor coefficient, ...) on its own scale; a ``floor`` > 0 makes slices that are
    exactly zero in exact arithmetic absolute. Shapes must agree and ``got`` must be finite."""
    assert got.shape == want.shape, (got.shape, want.shape)
    g = got.detach().double().cpu().movedim(dim, 0).reshape(got.shape[dim], -1)
    w = want.detach().double().cpu().movedim(dim, 0).reshape(want.shape[dim], -1)
    if g.numel() == 0:
        return 0.0
    assert torch.isfinite(g).all(), "non-finite values in the result under test"
    scale = w.abs().amax(dim=1).clamp_min(floor)
    return ((g - w).abs().amax(dim=1) / scale).max().item()


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` (Frobenius norms over all entries): for vectors such as HVPs."""
    return float((a - b).norm() / b.norm())


DT = torch.float64


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 12), nn.Softplus(), nn.Linear(12, 4)).to(DT)


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2),
                      nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)).to(DT)
    for mod in m:
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


def batch(model, B=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    if isinstance(model[0], nn.Conv2d):
        return torch.randn(B, 1, 8, 8, generator=g, dtype=DT), torch.randint(0, 3, (B,), generator=g)
    return torch.randn(B, 6, generator=g, dtype=DT), torch.randint(0, 4, (B,), generator=g)


def train_briefly(model, x, y, steps=100, lr=1e-2):
    """A few full-batch Adam steps (BN stays in its mode; eval-mode BN keeps its running stats)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def dense_param_hessian(model, x, y, loss=None):
    """Reference: torch.func.hessian of the batch-mean loss w.r.t. the flat parameter vector."""
    loss = loss or (lambda out, t: nn.functional.cross_entropy(out, t, reduction="none"))
    params = trainable_parameters(model)
    bufs = dict(model.named_buffers())
    theta = flatten_params(params).detach()

    def f(flat):
        out = functional_call(model, (unflatten_params(flat, params), bufs), (x,))
        return loss(out, y).mean()

    with warnings.catch_warnings():        # torch.func.hessian's linearize path scripts a helper (a FutureWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
        return torch.func.hessian(f)(theta)


def check_analyze_and_resume(main, out, argv, top_files, capsys, cell: str, run_dir: str) -> None:
    """The study-runner contract on a finished results folder ``out`` (made by ``main(argv)``):
    ``lamda analyze`` regenerates every top-level output (``top_files[2:]`` deleted first; results.csv
    unchanged); a folder whose cell ``cell`` (e.g. ``"global/seed_42"``) lost its completion marker is
    refused, naming the cell; a restart adopts the finished run folder ``run_dir`` (marker rewritten,
    its final_model.pt not retrained)."""
    before = (out / "results.csv").read_text()
    for f in top_files[2:]:
        (out / f).unlink()
    assert main(["analyze", str(out), *DRAFT]) == 0
    for f in top_files:
        assert (out / f).is_file(), f
    assert (out / "results.csv").read_text() == before
    marker = out / ".cells" / f"{cell}.done.json"
    marker.unlink()
    capsys.readouterr()
    assert main(["analyze", str(out), *DRAFT]) == 2
    assert cell in capsys.readouterr().err
    stamp = (out / run_dir / "final_model.pt").stat().st_mtime_ns
    assert main(argv) == 0
    assert marker.is_file()
    assert (out / run_dir / "final_model.pt").stat().st_mtime_ns == stamp
