"""Training one model of the spectrum study: Adam with an L2 penalty and early stopping on the training loss."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from ...data import batches

__all__ = ["train_model", "l2_term", "evaluate"]


def l2_term(model) -> torch.Tensor:
    """Σ θ² over all parameters (a scalar tensor, differentiable)."""
    return sum(p.pow(2).sum() for p in model.parameters())


def _epoch(model, opt, data, l2: float, batch: int, gen) -> float:
    """One pass over the training data; the sample-weighted mean cross-entropy (without the L2 term)."""
    model.train()
    tot, cnt = 0.0, 0
    for idx in batches(data.x_train.shape[0], batch, gen):
        idx = idx.to(data.x_train.device)
        x, y = data.x_train[idx], data.y_train[idx]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        (loss + l2 * l2_term(model) if l2 > 0 else loss).backward()
        opt.step()
        tot += float(loss.detach()) * y.shape[0]
        cnt += y.shape[0]
    return tot / cnt


def train_model(model, data, l2: float, s: dict, seed: int) -> dict:
    """Adam + L2 penalty, early stopping on the epoch-mean training CE (patience); keeps the best weights.

    Returns ``{"epochs", "best_epoch_train_loss", "stopped_early"}``; ``stopped_early`` is False when the
    ``max_epochs`` cap ended training before the patience ran out.

    Raises:
        FloatingPointError: the training loss became NaN or inf.
    """
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    gen = torch.Generator().manual_seed(seed)
    best, best_state, bad, epochs, stopped = math.inf, None, 0, 0, False
    for epoch in range(1, s["max_epochs"] + 1):
        train_loss = _epoch(model, opt, data, l2, s["batch"], gen)
        epochs = epoch
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training diverged at L2={l2} epoch {epoch}")
        if train_loss < best:
            best, best_state, bad = train_loss, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= s["patience"]:
                stopped = True
                break
    model.load_state_dict(best_state)
    model.eval()
    return {"epochs": epochs, "best_epoch_train_loss": best, "stopped_early": stopped}


@torch.no_grad()
def evaluate(model, x, y, bs=2000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (as it is) on ``x [N, ...]``, ``y [N]``."""
    loss, correct = 0.0, 0
    for i in range(0, x.shape[0], bs):
        out = model(x[i:i + bs])
        loss += float(F.cross_entropy(out, y[i:i + bs], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + bs]).sum())
    return loss / x.shape[0], correct / x.shape[0]
