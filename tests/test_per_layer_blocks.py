"""Per-layer eigenpairs and traces of a small CNN with batch norm (float64) against its dense Hessian, block by block:
one named result per parameter-owning module, each block's eigenvalues and Hutch++ trace those of its diagonal
block, and the blocks' traces summing to the full trace within their standard errors (the unit-size version of the
resnet18 check in ``benchmarks/test_bench_curvature_blocks.py``)."""
from __future__ import annotations

import math

import pytest
import torch

from lamda_ext.hessian import hessian_eigs, hessian_trace, layer_blocks

from tests._helpers import batch, dense_param_hessian, tiny_cnn, train_briefly


def _model_and_blocks():
    model = tiny_cnn()                    # eval mode: batch norm with its running statistics
    x, y = batch(model, B=24)
    train_briefly(model, x, y, steps=30)  # away from the initialisation, so that the spectrum is not flat
    H = dense_param_hessian(model, x, y)
    sizes = {name: sum(dict(model.named_parameters())[n].numel() for n in names)
             for name, names in layer_blocks([n for n, _ in model.named_parameters()]).items()}
    return model, x, y, H, sizes


def _diagonal_blocks(H: torch.Tensor, sizes: dict) -> dict:
    out, lo = {}, 0
    for name, s in sizes.items():
        out[name] = H[lo:lo + s, lo:lo + s]
        lo += s
    assert lo == H.shape[0]
    return out


def test_per_layer_eigenvalues_and_traces_of_a_cnn_against_its_dense_hessian():
    model, x, y, H, sizes = _model_and_blocks()
    assert list(sizes) == ["0", "1", "3", "4", "7"]                           # conv, bn, conv, bn, linear
    blocks = _diagonal_blocks(H, sizes)
    eigs = hessian_eigs(model, "cross_entropy", (x, y), k=3, per_layer=True, tol=1e-10,
                        generator=torch.Generator().manual_seed(1))
    assert list(eigs) == list(sizes)
    for name, r in eigs.items():
        want = torch.linalg.eigvalsh(blocks[name]).flip(0)[:3]                   # LA: descending
        assert r.eigenvectors.shape == (3, sizes[name]) and bool(r.converged.all())
        torch.testing.assert_close(r.eigenvalues, want, rtol=1e-8, atol=1e-10 * float(H.abs().max()))

    traces = hessian_trace(model, "cross_entropy", (x, y), method="hutch++", rtol=0.05, per_layer=True,
                           block=8, generator=torch.Generator().manual_seed(2))
    full = hessian_trace(model, "cross_entropy", (x, y), method="hutch++", rtol=0.05, block=8,
                         generator=torch.Generator().manual_seed(3))
    assert list(traces) == list(sizes)
    exact = {name: float(b.trace()) for name, b in blocks.items()}
    assert math.isclose(sum(exact.values()), float(H.trace()), rel_tol=1e-12)
    for name, t in traces.items():             # each block: within 4 of its standard errors of the exact trace
        assert t.converged and abs(float(t) - exact[name]) <= 4 * t.std_error + 1e-9 * abs(exact[name]), name
    assert full.converged and abs(float(full) - float(H.trace())) <= 4 * full.std_error
    # the blocks' traces sum to the full trace within 3 combined standard errors
    total = sum(float(t) for t in traces.values())
    se = math.sqrt(sum(t.std_error ** 2 for t in traces.values()) + full.std_error ** 2)
    assert se > 0 and abs(total - float(full)) <= 3 * se


def test_per_layer_hutchinson_shares_its_probes_among_the_blocks():
    """Hutchinson per layer: one product per probe serves every block; each block within 4 of its standard errors of
    its exact trace, the blocks summing to the whole estimate of the same probes, and the products counted once."""
    model, x, y, H, sizes = _model_and_blocks()
    exact = {name: float(b.trace()) for name, b in _diagonal_blocks(H, sizes).items()}
    traces = hessian_trace(model, "cross_entropy", (x, y), probes=400, per_layer=True, block=50,
                           generator=torch.Generator().manual_seed(4))
    assert list(traces) == list(sizes)
    for name, t in traces.items():
        assert t.method == "hutchinson" and t.matvecs == 400 and t.samples.shape == (400,)
        assert abs(float(t) - exact[name]) <= 4 * t.std_error, (name, float(t), exact[name], t.std_error)
    # the per-probe block samples sum to the whole space's zᵀAz of the same probes (a plain Rademacher draw)
    z = torch.empty(400, H.shape[0], dtype=H.dtype)
    g = torch.Generator().manual_seed(4)
    from lamda_ext.hessian.lanczos import rademacher
    for i in range(0, 400, 50):
        z[i:i + 50] = rademacher((50, H.shape[0]), g, H.dtype, torch.device("cpu"))
    whole = ((z @ H) * z).sum(dim=1)
    torch.testing.assert_close(sum(t.samples for t in traces.values()), whole, rtol=1e-9, atol=1e-9)


def test_per_layer_hutchinson_with_rtol_names_the_blocks_it_missed():
    model, x, y, H, sizes = _model_and_blocks()
    with pytest.warns(RuntimeWarning, match=r"blocks above rtol=1e-06 after 16 products"):
        traces = hessian_trace(model, "cross_entropy", (x, y), matvecs=16, rtol=1e-6, per_layer=True, block=8,
                               generator=torch.Generator().manual_seed(5))
    assert not any(t.converged for t in traces.values())
