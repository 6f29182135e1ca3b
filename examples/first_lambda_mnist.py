"""First λ on MNIST: train the MNIST CNN briefly, then measure λ on test points along shared input directions.

    python examples/first_lambda_mnist.py                      # MNIST from --data-root / $LAMDA_DATA_ROOT
    python examples/first_lambda_mnist.py --dataset digits     # offline: scikit-learn's digits, no files needed
    python examples/first_lambda_mnist.py --out figures/       # also write lambda_fit.png

λ is the least-squares slope of log|d_n| against the order n, where d_n is the n-th derivative of a test
point's loss along a unit input direction. It prints λ per direction (pooled over points), the mean and
spread, and the table of mean log|d_n|; with ``--out`` it draws the fit.
"""
from __future__ import annotations

import argparse
import pathlib
import time

import torch

import lamda_ext
from lamda.data import load_dataset
from lamda.models import MnistCNN


def load(args):
    """MNIST from ``--data-root`` (then ``$LAMDA_DATA_ROOT``, then ``./data``); the offline digits set if absent."""
    if args.dataset in ("auto", "mnist"):
        try:
            return load_dataset("mnist", root=args.data_root, train_size=args.train, test_size=args.points,
                                seed=args.seed)
        except FileNotFoundError as err:
            if args.dataset == "mnist":
                raise SystemExit(str(err))
            print("MNIST not found; using scikit-learn's digits (upscaled to 28×28)")
    return load_dataset("digits", train_size=args.train, test_size=args.points, seed=args.seed)


def train(model, data, epochs: int, seed: int) -> None:
    """A plain Adam loop (batch 128): enough for a first λ, far from a converged model."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train), generator=g).split(128):
            loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def mean_log_abs(d: torch.Tensor, dims) -> torch.Tensor:
    """Mean of ln|d_n| over ``dims``, exact zeros left out (as ``curvature_rate`` leaves them out of the fit)."""
    return torch.where(d != 0, d.abs().log(), torch.nan).nanmean(dim=dims)


def plot(d: torch.Tensor, lam: torch.Tensor, path: pathlib.Path) -> None:
    """Mean over points of log|d_n| against n, one line per direction, with the fitted slopes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = mean_log_abs(d, dims=(0,))                      # [K, N]
    n = torch.arange(1, d.shape[-1] + 1, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in range(logs.shape[0]):
        y = logs[k].double()
        intercept = float(y.mean() - lam[k] * n.mean())
        ax.plot(n, y, "o", color=f"C{k % 10}", ms=4, alpha=0.8)
        ax.plot(n, intercept + lam[k] * n, "-", color=f"C{k % 10}", lw=1, alpha=0.6)
    ax.set_xlabel("order n")
    ax.set_ylabel("mean over points of ln |d_n|\n(d_n in loss units per (input length)^n)")
    ax.set_title(f"one line per direction; λ = slope, mean {float(lam.mean()):.3f} over K = {logs.shape[0]}",
                 fontsize=10)
    ax.set_xticks(n.tolist())
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["auto", "mnist", "digits"], default="auto",
                   help="auto: MNIST when found under the data root, else digits")
    p.add_argument("--data-root", default=None, help="folder holding MNIST/raw (default $LAMDA_DATA_ROOT, ./data)")
    p.add_argument("--train", type=int, default=2000, help="training images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--points", type=int, default=50, help="test points λ is measured on")
    p.add_argument("--directions", type=int, default=15, help="K shared input directions")
    p.add_argument("--order", type=int, default=6, help="highest derivative order N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None, help="folder for lambda_fit.png")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    data = load(args)
    model = MnistCNN()
    t0 = time.perf_counter()
    train(model, data, args.epochs, args.seed)
    print(f"data: {data.name}, {len(data.y_train)} train / {len(data.y_test)} test images; "
          f"trained {args.epochs} epoch(s) in {time.perf_counter() - t0:.1f} s")

    # The five lines of a first λ: directions shared by every point, regenerable from the seed.
    g = torch.Generator().manual_seed(args.seed)
    u = lamda_ext.random_directions(data.x_test, args.directions, g, shared=True)       # [K, 1, 28, 28]
    t0 = time.perf_counter()
    with torch.no_grad():                                 # a measurement: no graph back to the weights
        d = lamda_ext.directional_derivs(model, data.x_test, data.y_test, order=args.order, directions=u)  # [B,K,N]
    lam = lamda_ext.curvature_rate(d, pool="points")                                   # [K]
    print(f"d_n: shape {list(d.shape)} (points, directions, orders) in {time.perf_counter() - t0:.2f} s")

    print("λ per direction:", " ".join(f"{v:.3f}" for v in lam.tolist()))
    print(f"λ mean {float(lam.mean()):.3f}, std over directions {float(lam.std()) if len(lam) > 1 else 0.0:.3f}")
    logs = mean_log_abs(d, dims=(0, 1))                    # [N]
    print("mean ln|d_n| by order:", " ".join(f"n={i + 1}: {v:.2f}" for i, v in enumerate(logs.tolist())))
    if args.out is not None:
        plot(d, lam, args.out / "lambda_fit.png")
        print(f"wrote {args.out / 'lambda_fit.png'}")


if __name__ == "__main__":
    main()
