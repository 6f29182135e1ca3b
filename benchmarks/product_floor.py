"""What one curvature product and one quadratic form cost against one gradient, on the trace benchmark's models.

    python benchmarks/product_floor.py                          # the MLP 784-64-10, 30 rounds
    python benchmarks/product_floor.py --model cnn --rounds 3   # the MNIST CNN (a round takes about a minute)

B = 512, float32, 2 threads. One warm process, interleaved rounds after warm-up calls of each case (3 for the MLP, 1
for the CNN), medians. F: forward and loss under ``no_grad``; G: one gradient (forward and backward); E: one
hessian-eigenthings product (``HessianOperator.matvec``); L1: one lamda_ext product; L32: a block of 32 lamda_ext
products, per product (what Hutch++ sketches and Lanczos blocks call); Q32: a block of 32 lamda_ext quadratic forms
``zᵀHz``, per form (Hutch++'s sketch trace and deflated probes). FLOPs of each by
``torch.utils.flop_counter.FlopCounterMode``. The figures bound the lead any implementation can have over
hessian-eigenthings for a given number of products and forms (see the trace section of ``benchmarks/README.md``).
Timing does not depend on the weights, so the models are left at their initialisation and the images are random.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lamda_ext


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "cnn":
        from lamda.models import MnistCNN
        return MnistCNN().eval()
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    try:
        import hessian_eigenthings as he
    except ImportError as err:
        raise SystemExit("needs hessian-eigenthings: pip install '.[bench]'") from err
    torch.set_num_threads(2)
    m = _model(args.model)
    x, y = torch.rand(512, 1, 28, 28), torch.randint(0, 10, (512,))
    op = lamda_ext.HessianOperator(m, "cross_entropy", (x, y))
    eth = he.HessianOperator(m, [(x, y)], he.supervised_loss(F.cross_entropy))
    V = torch.randn(32, op.size)

    def forward():
        with torch.no_grad():
            F.cross_entropy(m(x), y)

    def gradient():
        m.zero_grad()
        F.cross_entropy(m(x), y).backward()

    cases = {"F": (forward, 1), "G": (gradient, 1), "E": (lambda: eth.matvec(V[0]), 1),
             "L1": (lambda: op @ V[0], 1), "L32": (lambda: op @ V, 32), "Q32": (lambda: op.quadratic_forms(V), 32)}
    for fn, _ in cases.values():
        for _ in range(3 if args.model == "mlp" else 1):
            fn()
    times: dict = {k: [] for k in cases}
    for _ in range(args.rounds):
        for k, (fn, per) in cases.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) / per)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.model}, {args.rounds} rounds, medians:")
    for k, (fn, per) in cases.items():
        with FlopCounterMode(display=False) as fc:
            fn()
        print(f"{k:4s} {med[k] * 1e3:9.3f} ms each ({med[k] / med['F']:5.2f} forwards, "
              f"{med[k] / med['G']:5.2f} gradients), {fc.get_total_flops() / per / 1e6:8.1f} MFLOP")
    print(f"E / L32 = {med['E'] / med['L32']:.2f}; E / Q32 = {med['E'] / med['Q32']:.2f}; E / G = {med['E'] / med['G']:.2f}")


if __name__ == "__main__":
    main()
