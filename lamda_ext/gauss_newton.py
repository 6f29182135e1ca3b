"""Gauss–Newton-type products ``Jᵀ M J v`` of one batch by a Jacobian–vector / vector–Jacobian pair.

``J`` is the Jacobian of the model output ``[n, *S]`` with respect to the chosen parameters and ``M`` the loss's
curvature in output space ([`lamda_ext.loss_curvature.OutputCurvature`][lamda_ext.loss_curvature.OutputCurvature]: the
GGN's loss Hessian, the exact or Monte-Carlo Fisher, the empirical Fisher). No Hessian of the network is formed: ``J v``
is the tangent of a linearised forward pass (``torch.func.linearize``: the primal forward runs once, its activations are
kept), ``M`` acts on ``[n, *S]`` tangents, and ``Jᵀ u`` is the transpose of that same linear map (a backward pass
through the tangent graph, recorded once), so one copy of the activations serves both directions.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from .linearization import default_chunk, linearize_map, linearized_nbytes, storage_bytes
from .loss_curvature import OutputCurvature, sample_targets
from .params import functional_state, unflatten_params

__all__ = ["LinearizedGaussNewton", "output_curvature_factory", "gauss_newton_product"]


def apply_rows(fn: Callable[[torch.Tensor], torch.Tensor], V: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``fn`` on each row of ``V`` ``[K, ...]``, stacked.

    ``chunk`` rows per vmapped call; None: see
    [`lamda_ext.linearization.default_chunk`][lamda_ext.linearization.default_chunk].
    """
    chunk = default_chunk(V.device) if chunk is None else chunk
    if chunk == 1 or V.shape[0] == 1:
        return torch.stack([fn(v) for v in V])
    return vmap(fn, chunk_size=chunk)(V)


def output_curvature_factory(curvature: str, loss, y, *, label_smoothing: float = 0.0, mc_samples: int = 1,
                             mc_seed: int = 0, batch_index: int = 0, offset: int = 0,
                             total: int | None = None) -> Callable[[torch.Tensor], OutputCurvature]:
    """``out ↦ OutputCurvature`` of one batch.

    The Monte-Carlo targets of ``fisher_mc`` are drawn from ``(mc_seed, batch_index)`` for the samples ``offset ..`` of
    a batch of ``total``: see [`lamda_ext.loss_curvature.sample_targets`][lamda_ext.loss_curvature.sample_targets].
    """
    def make(out: torch.Tensor) -> OutputCurvature:
        targets = None
        if curvature == "fisher_mc":
            targets = sample_targets(loss, out, mc_samples, mc_seed, batch_index, offset, total)
        return OutputCurvature(curvature, loss, out, y, label_smoothing=label_smoothing, targets=targets)
    return make


class LinearizedGaussNewton:
    """``Jᵀ M J`` of one batch, linearised once at ``params``.

    Construction runs the primal forward once (kept: [`nbytes`][lamda_ext.gauss_newton.LinearizedGaussNewton.nbytes])
    and records the tangent map once on zero tangents with autograd; every call replays the tangent forward (``J v``),
    applies ``M``, and back-propagates through the recorded tangent graph (``Jᵀ u``, the transpose of the linear map ``v
    ↦ J v``).

    Args:
        model: the model (its mode as it is; dropout must be off: ``J`` and ``Jᵀ`` must see one network).
        x: the batch's inputs ``[n, ...]``.
        params: the differentiated parameters (name → tensor).
        middle: ``out ↦`` the batch's [`OutputCurvature`][lamda_ext.loss_curvature.OutputCurvature] at the outputs
            ``out``.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor],
                 middle: Callable[[torch.Tensor], OutputCurvature]):
        self.primal = {k: t.detach() for k, t in params.items()}
        def f(p, state, x):
            return functional_call(model, (p, state), (x,))

        kept: list[int] = []
        seen: set = {t.untyped_storage().data_ptr() for t in self.primal.values()}   # the parameters: not kept here

        def pack(t):          # count the bytes the recorded graph keeps, without holding the tensors here
            kept.append(storage_bytes([t], seen))
            return t

        with torch.enable_grad():
            out, self._jvp = linearize_map(f, self.primal, (functional_state(model, set(params)), x))
            self._zero = [torch.zeros_like(t, requires_grad=True) for t in self.primal.values()]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                self._out0 = self._jvp(dict(zip(self.primal, self._zero)))
        self.out = out.detach()
        self.middle = middle(self.out)
        self.nbytes = linearized_nbytes(self._jvp, seen) + sum(kept) + storage_bytes([self.out], seen)

    def _tangent(self, vec: torch.Tensor) -> torch.Tensor:
        return self._jvp(unflatten_params(vec, self.primal))

    def _transpose(self, U: torch.Tensor, batched: bool) -> torch.Tensor:
        """``Jᵀ u`` for one output tangent ``[n, *S]`` (or each of ``[c, n, *S]`` when ``batched``), flat."""
        grads = torch.autograd.grad(self._out0, self._zero, U, retain_graph=True, is_grads_batched=batched,
                                    allow_unused=True, materialize_grads=True)
        lead = U.shape[:1] if batched else ()
        return torch.cat([g.reshape(*lead, -1) for g in grads], dim=-1)

    def __call__(self, v: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """``Jᵀ M J v`` for v ``[P]`` or each row of ``[K, P]`` (same shape out, detached)."""
        V = v if v.dim() == 2 else v.unsqueeze(0)
        chunk = default_chunk(V.device) if chunk is None else chunk
        with torch.enable_grad():
            if chunk == 1 or V.shape[0] == 1:
                out = torch.stack([self._transpose(self.middle.apply(self._tangent(r)), False) for r in V])
            else:
                out = torch.cat([self._transpose(vmap(self.middle.apply)(vmap(self._tangent)(Vc)), True)
                                 for Vc in V.split(chunk)])
        out = out.detach()
        return out if v.dim() == 2 else out[0]

    def quadratic_forms(self, Z: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """``zᵀ Jᵀ M J z = (Jz)ᵀ M (Jz)`` for each row of ``Z`` ``[n, P]`` → ``[n]`` (tangent forwards only)."""
        def one(vec):
            U = self._tangent(vec)
            return (U * self.middle.apply(U)).sum()

        with torch.enable_grad():
            return apply_rows(one, Z, chunk).detach()


def gauss_newton_product(model: nn.Module, x: torch.Tensor, y, v: torch.Tensor, loss, curvature: str,
                         params: dict[str, torch.Tensor], *, label_smoothing: float = 0.0, mc_samples: int = 1,
                         mc_seed: int = 0, chunk: int | None = None) -> torch.Tensor:
    """``Jᵀ M J v`` of the batch-mean loss of one batch (v ``[P]`` or ``[K, P]``; same shape out)."""
    middle = output_curvature_factory(curvature, loss, y, label_smoothing=label_smoothing, mc_samples=mc_samples,
                                      mc_seed=mc_seed)
    return LinearizedGaussNewton(model, x, params, middle)(v, chunk)
