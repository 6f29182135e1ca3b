"""The per-slice work of the Gauss–Newton-type curvatures for [`HessianOperator`][lamda_ext.hessian.HessianOperator].

The operator cuts its batches into slices of samples within its ``memory_budget`` ([`budget`][lamda_ext.hessian.budget]).

* [`GaussNewtonProducts`][lamda_ext.hessian.gauss_newton_products.GaussNewtonProducts] (``(x, y)`` batches; ``ggn``,
  ``fisher``, ``fisher_mc``, ``empirical_fisher``): ``Jᵀ M J`` by
  [`lamda_ext.gauss_newton.LinearizedGaussNewton`][lamda_ext.gauss_newton.LinearizedGaussNewton], one per slice, kept
  between products within what the budget leaves (beyond it, rebuilt for every product). Quadratic forms
  ``(Jz)ᵀ M (Jz)`` need the tangent forward only.
* [`PerSampleFisherProducts`][lamda_ext.hessian.gauss_newton_products.PerSampleFisherProducts] (``loss_fn(model,
  batch)`` batches; ``empirical_fisher``): the per-sample gradients ``g_b`` of ``loss_fn`` on one-sample batches
  ([`per_sample_grads`][lamda_ext.hessian.per_sample.per_sample_grads]), ``Σ_b g_b g_bᵀ V``; a slice's gradients
  ``[n, P]`` are kept when they fit in what the budget leaves, else recomputed per product.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from ..gauss_newton import LinearizedGaussNewton, output_curvature_factory
from ..linearization import default_chunk
from ..params import functional_state, split_bound
from .data import tensor_leaves
from .hessian_products import HessianProducts, LossCall
from .per_sample import per_sample_grads

__all__ = ["GaussNewtonProducts", "PerSampleFisherProducts"]


class GaussNewtonProducts:
    """``Jᵀ M J`` products and quadratic forms, slice by slice, for the operator ``op``.

    Both kinds of work share a slice's [`LinearizedGaussNewton`][lamda_ext.gauss_newton.LinearizedGaussNewton].
    """

    forms_available = True

    def __init__(self, op):
        self.op = op
        self._hessian = HessianProducts(op)     # its eager HVP bounds this work's memory

    def disable_forms(self) -> None:    # the forms are tangent forwards of the linearisation: always available
        """Nothing to do: the forms are tangent forwards of the linearisation, always available."""
        pass

    @staticmethod
    def store(kind: str) -> str:
        """The cache store of the prepared slices (one for both kinds)."""
        return "gauss_newton"

    @staticmethod
    def has_direct(kind: str) -> bool:
        """False: every evaluation needs the slice's linearisation."""
        return False

    @staticmethod
    def weight(n: int) -> float:
        """A slice's share of the summed loss's curvature: ``n`` × its mean's."""
        return float(n)

    def row_cap(self, kind: str, n: int) -> int | None:
        """``chunk``, else one row at a time on the CPU and all at once elsewhere."""
        return self.op.chunk if self.op.chunk is not None else default_chunk(self.op.device)

    def _middle(self, shard, y):
        op = self.op
        return output_curvature_factory(op.curvature, op.loss, y, label_smoothing=op.label_smoothing,
                                        mc_samples=op.mc_samples, mc_seed=op.mc_seed, batch_index=shard.index,
                                        offset=shard.offset, total=shard.total)

    def prepare(self, kind: str, shard, batch, n: int) -> LinearizedGaussNewton:
        """The slice's linearisation (its Monte-Carlo targets those of its samples in the whole batch)."""
        x, y = batch
        return LinearizedGaussNewton(self.op.model, x, self.op.params, self._middle(shard, y))

    @staticmethod
    def apply(kind: str, lin: LinearizedGaussNewton, rows: torch.Tensor) -> torch.Tensor:
        """``Jᵀ M J v`` ``[k, P]`` (products) or ``(J v)ᵀ M (J v)`` ``[k]`` float64 (forms) of the slice."""
        if kind == "products":
            return lin(rows, rows.shape[0])
        return lin.quadratic_forms(rows, rows.shape[0]).to(torch.float64)

    def direct(self, kind: str, shard, batch, n: int, rows: torch.Tensor) -> torch.Tensor:
        """`apply` on a linearisation made for this call only."""
        return self.apply(kind, self.prepare(kind, shard, batch, n), rows)

    def probe(self, shard, batch, n: int, rows: torch.Tensor) -> torch.Tensor:
        """The slice's loss HVP by eager forward-over-reverse: the budget's bound (it outweighs ``Jᵀ M J v``)."""
        return self._hessian.probe(shard, batch, n, rows)

    def diagonal(self, key, shard, batch, n: int) -> torch.Tensor:
        """The slice's ``n · diag(Jᵀ M J)`` ``[P]``.

        With ``M = (1/n) blockdiag(B_b)`` and ``B_b = Σ_r λ_br q_br q_brᵀ`` (eigendecomposition of each C × C block),
        ``Σ_b Σ_r λ_br (J_bᵀ q_br)²`` by per-sample vector–Jacobian products, one pass per output dimension r (skipped
        where every λ_br is at rounding level).
        """
        op = self.op
        x, y = batch
        kept = op.cache.get(self.store("products"), key, tensor_leaves(batch))
        if kept is not None:
            middle = kept.middle
        else:
            with torch.no_grad():
                out = functional_call(op.model, functional_state(op.model, set()), (x,))
            middle = self._middle(shard, y)(out)
        B = middle.blocks()
        lam, vecs = torch.linalg.eigh((B + B.transpose(1, 2)) / 2)          # [n, C], [n, C, C]
        state = functional_state(op.model, set(op.params))

        def fn(p, sample):
            xb, ub = sample
            return (functional_call(op.model, (p, state), (xb,)) * ub).sum()

        acc = torch.zeros(op.size, dtype=op.dtype, device=op.device)
        small = B.shape[1] * torch.finfo(B.dtype).eps * float(lam.abs().max())
        for r in range(B.shape[1]):
            if bool((lam[:, r].abs() <= small).all()):
                continue
            U = vecs[:, :, r].reshape(middle.out.shape)
            for lo, G in per_sample_grads(fn, op.params, (x, U), n):
                acc += (lam[lo:lo + G.shape[0], r, None] * G * G).sum(dim=0)
        return acc


class _Gradients:
    """A slice's per-sample gradients ``[n, P]`` as a cache entry."""

    def __init__(self, G: torch.Tensor):
        self.G = G
        self.nbytes = G.numel() * G.element_size()


class PerSampleFisherProducts:
    """The empirical Fisher of a ``loss_fn(model, batch)``: ``Σ_b g_b g_bᵀ`` over per-sample gradients.

    A slice's gradients ``[n, P]`` (one vmapped evaluation) serve both kinds of work. Slices are cut as
    [`per_sample_grads`][lamda_ext.hessian.per_sample.per_sample_grads] cuts samples: every tensor with the batch's
    leading size, the others passed whole.
    """

    forms_available = True
    splits_any_batch = True     # per-sample gradients take the samples apart in any case

    def __init__(self, op):
        self.op = op
        fn, (state, _) = split_bound(LossCall(op.model, op.batch_loss_fn).of_params(list(op.params), None))
        self._fn = lambda p, batch: fn(p, state, batch)     # (params, one-sample batch) -> loss

    def disable_forms(self) -> None:
        """Nothing to do: the forms come from the per-sample gradients, always available."""
        pass

    @staticmethod
    def store(kind: str) -> str:
        """The cache store of the slices' gradients (one for both kinds)."""
        return "per_sample_gradients"

    has_direct = staticmethod(GaussNewtonProducts.has_direct)

    @staticmethod
    def weight(n: int) -> float:
        """1: the gradients of one-sample batches sum to the summed loss's matrix."""
        return 1.0

    def row_cap(self, kind: str, n: int) -> int | None:
        """``chunk``, else all rows at once (two matrix products)."""
        return self.op.chunk

    def prepare(self, kind: str, shard, batch, n: int) -> _Gradients:
        """The slice's per-sample gradients."""
        op = self.op
        return _Gradients(torch.cat([g for _, g in per_sample_grads(self._fn, op.params, batch, n, chunk=n)]))

    @staticmethod
    def apply(kind: str, entry: _Gradients, rows: torch.Tensor) -> torch.Tensor:
        """``Σ_b g_b (g_bᵀ v)`` ``[k, P]`` (products) or ``Σ_b (g_bᵀ v)²`` ``[k]`` float64 (forms) over the slice."""
        G = entry.G
        if kind == "products":
            return (rows @ G.t()) @ G
        return ((rows @ G.t()).to(torch.float64) ** 2).sum(dim=1)

    direct = GaussNewtonProducts.direct

    def diagonal(self, key, shard, batch, n: int) -> torch.Tensor:
        """``Σ_b g_b ⊙ g_b`` ``[P]`` over the slice's samples."""
        kept = self.op.cache.get(self.store("products"), key, tensor_leaves(batch))
        G = (kept if kept is not None else self.prepare("products", shard, batch, n)).G
        return (G * G).sum(dim=0)
