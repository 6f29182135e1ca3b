"""A loss surface and linear mode connectivity with ``lamda.landscape``.

    python examples/loss_landscape.py --out figures/

Trains the sigmoid MLP 784-128-128-10 twice (two seeds), then

- ``loss_surface``: the loss on the plane ``θ_a + α d1 + β d2`` around the first model, with filter-normalised
  random directions d1, d2 (each filter of d scaled to the norm of the same filter of θ, Li et al. 2018);
- ``mode_connectivity``: the loss along the straight line ``(1 − α) θ_a + α θ_b`` between the two models,
  and its barrier ``max_α L(α) − min(L(0), L(1))``.

Prints the surface's range and the path's barrier; with ``--out`` writes ``loss_landscape.png``.
"""
from __future__ import annotations

import argparse
import pathlib

import numpy as np
import torch

from lamda.data import load_dataset
from lamda.landscape import loss_surface, mode_connectivity
from lamda.models import SigmoidMLP


def load(args):
    try:
        return load_dataset(args.dataset, root=args.data_root, train_size=args.train, test_size=1, seed=0)
    except FileNotFoundError:
        print(f"{args.dataset} not found; using scikit-learn's digits")
        return load_dataset("digits", train_size=args.train, test_size=1, seed=0)


def train(data, seed: int, epochs: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = SigmoidMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train), generator=g).split(64):
            loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def plot(surface, path_result, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    B, A = np.meshgrid(surface.betas, surface.alphas)
    cs = a1.contourf(A, B, surface.losses, levels=25, cmap="viridis")
    a1.contour(A, B, surface.losses, levels=25, colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=a1, label="training loss (mean cross-entropy, nats)")
    a1.plot([0], [0], "r*", ms=10, label="trained model θ_a")
    a1.set_xlabel("α (filter-normalised direction d1)")
    a1.set_ylabel("β (filter-normalised direction d2)")
    a1.set_title("loss surface around θ_a", fontsize=10)
    a1.legend(loc="upper right", fontsize=8)

    a2.plot(path_result.alphas, path_result.losses, "o-", color="C0", ms=3, label="training loss")
    a2.set_xlabel("α on the line (1 − α) θ_a + α θ_b")
    a2.set_ylabel("training loss (mean cross-entropy, nats)", color="C0")
    a2.axvline(path_result.barrier_alpha, color="0.5", ls=":", lw=1)
    a3 = a2.twinx()
    a3.plot(path_result.alphas, 100 * path_result.accuracies, "s--", color="C1", ms=3, label="training accuracy")
    a3.set_ylabel("training accuracy (%)", color="C1")
    a2.set_title(f"linear mode connectivity: barrier {path_result.barrier:.3f} nats", fontsize=10)
    lines = a2.get_lines()[:1] + a3.get_lines()
    a2.legend(lines, [ln.get_label() for ln in lines], loc="center left", fontsize=8)
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
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--resolution", type=int, default=21, help="grid points per axis (odd: θ_a on the centre node)")
    p.add_argument("--span", type=float, default=1.0, help="α, β in [−span, span]")
    p.add_argument("--steps", type=int, default=21, help="points on the connectivity path")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args()

    data = load(args)
    model_a, model_b = train(data, 1, args.epochs), train(data, 2, args.epochs)
    train_set = (data.x_train, data.y_train)

    surface = loss_surface(model_a, train_set, directions=2, span=args.span, resolution=args.resolution,
                           generator=torch.Generator().manual_seed(0))
    centre = surface.losses[args.resolution // 2, args.resolution // 2]
    print(f"loss surface ({args.resolution}×{args.resolution}, span ±{args.span}): loss at θ_a {centre:.4f}, "
          f"min {surface.losses.min():.4f}, max {surface.losses.max():.4f} nats")

    path_result = mode_connectivity(model_a, model_b, train_set, steps=args.steps)
    print(f"linear path θ_a → θ_b ({args.steps} points): L(0) = {path_result.losses[0]:.4f}, "
          f"L(1) = {path_result.losses[-1]:.4f}, barrier {path_result.barrier:.4f} nats at α = "
          f"{path_result.barrier_alpha:.2f} (rise above the straight line: {path_result.excess:.4f})")
    if args.out is not None:
        plot(surface, path_result, args.out / "loss_landscape.png")
        print(f"wrote {args.out / 'loss_landscape.png'}")


if __name__ == "__main__":
    main()
