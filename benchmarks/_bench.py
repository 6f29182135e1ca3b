"""What the benchmarks share: the data, the result files, and what the directional-derivative and spectrum
benchmarks time, in one place."""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np
import torch

import lamda_ext


def mnist_batch(B: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first B MNIST training images (normalised, ``[B, 1, 28, 28]`` float32), their labels and the source's
    name, from ``$LAMDA_DATA_ROOT`` (default ``../shared/data``); Gaussian noise and random labels when the data
    set is not found."""
    root = os.environ.get("LAMDA_DATA_ROOT", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    try:
        from torchvision.datasets import MNIST
        ds = MNIST(root, train=True, download=False)
        x = (ds.data[:B].float() / 255.0 - 0.1307) / 0.3081
        return x.unsqueeze(1), ds.targets[:B].clone(), "MNIST train[:B]"
    except (RuntimeError, OSError):
        g = torch.Generator().manual_seed(1)
        return torch.randn(B, 1, 28, 28, generator=g), torch.randint(0, 10, (B,), generator=g), "Gaussian noise"


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started, in bytes.

    ``VmHWM`` of ``/proc/self/status`` on Linux: it counts only the pages of this program. ``ru_maxrss`` would also
    hold the resident size of the parent at the fork of a child started by fork and exec (multiprocessing's
    ``spawn``, ``subprocess``), which hides a child's peak below that of a large parent. Elsewhere ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # KiB on Linux


def time_median(benchmark, fn, rounds: int, warmup: int):
    """Median seconds of ``rounds`` runs of ``fn`` (after ``warmup`` untimed ones) and the last run's result."""
    out = {}

    def run():
        out["v"] = fn()

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=warmup)
    return benchmark.stats.stats.median, out["v"]


def top_eig_error(vals, ref: torch.Tensor) -> float:
    """Largest relative error of the top eigenvalues ``vals`` (any order) against ``ref`` (descending, float64).

    ``inf`` when fewer values than the reference were returned.
    """
    got = torch.as_tensor(np.sort(np.asarray(vals, dtype=np.float64))[::-1].copy())
    if got.numel() < ref.numel():
        return float("inf")
    return float(((got[: ref.numel()] - ref).abs() / ref.abs()).max())


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a run cut short keeps the previous complete file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def derivs_fn(model, x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, order: int, backend: str) -> Callable[[], None]:
    """The timed call: ``directional_derivs`` with ``backend``, or for ``backend="floor"`` one plain forward of the
    primal batch and the K·B tangent batch together (x ``[B, *S]``, u ``[K, B, *S]``); synchronised on CUDA."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    if backend == "floor":
        xs = torch.cat([x, u.reshape((-1,) + tuple(x.shape[1:]))])

        def fn():
            with torch.no_grad():
                model(xs)
            sync()
    else:
        def fn():
            with torch.no_grad():
                lamda_ext.directional_derivs(model, x, y, order=order, directions=u, backend=backend)
            sync()
    return fn


# ------------------------------------------------------------------ top-k Hessian eigenvalues, each method as a user calls it
def eigs_lamda_ext(model, x, y, k: int, tol: float):
    """lamda_ext Lanczos (LA) → its EigResult."""
    from lamda_ext.hessian import hessian_eigs
    return hessian_eigs(model, None, (x, y), k=k, which="LA", tol=tol, generator=torch.Generator().manual_seed(4))


def eigs_pyhessian(model, x, y, k: int, tol: float, max_iter: int = 100) -> list[float]:
    """PyHessian power iteration with deflation (on the CPU: its default is cuda=True)."""
    import pyhessian
    h = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    return h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)[0]


def eigs_hessian_eigenthings(model, x, y, k: int, steps: int) -> list[float]:
    """hessian-eigenthings Lanczos (LA, reorthogonalised, ``steps`` steps)."""
    import hessian_eigenthings as he
    import torch.nn.functional as F
    op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
    return he.lanczos(op, k=k, max_iter=steps, which="LA", seed=0, reorthogonalize=True).eigenvalues.tolist()


def eigs_curvlinops_eigsh(model, x, y, k: int, tol: float, v0) -> list[float]:
    """curvlinops' Hessian operator with scipy ``eigsh`` (LA), start vector ``v0`` ``[P]`` (numpy)."""
    import curvlinops
    from scipy.sparse.linalg import eigsh
    H = curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)],
                                         check_deterministic=False)
    return eigsh(H.to_scipy(), k=k, which="LA", tol=tol, v0=v0)[0].tolist()
