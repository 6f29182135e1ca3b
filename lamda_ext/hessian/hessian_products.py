"""The Hessian's per-slice work for [`HessianOperator`][lamda_ext.hessian.HessianOperator]: HVPs and quadratic forms.

The operator cuts its batches into slices of samples within its ``memory_budget``
([`budget`][lamda_ext.hessian.budget]). Products are forward-over-reverse HVPs ([`lamda_ext.hvp`][lamda_ext.hvp]). Every
product of a spectral method uses the same slices, so each slice is linearised once
([`lamda_ext.hvp.LinearizedHVP`][lamda_ext.hvp.LinearizedHVP]: one primal forward and backward, the intermediates kept)
and every later product replays only the tangent pass, as long as the kept intermediates fit in what the budget leaves;
slices beyond it are recomputed per product.

Quadratic forms ``zᵀHz`` (Hutchinson probes) need no HVP: ``zᵀHz = d²/dt² L(θ + t z)`` at t = 0, the second
directional derivative. For ``(x, y)`` batches when every trainable parameter is differentiated, one reverse pass
per slice gives the adjoint of every op output, and each probe then needs only a first-order Taylor pass whose
second-order terms are contracted with those adjoints where they arise
([`lamda_ext.taylor.quadratic`][lamda_ext.taylor.quadratic]); models or losses that contraction does not cover take the
plain order-2 Taylor run ([`lamda_ext.directional_derivs`][lamda_ext.directional_derivs]).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._ext import build_info
from .._state import RngReplay, fresh_input
from ..checks import check_hvp_inputs
from ..derivs import directional_derivs
from ..hvp import LinearizedHVP, loss_hvp
from ..linearization import default_chunk
from ..params import Bound, functional_state, model_loss_fn
from ..taylor.impl import Composite, Fused
from ..taylor.quadratic import QuadraticForms

__all__ = ["HessianProducts", "LossCall", "TAYLOR_SAMPLES"]

TAYLOR_SAMPLES = 2048   # probes × samples per Taylor pass at most (activations [probes·B, ...]), within the budget


class LossCall(nn.Module):
    """``loss_fn(model, batch)`` as a module, so that ``functional_call`` can substitute the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.fn = loss_fn

    def forward(self, batch):
        """The loss of ``batch`` (a scalar tensor), computed on a copy of the batch."""
        out = self.fn(self.model, fresh_input(batch))     # the loss may change the batch in place: a copy
        if not isinstance(out, torch.Tensor) or out.dim() != 0:
            raise ValueError("loss_fn(model, batch) must return a scalar tensor (the batch's mean or summed loss), "
                             f"got {type(out).__name__} of shape {list(getattr(out, 'shape', []))}")
        return out

    def of_params(self, names: list[str], batch) -> Bound:
        """``params dict -> loss`` on ``batch`` through ``functional_call``.

        The other parameters and buffers are fixed: a [`Bound`][lamda_ext.params.Bound] over them and the batch.
        """
        def f(p, state, batch):
            return functional_call(self, ({f"model.{k}": v for k, v in p.items()}, state), (batch,))
        return Bound(f, {f"model.{k}": v for k, v in functional_state(self.model, set(names)).items()}, batch)


class HessianProducts:
    """HVPs and quadratic forms of the loss Hessian, slice by slice, for the operator ``op``.

    ``op`` provides the model, loss, parameters and options. Per kind of work (``"products"``, ``"forms"``):
    `prepare` a slice (its linearisation, or its adjoints), `apply` a prepared slice to rows, or `direct` (one
    forward-over-reverse HVP, or the plain order-2 Taylor run where the forms' contraction does not apply).
    """

    def __init__(self, op):
        self.op = op
        self._taylor_ok = True
        self._contract_ok = True
        self._eager_ok = True     # False once an eager HVP met an op without a forward-mode rule

    def _loss_of_params(self, batch) -> Callable:
        op = self.op
        names = list(op.params)
        if op.batch_loss_fn is None:
            x, y = batch
            return model_loss_fn(op.model, x, y, op.loss_fn, names)
        return LossCall(op.model, op.batch_loss_fn).of_params(names, batch)

    def weight(self, n: int) -> float:
        """The factor that turns a slice's result into its share of the summed loss's.

        A loss_fn of ``reduction="sum"`` gives the slice's sum already.
        """
        return 1.0 if self.op.batch_loss_fn is not None and self.op.reduction == "sum" else float(n)

    @staticmethod
    def store(kind: str) -> str:
        """The cache store of a kind's prepared slices."""
        return "hessian" if kind == "products" else "adjoints"

    def has_direct(self, kind: str) -> bool:
        """Whether one row can be evaluated without preparing the slice (a single eager HVP; not where it failed)."""
        return kind == "products" and self._eager_ok

    def row_cap(self, kind: str, n: int) -> int | None:
        """The most rows one evaluation may take on a slice of ``n`` samples (None: no limit).

        ``chunk``, else for products one at a time on the CPU and all at once elsewhere, for the forms' Taylor passes
        ``TAYLOR_SAMPLES // n``.
        """
        if self.op.chunk is not None:
            return self.op.chunk
        return default_chunk(self.op.device) if kind == "products" else max(1, TAYLOR_SAMPLES // n)

    def prepare(self, kind: str, shard, batch, n: int):
        """A slice prepared for ``kind``.

        Its [`LinearizedHVP`][lamda_ext.hvp.LinearizedHVP] (products) or its
        [`QuadraticForms`][lamda_ext.taylor.quadratic.QuadraticForms] (forms; None where they do not apply).
        """
        op = self.op
        if kind == "products":
            start = None if op.deterministic else RngReplay(op.device)   # dropout: every row sees one mask
            return LinearizedHVP(self._loss_of_params(batch), op.params, start)
        return self._contracted_forms(batch) if self.forms_available else None

    def apply(self, kind: str, entry, rows: torch.Tensor) -> torch.Tensor:
        """``H_s v`` ``[k, P]`` (products) or ``v ᵀH_s v`` ``[k]`` float64 (forms) of a prepared slice, for ``rows``."""
        if kind == "products":
            return entry(rows, rows.shape[0])
        with torch.no_grad():
            return entry(rows).to(torch.float64)

    def direct(self, kind: str, shard, batch, n: int, rows: torch.Tensor) -> torch.Tensor:
        """`apply`'s result without a prepared slice.

        HVPs by ``jvp`` (a trace for several rows), forms by the plain order-2 Taylor run within what the budget
        leaves.
        """
        op = self.op
        if kind == "products":
            try:
                return self.probe(shard, batch, n, rows)
            except NotImplementedError:       # no eager forward-mode rule: the linearisation's way
                return self.apply(kind, self.prepare(kind, shard, batch, n), rows)
        x, y = batch
        left = max(1, op.memory_budget - op.cache.nbytes)
        with torch.no_grad():
            q = directional_derivs(op.model, x, y, order=2, directions=rows, loss=op.loss, wrt="params",
                                   backend=self._backend(), label_smoothing=op.label_smoothing,
                                   memory_budget=left)[:, 1]
        return q.to(torch.float64)

    def probe(self, shard, batch, n: int, rows: torch.Tensor) -> torch.Tensor:
        """``H_s v`` ``[k, P]`` of the slice by eager forward-over-reverse (what the budget's bound measures).

        Attention takes torch's math kernel (the fused CPU kernels have no forward-mode rule). Raises
        NotImplementedError (and `has_direct` is False from then on) where an op has no forward-mode rule.
        """
        try:
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                return loss_hvp(self._loss_of_params(batch), self.op.params, rows, rows.shape[0]).detach()
        except NotImplementedError:
            self._eager_ok = False
            raise

    # ------------------------------------------------------------------ quadratic forms by Taylor passes
    @property
    def forms_available(self) -> bool:
        """Whether the forms use Taylor passes rather than HVPs.

        They do for ``(x, y)`` data, all trainable parameters and a deterministic setup.
        """
        op = self.op
        return (op.batch_loss_fn is None and op.deterministic and self._taylor_ok
                and list(op.params) == [n for n, p in op.model.named_parameters() if p.requires_grad])

    def disable_forms(self) -> None:
        """Use HVPs for the quadratic forms from now on (the Taylor passes do not apply to this model)."""
        self._taylor_ok = False

    def _backend(self) -> str:
        info = build_info()
        fused = info["cpu"] if self.op.device.type == "cpu" else info["cuda_available"]
        return "fused" if fused else "taylor"

    def _contracted_forms(self, batch):
        """[`QuadraticForms`][lamda_ext.taylor.quadratic.QuadraticForms] of a slice, or None.

        One adjoint pass, then first-order Taylor passes per block of probes. None where the model or loss needs the
        plain order-2 Taylor run (the same numbers, more arithmetic). The slice is checked first (one plain forward).
        """
        if not self._contract_ok:
            return None
        op = self.op
        x, y = batch
        y = check_hvp_inputs(op.model, x, y, op.loss, "params", forward=True)
        try:
            return QuadraticForms(op.model, x, y, op.loss, op.label_smoothing,
                                  Fused() if self._backend() == "fused" else Composite())
        except (NotImplementedError, RuntimeError):
            self._contract_ok = False
            return None
