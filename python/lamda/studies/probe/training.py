"""Training one run of the probe study: the optimizer, the loop with the curvature probe, the run's files."""
from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from ...data import batches
from ...landscape import CurvatureAdaptiveLR, CurvatureProbe
from ...models import build_model
from ...result_files import save_checkpoint, write_csv, write_json
from ...sam import SAM
from ...trainer import evaluate, resolve_device
from .config import EPOCH_COLUMNS, MIN_SCALE, NAME, OPTIMIZERS, STEP_COLUMNS

__all__ = ["make_optimizer", "train_one"]


def make_optimizer(name: str, model, s: dict, probe: CurvatureProbe, lr: float | None):
    """The optimizer ``name`` of `OPTIMIZERS` over ``model``'s parameters (``lr``: sgd_matched's)."""
    params = list(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(params, lr=s["sgd_lr"], momentum=0.9)
    if name == "sgd_matched":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=s["adam_lr"])
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=s["rho"], lr=s["sgd_lr"], momentum=0.9, model=model)
    if name == "probe":
        base = torch.optim.SGD(params, lr=s["sgd_lr"], momentum=0.9)
        return CurvatureAdaptiveLR(base, probe, every=s["probe_every"], min_scale=MIN_SCALE,
                                   max_scale=s["max_scale"], reference_decay=s["ref_decay"])
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")


def _update(name: str, model, opt, x, y, loss) -> None:
    """One optimizer update from the batch loss ``loss`` (SAM takes its second gradient here)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if name == "sam":
        opt.first_step(zero_grad=True)
        F.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
    elif name == "probe":
        opt.step(batch=(x, y))
    else:
        opt.step()


class _Loop:
    """The training loop of one run: the model, its optimizer, the probe and the per-step log."""

    def __init__(self, name: str, seed: int, data, s: dict, dev, lr: float | None):
        self.name, self.seed, self.data, self.s, self.dev = name, seed, data, s, dev
        torch.manual_seed(seed)
        self.model = build_model("mnist_cnn", num_classes=data.num_classes).to(dev)
        self.probe = CurvatureProbe(self.model, n_directions=s["probe_dirs"], eps=s["eps"],
                                    generator=torch.Generator().manual_seed(seed * 7 + 5))
        self.opt = make_optimizer(name, self.model, s, self.probe, lr)
        self.inner = self.opt.optimizer if name == "probe" else getattr(self.opt, "base_optimizer", self.opt)
        self.shuffle = torch.Generator().manual_seed(seed)
        self.curv, self.direc, self.step = float("nan"), float("nan"), 0
        self.steps: list[dict] = []

    def _batch(self, epoch: int, idx) -> float | None:
        """One step; the probed curvature when this step probes, else None."""
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        probed = self.step % self.s["probe_every"] == 0
        if probed and self.name != "probe":
            est = self.probe(x, y)
            self.curv, self.direc = est.curvature, est.directional
        out = self.model(x)
        loss = F.cross_entropy(out, y)
        _update(self.name, self.model, self.opt, x, y, loss)
        if self.name == "probe":
            self.curv, self.direc = self.opt.curvature, self.opt.directional
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"{self.name} seed {self.seed}: loss became {lv} at step {self.step}; "
                                     f"lower the lr")
        h = self.opt.history[-1] if self.name == "probe" else {}
        self.steps.append({"step": self.step, "epoch": epoch, "loss": lv,
                           "accuracy": float((out.argmax(1) == y).double().mean()), "curvature": self.curv,
                           "directional_curvature": self.direc, "probed": int(probed),
                           "lr": h.get("lr", self.inner.param_groups[0]["lr"]), "scale": h.get("scale"),
                           "reference": h.get("reference")})
        self.step += 1
        return self.curv if probed else None

    def epoch(self, epoch: int) -> dict:
        """One pass over the training data, then the epoch's row (eval-mode losses and accuracies)."""
        t0 = time.perf_counter()
        self.model.train()
        probes = []
        for idx in batches(self.data.x_train.shape[0], self.s["batch"], self.shuffle):
            c = self._batch(epoch, idx.to(self.dev))
            if c is not None:
                probes.append(c)
        tr_loss, tr_acc, _ = evaluate(self.model, self.data.x_train, self.data.y_train)
        te_loss, te_acc, _ = evaluate(self.model, self.data.x_test, self.data.y_test)
        return {"epoch": epoch, "train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss, "test_acc": te_acc,
                "mean_curvature": float(np.mean(probes)) if probes else float("nan"),
                "lr": self.inner.param_groups[0]["lr"], "epoch_time_s": time.perf_counter() - t0}


def train_one(name: str, seed: int, data, s: dict, args, run_dir: pathlib.Path, lr: float | None = None) -> None:
    """Train one (optimizer, seed) run and write its folder (``final_model.pt`` last). ``lr``: sgd_matched's lr."""
    t_start = time.perf_counter()
    loop = _Loop(name, seed, data, s, resolve_device(args.device), lr)
    epochs = [loop.epoch(epoch) for epoch in range(1, s["epochs"] + 1)]
    write_csv(run_dir / "steps.csv", loop.steps, STEP_COLUMNS)
    write_csv(run_dir / "epochs.csv", epochs, EPOCH_COLUMNS)
    write_json(run_dir / "config.json", {"experiment": NAME, "optimizer": name, "seed": seed, "settings": s,
                                         "lr": lr if name == "sgd_matched" else None, "model": "mnist_cnn",
                                         "train_time_s": time.perf_counter() - t_start})
    save_checkpoint(run_dir / "final_model.pt", {"model": loop.model.state_dict(), "complete": True})
