"""Max-pool ties on real MNIST: the conv/linear rules compute the primal exactly as the model's
own op (bias included), so the pooled argmax — and hence every derivative — is that of autograd."""
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests._helpers import rel_err
from lamda.models import MnistCNN
from lamda_ext import directional_derivs
from lamda_ext.taylor.impl import Composite
from lamda_ext.taylor.op_rules.selection import max_pool
from lamda_ext.taylor.series import RunContext, TaylorSeries

ROOT = Path(os.environ.get("LAMDA_DATA_ROOT", Path(__file__).resolve().parents[1] / ".." / ".." / "shared" / "data"))
CANDIDATES = [ROOT, Path("/work/shared/data")]


def _mnist(n):
    torchvision = pytest.importorskip("torchvision")
    for root in CANDIDATES:
        if (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
            ds = torchvision.datasets.MNIST(str(root), train=False, download=False)
            x = ((ds.data[:n].double() / 255.0 - 0.1307) / 0.3081).unsqueeze(1)
            return x, ds.targets[:n].clone()
    pytest.skip("MNIST not found (set LAMDA_DATA_ROOT)")


def test_conv_primal_and_pool_argmax_equal_the_models_own_ops():
    x, _ = _mnist(4)
    torch.manual_seed(0)
    m = MnistCNN().double().eval()
    ctx = RunContext(2, 2, Composite(), m)
    u = torch.randn((1, 2) + tuple(x.shape), dtype=torch.float64)
    with ctx.active():
        h1 = F.relu(m.conv1(TaylorSeries(x, u)))
        h2 = F.relu(m.conv2(h1))
        pooled, idx = max_pool(h2, 2, return_indices=True)
    want1 = F.relu(m.conv1(x))
    want2 = F.relu(m.conv2(want1))
    _, want_idx = F.max_pool2d(want2, 2, return_indices=True)
    assert torch.equal(h1.c0, want1) and torch.equal(h2.c0, want2)     # bitwise: same rounding as the model
    assert torch.equal(idx, want_idx)


@pytest.mark.parametrize("backend", ["taylor", "fused"])
@pytest.mark.parametrize("train", [False, True])
def test_mnist_cnn_on_real_images_matches_autograd(backend, train):
    x, y = _mnist(4)
    torch.manual_seed(0)
    m = MnistCNN().double().train(train)
    u = torch.randn((2,) + tuple(x.shape), dtype=torch.float64)
    torch.manual_seed(3)
    ref = directional_derivs(m, x, y, order=3, directions=u, backend="autograd")
    torch.manual_seed(3)
    got = directional_derivs(m, x, y, order=3, directions=u, backend=backend)
    assert rel_err(got, ref) < 1e-10
