"""λ along training in your own loop: fixed test points, fixed shared directions, one measurement every few steps.

    python examples/lambda_during_training.py --out figures/

Any ``nn.Module`` works; here a small CNN written in the script. The directions are drawn once from a seeded
generator and reused at every measurement, so "direction k" is the same vector all along training and its λ
can be followed. Prints a table (step, train loss, test accuracy, λ mean ± std over directions); with
``--out`` it writes ``lambda_during_training.png``.
"""
from __future__ import annotations

import argparse
import pathlib

import torch
from torch import nn

import lamda_ext
from lamda.data import load_dataset


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10))


def load(args):
    try:
        return load_dataset(args.dataset, root=args.data_root, train_size=args.train, test_size=args.points,
                            seed=args.seed)
    except FileNotFoundError:
        print(f"{args.dataset} not found; using scikit-learn's digits")
        return load_dataset("digits", train_size=args.train, test_size=args.points, seed=args.seed)


def batches(n: int, size: int, generator: torch.Generator):
    """Shuffled index batches, epoch after epoch, without end."""
    while True:
        yield from torch.randperm(n, generator=generator).split(size)


def measure(model, x, y, u, order):
    """λ per shared direction ``[K]`` and the test accuracy of the model in eval mode."""
    model.eval()
    with torch.no_grad():
        d = lamda_ext.directional_derivs(model, x, y, order=order, directions=u)    # [B, K, N]
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    return lamda_ext.curvature_rate(d, pool="points"), acc


def plot(rows, path: pathlib.Path, n_points: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    lam = torch.stack([r["lam"] for r in rows])                       # [M, K]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    a1.plot(steps, lam.numpy(), color="0.6", lw=0.6)
    a1.plot(steps, lam.mean(1).numpy(), color="C0", lw=2, label="mean over directions")
    a1.fill_between(steps, (lam.mean(1) - lam.std(1)).numpy(), (lam.mean(1) + lam.std(1)).numpy(),
                    color="C0", alpha=0.2, label="± 1 std")
    a1.plot([], [], color="0.6", lw=0.6, label="one direction")
    a1.set_ylabel("λ (slope of ln|d_n| per order)")
    a1.legend(loc="best", fontsize=8)
    a1.grid(alpha=0.3)
    a2.plot(steps, [100 * r["acc"] for r in rows], "o-", color="C1", ms=3)
    a2.set_xlabel("training step (batches of 64)")
    a2.set_ylabel(f"accuracy on the {n_points}\ntest points (%)")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--steps", type=int, default=200, help="training steps (batches of 64)")
    p.add_argument("--every", type=int, default=10, help="measure λ every this many steps")
    p.add_argument("--points", type=int, default=32, help="fixed test points")
    p.add_argument("--directions", type=int, default=15)
    p.add_argument("--order", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    data = load(args)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(args.seed)
    u = lamda_ext.random_directions(data.x_test, args.directions, g, shared=True)   # drawn once, reused

    rows, stream = [], batches(len(data.y_train), 64, torch.Generator().manual_seed(args.seed + 1))
    last_loss = "—"                                     # no training loss before the first step
    print(f"{'step':>5} {'train loss':>10} {'test acc':>8}  λ mean ± std")
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            lam, acc = measure(model, data.x_test, data.y_test, u, args.order)
            rows.append({"step": step, "lam": lam, "acc": acc})
            spread = float(lam.std()) if len(lam) > 1 else 0.0
            print(f"{step:5d} {last_loss:>10} {100 * acc:7.1f}%  {float(lam.mean()):.3f} ± {spread:.3f}")
        if step == args.steps:
            break
        idx = next(stream)
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        last_loss = f"{loss.item():.4f}"
    if args.out is not None:
        plot(rows, args.out / "lambda_during_training.png", len(data.y_test))
        print(f"wrote {args.out / 'lambda_during_training.png'}")


if __name__ == "__main__":
    main()
