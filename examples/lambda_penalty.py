"""A λ-penalised training step, and what it does: two copies of one model, trained plain and with the penalty.

    python examples/lambda_penalty.py --scale 200

The penalised step asks ``directional_derivs`` for the per-sample loss too (``return_loss=True``): the loss and
the derivatives come from one forward pass, and one backward pass goes through both::

    d, loss = lamda_ext.directional_derivs(model, x, y, order=3, directions=2, generator=g, return_loss=True)
    (loss.mean() + scale * d.abs().mean()).backward()

Prints, for both copies: the mean time per step, the final training loss, the penalty term ``mean |d_n|``,
test accuracy, and λ on test points along shared directions (the same for both copies).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

import lamda_ext
from lamda.data import load_dataset
from lamda.models import MnistCNN


def load(args):
    try:
        return load_dataset(args.dataset, root=args.data_root, train_size=args.train, test_size=args.points,
                            seed=args.seed)
    except FileNotFoundError:
        print(f"{args.dataset} not found; using scikit-learn's digits")
        return load_dataset("digits", train_size=args.train, test_size=args.points, seed=args.seed)


def plain_step(model, opt, x, y) -> float:
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def penalised_step(model, opt, x, y, scale: float, order: int, directions: int, g: torch.Generator):
    """One step on ``loss + scale · mean |d_n|`` (n = 1..order, ``directions`` random input directions)."""
    d, loss = lamda_ext.directional_derivs(model, x, y, order=order, directions=directions, generator=g,
                                           return_loss=True)                      # d [B, K, N], loss [B]
    penalty = d.abs().mean()
    opt.zero_grad()
    (loss.mean() + scale * penalty).backward()
    opt.step()
    return loss.mean().item(), penalty.item()


def evaluate(model, x, y, u, order: int):
    """Test accuracy, λ pooled over points and directions (a scalar) and the penalty term at the test points."""
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
        d = lamda_ext.directional_derivs(model, x, y, order=order, directions=u)
    model.train()
    return acc, float(lamda_ext.curvature_rate(d, pool="all")), float(d[..., :3].abs().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--steps", type=int, default=60, help="training steps (batches of --batch)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--scale", type=float, default=200.0, help="weight of the λ penalty")
    p.add_argument("--order", type=int, default=3, help="orders penalised: 1..order")
    p.add_argument("--directions", type=int, default=2, help="random input directions per step")
    p.add_argument("--points", type=int, default=100, help="test points for accuracy and λ")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    data = load(args)
    plain = MnistCNN()
    penalised = copy.deepcopy(plain)                              # the same initial weights
    opts = {"plain": torch.optim.Adam(plain.parameters(), lr=1e-3),
            "penalised": torch.optim.Adam(penalised.parameters(), lr=1e-3)}
    g = torch.Generator().manual_seed(args.seed)                  # the penalty's directions
    order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(args.seed))
    idx = [order[(i * args.batch) % len(order):][:args.batch] for i in range(args.steps)]

    times = {"plain": [], "penalised": []}
    last = {}
    for i in idx:
        x, y = data.x_train[i], data.y_train[i]
        t0 = time.perf_counter()
        last["plain"] = (plain_step(plain, opts["plain"], x, y), None)
        times["plain"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        last["penalised"] = penalised_step(penalised, opts["penalised"], x, y, args.scale, args.order,
                                           args.directions, g)
        times["penalised"].append(time.perf_counter() - t0)
    ms = {k: 1e3 * sum(v[1:] or v) / len(v[1:] or v) for k, v in times.items()}   # the first step warms up

    u = lamda_ext.random_directions(data.x_test, 15, torch.Generator().manual_seed(args.seed + 1), shared=True)
    print(f"{args.steps} steps of batch {args.batch} on {data.name}; penalty scale {args.scale}, orders 1..{args.order}, "
          f"K = {args.directions}")
    print(f"{'model':>10} {'ms/step':>8} {'train loss':>10} {'penalty':>9} {'test acc':>8} "
          f"{'test mean|d_1..3|':>17} {'test λ':>7}")
    for name, model in (("plain", plain), ("penalised", penalised)):
        acc, lam, dabs = evaluate(model, data.x_test, data.y_test, u, order=6)
        loss, pen = last[name]
        pen = "—" if pen is None else f"{pen:.2e}"
        print(f"{name:>10} {ms[name]:8.1f} {loss:10.4f} {pen:>9} {100 * acc:7.1f}% "
              f"{dabs:17.3e} {lam:7.3f}")


if __name__ == "__main__":
    main()
