"""Training one run: optimiser + schedule, regularisers, λ measurements, metrics, checkpoints, resume.

A run lives in one folder. While it trains, ``checkpoint.pt`` (model, optimiser, scheduler, RNG states, history so far)
is rewritten atomically after every ``checkpoint_every`` epochs, together with partial ``training_metrics.csv`` and
``lambda_data.npz``. When the run finishes it writes, in this order, ``training_metrics.csv``, ``lambda_data.npz``,
``config.json``, the caller's extra outputs (plots), and last ``final_model.pt``; then deletes ``checkpoint.pt``. So
``final_model.pt`` marks a finished run ([`run_is_complete`][lamda.trainer.run_is_complete]), a killed run resumes from
its last checkpoint (bit-identical RNG streams), and a corrupt checkpoint restarts the run from scratch.

Per epoch (row of ``training_metrics.csv``): train/test loss and accuracy (eval mode, plain cross-entropy against the
training labels as given), generalisation gap (train acc − test acc), ECE on the test set, the running training loss,
each penalty's mean value and its share of the total loss, the learning rate, the wall time, and λ (mean/std over
directions) at measurement epochs.

Data parallel (``TrainConfig.ddp``, or ``lamda run --ddp`` under ``torchrun``): the model is wrapped in
``DistributedDataParallel``. Every rank draws the same shuffled global batch (the same generator) and takes its
contiguous slice of it (what a ``DistributedSampler`` does, but per global batch, so the batches are those of one
process); each rank's loss and penalties are its shares of the global batch's (data loss summed over its samples /
global batch size; penalties through [`RegularizerSet.penalties`][lamda.regularizers.RegularizerSet.penalties] with
``part``), so the gradient DDP averages is the single-process gradient of the same global batch, λ penalty and SAM
included. Rank 0 alone writes checkpoints, tables and the final model; every rank resumes from them.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time
import warnings
from dataclasses import dataclass, asdict, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .result_files import (CheckpointError, load_checkpoint, read_csv, read_npz, remove_stale_temp_files,
                           save_checkpoint, write_csv, write_json, write_npz)
from .data import TensorDataset, batches
from .measure import LambdaMeter
from .optimizers import load_optimizer_state, lr_scheduler, make_optimizer, optimizer_state
from .regularizers import RegularizerSet
from .schedule import MeasurementSchedule

__all__ = ["TrainConfig", "Trainer", "RunResult", "evaluate", "run_is_complete", "resolve_device",
           "METRIC_COLUMNS", "LAMBDA_KEYS"]

METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "gap", "ece", "running_loss",
                  "lr", "lambda_mean", "lambda_std", "measured", "epoch_time_s"]
LAMBDA_KEYS = ("derivatives", "log_abs_derivatives", "derivatives_per_point", "lambda_values")


def resolve_device(device: str | None) -> torch.device:
    """``"auto"``/None → cuda when available else cpu; ``cpu``, ``cuda``, ``cuda:i`` as given.

    Raises ValueError for another string, for ``cuda`` without a GPU and for a GPU index torch does not see.
    """
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda, cuda:<index> or auto, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 … "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return dev


@dataclass
class TrainConfig:
    """Optimiser and loop settings of one run."""

    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"          # "adam" | "sgd"
    momentum: float = 0.9            # sgd only
    schedule: str = "none"           # "none" | "cosine"
    seed: int = 42
    device: str = "cpu"
    checkpoint_every: int = 1
    early_stop_patience: int | None = None   # stop when early_stop_metric has not improved for this many epochs
    early_stop_metric: str = "train_loss"
    early_stop_min_delta: float = 0.0
    eval_batch_size: int = 1000
    ece_bins: int = 15
    progress: bool = True
    ddp: bool | None = None          # DistributedDataParallel over the process group; None: `lamda run --ddp`

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("none", "cosine"):
            raise ValueError(f"schedule must be 'none' or 'cosine', got {self.schedule!r}")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.checkpoint_every < 1:
            raise ValueError(f"bad training settings: {self}")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ValueError(f"early_stop_patience must be >= 1 or None, got {self.early_stop_patience}")

    def to_dict(self):
        """The settings as a dict (for ``config.json``)."""
        return asdict(self)


@dataclass
class RunResult:
    """What ``Trainer.run`` returns: its folder, the epoch ``rows``, ``lambda_data``, ``skipped`` and ``config``."""
    run_dir: pathlib.Path
    rows: list[dict]
    lambda_data: dict[str, np.ndarray]
    skipped: bool = False
    config: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        """The last epoch's row (empty without rows)."""
        return self.rows[-1] if self.rows else {}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000):
    """Eval-mode loss (mean CE), accuracy and softmax probabilities ``[N, C]`` of ``model`` on ``x, y``."""
    was = model.training
    model.eval()
    probs, loss = [], 0.0
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size])
        loss += F.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
        probs.append(out.softmax(-1))
    model.train(was)
    p = torch.cat(probs)
    acc = (p.argmax(-1) == y).double().mean().item()
    return loss / x.shape[0], acc, p


def _ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int) -> float:
    from .calibration import expected_calibration_error
    return float(expected_calibration_error(probs.detach().cpu(), labels.detach().cpu(), n_bins=n_bins))


def run_is_complete(run_dir: str | os.PathLike) -> bool:
    """True when the run in ``run_dir`` finished and every file it wrote is still there.

    ``final_model.pt`` loads as a finished checkpoint and lists the files beside it; a run that lost one trains again.
    """
    run_dir = pathlib.Path(run_dir)
    p = run_dir / "final_model.pt"
    if not p.is_file():
        return False
    try:
        ck = load_checkpoint(p)
    except CheckpointError:
        return False
    return bool(ck.get("complete", False)) and all((run_dir / f).is_file() for f in ck.get("files", []))


class Trainer:
    """Train ``model`` on ``data`` with ``regs`` and measure λ with ``meter`` on ``schedule``.

    Args:
        model: a freshly initialised model (seed the global RNG before building it).
        data: in-memory train/test tensors (moved to ``cfg.device``).
        regs: the regularisers.
        cfg: optimiser/loop settings.
        meter: λ meter on fixed points (None = no λ measurements).
        schedule: which epochs are measured (epoch 0 = before training).
    """

    def __init__(self, model: nn.Module, data: TensorDataset, regs: RegularizerSet, cfg: TrainConfig,
                 meter: LambdaMeter | None = None, schedule: MeasurementSchedule | None = None,
                 optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
                 step_callback: Callable[[dict], None] | None = None):
        self.device = resolve_device(cfg.device)
        self.step_callback = step_callback
        self._epoch = 0
        self.cfg, self.regs, self.meter = cfg, regs, meter
        self.schedule = schedule or MeasurementSchedule()
        self.model = regs.configure_model(model).to(self.device)
        self.ddp = distributed.ddp_requested() if cfg.ddp is None else bool(cfg.ddp)
        self.rank, self.world = distributed.rank_world()
        if self.ddp and not distributed.is_initialized():
            raise ValueError("TrainConfig(ddp=True) needs an initialised torch.distributed process group "
                             "(start with torchrun)")
        self.net = self.model           # what the training forward calls (the DDP wrapper under ddp)
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel
            ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
                if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.data = data.to(self.device)
        if meter is not None:
            meter.x, meter.y = meter.x.to(self.device), meter.y.to(self.device)
        if optimizer_factory is not None:
            if regs.sam_rho is not None:
                raise ValueError("pass either a SAM regulariser or an optimizer_factory, not both")
            self.opt = optimizer_factory(self.model)
        else:
            self.opt = make_optimizer(self.model, cfg.optimizer, cfg.lr, cfg.momentum, regs)
        # SAM steps its base optimiser (they share param_groups), so the schedule follows that one
        self.sched = lr_scheduler(getattr(self.opt, "base_optimizer", self.opt), cfg.schedule, cfg.epochs)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed + 1)

    # ---------------------------------------------------------------- state
    def _rng_state(self):
        st = {"shuffle": self.shuffle_gen.get_state(), "aug": self.aug_gen.get_state(),
              "torch": torch.get_rng_state(), "pieces": {}}
        if torch.cuda.is_available() and self.device.type == "cuda":
            st["cuda"] = torch.cuda.get_rng_state(self.device)
        for i, p in enumerate(self.regs):
            if isinstance(getattr(p, "generator", None), torch.Generator):
                st["pieces"][str(i)] = p.generator.get_state()
        return st

    def _set_rng_state(self, st):
        self.shuffle_gen.set_state(st["shuffle"])
        self.aug_gen.set_state(st["aug"])
        torch.set_rng_state(st["torch"])
        if "cuda" in st and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda"], self.device)
        for i, p in enumerate(self.regs):
            if str(i) in st["pieces"]:
                p.generator.set_state(st["pieces"][str(i)])

    # ---------------------------------------------------------------- steps
    def _part(self, n: int) -> tuple[int, int] | None:
        """This rank's contiguous slice ``(lo, hi)`` of a global batch of ``n`` samples (None without ddp)."""
        if not self.ddp:
            return None
        return (self.rank * n) // self.world, ((self.rank + 1) * n) // self.world

    def _losses(self, xb, yb):
        """``(objective, total, data_loss, penalties)`` of a batch: ``objective`` is what to back-propagate.

        Without ddp it is ``total``; under ddp ``total`` etc. are this rank's shares of the global batch's values and
        ``objective = world · total`` (DDP averages the gradients over ranks, so they sum the shares).
        """
        part = self._part(yb.shape[0])
        if part is None:
            out = self.net(xb)
            data_loss = F.cross_entropy(out, yb, label_smoothing=self.regs.label_smoothing)
            pens = self.regs.penalties(self.model, xb, yb)
        else:
            lo, hi = part
            out = self.net(xb[lo:hi])
            data_loss = F.cross_entropy(out, yb[lo:hi], reduction="sum",
                                        label_smoothing=self.regs.label_smoothing) / yb.shape[0]
            pens = self.regs.penalties(self.model, xb, yb, part=part)
        total = data_loss + sum(pens.values()) if pens else data_loss
        return (total * self.world if part is not None else total), total, data_loss, pens

    def train_epoch(self, desc: str = "") -> dict:
        """One pass over the training data; returns running means of the loss terms."""
        self.model.train()
        d = self.data
        sums: dict[str, float] = {}
        n_seen = 0
        for step, idx in enumerate(batches(d.x_train.shape[0], self.cfg.batch_size, self.shuffle_gen)):
            idx = idx.to(self.device)
            xb = self.regs.transform(d.x_train[idx], self.aug_gen)
            yb = d.y_train[idx]
            if self.regs.sam_rho is not None:
                self.opt.zero_grad(set_to_none=True)
                objective, total, data_loss, pens = self._losses(xb, yb)
                objective.backward()
                self.opt.first_step(zero_grad=True)
                self._losses(xb, yb)[0].backward()
                self.opt.second_step(zero_grad=True)
            else:
                self.opt.zero_grad(set_to_none=True)
                objective, total, data_loss, pens = self._losses(xb, yb)
                objective.backward()
                self.opt.step()
            if not math.isfinite(total.item()):
                raise FloatingPointError(f"training loss became {total.item()} ({desc}); lower the learning rate")
            b = yb.shape[0]
            n_seen += b
            if self.step_callback is not None:
                self.step_callback({"epoch": self._epoch, "step": step, "loss": float(total.detach()),
                                    "data_loss": float(data_loss.detach()), "batch_size": b})
            for k, v in (("running_loss", data_loss), ("total_loss", total), *((f"penalty_{k}", v) for k, v in pens.items())):
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * b
        if self.ddp and sums:           # every rank summed its shares: add them up into the global means
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys], dtype=torch.float64,
                             device=self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(t)
            sums = dict(zip(keys, t.tolist()))
        out = {k: v / max(n_seen, 1) for k, v in sums.items()}
        for k in list(out):
            if k.startswith("penalty_"):
                out[k.replace("penalty_", "penalty_share_")] = out[k] / out["total_loss"] if out["total_loss"] else float("nan")
        return out

    def _metrics(self) -> dict:
        d, bs = self.data, self.cfg.eval_batch_size
        tr_loss, tr_acc, _ = evaluate(self.model, d.x_train, d.y_train, bs)
        te_loss, te_acc, probs = evaluate(self.model, d.x_test, d.y_test, bs)
        return {"train_loss": tr_loss, "train_acc": tr_acc, "test_loss": te_loss, "test_acc": te_acc,
                "gap": tr_acc - te_acc, "ece": _ece(probs, d.y_test, self.cfg.ece_bins)}

    # ---------------------------------------------------------------- outputs
    def _lambda_arrays(self, meas: list[dict]) -> dict[str, np.ndarray]:
        m = self.meter
        if m is None:
            return {}
        K, N, P = m.cfg.directions, m.cfg.order, m.points
        M = len(meas)
        arr = {k: np.stack([r[k] for r in meas]) if M else np.zeros((0, *shape))
               for k, shape in (("derivatives", (K, N)), ("log_abs_derivatives", (K, N)),
                                ("derivatives_per_point", (P, K, N)), ("lambda_values", (K,)))}
        for k in ("epoch", "train_acc", "test_acc", "train_loss", "test_loss", "ece"):
            arr[k + ("s" if k == "epoch" else "")] = np.array([r[k] for r in meas], dtype=np.int64 if k == "epoch" else np.float64)
        arr.update(m.run_arrays(meas))
        arr["orders"] = np.arange(1, N + 1)
        return arr

    def run(self, run_dir: str | os.PathLike, config: dict | None = None,
            extra_outputs: Callable[[pathlib.Path, "RunResult"], None] | None = None,
            measurement_indices: np.ndarray | None = None, desc: str | None = None) -> RunResult:
        """Train (or resume, or skip when finished) the run in ``run_dir``; see the module docstring."""
        run_dir = pathlib.Path(run_dir)
        config = dict(config or {})
        desc = desc or run_dir.name
        if run_is_complete(run_dir):
            return _load_finished(run_dir, config)
        writer = self.rank == 0 or not self.ddp          # under ddp rank 0 alone writes files
        run_dir.mkdir(parents=True, exist_ok=True)
        if writer:
            remove_stale_temp_files(run_dir)      # left by a process killed mid-write
        ck_path = run_dir / "checkpoint.pt"
        rows, meas, start = self._resume(ck_path)
        if self.ddp:
            distributed.barrier()                     # every rank has read the checkpoint before rank 0 rewrites it
        extra = {"measurement_indices": measurement_indices} if measurement_indices is not None else {}
        epochs = self.cfg.epochs
        bar = _progress(range(start, epochs + 1), desc, self.cfg.progress, total=epochs + 1, initial=start)
        for epoch in bar:
            row, stop = self._epoch_row(epoch, rows, meas, desc)
            rows.append(row)
            _show(bar, row)
            if stop:
                break
            if writer and epoch < epochs and (epoch % self.cfg.checkpoint_every == 0):
                self._write_tables(run_dir, rows, meas, extra)
                self._save_checkpoint(ck_path, epoch, rows, meas)
        if hasattr(bar, "close"):
            bar.close()
        if not writer:
            lam = self._lambda_arrays(meas)
            if lam:
                lam.update(extra)
            distributed.barrier()                     # rank 0 has written the finished run
            return RunResult(run_dir, rows, lam, skipped=False, config=config)
        return self._finish(run_dir, config, rows, meas, extra, extra_outputs)

    def _resume(self, ck_path: pathlib.Path) -> tuple[list[dict], list[dict], int]:
        """``(rows, measurements, first epoch)`` of the checkpoint (none: empty, 0; corrupt: raises `_Restart`)."""
        if not ck_path.exists():
            return [], [], 0
        try:
            ck = load_checkpoint(ck_path)
            self.model.load_state_dict(ck["model"])
            load_optimizer_state(self.opt, ck["optimizer"])
            if self.sched is not None and ck.get("scheduler") is not None:
                self.sched.load_state_dict(ck["scheduler"])
            self._set_rng_state(ck["rng"])
            rows = json.loads(ck["rows"])
            meas = [{k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in r.items()} for r in ck["meas"]]
            return rows, meas, int(ck["epoch"]) + 1
        except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
            warnings.warn(f"{ck_path}: {exc}; restarting the run from scratch")
            raise _Restart() from exc

    def _epoch_row(self, epoch: int, rows: list[dict], meas: list[dict], desc: str) -> tuple[dict, bool]:
        """One epoch: train (none at epoch 0), evaluate, measure λ when due; ``(row, stop)``, appending to ``meas``."""
        t0 = time.perf_counter()
        epochs = self.cfg.epochs
        self._epoch = epoch
        run_stats = self.train_epoch(f"{desc} epoch {epoch}") if epoch > 0 else {}
        if self.sched is not None and epoch > 0:
            self.sched.step()
        row = {"epoch": epoch, **self._metrics(), **run_stats}
        row["lr"] = getattr(self.opt, "base_optimizer", self.opt).param_groups[0]["lr"]
        row["measured"] = 0
        stop = epoch < epochs and self._should_stop(rows + [row])
        if self.meter is not None and (self.schedule.should_measure(epoch, epochs) or stop):
            r = self.meter.measure(self.model)
            lam = r["lambda_values"]
            row["lambda_mean"] = float(np.nanmean(lam)) if np.isfinite(lam).any() else float("nan")
            row["lambda_std"] = float(np.nanstd(lam)) if np.isfinite(lam).any() else float("nan")
            row["measured"] = 1
            meas.append({**r, **{k: row[k] for k in ("epoch", "train_acc", "test_acc", "train_loss",
                                                     "test_loss", "ece")}})
        row["epoch_time_s"] = time.perf_counter() - t0
        return row, stop

    def _save_checkpoint(self, ck_path: pathlib.Path, epoch: int, rows: list[dict], meas: list[dict]) -> None:
        save_checkpoint(ck_path, {
            "model": self.model.state_dict(), "optimizer": optimizer_state(self.opt),
            "scheduler": self.sched.state_dict() if self.sched is not None else None,
            "rng": self._rng_state(), "epoch": epoch, "rows": json.dumps(rows),
            "meas": [{k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v)
                      for k, v in r.items()} for r in meas]})

    def _finish(self, run_dir, config, rows, meas, extra, extra_outputs) -> RunResult:
        """Write the run's files (tables, config, extras, ``final_model.pt`` last), then delete the checkpoint."""
        ck_path = run_dir / "checkpoint.pt"
        lam = self._write_tables(run_dir, rows, meas, extra)
        write_json(run_dir / "config.json", config)
        result = RunResult(run_dir, rows, lam, skipped=False, config=config)
        if extra_outputs is not None:
            extra_outputs(run_dir, result)
        files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and p.name != ck_path.name
                       and not p.name.startswith("."))
        save_checkpoint(run_dir / "final_model.pt", {
            "model": self.model.state_dict(), "complete": True, "config": json.dumps(config, default=str),
            "final_metrics": json.dumps(rows[-1] if rows else {}), "files": files})
        if ck_path.exists():
            ck_path.unlink()
        if self.ddp:
            distributed.barrier()
        return result

    def _should_stop(self, rows: list[dict]) -> bool:
        """Early stopping: no gain above ``early_stop_min_delta`` in ``early_stop_patience`` epochs (from the rows)."""
        p = self.cfg.early_stop_patience
        if p is None:
            return False
        key = self.cfg.early_stop_metric
        best, best_epoch = math.inf, None
        for r in rows:
            v = r.get(key)
            if v is None:
                raise ValueError(f"early_stop_metric {key!r} is not a column of the metrics")
            if v < best - self.cfg.early_stop_min_delta:
                best, best_epoch = v, r["epoch"]
        return best_epoch is not None and rows[-1]["epoch"] - best_epoch >= p

    def _write_tables(self, run_dir, rows, meas, extra):
        cols = list(METRIC_COLUMNS)
        for r in rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        write_csv(run_dir / "training_metrics.csv", rows, cols)
        lam = self._lambda_arrays(meas)
        if lam:
            lam.update(extra)
            write_npz(run_dir / "lambda_data.npz", **lam)
        return lam


class _Restart(Exception):
    """A corrupt checkpoint: the caller rebuilds the trainer and starts the run from scratch."""


def _load_finished(run_dir: pathlib.Path, config: dict) -> RunResult:
    rows = read_csv(run_dir / "training_metrics.csv", numeric=METRIC_COLUMNS)
    p = run_dir / "lambda_data.npz"
    lam = read_npz(p) if p.exists() else {}
    return RunResult(run_dir, rows, lam, skipped=True, config=config)


def _show(bar, row: dict) -> None:
    """The progress bar's test accuracy and λ (epochs without a λ measurement show none)."""
    if hasattr(bar, "set_postfix"):
        post = {"test_acc": f"{row['test_acc']:.3f}"}
        lam = row.get("lambda_mean")
        if lam is not None and math.isfinite(float(lam)):
            post["lam"] = f"{float(lam):.2f}"
        bar.set_postfix(post)


def _progress(it, desc, enabled, total=None, initial=0):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return it
    return tqdm(it, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True)


def train_run(build: Callable[[], "Trainer"], run_dir, **kwargs) -> RunResult:
    """Run ``build().run(run_dir, ...)``; when the checkpoint is corrupt, delete it and start from scratch."""
    try:
        return build().run(run_dir, **kwargs)
    except _Restart:
        (pathlib.Path(run_dir) / "checkpoint.pt").unlink(missing_ok=True)
        return build().run(run_dir, **kwargs)
