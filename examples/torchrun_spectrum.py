"""λ and the Hessian spectrum across processes with ``torchrun`` (gloo on the CPU; NCCL on GPUs).

    torchrun --standalone --nproc_per_node 2 examples/torchrun_spectrum.py
    python examples/torchrun_spectrum.py                       # one process: the same numbers, to rounding

Each rank holds the same model (rank 0's weights, broadcast) and the same data set:

- λ: rank r measures the points r, r + world, ...; rank 0 gathers the derivatives and fits λ;
- Hessian: ``HessianOperator`` sees that ``torch.distributed`` is initialised, evaluates this rank's slice of
  the batch and all-reduces the products, so ``hessian_eigs`` and ``hessian_trace`` run data-parallel
  unchanged; every rank gets the same result and rank 0 prints it.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

import lamda_ext
from lamda import distributed
from lamda.data import load_dataset
from lamda.models import MnistCNN


def load(args):
    try:
        return load_dataset(args.dataset, root=args.data_root, train_size=args.images, test_size=args.points,
                            seed=0)
    except FileNotFoundError:
        return load_dataset("digits", train_size=args.images, test_size=args.points, seed=0)


def gather_points(d: torch.Tensor, rank: int, world: int, n: int) -> torch.Tensor:
    """Rank 0: the ``[n, K, N]`` derivatives of every point in the original order (others: their own)."""
    if world == 1:
        return d
    parts = [None] * world
    dist.all_gather_object(parts, d)
    out = torch.empty((n,) + tuple(d.shape[1:]), dtype=d.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--images", type=int, default=256, help="training images the Hessian is taken over")
    p.add_argument("--points", type=int, default=32, help="test points λ is measured on")
    p.add_argument("--directions", type=int, default=15)
    p.add_argument("--order", type=int, default=6)
    p.add_argument("--k", type=int, default=3, help="top Hessian eigenvalues")
    p.add_argument("--tol", type=float, default=1e-3, help="relative residual tolerance of the eigenpairs")
    p.add_argument("--max-iter", type=int, default=None, help="Lanczos steps at most (default: hessian_eigs')")
    p.add_argument("--probes", type=int, default=32, help="Hutchinson probes for the trace")
    args = p.parse_args()

    distributed.init_from_env("cpu")                    # gloo when started by torchrun; nothing otherwise
    rank, world = distributed.rank_world()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    torch.manual_seed(0)
    data = load(args)
    model = MnistCNN().eval()
    if world > 1:
        for t in model.state_dict().values():           # every rank holds rank 0's weights
            dist.broadcast(t, src=0)

    t0 = time.perf_counter()
    u = lamda_ext.random_directions(data.x_test, args.directions, torch.Generator().manual_seed(0), shared=True)
    mine = slice(rank, None, world)
    with torch.no_grad():
        d = lamda_ext.directional_derivs(model, data.x_test[mine], data.y_test[mine], order=args.order, directions=u)
    d = gather_points(d, rank, world, len(data.y_test))
    if rank == 0:
        lam = lamda_ext.curvature_rate(d, pool="points")
        print(f"world size {world}: λ over {d.shape[0]} points, {args.directions} shared directions: "
              f"mean {float(lam.mean()):.5f} (first three {', '.join(f'{v:.5f}' for v in lam[:3].tolist())}) "
              f"in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    op = lamda_ext.HessianOperator(model, "cross_entropy", (data.x_train, data.y_train))
    res = lamda_ext.hessian_eigs(op, k=args.k, tol=args.tol, max_iter=args.max_iter,
                                 generator=torch.Generator().manual_seed(0))
    tr = lamda_ext.hessian_trace(op, probes=args.probes, generator=torch.Generator().manual_seed(0))
    if rank == 0:
        vals = ", ".join(f"{v:.4f}" for v in res.eigenvalues.tolist())
        print(f"world size {world}: Hessian over {len(data.y_train)} images ({op.local_samples} on rank 0), "
              f"top-{args.k} eigenvalues [{vals}] (all converged: {bool(res.converged.all())}), "
              f"trace {float(tr):.2f} ± {tr.std_error:.2f} in {time.perf_counter() - t0:.1f} s")
    distributed.shutdown()                              # a last barrier, then leave the group


if __name__ == "__main__":
    main()
