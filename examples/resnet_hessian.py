"""Top-k Hessian eigenpairs, trace and spectral density of a torchvision ResNet (ResNet-18 by default).

    python examples/resnet_hessian.py --out figures/

CIFAR-10 from ``--data-root`` (then ``$LAMDA_DATA_ROOT``, ``./data``; torchvision's binary form or the
ImageFolder tree ``CIFAR10-jpeg/``), else scikit-learn's digits copied to three channels. The ResNet is trained
briefly (``--epochs``), then one :class:`lamda_ext.HessianOperator` over ``--images`` training images serves
all three tools, so each batch is linearised once:

- ``hessian_eigs``: the k largest eigenvalues by Lanczos, each with its residual ``‖Hy − θy‖`` and a converged
  flag (relative to ``--tol``);
- ``hessian_trace``: a Hutchinson estimate with its standard error;
- ``hessian_density``: the spectral density by stochastic Lanczos quadrature (``hessian_density.png``).
"""
from __future__ import annotations

import argparse
import pathlib
import time

import torch
import torchvision

import lamda_ext
from lamda.data import load_dataset


def load(args):
    try:
        return load_dataset("cifar10", root=args.data_root, train_size=args.images, test_size=1, seed=args.seed)
    except FileNotFoundError:
        print("CIFAR-10 not found; using scikit-learn's digits, copied to 3 channels")
        data = load_dataset("digits", train_size=args.images, test_size=1, seed=args.seed)
        data.x_train = data.x_train.expand(-1, 3, -1, -1).contiguous()
        return data


def train(model, x, y, epochs: int, seed: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def plot(grid, density, eigs, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.semilogy(grid.numpy(), density.clamp_min(1e-12).numpy(), color="C0", label="SLQ density (Gaussian-broadened)")
    for i, v in enumerate(eigs.tolist()):
        ax.axvline(v, color="C3", lw=0.8, ls="--", label="top-k eigenvalues (Lanczos)" if i == 0 else None)
    ax.set_ylim(1e-8, None)
    ax.set_xlabel("eigenvalue of the Hessian of the mean cross-entropy (nats per unit parameter²)")
    ax.set_ylabel("density (per unit eigenvalue, log scale)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=None)
    p.add_argument("--blocks", type=int, default=2, help="BasicBlocks per stage (2: ResNet-18)")
    p.add_argument("--images", type=int, default=128, help="training images (train on them, Hessian over them)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--k", type=int, default=5, help="top eigenpairs")
    p.add_argument("--tol", type=float, default=1e-3, help="relative residual tolerance of the eigenpairs")
    p.add_argument("--max-iter", type=int, default=40, help="Lanczos steps at most (each keeps one vector [P])")
    p.add_argument("--probes", type=int, default=30, help="Hutchinson probes for the trace")
    p.add_argument("--density-iters", type=int, default=40, help="Lanczos steps per density probe")
    p.add_argument("--density-probes", type=int, default=1)
    p.add_argument("--memory-budget", type=int, default=None,
                   help="bytes of linearised batches the operator keeps between products (0: recompute each time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    data = load(args)
    # resnet18 is torchvision's ResNet with 2 BasicBlocks per stage; --blocks 1 builds the same class with 1
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [args.blocks] * 4, num_classes=10)
    train(model, data.x_train, data.y_train, args.epochs, args.seed)
    model.eval()                                      # a deterministic Hessian: batch norm uses running statistics

    op = lamda_ext.HessianOperator(model, "cross_entropy", (data.x_train, data.y_train),
                                   memory_budget=args.memory_budget)
    name = "ResNet-18" if args.blocks == 2 else f"ResNet with {args.blocks} BasicBlock(s) per stage"
    print(f"{name} on {len(data.y_train)} {data.name} images, P = {op.size:,} parameters")

    t0 = time.perf_counter()
    res = lamda_ext.hessian_eigs(op, k=args.k, tol=args.tol, max_iter=args.max_iter,
                                 generator=torch.Generator().manual_seed(args.seed))
    print(f"top-{args.k} eigenvalues ({res.steps} Lanczos steps, {time.perf_counter() - t0:.1f} s):")
    for i, (v, r, ok) in enumerate(zip(res.eigenvalues.tolist(), res.residuals.tolist(), res.converged.tolist())):
        print(f"  θ_{i + 1} = {v:10.4f}   residual ‖Hy − θy‖ = {r:.2e}   {'converged' if ok else 'NOT converged'}")

    t0 = time.perf_counter()
    tr = lamda_ext.hessian_trace(op, probes=args.probes, generator=torch.Generator().manual_seed(args.seed))
    print(f"trace (Hutchinson, {tr.probes} probes, {time.perf_counter() - t0:.1f} s): "
          f"{float(tr):.2f} ± {tr.std_error:.2f} (standard error)")

    t0 = time.perf_counter()
    grid, density = lamda_ext.hessian_density(op, iters=args.density_iters, probes=args.density_probes,
                                              generator=torch.Generator().manual_seed(args.seed))
    mean = float(torch.trapezoid(grid * density, grid))
    print(f"density ({args.density_probes} probes × {args.density_iters} steps, {time.perf_counter() - t0:.1f} s): "
          f"spectrum in [{float(grid[0]):.3f}, {float(grid[-1]):.3f}], "
          f"∫ t φ(t) dt · P = {mean * op.size:.2f} (a trace estimate from {args.density_probes} probe(s))")
    print(f"Hessian-vector products: {op.n_products}, quadratic forms by Taylor passes: {op.n_quadratic_forms}")
    if args.out is not None:
        plot(grid, density, res.eigenvalues, args.out / "hessian_density.png")
        print(f"wrote {args.out / 'hessian_density.png'}")


if __name__ == "__main__":
    main()
