"""Transformers in Taylor mode: taylor and fused against the nested-autograd reference on the same inputs.

Run:  pytest benchmarks/test_bench_transformers.py -s -p no:cacheprovider
Cases: torchvision VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
hidden_dim=32, mlp_dim=64) on B=16 CIFAR-sized images, and nn.TransformerEncoder (2 layers, d=32, 4 heads,
ff 64, gelu, pre-LN) on B=16 sequences of 16 tokens; order 6, K = 15, float32, eval mode. ``floor`` = K+1 plain
forward passes. Set LAMDA_BENCH_TINY=1 for a smoke run (B=2, K=2, order 2).
"""
import os

import pytest
import torch
import torchvision
from torch import nn

import lamda_ext
from _bench import derivs_fn
from lamda_ext import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TINY = os.environ.get("LAMDA_BENCH_TINY") == "1"
B, K, N = (2, 2, 2) if TINY else (16, 15, 6)


class _EncoderClassifier(nn.Module):
    def __init__(self, dim=32, heads=4, ff=64, classes=10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.1, activation="gelu", norm_first=True,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def _vit():
    m = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                             mlp_dim=64, num_classes=10)
    nn.init.normal_(m.heads.head.weight, std=0.1)   # torchvision zero-initialises it: constant logits otherwise
    return m


CASES = {
    f"vit_B{B}_K{K}_N{N}": (_vit, (3, 32, 32)),
    f"encoder_B{B}_K{K}_N{N}": (_EncoderClassifier, (16, 32)),
}
BACKENDS = ["floor", "autograd", "taylor", "fused"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_transformer_directional_derivs(record, case, backend):
    make, shape = CASES[case]
    if backend == "fused" and not ops.available():
        pytest.skip("extension lamda_ext._C not built")
    torch.manual_seed(0)
    model = make().to(DEVICE).eval()
    x = torch.randn((B,) + shape, device=DEVICE)
    y = torch.randint(0, 10, (B,), device=DEVICE)
    u = lamda_ext.random_directions(x, K, torch.Generator(device=DEVICE).manual_seed(0))
    fn = derivs_fn(model, x, y, u, N, backend)
    record(case, backend, fn, rounds=1 if TINY else (3 if backend == "autograd" else 10), warmup=0 if TINY else 1)
