"""What the directional-derivative benchmarks time, in one place."""
from __future__ import annotations

from typing import Callable

import torch

import lamda_ext


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
