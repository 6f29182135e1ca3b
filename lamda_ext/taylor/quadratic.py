"""Second directional derivatives of the batch loss along many parameter directions, by adjoint contraction.

``q_k = d²/dt² L(θ + t·v_k) = v_kᵀ H v_k``.

Push the degree-1 series θ + t·v through the model. Every op's output is ``z(t) = z0 + t·z1 + t²·z2 + …``;
when its inputs carry no second-order coefficient, ``z2`` is the op's own local term (``V·x1`` for a
linear layer with weight series ``W + t·V``, ``½σ''(z0)·z1²`` for a smooth activation, ``a1·b1`` for a
product; zero for ReLU and max-pool). Second-order coefficients enter the loss linearly, so

    d²L/dt² = z1ᵀ ∇²ℓ z1 (the loss head on the logits' first-order tangent) + 2 Σ_ops ⟨∂L/∂z0_op, z2_op⟩.

One reverse pass per batch gives the adjoints ``∂L/∂z0_op`` of every op output (shared by all directions);
each direction then needs only first-order tangents: every op's ``z2`` is contracted with its adjoint where
it arises and dropped, instead of being pushed through the rest of the network (the plain Taylor run at
order 2 carries it to the loss). A rule can do better still where its second-order term is a product of
first-order ones ([`Contraction`][lamda_ext.taylor.quadratic.Contraction]): the convolution's ``⟨ḡ, V_k * x1_k⟩`` is
``⟨V_k, G_k⟩`` with ``G`` one weight-gradient convolution of all K tangents under the shared ``ḡ``, so the
``[K, B, O, ...]`` term is never formed. Same numbers as ``directional_derivs(order=2, wrt="params")`` to rounding.

The two passes are matched op by op (name and output shape); a model whose op sequence differs between
them (data-dependent control flow on anything but the primal) raises ``RuntimeError``, an op without a
Taylor rule ``NotImplementedError`` — [`HessianOperator`][lamda_ext.hessian.HessianOperator] then uses the plain
order-2 Taylor run. Deterministic models only (no active dropout, batch norm in eval mode): the passes
must see the same function.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from .._state import fresh_input
from ..losses import resolve_loss
from .engine import head_terms, series_parameters
from .impl import Composite
from .series import RunContext, TaylorSeries, is_series


def _series_of(out) -> List[Tuple[int, TaylorSeries]]:
    """The series among an op's results, with their positions (an op may return a tuple)."""
    if is_series(out):
        return [(-1, out)]
    if isinstance(out, (tuple, list)):
        return [(i, o) for i, o in enumerate(out) if is_series(o)]
    return []


def _replace(out, pos: int, new):
    if pos < 0:
        return new
    items = list(out)
    items[pos] = new
    return type(out)(items) if isinstance(out, tuple) else items


class QuadraticForms:
    """``v_kᵀ H v_k`` of the batch loss (mean over the batch's per-sample losses) for rows of ``V``.

    Built once per batch (one forward and one backward pass give the adjoints); each call then costs
    one first-order Taylor pass for the directions it gets.

    Args:
        model: a deterministic model (eval-mode batch norm, no active dropout); its parameters in
            ``parameters()`` order define the layout of ``V``'s rows.
        x: inputs ``[B, *S]``; y: targets ``[B]`` (class labels) or like the output (MSE).
        loss: ``"cross_entropy"`` or ``"mse"``.
        impl: the elementwise implementation (``Composite()`` or ``Fused()``).

    ``self(V)``: ``V`` ``[K, P]`` → ``[K]`` (the model's dtype).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y, loss: str = "cross_entropy",
                 label_smoothing: float = 0.0, impl=None):
        if loss not in ("cross_entropy", "mse"):
            raise NotImplementedError(f"quadratic forms by contraction take loss 'cross_entropy' or 'mse', "
                                      f"not {loss!r}")
        self.model, self.x, self.y, self.loss, self.ls = model, x, y, loss, label_smoothing
        self.impl = impl or Composite()
        self.size = sum(p.numel() for p in model.parameters())
        self.signature: List[Tuple[str, Tuple[int, ...]]] = []
        self.adjoints: List[Optional[torch.Tensor]] = self._adjoints()

    @property
    def nbytes(self) -> int:
        """Bytes held by the adjoints."""
        return sum(g.numel() * g.element_size() for g in self.adjoints if g is not None)

    def _adjoints(self) -> List[Optional[torch.Tensor]]:
        """``∂L/∂z0`` for every series an op returns, in dispatch order (None where L does not depend on it)."""
        p0 = next(self.model.parameters())
        primals: List[torch.Tensor] = []

        def record(name, out):
            for _, s in _series_of(out):
                primals.append(s.c0)
                self.signature.append((name, tuple(s.c0.shape)))
            return out

        ctx = RunContext(2, 1, self.impl, self.model)
        ctx.observe = record
        zero = p0.new_zeros(1, self.size)
        with torch.enable_grad(), ctx.active(), series_parameters(self.model, zero, leaf=True):
            out = self.model(fresh_input(self.x))
            if not is_series(out):
                raise NotImplementedError("the model's output does not depend on its parameters through ops "
                                          "with Taylor rules")
            total = resolve_loss(self.loss, self.ls)(out.c0, self.y).mean()
            wanted = [i for i, c in enumerate(primals) if c.requires_grad]
            grads = torch.autograd.grad(total, [primals[i] for i in wanted], allow_unused=True)
        adj: List[Optional[torch.Tensor]] = [None] * len(primals)
        for i, g in zip(wanted, grads):
            adj[i] = g
        return adj

    def __call__(self, V: torch.Tensor) -> torch.Tensor:
        """``v_kᵀ H v_k`` for the rows of ``V`` ``[K, P]`` → ``[K]`` in ``V``'s dtype (one first-order Taylor pass)."""
        if V.dim() != 2 or V.shape[1] != self.size:
            raise ValueError(f"V must have shape [K, P]=[K, {self.size}], got {list(V.shape)}")
        ctr = Contraction(self.adjoints, self.signature, V.shape[0], V.device)
        ctx = RunContext(2, V.shape[0], self.impl, self.model)
        ctx.observe, ctx.contraction = ctr.observe, ctr
        with torch.no_grad(), ctx.active(), series_parameters(self.model, V):
            out = self.model(fresh_input(self.x))
            ctr.finish()
            if not is_series(out) or out.degree > 1:
                raise NotImplementedError("the model's output is not a first-order series")
            _, d = head_terms(out, self.y, self.loss, self.ls, ctx)
        head = d[..., 1].to(torch.float64).mean(dim=1)            # mean over the batch of z1ᵀ ∇²ℓ z1
        return (head + 2.0 * ctr.acc).to(V.dtype)


class Contraction:
    """One contracted pass: ``acc[k]`` sums ``⟨∂L/∂z0_op, z2_op⟩`` over the ops seen so far.

    ``step`` is the dispatch index of the next series an op returns.
    [`observe`][lamda_ext.taylor.quadratic.Contraction.observe] (the run's ``RunContext.observe``) checks each op
    against the adjoint pass's ``signature``, contracts a second-order coefficient and drops it. A rule may contract its
    own second-order term first (the convolution rule does, by a weight-gradient convolution): ``adjoint()`` is its
    output's ``∂L/∂z0`` (None where the loss does not depend on it), ``add(q)`` adds ``⟨∂L/∂z0, z2⟩`` ``[K]``; it then
    returns degree 1.
    """

    def __init__(self, adjoints: List[Optional[torch.Tensor]], signature: List[Tuple[str, Tuple[int, ...]]],
                 k: int, device):
        self.adjoints, self.signature, self.k = adjoints, signature, k
        self.acc = torch.zeros(k, dtype=torch.float64, device=device)
        self.step = 0

    def adjoint(self) -> Optional[torch.Tensor]:
        """The current op output's ``∂L/∂z0`` (None where the loss does not depend on it)."""
        return self.adjoints[self.step] if self.step < len(self.adjoints) else None

    def add(self, q: torch.Tensor) -> None:
        """Add ``⟨∂L/∂z0, z2⟩`` ``[K]`` (or a scalar, broadcast) to the accumulator."""
        self.acc.add_(q.to(torch.float64).expand(self.k))

    def observe(self, name: str, out):
        """Check each series of an op's output against the signature, contract its second-order coefficient, drop it."""
        for pos, s in _series_of(out):
            i = self.step
            self.step += 1
            if i >= len(self.signature) or self.signature[i] != (name, tuple(s.c0.shape)):
                want = self.signature[i] if i < len(self.signature) else "no op"
                raise RuntimeError(f"quadratic forms: op {i} of the forward pass is {(name, tuple(s.c0.shape))}, "
                                   f"the adjoint pass saw {want}; the model's op sequence depends on more than "
                                   "the primal")
            if s.degree < 2:
                continue
            g = self.adjoints[i]
            if g is not None:
                c2 = s.hi[1]                                      # [K or 1, *S]
                self.add(torch.tensordot(c2, g.to(c2.dtype), dims=g.dim()))
            out = _replace(out, pos, TaylorSeries(s.c0, s.hi[:1]))
        return out

    def finish(self) -> None:
        """The forward pass is over: it must have run every op of the adjoint pass."""
        if self.step != len(self.signature):
            raise RuntimeError(f"quadratic forms: the forward pass ran {self.step} ops, the adjoint pass "
                               f"{len(self.signature)}")
