"""The per-batch work of the Gauss–Newton-type curvatures for [`HessianOperator`][lamda_ext.hessian.HessianOperator].

* [`GaussNewtonProducts`][lamda_ext.hessian.gauss_newton_products.GaussNewtonProducts] (``(x, y)`` batches; ``ggn``,
  ``fisher``, ``fisher_mc``, ``empirical_fisher``): ``Jᵀ M J`` by
  [`lamda_ext.gauss_newton.LinearizedGaussNewton`][lamda_ext.gauss_newton.LinearizedGaussNewton], one per batch, kept
  between products within the operator's ``memory_budget`` (beyond it, rebuilt for every product). Quadratic forms
  ``(Jz)ᵀ M (Jz)`` need the tangent forward only.
* [`PerSampleFisherProducts`][lamda_ext.hessian.gauss_newton_products.PerSampleFisherProducts] (``loss_fn(model,
  batch)`` batches; ``empirical_fisher``): the per-sample gradients ``g_b`` of ``loss_fn`` on one-sample batches
  ([`per_sample_grads`][lamda_ext.hessian.per_sample.per_sample_grads]), ``Σ_b g_b g_bᵀ V``; a batch's gradients
  ``[n, P]`` are kept when they fit in the budget, else recomputed in chunks per product.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from ..gauss_newton import LinearizedGaussNewton, output_curvature_factory
from ..params import functional_state, split_bound
from .data import tensor_leaves
from .hessian_products import LossCall
from .per_sample import per_sample_grads

__all__ = ["GaussNewtonProducts", "PerSampleFisherProducts"]


class GaussNewtonProducts:
    """``Jᵀ M J`` products and quadratic forms, batch by batch, for the operator ``op``."""

    store = "gauss_newton"
    forms_available = True

    def __init__(self, op):
        self.op = op

    def disable_forms(self) -> None:    # the forms are tangent forwards of the linearisation: always available
        """Nothing to do: the forms are tangent forwards of the linearisation, always available."""
        pass

    def _middle(self, shard, y):
        op = self.op
        return output_curvature_factory(op.curvature, op.loss, y, label_smoothing=op.label_smoothing,
                                        mc_samples=op.mc_samples, mc_seed=op.mc_seed, batch_index=shard.index,
                                        offset=shard.offset, total=shard.total)

    def _linearized(self, i: int, shard, batch) -> LinearizedGaussNewton:
        op = self.op
        leaves = tensor_leaves(batch)
        kept = op.cache.get(self.store, i, leaves)
        if kept is not None:
            return kept
        x, y = batch
        lin = LinearizedGaussNewton(op.model, x, op.params, self._middle(shard, y))
        op.n_linearizations += 1
        if op.cache.budget > 0 and self.store not in op.cache.full:
            op.cache.put(self.store, i, leaves, lin)
        return lin

    def product(self, i: int, shard, batch, n: int, V: torch.Tensor) -> torch.Tensor:
        """The i-th batch's ``n · Jᵀ M J V`` ``[K, P]``."""
        return self._linearized(i, shard, batch)(V, self.op.chunk) * float(n)

    def forms(self, i: int, shard, batch, n: int, Z: torch.Tensor) -> torch.Tensor:
        """``n · (J z_j)ᵀ M (J z_j)`` for the rows of ``Z`` ``[m, P]`` → ``[m]`` float64."""
        q = self._linearized(i, shard, batch).quadratic_forms(Z, self.op.chunk)
        return q.to(torch.float64) * float(n)

    def diagonal(self, i: int, shard, batch, n: int) -> torch.Tensor:
        """The i-th batch's ``n · diag(Jᵀ M J)`` ``[P]``.

        With ``M = (1/n) blockdiag(B_b)`` and ``B_b = Σ_r λ_br q_br q_brᵀ`` (eigendecomposition of each C × C block),
        ``Σ_b Σ_r λ_br (J_bᵀ q_br)²`` by per-sample vector–Jacobian products, one pass per output dimension r (skipped
        where every λ_br is at rounding level).
        """
        op = self.op
        x, y = batch
        kept = op.cache.get(self.store, i, tensor_leaves(batch))
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
    """A batch's per-sample gradients ``[n, P]`` as a cache entry."""

    def __init__(self, G: torch.Tensor):
        self.G = G
        self.nbytes = G.numel() * G.element_size()


class PerSampleFisherProducts:
    """The empirical Fisher of a ``loss_fn(model, batch)``: ``Σ_b g_b g_bᵀ`` over per-sample gradients."""

    store = "per_sample_gradients"
    forms_available = True

    def __init__(self, op):
        self.op = op
        fn, (state, _) = split_bound(LossCall(op.model, op.batch_loss_fn).of_params(list(op.params), None))
        self._fn = lambda p, batch: fn(p, state, batch)     # (params, one-sample batch) -> loss

    def disable_forms(self) -> None:
        """Nothing to do: the forms come from the per-sample gradients, always available."""
        pass

    def _chunks(self, i: int, batch, n: int):
        """``[c, P]`` blocks of the i-th batch's per-sample gradients (one block when they are kept)."""
        op = self.op
        leaves = tensor_leaves(batch)
        kept = op.cache.get(self.store, i, leaves)
        if kept is not None:
            return [kept.G]
        P = op.size
        if op.cache.budget > 0 and self.store not in op.cache.full and \
                n * P * op.flat_params().element_size() <= op.cache.budget - op.cache.nbytes:
            G = torch.cat([g for _, g in per_sample_grads(self._fn, op.params, batch, n)])
            op.n_linearizations += 1
            op.cache.put(self.store, i, leaves, _Gradients(G))
            return [G]
        return (g for _, g in per_sample_grads(self._fn, op.params, batch, n))

    def product(self, i: int, shard, batch, n: int, V: torch.Tensor) -> torch.Tensor:
        """``Σ_b g_b (g_bᵀ v)`` for the rows of ``V`` ``[K, P]`` over the i-th batch's samples."""
        acc = torch.zeros_like(V)
        for G in self._chunks(i, batch, n):
            acc += (V @ G.t()) @ G
        return acc

    def forms(self, i: int, shard, batch, n: int, Z: torch.Tensor) -> torch.Tensor:
        """``Σ_b (g_bᵀ z_j)²`` for the rows of ``Z`` ``[m, P]`` → ``[m]`` float64."""
        acc = torch.zeros(Z.shape[0], dtype=torch.float64, device=Z.device)
        for G in self._chunks(i, batch, n):
            acc += ((Z @ G.t()).to(torch.float64) ** 2).sum(dim=1)
        return acc

    def diagonal(self, i: int, shard, batch, n: int) -> torch.Tensor:
        """``Σ_b g_b ⊙ g_b`` ``[P]`` over the i-th batch's samples."""
        acc = torch.zeros(self.op.size, dtype=self.op.dtype, device=self.op.device)
        for G in self._chunks(i, batch, n):
            acc += (G * G).sum(dim=0)
        return acc
