"""Started by tests/test_torchrun.py under ``torchrun``: train tiny runs with ``TrainConfig(ddp=True)``.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_ddp_worker.py OUT`` trains each
variant of :data:`VARIANTS` into ``OUT/<variant>`` and rank 0 saves the final parameters to
``OUT/<variant>.pt``; the test trains the same variants in one process and compares.
"""
from __future__ import annotations

import pathlib
import sys

import torch
from torch import nn

from lamda import distributed
from lamda.data import TensorDataset
from lamda.regularizers import SAM, LambdaPenalty, RegularizerSet
from lamda.trainer import Trainer, TrainConfig

VARIANTS = ("plain", "lambda_penalty", "sam")


def build(variant: str, ddp: bool) -> Trainer:
    """A float64 MLP on 45 random points; batch 16 → global batches of 16, 16, 13 (uneven rank slices)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(45, 1, 3, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (45,), generator=g)
    xt = torch.randn(20, 1, 3, 4, generator=g, dtype=torch.float64)
    yt = torch.randint(0, 3, (20,), generator=g)
    data = TensorDataset(name="toy", x_train=x, y_train=y, x_test=xt, y_test=yt, num_classes=3)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    pieces = {"plain": [], "lambda_penalty": [LambdaPenalty(0.5, order=3, directions=2, seed=5)],
              "sam": [SAM(0.05)]}[variant]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer="sgd", seed=11, progress=False, ddp=ddp)
    return Trainer(model, data, RegularizerSet(pieces), cfg)


def main(out: pathlib.Path) -> None:
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu"), "start me with torchrun"
    for v in VARIANTS:
        tr = build(v, ddp=True)
        res = tr.run(out / v)
        if distributed.rank_world()[0] == 0:
            torch.save({"params": {k: t.detach().clone() for k, t in tr.model.state_dict().items()},
                        "rows": res.rows}, out / f"{v}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
