"""Linear mode connectivity: loss and accuracy along ``θ(α) = θ_a + α (θ_b − θ_a)``."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lamda_ext.hessian.data import iter_batches
from lamda_ext.losses import LossSpec

from .evaluate import evaluate

__all__ = ["ConnectivityResult", "PathBarrier", "path_barrier", "mode_connectivity", "recompute_bn_stats"]


@dataclass(frozen=True)
class PathBarrier:
    """The two barrier definitions of a loss path ``L(α)``, α from 0 (model a) to 1 (model b).

    ``barrier`` (the study's): ``max_α L(α) − min(L(0), L(1))``, at ``barrier_alpha`` (the argmax of L);
    ≥ 0, and equal to ``|L(1) − L(0)|`` on a monotone path.
    ``excess``: ``max_α [L(α) − ((1 − α) L(0) + α L(1))]``, the largest rise above the straight line between
    the end-point losses, at ``excess_alpha``; ≥ 0 (0 at the end points), 0 on a convex path.
    """
    barrier: float
    barrier_alpha: float
    excess: float
    excess_alpha: float


def path_barrier(alphas, losses) -> PathBarrier:
    """`PathBarrier` of a sampled path: ``alphas [S]`` increasing from 0 to 1, ``losses [S]`` finite."""
    a = np.asarray(alphas, dtype=np.float64)
    L = np.asarray(losses, dtype=np.float64)
    if a.ndim != 1 or a.shape != L.shape or a.size < 2:
        raise ValueError(f"alphas and losses must be 1-D of the same length ≥ 2, got {a.shape} and {L.shape}")
    if a[0] != 0.0 or a[-1] != 1.0 or np.any(np.diff(a) <= 0):
        raise ValueError("alphas must increase strictly from 0 to 1")
    if not np.all(np.isfinite(L)):
        raise ValueError(f"the path holds non-finite losses at α = {a[~np.isfinite(L)].tolist()}")
    i = int(np.argmax(L))
    excess = L - (L[0] + a * (L[-1] - L[0]))
    j = int(np.argmax(excess))
    return PathBarrier(barrier=float(L[i] - min(L[0], L[-1])), barrier_alpha=float(a[i]),
                       excess=float(excess[j]), excess_alpha=float(a[j]))


@dataclass
class ConnectivityResult:
    """``alphas [S]``, ``losses [S]``, ``accuracies [S]``.

    ``barrier`` = ``max_α L(α) − min(L(0), L(1))`` at ``barrier_alpha`` and ``excess`` = the largest rise above the
    straight line between the end-point losses at ``excess_alpha`` (see
    [`PathBarrier`][lamda.landscape.connectivity.PathBarrier]); ``bn_reestimated``: whether batch-norm running
    statistics were re-estimated at every α (only when the model has batch norm).
    """
    alphas: np.ndarray
    losses: np.ndarray
    accuracies: np.ndarray
    barrier: float
    barrier_alpha: float
    excess: float
    excess_alpha: float
    bn_reestimated: bool

    def as_dict(self) -> dict:
        """The result as plain numbers, for JSON."""
        return {"alphas": self.alphas.tolist(), "losses": self.losses.tolist(),
                "accuracies": self.accuracies.tolist(), "barrier": self.barrier, "barrier_alpha": self.barrier_alpha,
                "excess": self.excess, "excess_alpha": self.excess_alpha, "bn_reestimated": self.bn_reestimated}


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, data) -> None:
    """Re-estimate every batch norm's running statistics as the exact average over ``data``.

    The statistics are reset, then accumulated (cumulative average) with only the batch norms in train mode. Leaves the
    model in eval mode.
    """
    bns = _bn_modules(model)
    if not bns:
        model.eval()
        return
    dev = next(model.parameters()).device
    model.eval()
    saved = []
    for m in bns:
        saved.append(m.momentum)
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over the batches
        m.train()
    try:
        n = 0
        for x, _ in iter_batches(data):
            model(x.to(dev))
            n += 1
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()


def mode_connectivity(model_a: nn.Module, model_b: nn.Module, data, steps: int = 21, loss: LossSpec = "cross_entropy",
                      bn_data=None, *, label_smoothing: float = 0.0) -> ConnectivityResult:
    """Evaluate the linear path between two models of the same architecture.

    Every floating-point entry of the state dicts (parameters and buffers) is interpolated as
    ``a + α (b − a)`` (so a model with itself gives exactly its own weights); integer buffers come from
    ``model_a``. At every α, batch-norm running statistics are re-estimated on ``bn_data`` (default:
    ``data``) before the eval-mode loss/accuracy over ``data`` (an ``(x, y)`` pair or an iterable).
    ``model_a`` and ``model_b`` are not modified.
    """
    if int(steps) < 2:
        raise ValueError(f"steps must be ≥ 2, got {steps}")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError("model_a and model_b must have the same architecture (state-dict keys and shapes differ)")
    work = copy.deepcopy(model_a)
    bn_data = data if bn_data is None else bn_data
    has_bn = bool(_bn_modules(work))
    alphas = np.linspace(0.0, 1.0, int(steps))
    losses, accs = [], []
    for a in alphas:
        state = {k: (sa[k] + float(a) * (sb[k] - sa[k])) if sa[k].is_floating_point() else sa[k].clone() for k in sa}
        work.load_state_dict(state)
        if has_bn:
            recompute_bn_stats(work, bn_data)
        work.eval()
        L, acc = evaluate(work, data, loss, label_smoothing=label_smoothing)
        losses.append(L)
        accs.append(acc)
    losses_np = np.asarray(losses, dtype=np.float64)
    b = path_barrier(alphas, losses_np)
    return ConnectivityResult(alphas=alphas, losses=losses_np, accuracies=np.asarray(accs, dtype=np.float64),
                              barrier=b.barrier, barrier_alpha=b.barrier_alpha, excess=b.excess,
                              excess_alpha=b.excess_alpha, bn_reestimated=has_bn)
