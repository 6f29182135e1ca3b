"""Batches as Hugging Face models take them.

A mapping of tensors passed to the model as keyword arguments, the model's own loss from ``batch["labels"]`` taken per
sample, and directions in the space of the input embeddings or the pixels.

[`prepare`][lamda_ext.batches.prepare] turns the arguments of an entry point — ``(model, x, y, loss, wrt, params)`` —
into what the engine takes: a module of one tensor ``[B, ...]``, that tensor, targets, a loss spec giving per-sample
losses ``[B]`` and ``wrt`` in ``("input", "params")``, held by a [`Problem`][lamda_ext.batches.Problem];
[`Problem.slice`][lamda_ext.batches.Problem.slice] gives the same problem on points ``[lo:hi]``. A plain tensor ``x``
passes through unchanged (with ``params=``, the model is seen through the selected parameters only). ``transformers`` is
never imported: a model is used through its ``forward`` keywords, ``get_input_embeddings()``, ``config`` and
``loss_type``.

The model's own loss per sample ([`sample_losses`][lamda_ext.batches.sample_losses]), by ``model.loss_type`` as
transformers sets it:

- causal LMs (``ForCausalLM``, ``ForConditionalGeneration``, and models without a ``loss_type``, as transformers
  itself defaults): logits ``[B, T, V]`` at position t predict ``labels[:, t + 1]``; ``ℓ_b`` is the mean
  cross-entropy over sample b's counted targets (labels ≠ -100 after the shift), 0 when it has none. The model's
  ``outputs.loss`` is the mean over all counted tokens of the batch, ``Σ_b n_b ℓ_b / Σ_b n_b`` with ``n_b``
  sample b's counted tokens: the mean of ``ℓ_b`` when every sample counts as many tokens, else that weighted mean.
- masked LMs and token classification (``ForMaskedLM``, ``ForTokenClassification``): the same without the shift.
- sequence, image, audio and video classification: ``config.problem_type`` as the model resolves it —
  regression: the squared error averaged over the label dims; single-label: the cross-entropy (0 for a label
  -100); multi-label: binary cross-entropy with logits averaged over the labels. ``outputs.loss`` is the mean of
  ``ℓ_b`` (single-label: over the samples whose label is not -100).

Example:
    Any module that takes keyword arguments works the same way; here a two-layer stand-in for a causal LM (a real
    one, e.g. ``transformers.GPT2LMHeadModel``, is used identically — see ``examples/hf_lambda.py``):

    >>> import torch, torch.nn.functional as F, lamda_ext
    >>> from lamda_ext.batches import sample_losses
    >>> class TinyLM(torch.nn.Module):
    ...     loss_type = "ForCausalLM"                      # as transformers sets it
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.emb, self.head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10)
    ...     def get_input_embeddings(self):
    ...         return self.emb
    ...     def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
    ...         h = self.emb(input_ids) if inputs_embeds is None else inputs_embeds
    ...         return {"logits": self.head(torch.tanh(h))}
    >>> _ = torch.manual_seed(0)
    >>> lm = TinyLM().double()
    >>> ids = torch.randint(0, 10, (2, 5))
    >>> batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    >>> losses = sample_losses(lm, batch)                  # [B]: shifted, mean over each sample's tokens
    >>> logits = lm(input_ids=ids)["logits"]
    >>> torch.allclose(losses.mean(), F.cross_entropy(logits[:, :-1].reshape(-1, 10), ids[:, 1:].reshape(-1)))
    True
    >>> d = lamda_ext.directional_derivs(lm, batch, order=3, directions=2, wrt="inputs_embeds")   # y=None: own loss
    >>> tuple(d.shape)
    (2, 2, 3)
    >>> tuple(lamda_ext.hvp(lm, batch, None, torch.randn(50, dtype=torch.float64), params="head").shape)
    (50,)
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .losses import IGNORE_INDEX
from .params import ParameterSubset, select_parameters
from .taylor.series import TaylorSeries

__all__ = ["is_batch", "take_rows", "WRT_NAMES", "Problem", "prepare", "sample_losses", "own_loss_fn", "holds_batches",
           "OwnLoss"]

WRT_NAMES = ("input", "params", "inputs_embeds", "pixel_values")
_SHIFTED = ("ForCausalLM", "ForConditionalGeneration")
_TOKENWISE = ("ForMaskedLM", "ForTokenClassification")
_PER_SEQUENCE = ("ForSequenceClassification", "ForImageClassification", "ForAudioClassification",
                 "ForVideoClassification")


def is_batch(x) -> bool:
    """True when ``x`` is a mapping of keyword arguments (a dict or a ``BatchEncoding``)."""
    return isinstance(x, Mapping)


def holds_batches(data) -> bool:
    """True when ``data`` is a batch mapping, or a list/tuple or ``DataLoader`` whose (first) batch is one."""
    if is_batch(data):
        return True
    if isinstance(data, (list, tuple)):
        return len(data) > 0 and is_batch(data[0])
    if isinstance(data, torch.utils.data.DataLoader):      # re-iterable: looking at the first batch costs one
        return is_batch(next(iter(data), None))
    return False


def _rows(batch: Mapping) -> int:
    for key in ("input_ids", "inputs_embeds", "pixel_values", "labels"):
        t = batch.get(key)
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    raise ValueError("the batch must hold input_ids, inputs_embeds or pixel_values (a tensor [B, ...])")


def _take(batch: Mapping, index, rows: int) -> dict:
    """Every tensor of ``batch`` with leading size ``rows`` indexed by ``index`` (a slice or positions)."""
    return {k: (v[index] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v)
            for k, v in batch.items()}


def take_rows(batch: Mapping, index) -> dict:
    """The samples ``index`` (a slice or positions) of a batch: every tensor with the batch's leading size indexed.

    Args:
        batch: a dict or ``BatchEncoding`` whose tensors have leading size B (``input_ids``, ``pixel_values``, ...).
        index: a slice or a ``[B']`` tensor of positions.

    Returns:
        A dict with the same keys; tensors of leading size B are indexed, anything else is kept as is.
    """
    return _take(batch, index, _rows(batch))


def _logits(out) -> torch.Tensor:
    """The logits of a model's output (``out.logits``, ``out["logits"]``, ``out[0]`` or the output itself)."""
    if isinstance(out, (torch.Tensor, TaylorSeries)):
        return out
    logits = getattr(out, "logits", None)
    if logits is None and isinstance(out, Mapping):
        logits = out.get("logits")
    if logits is None and isinstance(out, (tuple, list)) and out:
        logits = out[0]
    if logits is None:
        raise TypeError(f"the model returned {type(out).__name__} without logits: the derivatives need them")
    return logits


def _accepts(net: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


class BatchModel(ParameterSubset):
    """A model that takes keyword batches, as a module of one tensor ``x`` returning the logits.

    ``slot="inputs_embeds"``/``"pixel_values"``: ``x`` ``[B, ...]`` is passed as that keyword, with the rest of the
    batch (``input_ids`` dropped, ``labels`` never passed, ``use_cache=False`` where the model takes it).
    ``slot=None`` (``wrt="params"``): ``x`` ``[B]`` holds the positions of the samples in the batch: the whole
    batch is passed, or the rows at the positions of an ``x`` cut from it. The buffers and train/eval mode are the
    wrapped model's; its parameters too, or those ``selected``
    ([`lamda_ext.params.ParameterSubset`][lamda_ext.params.ParameterSubset]).
    """

    def __init__(self, net: nn.Module, inputs: Mapping, slot: Optional[str], selected: Optional[dict] = None):
        super().__init__(net, selected)
        self.slot = slot
        self.inputs = {k: v for k, v in inputs.items() if k != "labels" and not (slot and k == "input_ids")}
        if _accepts(net, "use_cache"):
            self.inputs.setdefault("use_cache", False)
        self.rows = _rows(inputs)

    def forward(self, x):
        kw = dict(self.inputs)
        if self.slot is None:
            if x.shape[0] != self.rows:        # positions cut from the whole batch's: take those rows
                kw = _take(kw, x.detach().long(), self.rows)
        elif x.shape[0] != self.rows:
            raise ValueError(f"x has {x.shape[0]} points but the batch {self.rows}: take points of a prepared "
                             "problem with Problem.slice(lo, hi)")
        else:
            kw[self.slot] = x
        return _logits(self.model(**kw))


def _loss_kind(model: nn.Module) -> str:
    kind = getattr(model, "loss_type", None) or "ForCausalLM"     # transformers' own default
    for group in _SHIFTED + _TOKENWISE + _PER_SEQUENCE:
        if group in kind:
            return group
    raise NotImplementedError(f"the own loss of a model with loss_type={kind!r} is not available per sample; "
                              "pass targets y and a loss callable (logits, y) -> per-sample loss [B]")


def _check_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    classes = logits.shape[-1]
    bad = ((labels < 0) & (labels != IGNORE_INDEX)) | (labels >= classes)
    if bool(bad.any()):
        pos = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"label {int(labels[pos])} at position {list(pos)} is out of range for {classes} classes "
                         f"(labels are in 0..{classes - 1}, or {IGNORE_INDEX} for a target that does not count)")


def _token_losses(logits, labels: torch.Tensor, shift: bool):
    """Mean cross-entropy over each sample's counted targets: logits ``[B, T, C]``, labels ``[B, T]`` → ``[B]``."""
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    b, t = labels.shape
    tok = F.cross_entropy(logits.reshape(b * t, logits.shape[-1]), labels.reshape(-1), reduction="none")
    counted = (labels != IGNORE_INDEX).to(logits.dtype)
    return (tok.reshape(b, t) * (counted / counted.sum(1, keepdim=True).clamp_min(1.0))).sum(1)


def _sequence_losses(logits, labels: torch.Tensor, config):
    """Per-sample loss of a sequence/image classifier as its ``config.problem_type`` (resolved as the model does)."""
    b = logits.shape[0]
    classes = getattr(config, "num_labels", logits.shape[-1])
    problem = getattr(config, "problem_type", None) or (
        "regression" if classes == 1 else
        "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification")
    if problem == "single_label_classification":
        return F.cross_entropy(logits.reshape(b, classes), labels.reshape(b).long(), reduction="none")
    z, y = logits.reshape(b, -1), labels.reshape(b, -1).to(logits.dtype)
    if problem == "regression":
        d = z - y
        return (d * d).mean(1)
    if problem == "multi_label_classification":       # log(1 + e^z) − y·z (exact to e^-40 past the threshold)
        return (F.softplus(z, beta=1.0, threshold=40.0) - y * z).mean(1)
    raise ValueError(f"unknown problem_type {problem!r} in the model's config")


class OwnLoss:
    """The model's own loss per sample (see the module docstring) as a loss callable ``(logits, labels) -> [B]``.

    Works on tensors and on Taylor series (every backend) and makes no data-dependent check (traceable);
    [`check`][lamda_ext.batches.OwnLoss.check] validates the labels against a plain forward's logits.
    """

    def __init__(self, model: nn.Module):
        self.kind = _loss_kind(model)
        self.config = getattr(model, "config", None)

    def check(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the first class label out of range (-100 excepted) for these logits."""
        if labels.dtype.is_floating_point or not isinstance(logits, torch.Tensor):
            return
        if self.kind in _SHIFTED or self.kind in _TOKENWISE:
            _check_labels(logits, labels)
        elif logits.shape[-1] > 1 and labels.numel() == labels.shape[0]:
            _check_labels(logits.reshape(labels.shape[0], -1), labels.reshape(-1))

    def __call__(self, logits, labels: torch.Tensor):
        """The per-sample losses ``[B]`` for ``logits`` and ``labels`` (module docstring for each model type)."""
        if self.kind in _SHIFTED or self.kind in _TOKENWISE:
            if labels.dim() != 2 or logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(labels.shape):
                raise ValueError(f"token labels must be [B, T] for logits [B, T, C]: got labels {list(labels.shape)}"
                                 f" and logits {list(logits.shape)}")
            return _token_losses(logits, labels, self.kind in _SHIFTED)
        return _sequence_losses(logits, labels, self.config)

    def __repr__(self) -> str:
        return f"OwnLoss({self.kind})"


def _net(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, ParameterSubset) else model


def sample_losses(model: nn.Module, batch: Mapping) -> torch.Tensor:
    """The model's own loss of every sample of ``batch`` ``[B]`` (module docstring), from one plain forward.

    Args:
        model: a transformers model with a head (``...ForCausalLM``, ``...ForSequenceClassification``, ...).
        batch: a mapping of its keyword arguments with ``labels``.

    Returns:
        ``[B]`` per-sample losses in the logits' dtype (differentiable with respect to the parameters).
    """
    if "labels" not in batch:
        raise ValueError("the model's own loss needs batch['labels']")
    return OwnLoss(_net(model))(BatchModel(model, batch, None)(_positions(batch, model)), batch["labels"])


def _positions(batch: Mapping, model: nn.Module) -> torch.Tensor:
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.dtype.is_floating_point else torch.get_default_dtype()
    device = p.device if p is not None else None
    return torch.arange(_rows(batch), dtype=dtype, device=device)


def own_loss_fn(reduction: str = "mean") -> Callable:
    """``loss_fn(model, batch) -> scalar``: the mean (or sum) of `sample_losses` over the batch."""
    if reduction == "sum":
        return lambda model, batch: sample_losses(model, batch).sum()
    return lambda model, batch: sample_losses(model, batch).mean()


@dataclass
class Problem:
    """One entry point's arguments as the engine takes them.

    Attributes:
        model: a module of one tensor ``x`` returning the output the loss takes.
        x: ``[B, ...]``: the input (``wrt="input"``), the input embeddings or pixel values of a batch mapping, or
            the positions of its samples ``[B]`` (``wrt="params"``; the model picks those rows of the batch).
        y: the targets the loss takes (a batch's ``labels`` for its own loss).
        loss: a loss spec: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, y) -> [B]``.
        wrt: ``"input"`` or ``"params"``.
        mask: bool ``[B, T]``, the counted positions of a padded token batch (``attention_mask``), or None.
        source: what [`slice`][lamda_ext.batches.Problem.slice] rebuilds a batch mapping's problem from (None for a
            tensor ``x``).
    """
    model: nn.Module
    x: Any
    y: Any
    loss: Any
    wrt: str
    mask: Optional[torch.Tensor] = None
    source: Optional[tuple] = None

    def slice(self, lo: int, hi: int) -> "Problem":
        """The same problem on points ``[lo:hi]`` (every tensor with the batch's leading size is cut)."""
        if self.source is None:
            n = self.x.shape[0]
            cut = (lambda t: t[lo:hi] if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == n else t)
            return replace(self, x=self.x[lo:hi], y=cut(self.y))
        net, batch, y, loss, wrt, params, label_smoothing = self.source
        rows = _rows(batch)
        y = y[lo:hi] if isinstance(y, torch.Tensor) and y.dim() > 0 and y.shape[0] == rows else y
        return _from_batch(net, _take(batch, slice(lo, hi), rows), y, loss, wrt, params, label_smoothing)

    def _mask_like(self, t: torch.Tensor) -> torch.Tensor:
        """``mask`` with trailing singleton dims, broadcastable against ``[..., B, T, *rest]``, in t's dtype."""
        return self.mask.reshape(tuple(self.mask.shape) + (1,) * (self.x.dim() - self.mask.dim())).to(t.dtype)

    def directions(self, dirs: torch.Tensor, drawn: bool = False) -> torch.Tensor:
        """Directions as the engine takes them: zero on positions the mask leaves out.

        Args:
            dirs: ``[K, B, *S]`` (per point) or ``[K, *S]`` (shared; per point once masked) for ``wrt="input"``,
                ``[K, P]`` for ``wrt="params"`` (returned as given).
            drawn: random unit directions: each point's is rescaled to unit norm over its counted positions.

        Returns:
            ``dirs``, or ``[K, B, *S]`` with the padded positions zeroed.
        """
        if self.mask is None or self.wrt != "input":
            return dirs
        out = (dirs if dirs.dim() == self.x.dim() + 1 else dirs.unsqueeze(1)) * self._mask_like(dirs)
        if drawn:
            norm = out.reshape(tuple(out.shape[:2]) + (-1,)).norm(dim=-1)
            out = out / norm.clamp_min(torch.finfo(out.dtype).tiny).reshape(tuple(norm.shape) + (1,) * (out.dim() - 2))
        return out

    def restrict(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` ``[B, *S]`` or ``[K, B, *S]`` with the positions the mask leaves out zeroed (HVP vectors)."""
        return t if self.mask is None or self.wrt != "input" else t * self._mask_like(t)


def _targets(net: nn.Module, batch: Mapping, y, loss, label_smoothing: float):
    """``(y, loss)`` for a batch mapping: given targets as they are, or the model's own loss of its labels."""
    if y is not None:
        return y, loss
    if "labels" not in batch:
        raise ValueError("y=None with a batch mapping means the model's own loss from batch['labels'], but the batch "
                         "has no 'labels': add them, or pass targets y (and a loss for the logits)")
    if callable(loss):
        return batch["labels"], loss
    if loss != "cross_entropy" or label_smoothing:
        raise ValueError("y=None with a batch mapping takes the model's own loss: loss=... and label_smoothing apply "
                         "to targets y you pass (or pass a loss callable (logits, labels) -> per-sample loss [B])")
    return batch["labels"], OwnLoss(net)


def _point(net: nn.Module, batch: Mapping, wrt: str) -> torch.Tensor:
    """The tensor the derivatives are taken at: the input embeddings, the pixel values, or sample positions."""
    if wrt == "params":
        return _positions(batch, net)
    if wrt == "inputs_embeds" and "inputs_embeds" not in batch:
        if "input_ids" not in batch:
            raise ValueError("wrt='inputs_embeds' needs batch['input_ids'] (or batch['inputs_embeds'])")
        embed = getattr(net, "get_input_embeddings", None)
        if embed is None or embed() is None:
            raise TypeError(f"wrt='inputs_embeds': {type(net).__name__} has no get_input_embeddings()")
        return embed()(batch["input_ids"])
    if wrt not in batch:
        raise ValueError(f"wrt={wrt!r} needs batch[{wrt!r}]; the batch holds {sorted(batch)}")
    return batch[wrt]


def _from_batch(net: nn.Module, batch: Mapping, y, loss, wrt: str, params, label_smoothing: float = 0.0) -> Problem:
    if not isinstance(net, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(net).__name__}")
    if wrt == "input":
        raise ValueError("x is a batch mapping: take derivatives with wrt='inputs_embeds' (token models), "
                         "'pixel_values' (vision models) or 'params'")
    batch = dict(batch)
    source = (net, batch, y, loss, wrt, params, label_smoothing)
    y, loss_spec = _targets(net, batch, y, loss, label_smoothing)
    model = BatchModel(net, batch, None if wrt == "params" else wrt,
                       None if params is None else select_parameters(net, params))
    mask = None
    am = batch.get("attention_mask")
    if wrt == "inputs_embeds" and isinstance(am, torch.Tensor) and am.dim() == 2 and not bool((am != 0).all()):
        mask = am != 0
    x = _point(net, batch, wrt)
    return Problem(model, x, y, loss_spec, "params" if wrt == "params" else "input", mask, source)


def prepare(model: nn.Module, x, y=None, *, loss="cross_entropy", wrt: str = "input", params=None,
            label_smoothing: float = 0.0) -> Problem:
    """The engine's view of one call's arguments.

    Args:
        model: the network.
        x: a tensor ``[B, ...]``, or a mapping of the model's keyword arguments (a dict or ``BatchEncoding``).
        y: targets; with a mapping, None means the model's own loss from ``x["labels"]`` (module docstring; a
            loss callable then receives the logits and those labels).
        loss: the loss spec of the entry point.
        wrt: ``"input"`` (a tensor x), ``"inputs_embeds"`` (a token batch: the embeddings of its ``input_ids``,
            padded positions get zero direction), ``"pixel_values"`` or ``"params"``.
        params: ``wrt="params"`` only: the parameters to differentiate
            ([`lamda_ext.params.select_parameters`][lamda_ext.params.select_parameters]); None: every parameter, as
            without a filter.
        label_smoothing: of the entry point (given targets only).

    Returns:
        A [`Problem`][lamda_ext.batches.Problem]; for a tensor ``x`` without ``params`` it holds the arguments
        unchanged.

    Raises:
        ValueError: ``wrt`` unknown or not meaningful for ``x``; a batch without what ``wrt`` or ``y=None`` needs.
    """
    if wrt not in WRT_NAMES:
        raise ValueError(f"wrt must be 'input' or 'params' (or 'inputs_embeds'/'pixel_values' with a batch mapping), "
                         f"got {wrt!r}")
    if params is not None and wrt != "params":
        raise ValueError(f"params= selects the parameters for wrt='params'; got wrt={wrt!r}")
    if is_batch(x):
        return _from_batch(model, x, y, loss, wrt, params, label_smoothing)
    if wrt in ("inputs_embeds", "pixel_values"):
        raise ValueError(f"wrt={wrt!r} takes x as a batch mapping (the model's keyword arguments); "
                         "for a tensor x use wrt='input'")
    if params is not None and isinstance(model, nn.Module):
        model = ParameterSubset(model, select_parameters(model, params))
    return Problem(model, x, y, loss, wrt)
