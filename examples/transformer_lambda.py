"""λ of a transformer: a small torchvision Vision Transformer on MNIST, measured by Taylor mode.

    python examples/transformer_lambda.py

Taylor mode runs the unmodified model (patch embedding, ``nn.MultiheadAttention`` with
``scaled_dot_product_attention``, layer norm, GELU). The script trains the ViT briefly, measures λ on test
points along 15 shared input directions with the default backend, and checks the fast path against the
nested-autograd reference in float64 on a few points (``--check-points``; 0 skips the check).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from torchvision.models import VisionTransformer

import lamda_ext
from lamda.data import load_dataset


def load(args):
    try:
        return load_dataset(args.dataset, root=args.data_root, train_size=args.train, test_size=args.points,
                            seed=args.seed)
    except FileNotFoundError:
        print(f"{args.dataset} not found; using scikit-learn's digits")
        return load_dataset("digits", train_size=args.train, test_size=args.points, seed=args.seed)


def vit(layers: int, width: int) -> torch.nn.Module:
    """A ViT for 1×28×28 images: 7×7 patches (16 tokens + class token), ``layers`` blocks of ``width``."""
    model = VisionTransformer(image_size=28, patch_size=7, num_layers=layers, num_heads=2, hidden_dim=width,
                              mlp_dim=2 * width, num_classes=10)
    model.conv_proj = torch.nn.Conv2d(1, width, kernel_size=7, stride=7)      # one input channel
    return model


def train(model, data, epochs: int, seed: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.y_train), generator=g).split(64):
            loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def check(model, x, y, order: int) -> float:
    """Largest relative difference between ``taylor`` and nested ``autograd`` in float64 (2 directions)."""
    m64, x64 = copy.deepcopy(model).double(), x.double()
    u = lamda_ext.random_directions(x64, 2, torch.Generator().manual_seed(1), shared=True)
    with torch.no_grad():
        fast = lamda_ext.directional_derivs(m64, x64, y, order=order, directions=u, backend="taylor")
    ref = lamda_ext.directional_derivs(m64, x64, y, order=order, directions=u, backend="autograd").detach()
    return float(((fast - ref).abs() / ref.abs().clamp_min(1e-300)).max())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--points", type=int, default=32)
    p.add_argument("--directions", type=int, default=15)
    p.add_argument("--order", type=int, default=6)
    p.add_argument("--check-points", type=int, default=2, help="points for the float64 autograd check (0: none)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    data = load(args)
    model = vit(args.layers, args.width)
    train(model, data, args.epochs, args.seed)
    acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    params = sum(q.numel() for q in model.parameters())
    print(f"ViT: {args.layers} blocks, width {args.width}, {params:,} parameters; test accuracy {100 * acc:.1f}% "
          f"on {len(data.y_test)} {data.name} points")

    u = lamda_ext.random_directions(data.x_test, args.directions, torch.Generator().manual_seed(args.seed), shared=True)
    for backend in ("auto", "taylor"):
        t0 = time.perf_counter()
        with torch.no_grad():
            d = lamda_ext.directional_derivs(model, data.x_test, data.y_test, order=args.order, directions=u,
                                             backend=backend)
        lam = lamda_ext.curvature_rate(d, pool="points")
        spread = float(lam.std()) if len(lam) > 1 else 0.0
        print(f"backend={backend!r:9} d {list(d.shape)} in {time.perf_counter() - t0:.2f} s: "
              f"λ = {float(lam.mean()):.3f} ± {spread:.3f} (mean ± std over {len(lam)} directions)")
    if args.check_points:
        n = args.check_points
        err = check(model, data.x_test[:n], data.y_test[:n], min(args.order, 4))
        print(f"float64, {n} points, orders 1..{min(args.order, 4)}: taylor vs nested autograd, "
              f"largest relative difference {err:.1e}")


if __name__ == "__main__":
    main()
