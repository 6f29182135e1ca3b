"""Regularisers as composable pieces.

Each piece changes one part of training through a hook the trainer calls:

| piece | hook |
| --- | --- |
| [`Dropout`][lamda.regularizers.Dropout] (p) | `configure_model`: sets `p` of every `nn.Dropout` |
| [`WeightDecay`][lamda.regularizers.WeightDecay] (wd) | `optimizer_kwargs`: `weight_decay` of the optimiser |
| [`Augmentation`][lamda.regularizers.Augmentation] | `transform`: random affine batch augmentation |
| [`LabelSmoothing`][lamda.regularizers.LabelSmoothing] (ε) | `label_smoothing`: the data loss's smoothing |
| [`SAM`][lamda.regularizers.SAM] (ρ) | `sam_rho`: the trainer wraps the optimiser in [`lamda.sam.SAM`][lamda.sam.SAM] |
| [`InputGradientPenalty`][lamda.regularizers.InputGradientPenalty] | `penalty`: `scale · mean_i ‖∇_x loss_i‖²` |
| [`LambdaPenalty`][lamda.regularizers.LambdaPenalty] | `penalty`: `scale · mean(abs(d_n))` over n ≤ order, K directions, optionally only on samples whose label is in `classes` |

[`RegularizerSet`][lamda.regularizers.RegularizerSet] combines any number of pieces (at most one of each kind for the
non-additive ones) and is what the trainer consumes.  Penalties return a differentiable scalar
so their value (and share of the loss) can be logged.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from lamda_ext.batches import is_batch, take_rows
from lamda_ext.checks import check_order
from lamda_ext.memory import Budget, resolve_budget

from .data import Augmenter

__all__ = ["Regularizer", "Dropout", "WeightDecay", "Augmentation", "LabelSmoothing", "SAM",
           "InputGradientPenalty", "LambdaPenalty", "RegularizerSet"]


class Regularizer:
    """Base class: every hook is a no-op."""

    name = "regularizer"

    def configure_model(self, model: nn.Module) -> None:
        """Change the model before training (default: nothing)."""
        pass

    def optimizer_kwargs(self) -> dict:
        """Keyword arguments for the optimizer (default: none)."""
        return {}

    def transform(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The batch ``x`` ``[B, ...]`` as training sees it (default: unchanged)."""
        return x

    label_smoothing: float = 0.0
    sam_rho: float | None = None

    def penalty_share(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      part: tuple[int, int]) -> torch.Tensor | None:
        """This rank's share of ``penalty(model, x, y)`` for samples ``part = (lo, hi)`` of the global batch.

        The global batch is ``x [N, …]``; the shares of all ranks sum to the global value. Default: the penalty of the
        rank's samples weighted by ``(hi - lo) / N`` (exact for a mean over samples).
        """
        lo, hi = part
        if hi <= lo:
            return None
        v = self.penalty(model, x[lo:hi], y[lo:hi])
        return None if v is None else v * ((hi - lo) / x.shape[0])

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """A differentiable scalar added to the loss of the batch, or None (default: None)."""
        return None

    def describe(self) -> dict:
        """The settings, for ``config.json``."""
        return {"name": self.name}


def _check_nonneg(name, v):
    if not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"{name} must be a number >= 0, got {v!r}")
    return float(v)


class Dropout(Regularizer):
    """Dropout with probability ``p`` in every ``nn.Dropout`` of the model."""
    name = "dropout"

    def __init__(self, p: float):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = float(p)

    def configure_model(self, model):
        """Set ``p`` of every dropout module (ValueError when the model has none)."""
        mods = [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
        if not mods:
            raise ValueError(f"{type(model).__name__} has no nn.Dropout module to set p={self.p} on")
        for m in mods:
            m.p = self.p

    def describe(self):
        """The settings, for ``config.json``."""
        return {"name": self.name, "p": self.p}


class WeightDecay(Regularizer):
    """L2 weight decay ``weight_decay`` through the optimizer."""
    name = "weight_decay"

    def __init__(self, weight_decay: float):
        self.weight_decay = _check_nonneg("weight_decay", weight_decay)

    def optimizer_kwargs(self):
        """``{"weight_decay": weight_decay}``."""
        return {"weight_decay": self.weight_decay}

    def describe(self):
        """The settings, for ``config.json``."""
        return {"name": self.name, "weight_decay": self.weight_decay}


class Augmentation(Regularizer):
    """Random affine augmentation of every training batch (an ``Augmenter``)."""
    name = "augmentation"

    def __init__(self, augmenter: Augmenter):
        self.augmenter = augmenter

    @classmethod
    def for_dataset(cls, dataset: str, rotation: float | None = None) -> "Augmentation":
        """The study's augmentation of ``dataset`` (``Augmenter.for_dataset``)."""
        return cls(Augmenter.for_dataset(dataset, rotation=rotation))

    def transform(self, x, generator):
        """The batch augmented, drawing from ``generator``."""
        return self.augmenter(x, generator)

    def describe(self):
        """The settings, for ``config.json``."""
        return {"name": self.name, **self.augmenter.describe()}


class LabelSmoothing(Regularizer):
    """Label smoothing ``epsilon`` of the cross-entropy."""
    name = "label_smoothing"

    def __init__(self, epsilon: float):
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {epsilon}")
        self.label_smoothing = float(epsilon)

    def describe(self):
        """The settings, for ``config.json``."""
        return {"name": self.name, "epsilon": self.label_smoothing}


class SAM(Regularizer):
    """Sharpness-aware minimisation with radius ``rho``: the trainer wraps the optimizer in ``lamda.sam.SAM``."""
    name = "sam"

    def __init__(self, rho: float):
        if not rho > 0:
            raise ValueError(f"SAM rho must be > 0, got {rho}")
        self.sam_rho = float(rho)

    def describe(self):
        """The settings, for ``config.json``."""
        return {"name": self.name, "rho": self.sam_rho}


class InputGradientPenalty(Regularizer):
    """``scale · mean_i ||∂ loss_i / ∂ x_i||²`` (double back-propagation)."""

    name = "input_gradient_penalty"

    def __init__(self, scale: float, label_smoothing: float = 0.0):
        self.scale = _check_nonneg("input gradient penalty scale", scale)
        self.ls = float(label_smoothing)

    def penalty(self, model, x, y):
        """``scale · mean_i ||∂ loss_i / ∂ x_i||²`` for the batch, differentiable."""
        x = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum", label_smoothing=self.ls)
        (g,) = torch.autograd.grad(loss, x, create_graph=True)
        return self.scale * g.pow(2).flatten(1).sum(1).mean()

    def describe(self):
        """The settings, for ``config.json``."""
        return {"name": self.name, "scale": self.scale}


class LambdaPenalty(Regularizer):
    """``scale · mean |d_n|`` over n = 1..order, K random input directions and the selected samples.

    ``classes``: only samples whose (training) label is in this set are penalised; with no selected
    sample in a batch the penalty is 0.  ``max_points`` caps the number of samples per batch
    (the first ones of the shuffled batch).  The derivatives come from
    ``lamda_ext.directional_derivs`` (differentiable with respect to the parameters) within
    ``memory_budget`` (bytes or ``"auto"``; a call that does not fit is split and, for the backward pass,
    recomputed chunk by chunk: the same penalty and gradient).

    ``x`` may be a Hugging Face batch (a dict or ``BatchEncoding`` of tensors, ``y=None``: the model's own
    loss from ``batch["labels"]``); its directions are then in embedding space (``wrt="inputs_embeds"``) for
    token inputs, in pixel space for ``pixel_values``. ``classes`` needs plain labels ``y`` and is refused there.
    """

    name = "lambda_penalty"

    def __init__(self, scale: float, order: int = 3, directions: int = 2, classes: Iterable[int] | None = None,
                 backend: str = "auto", max_points: int | None = None, seed: int = 0, memory_budget: Budget = "auto"):
        self.scale = _check_nonneg("lambda penalty scale", scale)
        check_order(order, backend)
        if directions < 1:
            raise ValueError(f"directions must be >= 1, got {directions}")
        resolve_budget(memory_budget, torch.device("cpu"))          # refuses a malformed budget now, not mid-training
        self.order, self.directions, self.backend = int(order), int(directions), backend
        self.classes = None if classes is None else sorted({int(c) for c in classes})
        self.max_points = max_points
        self.memory_budget = memory_budget
        self.generator = torch.Generator().manual_seed(int(seed))

    def select(self, y: torch.Tensor) -> torch.Tensor:
        """Boolean mask ``[B]`` of the samples the penalty applies to."""
        if self.classes is None:
            m = torch.ones_like(y, dtype=torch.bool)
        else:
            m = torch.isin(y, torch.tensor(self.classes, device=y.device))
        if self.max_points is not None:
            m &= torch.cumsum(m.long(), 0) <= self.max_points
        return m

    def _batch_penalty(self, model, batch):
        """The penalty of a Hugging Face batch: its first ``max_points`` samples, the model's own loss."""
        import lamda_ext
        if self.classes is not None:
            raise ValueError("LambdaPenalty(classes=...) selects samples by their label y; a dict batch carries "
                             "token labels: select the samples before passing the batch")
        if self.max_points is not None:
            batch = take_rows(batch, slice(0, self.max_points))
        wrt = "pixel_values" if "pixel_values" in batch else "inputs_embeds"
        d = lamda_ext.directional_derivs(model, batch, None, order=self.order, directions=self.directions, wrt=wrt,
                                         backend=self.backend, generator=self.generator,
                                         memory_budget=self.memory_budget)
        return self.scale * d.abs().mean()

    def penalty(self, model, x, y=None):
        """``scale · mean |d_n|`` over the selected samples (0 when none is selected), differentiable.

        Args:
            model: the network.
            x: inputs ``[B, *S]``, or a Hugging Face batch (dict of tensors with leading size B).
            y: labels ``[B]`` (None for a batch that holds its ``labels``).

        Returns:
            A differentiable scalar.
        """
        import lamda_ext
        if is_batch(x):
            return self._batch_penalty(model, x)
        m = self.select(y)
        if not bool(m.any()):
            return x.new_zeros(())
        d = lamda_ext.directional_derivs(model, x[m], y[m], order=self.order, directions=self.directions,
                                         wrt="input", backend=self.backend, generator=self.generator,
                                         memory_budget=self.memory_budget)
        return self.scale * d.abs().mean()

    def penalty_share(self, model, x, y, part):
        """Exact share under data parallelism.

        The directions are drawn for the whole batch's selected samples (the same draw as
        [`penalty`][lamda.regularizers.LambdaPenalty.penalty], so every rank's generator stays in step) and this rank
        differentiates its own ones; the shares sum to [`penalty`][lamda.regularizers.LambdaPenalty.penalty] of the
        whole batch. Plain tensors only (the trainer's batches).
        """
        import lamda_ext
        if is_batch(x):
            raise TypeError("LambdaPenalty.penalty_share takes the trainer's tensors x [B, *S], y [B]; "
                            "for a dict batch call penalty() on each rank's own batch")
        lo, hi = part
        m = self.select(y)
        n_sel = int(m.sum())
        if n_sel == 0:
            return x.new_zeros(())
        idx = torch.nonzero(m).squeeze(1)
        dirs = lamda_ext.random_directions(x[idx], self.directions, self.generator)     # [K, n_sel, *S]
        mine = (idx >= lo) & (idx < hi)
        if not bool(mine.any()):
            return x.new_zeros(())
        d = lamda_ext.directional_derivs(model, x[idx[mine]], y[idx[mine]], order=self.order,
                                         directions=dirs[:, mine], wrt="input", backend=self.backend,
                                         memory_budget=self.memory_budget)
        return self.scale * d.abs().sum() / (n_sel * self.directions * self.order)

    def describe(self):
        """The settings, for ``config.json``."""
        return {"name": self.name, "scale": self.scale, "order": self.order, "directions": self.directions,
                "classes": self.classes, "backend": self.backend, "max_points": self.max_points,
                "memory_budget": self.memory_budget}


class RegularizerSet:
    """A combination of regularisers, queried by the trainer."""

    def __init__(self, pieces: Sequence[Regularizer] = ()):
        pieces = list(pieces)
        for p in pieces:
            if not isinstance(p, Regularizer):
                raise TypeError(f"expected Regularizer pieces, got {type(p).__name__}")
        for kind in ("dropout", "weight_decay", "augmentation", "label_smoothing", "sam"):
            if sum(p.name == kind for p in pieces) > 1:
                raise ValueError(f"at most one {kind} regulariser per run, got {sum(p.name == kind for p in pieces)}")
        self.pieces = pieces

    def __iter__(self):
        return iter(self.pieces)

    def configure_model(self, model: nn.Module) -> nn.Module:
        """Apply every piece's ``configure_model``; returns the model."""
        for p in self.pieces:
            p.configure_model(model)
        return model

    def optimizer_kwargs(self) -> dict:
        """The pieces' optimizer keyword arguments, merged."""
        out: dict = {}
        for p in self.pieces:
            out.update(p.optimizer_kwargs())
        return out

    def transform(self, x, generator):
        """The batch after every piece's ``transform``."""
        for p in self.pieces:
            x = p.transform(x, generator)
        return x

    @property
    def label_smoothing(self) -> float:
        """The label smoothing of the data loss (0 without a ``LabelSmoothing`` piece)."""
        return max((p.label_smoothing for p in self.pieces), default=0.0)

    @property
    def sam_rho(self) -> float | None:
        """SAM's radius ρ, or None without a ``SAM`` piece."""
        rhos = [p.sam_rho for p in self.pieces if p.sam_rho is not None]
        return rhos[0] if rhos else None

    @property
    def has_penalty(self) -> bool:
        """Whether some piece adds a penalty to the loss."""
        return any(type(p).penalty is not Regularizer.penalty for p in self.pieces)

    def penalties(self, model, x, y, part: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Every penalty's differentiable value, keyed by name.

        With ``part = (lo, hi)`` (data-parallel training: this rank holds samples lo..hi-1 of the global batch ``x``)
        this rank's share of it.
        """
        out = {}
        for p in self.pieces:
            v = p.penalty(model, x, y) if part is None else p.penalty_share(model, x, y, part)
            if v is not None:
                out[p.name] = out[p.name] + v if p.name in out else v
        return out

    def describe(self) -> list[dict]:
        """Every piece's settings, for ``config.json``."""
        return [p.describe() for p in self.pieces]
