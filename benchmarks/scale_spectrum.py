"""The Hessian tools at scale, in one process (peak memory is a per-process figure): torchvision's resnet18 on
CIFAR-10 training images, ``hessian_eigs(k=10)`` and a 100-probe Hutchinson trace through one
``HessianOperator`` within a memory budget (each product's working memory and the linearisations it keeps).

    LAMDA_DATA_ROOT=../shared/data python benchmarks/scale_spectrum.py --images 2048 --batch 256 --budget-gib 2

Prints one JSON line: the RSS before the operator (model, images), the peak RSS of the process (and after the
eigenvalues), the budget, the products (quadratic forms for the trace) and time of each solve, the top-10
eigenvalues with their convergence, and the trace with its standard error.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torchvision
from _bench import peak_rss_bytes

from lamda.data import load_dataset
from lamda_ext.hessian import HessianOperator, hessian_eigs, hessian_trace


def rss_gib() -> float:
    """The current resident set size (``/proc/self/statm``), GiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256, help="images per batch of the operator")
    p.add_argument("--budget-gib", type=float, default=2.0,
                   help="memory budget of the operator (a product's working memory and the kept linearisations)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--probes", type=int, default=100)
    p.add_argument("--data-root", default=None)
    args = p.parse_args()

    torch.manual_seed(0)
    data = load_dataset("cifar10", root=args.data_root, train_size=args.images, test_size=1, seed=0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    batches = [(data.x_train[i:i + args.batch], data.y_train[i:i + args.batch])
               for i in range(0, args.images, args.batch)]
    before = rss_gib()
    budget = int(args.budget_gib * 2**30)
    op = HessianOperator(model, "cross_entropy", batches, memory_budget=budget)
    t0 = time.perf_counter()
    eig = hessian_eigs(op, k=args.k, generator=torch.Generator().manual_seed(0))
    t_eig, n_eig = time.perf_counter() - t0, op.n_products
    peak_eig = peak_rss_bytes() / 2**30
    print(f"eigs: {t_eig:.0f} s, {n_eig} products, peak RSS {peak_eig:.2f} GiB; {op.plan}", flush=True)
    t0 = time.perf_counter()
    tr = hessian_trace(op, probes=args.probes, generator=torch.Generator().manual_seed(1))
    t_tr = time.perf_counter() - t0
    peak = peak_rss_bytes() / 2**30
    print(json.dumps({
        "model": "resnet18", "images": args.images, "batch": args.batch, "P": op.size,
        "threads": torch.get_num_threads(), "budget_gib": args.budget_gib, "rss_before_gib": round(before, 3),
        "peak_rss_gib": round(peak, 3), "peak_above_before_gib": round(peak - before, 3),
        "peak_rss_after_eigs_gib": round(peak_eig, 3), "eigs_s": round(t_eig, 1), "eigs_products": n_eig,
        "eigenvalues": [round(float(v), 6) for v in eig.eigenvalues], "converged": eig.converged.tolist(),
        "trace_s": round(t_tr, 1), "trace_products": op.n_products - n_eig,
        "trace_quadratic_forms": op.n_quadratic_forms, "trace": float(tr),
        "trace_std_error": tr.std_error, "plan": str(op.plan)}))


if __name__ == "__main__":
    main()
