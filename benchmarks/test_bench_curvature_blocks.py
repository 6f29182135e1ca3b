"""Per-layer curvature of resnet18 on CIFAR-10: one named result per parameter block, and the blocks' traces against
the full trace. A correctness check of ``per_layer=True``, not a timing.

torchvision ``resnet18(num_classes=10)`` (seeded initialisation) is trained ``LAMDA_BENCH_BLOCKS_TRAIN_STEPS``
(default 20) full-batch Adam steps (lr 1e-3, train mode) on B = ``LAMDA_BENCH_BLOCKS_B`` (default 256) CIFAR-10
training images — the seeded subset of ``lamda.data.load_dataset("cifar10", train_size=B, seed=0)`` from
``$LAMDA_DATA_ROOT`` (torchvision files or the ``CIFAR10-jpeg`` ImageFolder tree) — so that its spectrum is not
flat, then put in eval mode. On the same images, float32, the Hessian of the mean cross-entropy:

* ``hessian_eigs(k=K, per_layer=True)``, K = ``LAMDA_BENCH_BLOCKS_K`` (default 3), Lanczos tolerance
  ``LAMDA_BENCH_BLOCKS_EIG_TOL`` (default: the library's) and step cap ``LAMDA_BENCH_BLOCKS_EIG_MAX_ITER``;
* ``hessian_trace(method=M, per_layer=True)`` and the full ``hessian_trace(method=M)`` (another seed),
  M = ``LAMDA_BENCH_BLOCKS_METHOD``: ``hutchinson`` (the default: probes shared by the blocks,
  ``LAMDA_BENCH_BLOCKS_PROBES`` of them, default 192) or ``hutch++`` / ``xtrace`` (each block its own operator, to a
  relative standard error R = ``LAMDA_BENCH_BLOCKS_RTOL``, default 0.05: a block whose trace is near zero against
  its Frobenius norm needs thousands of products there); ``LAMDA_BENCH_BLOCKS_BLOCK`` rows per block product
  (default 32, the library's).

Reported for every block: its name (the module owning its parameters), size, top-K eigenvalues and whether they
converged, trace ± standard error and the products used; then the sum of the block traces ± its standard error
``sqrt(Σ SE_b²)``, the full trace ± SE, ``z = (sum − full) / sqrt(SE_sum² + SE_full²)`` and whether ``|z| ≤ 3``.
The test asserts that the blocks are the model's parameter-owning modules in order, each with its eigenvalues
and trace, and that ``|z| ≤ 3``.

``LAMDA_BENCH_BLOCKS_STAGES`` (default ``eigs,trace``) selects the stages: ``trace`` alone runs the traces and
their agreement without the eigenvalues (the slow stage on a CPU).

Device ``LAMDA_BENCH_DEVICE`` (default cuda when available, else cpu); kept linearisations
``LAMDA_BENCH_BLOCKS_BUDGET`` bytes (default "auto"). Results, rewritten after each stage:
``benchmarks/results/curvature-blocks-<host>-<device>[-<tag>].json`` (``LAMDA_BENCH_TAG``).

    python -m pytest benchmarks/test_bench_curvature_blocks.py -s -p no:cacheprovider
    LAMDA_BENCH_BLOCKS_B=8 LAMDA_BENCH_BLOCKS_TRAIN_STEPS=2 LAMDA_BENCH_BLOCKS_BLOCK=8 LAMDA_BENCH_TAG=smoke \\
    python -m pytest benchmarks/test_bench_curvature_blocks.py -s -p no:cacheprovider       # a small run
"""
from __future__ import annotations

import math
import os
import platform
import time

import pytest
import torch
import torch.nn.functional as F
from _bench import write_json

from lamda_ext.hessian import hessian_eigs, hessian_trace, layer_blocks

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = os.environ.get
B = int(ENV("LAMDA_BENCH_BLOCKS_B", "256"))
TRAIN_STEPS = int(ENV("LAMDA_BENCH_BLOCKS_TRAIN_STEPS", "20"))
K = int(ENV("LAMDA_BENCH_BLOCKS_K", "3"))
RTOL = float(ENV("LAMDA_BENCH_BLOCKS_RTOL", "0.05"))
METHOD = ENV("LAMDA_BENCH_BLOCKS_METHOD", "hutchinson")
PROBES = int(ENV("LAMDA_BENCH_BLOCKS_PROBES", "192"))
BLOCK = int(ENV("LAMDA_BENCH_BLOCKS_BLOCK", "32"))
EIG_TOL = float(ENV("LAMDA_BENCH_BLOCKS_EIG_TOL")) if ENV("LAMDA_BENCH_BLOCKS_EIG_TOL") else None
EIG_MAX_ITER = int(ENV("LAMDA_BENCH_BLOCKS_EIG_MAX_ITER")) if ENV("LAMDA_BENCH_BLOCKS_EIG_MAX_ITER") else None
BUDGET = ENV("LAMDA_BENCH_BLOCKS_BUDGET", "auto")
STAGES = {s.strip() for s in ENV("LAMDA_BENCH_BLOCKS_STAGES", "eigs,trace").split(",")}
DEVICE = ENV("LAMDA_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
Z_MAX = 3.0                     # the blocks' sum and the full trace agree within this many combined SEs


def _result_path() -> str:
    tag = ENV("LAMDA_BENCH_TAG")
    name = f"curvature-blocks-{platform.node()}-{torch.device(DEVICE).type}{'-' + tag if tag else ''}.json"
    return os.path.join(HERE, "results", name)


def _cifar_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """The B seeded CIFAR-10 training images ``[B, 3, 32, 32]`` (normalised float32) and labels ``[B]``."""
    from lamda.data import load_dataset
    try:
        data = load_dataset("cifar10", train_size=B, test_size=1, seed=0)
    except FileNotFoundError as exc:
        pytest.skip(f"CIFAR-10 not found: {exc}")
    return data.x_train.to(DEVICE), data.y_train.to(DEVICE)


def _trained_resnet18(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.nn.Module, list[float]]:
    """resnet18(num_classes=10), seed 0, after TRAIN_STEPS full-batch Adam steps on ``(x, y)``; eval mode. Also the
    training losses."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(DEVICE).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(TRAIN_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


def _agreement(traces: dict, full) -> dict:
    """The sum of the block traces ± sqrt(Σ SE²), the full trace ± SE, z and whether |z| ≤ Z_MAX."""
    total = sum(float(t) for t in traces.values())
    se_sum = math.sqrt(sum(t.std_error ** 2 for t in traces.values()))
    combined = math.sqrt(se_sum ** 2 + full.std_error ** 2)
    z = (total - float(full)) / combined if combined > 0 else math.inf
    return {"sum_of_blocks": total, "sum_std_error": se_sum, "full": float(full), "full_std_error": full.std_error,
            "full_matvecs": full.matvecs, "full_converged": bool(full.converged), "combined_std_error": combined,
            "z": z, "agree_within_3_se": bool(abs(z) <= Z_MAX)}


def _block_rows(sizes: dict, eigs: dict | None, traces: dict | None) -> list[dict]:
    rows = []
    for name, size in sizes.items():
        row = {"block": name, "size": size}
        if eigs is not None:
            e = eigs[name]
            row.update(eigenvalues=e.eigenvalues.tolist(), eig_converged=e.converged.tolist(),
                       lanczos_steps=int(e.steps))
        if traces is not None:
            t = traces[name]
            row.update(trace=float(t), std_error=t.std_error, matvecs=t.matvecs, sketch=t.sketch,
                       trace_converged=bool(t.converged))
        rows.append(row)
    return rows


def _print_report(rows: list[dict], agree: dict) -> None:
    print(f"\n{'block':<22} {'size':>9} {'top eigenvalues':<32} {'trace ± SE':<24} products")
    for r in rows:
        eig = "not computed" if "eigenvalues" not in r else (
            ", ".join(f"{v:.4g}" for v in r["eigenvalues"]) + ("" if all(r["eig_converged"]) else " (unconv.)"))
        print(f"{r['block']:<22} {r['size']:>9} {eig:<32} {r['trace']:.5g} ± {r['std_error']:.2g}".ljust(91)
              + f"{r['matvecs']}")
    print(f"sum of the {len(rows)} block traces: {agree['sum_of_blocks']:.6g} ± {agree['sum_std_error']:.3g}; "
          f"full trace: {agree['full']:.6g} ± {agree['full_std_error']:.3g}; z = {agree['z']:+.2f} "
          f"({'agree' if agree['agree_within_3_se'] else 'DISAGREE'} within {Z_MAX:g} combined SE)", flush=True)


def test_resnet18_per_layer_eigs_and_traces():
    x, y = _cifar_batch()
    model, losses = _trained_resnet18(x, y)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    sizes = {blk: sum(params[n].numel() for n in ns) for blk, ns in layer_blocks(names).items()}
    out = {"model": "torchvision resnet18(num_classes=10), seed 0, eval mode", "data": f"CIFAR-10 train, {B} images "
           "(lamda.data.load_dataset seed 0)", "train_steps": TRAIN_STEPS, "train_losses": losses, "k": K,
           "trace_method": METHOD, "probes": PROBES if METHOD == "hutchinson" else None,
           "rtol": RTOL if METHOD != "hutchinson" else None, "block": BLOCK, "eig_tol": EIG_TOL,
           "eig_max_iter": EIG_MAX_ITER, "device": DEVICE,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "seconds": {}}
    kw = dict(memory_budget=int(BUDGET) if BUDGET.isdigit() else BUDGET)
    eigs = None
    if "eigs" in STAGES:
        t = time.perf_counter()
        eigs = hessian_eigs(model, "cross_entropy", (x, y), k=K, tol=EIG_TOL, max_iter=EIG_MAX_ITER, per_layer=True,
                            generator=torch.Generator().manual_seed(1), **kw)
        out["seconds"]["eigs_per_layer"] = time.perf_counter() - t
        out["blocks"] = _block_rows(sizes, eigs, None)
        write_json(_result_path(), out)
        assert list(eigs) == list(sizes) and len(sizes) > 1
        assert all(eigs[b].eigenvalues.shape == (min(K, sizes[b]),) for b in sizes)
    if "trace" not in STAGES:
        return
    t = time.perf_counter()
    work = dict(method=METHOD, block=BLOCK, **({"matvecs": PROBES} if METHOD == "hutchinson" else {"rtol": RTOL}), **kw)
    traces = hessian_trace(model, "cross_entropy", (x, y), per_layer=True, generator=torch.Generator().manual_seed(2),
                           **work)
    out["seconds"]["trace_per_layer"] = time.perf_counter() - t
    t = time.perf_counter()
    full = hessian_trace(model, "cross_entropy", (x, y), generator=torch.Generator().manual_seed(3), **work)
    out["seconds"]["trace_full"] = time.perf_counter() - t
    out["blocks"], out["agreement"] = _block_rows(sizes, eigs, traces), _agreement(traces, full)
    write_json(_result_path(), out)
    _print_report(out["blocks"], out["agreement"])
    print(f"results: {_result_path()}")
    assert list(traces) == list(sizes) and len(sizes) > 1
    assert out["agreement"]["agree_within_3_se"], out["agreement"]
