"""The loss's curvature in output space: the middle matrix ``M`` of the Gauss–Newton-type curvatures ``Jᵀ M J``.

For one batch with outputs ``f`` ``[n, *S]`` (C = prod(S) numbers per sample), per-sample losses ``ℓ(f_b, y_b)``
and the batch-mean loss ``L = (1/n) Σ_b ℓ(f_b, y_b)``, ``M`` is block diagonal (one ``C × C`` block per sample):

* ``"ggn"``: ``M = ∇²_f L``, by forward-over-reverse on the loss head alone (any loss).
* ``"fisher"``: ``M = (1/n) blockdiag(F_b)``, ``F_b = E_{ỹ ~ p(·|f_b)}[∇ℓ ∇ℓᵀ]`` in closed form under the model's
  predictive distribution: cross-entropy ``diag(p) − p pᵀ`` (p = softmax(f_b)); MSE ``(2/C) I`` (the per-sample loss
  ``mean((f − y)²)`` is, up to a constant, the negative log-likelihood of ``N(f, (C/2) I)``). Both equal the GGN's
  blocks.
* ``"fisher_mc"``: ``M = (1/(n m)) Σ_b Σ_j s_bj s_bjᵀ`` with ``s_bj = ∇_f ℓ(f_b, ỹ_bj)``, ``m = mc_samples`` targets
  ``ỹ_bj`` drawn from that distribution ([`sample_targets`][lamda_ext.loss_curvature.sample_targets]).
* ``"empirical_fisher"``: ``M = (1/n) Σ_b s_b s_bᵀ``, ``s_b = ∇_f ℓ(f_b, y_b)`` (the given targets).

The Fisher and the MC Fisher use the model's likelihood: label smoothing changes the loss, not the predictive
distribution, and is ignored by them (the GGN and the empirical Fisher use the loss as given).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch.func import grad, jvp

from .losses import LossSpec, resolve_loss

__all__ = ["CURVATURES", "OUTPUT_CURVATURES", "check_curvature", "OutputCurvature", "sample_targets", "mc_generator"]

CURVATURES = ("hessian", "ggn", "fisher", "fisher_mc", "empirical_fisher")
OUTPUT_CURVATURES = CURVATURES[1:]          # Jᵀ M J with an output-space M
LIKELIHOOD_LOSSES = ("cross_entropy", "mse")


def check_curvature(curvature, loss: LossSpec | None, loss_fn_form: bool) -> str:
    """Check that ``curvature`` is one of [`CURVATURES`][lamda_ext.loss_curvature.CURVATURES] and fits the loss; return it.

    ``fisher``/``fisher_mc`` need a loss with a known likelihood; every curvature but ``hessian`` and
    ``empirical_fisher`` needs the model output and the loss apart (``loss=`` with ``(x, y)`` batches, not
    ``loss_fn(model, batch)``).

    Raises:
        ValueError: an unknown curvature, or a GGN-type curvature with ``loss_fn(model, batch)``.
        NotImplementedError: ``fisher``/``fisher_mc`` for a loss other than cross-entropy and MSE.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if curvature in ("ggn", "fisher", "fisher_mc") and loss_fn_form:
        raise ValueError(f"curvature={curvature!r} needs the model output and the loss apart: pass loss= "
                         "('cross_entropy', 'mse' or a per-sample callable) with (x, y) batches; "
                         "loss_fn(model, batch) gives only the scalar loss (it supports 'hessian' and "
                         "'empirical_fisher')")
    if curvature in ("fisher", "fisher_mc") and loss not in LIKELIHOOD_LOSSES:
        raise NotImplementedError(f"curvature={curvature!r} needs a loss with a known likelihood "
                                  f"({' or '.join(LIKELIHOOD_LOSSES)}), got {loss!r}; use curvature='ggn' "
                                  "(Jᵀ ∇²ℓ J of any loss) or 'empirical_fisher'")
    return curvature


def mc_generator(mc_seed: int, batch_index: int) -> torch.Generator:
    """The CPU generator of the Monte-Carlo targets of batch ``batch_index`` (position in the data).

    Seeded from ``(mc_seed, batch_index)`` by ``numpy.random.SeedSequence``: the draws of a batch do not depend on the
    other batches or on how the data is split over ranks.
    """
    state = np.random.SeedSequence([int(mc_seed), int(batch_index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def sample_targets(loss: str, out: torch.Tensor, mc_samples: int = 1, mc_seed: int = 0, batch_index: int = 0,
                   offset: int = 0, total: int | None = None) -> torch.Tensor:
    """Targets drawn from the model's predictive distribution at outputs ``out`` ``[n, *S]``.

    The draws of a batch come from [`mc_generator`][lamda_ext.loss_curvature.mc_generator] ``(mc_seed, batch_index)``
    for all ``total`` samples of the batch (float64 on the CPU); ``out`` holds samples ``offset .. offset + n − 1`` of
    them (a rank's share). Cross-entropy: labels by inversion of the softmax's cumulative distribution at uniform draws,
    ``[m, n]`` long. MSE: ``ỹ = f + sqrt(C/2) ε`` with standard normal ε, ``[m, n, *S]`` in ``out``'s dtype.

    Args:
        loss: ``"cross_entropy"`` (out ``[n, C]`` logits) or ``"mse"``.
        out: the model outputs (detached).
        mc_samples: m, targets per sample.
        mc_seed: seeds the draws, with ``batch_index``.
        batch_index: the batch's position in the data.
        offset: the first sample of the batch that ``out`` holds (default 0).
        total: the batch's sample count (default: ``out``'s, all of the batch).

    Returns:
        The sampled targets, ``[m, n]`` (labels) or ``[m, n, *S]``, on ``out``'s device.
    """
    n = out.shape[0]
    total = n if total is None else int(total)
    g = mc_generator(mc_seed, batch_index)
    if loss == "cross_entropy":
        u = torch.rand(mc_samples, total, generator=g, dtype=torch.float64)[:, offset:offset + n].to(out.device)
        cdf = torch.softmax(out.detach().to(torch.float64), dim=1).cumsum(dim=1)
        labels = torch.searchsorted(cdf.unsqueeze(0).expand(mc_samples, -1, -1).contiguous(), u.unsqueeze(-1).contiguous())
        return labels.squeeze(-1).clamp_max(out.shape[1] - 1)
    if loss == "mse":
        eps = torch.randn(mc_samples, total, *out.shape[1:], generator=g, dtype=torch.float64)[:, offset:offset + n]
        scale = math.sqrt(out[0].numel() / 2.0)
        return (out.detach().to(torch.float64).unsqueeze(0) + scale * eps.to(out.device)).to(out.dtype)
    raise NotImplementedError(f"targets can be sampled for {LIKELIHOOD_LOSSES}, got {loss!r}")


class OutputCurvature:
    """``M`` of one batch (see the module docstring) at outputs ``out``.

    [`apply`][lamda_ext.loss_curvature.OutputCurvature.apply] ``U ↦ M U`` for tangents ``U`` ``[n, *S]`` (vmappable over
    rows of tangents), [`blocks`][lamda_ext.loss_curvature.OutputCurvature.blocks] the dense per-sample blocks.

    Args:
        curvature: one of [`OUTPUT_CURVATURES`][lamda_ext.loss_curvature.OUTPUT_CURVATURES].
        loss: the loss spec (``"cross_entropy"``, ``"mse"`` or a callable ``(output, y) -> [n]``).
        out: the model outputs ``[n, *S]`` (detached). y: the targets.
        label_smoothing: for cross-entropy (used by ``ggn`` and ``empirical_fisher``).
        targets: for ``fisher_mc``, the sampled targets ``[m, n, ...]``
            ([`sample_targets`][lamda_ext.loss_curvature.sample_targets]).
    """

    def __init__(self, curvature: str, loss: LossSpec, out: torch.Tensor, y, *, label_smoothing: float = 0.0,
                 targets: torch.Tensor | None = None):
        self.curvature, self.loss, self.out, self.y = curvature, loss, out.detach(), y
        self.n = out.shape[0]
        loss_fn = resolve_loss(loss, label_smoothing)
        if curvature == "ggn":
            self._grad = grad(lambda o: loss_fn(o, y).mean())
        elif curvature == "empirical_fisher":
            self.scores = self._scores(loss_fn, y).unsqueeze(0)                    # [1, n, *S]
        elif curvature == "fisher_mc":
            if targets is None:
                raise ValueError("curvature='fisher_mc' needs the sampled targets (sample_targets)")
            plain = resolve_loss(loss)
            self.scores = torch.stack([self._scores(plain, t) for t in targets])  # [m, n, *S]
        elif curvature == "fisher":
            if loss == "cross_entropy":
                self.probs = torch.softmax(self.out, dim=1)
        else:
            raise ValueError(f"no output-space curvature {curvature!r}; expected one of {OUTPUT_CURVATURES}")

    def _scores(self, loss_fn: Callable, y) -> torch.Tensor:
        """Per-sample loss gradients ``∇_f ℓ(f_b, y_b)`` ``[n, *S]``."""
        with torch.enable_grad():
            return grad(lambda o: loss_fn(o, y).sum())(self.out).detach()

    def apply(self, U: torch.Tensor) -> torch.Tensor:
        """``M U`` for one tangent ``U`` ``[n, *S]`` (the batch-mean loss's ``M``: includes ``1/n``)."""
        if self.curvature == "ggn":
            return jvp(self._grad, (self.out,), (U,))[1]
        if self.curvature == "fisher":
            if self.loss == "cross_entropy":
                p = self.probs
                return (p * U - p * (p * U).sum(dim=1, keepdim=True)) / self.n
            return U * (2.0 / (self.out[0].numel() * self.n))
        S = self.scores                                                          # [m, n, *S]
        a = (S * U.unsqueeze(0)).sum(dim=tuple(range(2, S.dim())), keepdim=True)   # [m, n, 1, ...]
        return (S * a).sum(dim=0) / (self.n * S.shape[0])

    def blocks(self) -> torch.Tensor:
        """The per-sample blocks ``B_b`` ``[n, C, C]`` with ``M = (1/n) blockdiag(B_b)`` (C = prod(S))."""
        C = self.out[0].numel()
        eye = torch.eye(C, dtype=self.out.dtype, device=self.out.device)
        cols = [self.apply(eye[c].reshape(self.out.shape[1:]).expand_as(self.out)).reshape(self.n, C) for c in range(C)]
        return torch.stack(cols, dim=2) * self.n
