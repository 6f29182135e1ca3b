"""The Hessian's per-batch work for [`HessianOperator`][lamda_ext.hessian.HessianOperator]: HVPs and quadratic forms.

Products are forward-over-reverse HVPs ([`lamda_ext.hvp`][lamda_ext.hvp]). Every product of a spectral method uses the
same batches, so each batch is linearised once ([`lamda_ext.hvp.LinearizedHVP`][lamda_ext.hvp.LinearizedHVP]: one primal
forward and backward, the intermediates kept) and every later product replays only the tangent pass, as long as the kept
intermediates fit in the operator's ``memory_budget``; batches beyond it are recomputed per product.

Quadratic forms ``zᵀHz`` (Hutchinson probes) need no HVP: ``zᵀHz = d²/dt² L(θ + t z)`` at t = 0, the second
directional derivative. For ``(x, y)`` batches when every trainable parameter is differentiated, one reverse pass
per batch gives the adjoint of every op output, and each probe then needs only a first-order Taylor pass whose
second-order terms are contracted with those adjoints where they arise
([`lamda_ext.taylor.quadratic`][lamda_ext.taylor.quadratic]); models or losses that contraction does not cover take the
plain order-2 Taylor run ([`lamda_ext.directional_derivs`][lamda_ext.directional_derivs]).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from .._ext import build_info
from .._state import fresh_input
from ..checks import check_hvp_inputs
from ..derivs import directional_derivs
from ..hvp import LinearizedHVP, loss_hvp
from ..params import Bound, functional_state, model_loss_fn
from ..taylor.impl import Composite, Fused
from ..taylor.quadratic import QuadraticForms
from .data import tensor_leaves

__all__ = ["HessianProducts", "LossCall", "TAYLOR_SAMPLES"]

TAYLOR_SAMPLES = 2048   # probes × samples per Taylor pass (bounds its memory: activations [probes·B, ...])


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
    """HVPs and quadratic forms of the loss Hessian, batch by batch, for the operator ``op``.

    ``op`` provides the model, loss, parameters, cache and counters.
    """

    store = "hessian"

    def __init__(self, op):
        self.op = op
        self._taylor_ok = True
        self._contract_ok = True

    def _loss_of_params(self, batch) -> Callable:
        op = self.op
        names = list(op.params)
        if op.batch_loss_fn is None:
            x, y = batch
            return model_loss_fn(op.model, x, y, op.loss_fn, names)
        return LossCall(op.model, op.batch_loss_fn).of_params(names, batch)

    def weight(self, n: int) -> float:
        """The factor that turns a batch's product into its share of the summed loss's.

        A loss_fn of ``reduction="sum"`` gives the batch's sum already.
        """
        return 1.0 if self.op.batch_loss_fn is not None and self.op.reduction == "sum" else float(n)

    def product(self, i: int, shard, batch, n: int, V: torch.Tensor) -> torch.Tensor:
        """The i-th batch's ``H V`` ``[K, P]``, weighted by `weight`.

        From its cached linearisation when there is one (or room for one).
        """
        op = self.op
        f = self._loss_of_params(batch)
        if op.cache.budget > 0:
            leaves = tensor_leaves(batch)
            kept = op.cache.get(self.store, i, leaves)
            if kept is not None:
                return kept(V, op.chunk) * self.weight(n)
            if self.store not in op.cache.full:
                lin = LinearizedHVP(f, op.params)
                op.n_linearizations += 1
                out = lin(V, op.chunk)      # the first call folds the primal part: nbytes is known after it
                op.cache.put(self.store, i, leaves, lin)
                return out * self.weight(n)
        with torch.enable_grad():
            return loss_hvp(f, op.params, V, op.chunk).detach() * self.weight(n)

    # ------------------------------------------------------------------ quadratic forms by Taylor passes
    @property
    def forms_available(self) -> bool:
        """Whether `forms` uses Taylor passes rather than HVPs.

        It does for ``(x, y)`` data, all trainable parameters and a deterministic setup.
        """
        op = self.op
        return (op.batch_loss_fn is None and op.deterministic and self._taylor_ok
                and list(op.params) == [n for n, p in op.model.named_parameters() if p.requires_grad])

    def disable_forms(self) -> None:
        """Use HVPs for the quadratic forms from now on (the Taylor passes do not apply to this model)."""
        self._taylor_ok = False

    def forms(self, i: int, shard, batch, n: int, Z: torch.Tensor) -> torch.Tensor:
        """``n · z_jᵀ H_b z_j`` for the rows of ``Z`` ``[m, P]`` → ``[m]`` float64, for the i-th batch."""
        op = self.op
        x, y = batch
        info = build_info()
        fused = info["cpu"] if op.device.type == "cpu" else info["cuda_available"]
        backend = "fused" if fused else "taylor"
        acc = torch.zeros(Z.shape[0], dtype=torch.float64, device=op.device)
        step = max(1, TAYLOR_SAMPLES // n)
        forms = self._contracted_forms(i, x, y, backend)
        with torch.no_grad():
            for j in range(0, Z.shape[0], step):
                if forms is not None:
                    q = forms(Z[j:j + step])
                else:
                    q = directional_derivs(op.model, x, y, order=2, directions=Z[j:j + step], loss=op.loss,
                                           wrt="params", backend=backend, label_smoothing=op.label_smoothing)[:, 1]
                acc[j:j + step] += float(n) * q.to(torch.float64)
        return acc

    def _contracted_forms(self, i: int, x, y, backend: str):
        """[`QuadraticForms`][lamda_ext.taylor.quadratic.QuadraticForms] for the i-th batch, or None.

        One adjoint pass, then first-order Taylor passes per block of probes; kept for later calls on the same batch and
        parameters within ``memory_budget``. None where the model or loss needs the plain order-2 Taylor run (the same
        numbers, more arithmetic). A new batch is checked first (one plain forward).
        """
        if not self._contract_ok:
            return None
        op = self.op
        leaves = tensor_leaves((x, y))
        kept = op.cache.get("adjoints", i, leaves)
        if kept is not None:
            return kept
        y = check_hvp_inputs(op.model, x, y, op.loss, "params", forward=True)
        try:
            forms = QuadraticForms(op.model, x, y, op.loss, op.label_smoothing,
                                   Fused() if backend == "fused" else Composite())
        except (NotImplementedError, RuntimeError):
            self._contract_ok = False
            return None
        op.cache.put("adjoints", i, leaves, forms)
        return forms
