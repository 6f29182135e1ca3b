"""Fused Taylor kernels, backed by the C++/CUDA ops of ``lamda_ext._C``.

The same functions as [`lamda_ext.taylor.recurrences`][lamda_ext.taylor.recurrences], from the namespace
``torch.ops.lamda_ext``.

All series are normalised Taylor coefficients (``c_n = f^(n)(0)/n!``) with the
coefficient axis first; C = N+1 ≤ 9 coefficients; float32 or float64; the device
is chosen by the dispatcher (CPU or CUDA kernels), never by Python.

    unary_coeffs(kind, x [C, *S], alpha=1.0)                  -> [C, *S]
    cross_entropy_coeffs(z [C, M, classes], target [M], ls)    -> [C, M]
    cross_entropy_deg1(z0 [B, classes], v [K, B, classes], target [B], order, ls)
                                                              -> [K, B, order] (true derivatives)

Every op has a fake (meta) implementation and an autograd formula whose backward
is its own op with CPU/CUDA kernels (first-order gradients; the backward ops are
not themselves differentiable).
"""
from __future__ import annotations

import torch

from . import _ext
from .taylor.recurrences import UNARY_KINDS  # the one list of kinds (the kernels' X-macro mirrors it)

__all__ = ["UNARY_KINDS", "MAX_COEFFS", "available", "unary_coeffs", "cross_entropy_coeffs", "cross_entropy_deg1"]


# coefficients the kernels hold (taylor::kMaxCoeffs in csrc/taylor_recurrences.h): order ≤ MAX_COEFFS - 1;
# the fused backend runs the composite rules beyond it
MAX_COEFFS = 9


def available() -> bool:
    """True when the compiled extension is importable (the fused ops can run)."""
    return _ext.available()


def _ops():
    if not _ext.available():
        raise RuntimeError("lamda_ext: the compiled extension lamda_ext._C is not available "
                           f"({_ext.load_error()}); build it (pip install --no-build-isolation . or "
                           "python setup.py build_ext --inplace) or use backend='taylor'")
    return torch.ops.lamda_ext


def unary_coeffs(kind: str, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Series of an elementwise function of a series: ``x [C, *S]`` → ``[C, *S]``.

    ``kind`` is one of [`UNARY_KINDS`][lamda_ext.taylor.recurrences.UNARY_KINDS]; ``alpha`` is ELU's alpha (ignored
    otherwise).
    """
    return _ops().taylor_unary(x, kind, float(alpha))


def cross_entropy_coeffs(z: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-sample softmax cross-entropy series: logits ``[C, M, classes]``, int64 ``target [M]`` → ``[C, M]``."""
    return _ops().taylor_cross_entropy(z, target, float(label_smoothing))


def cross_entropy_deg1(z0: torch.Tensor, v: torch.Tensor, target: torch.Tensor, order: int,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Derivatives d_1..d_order of CE(z0 + t·v) at t = 0 (true derivatives, not normalised).

    z0 ``[B, classes]``, v ``[K, B, classes]``, int64 target ``[B]`` → ``[K, B, order]``;
    d_1 = E_p[v] − q·v, d_n = n-th cumulant of v under p = softmax(z0) for n ≥ 2.
    """
    return _ops().taylor_cross_entropy_deg1(z0, v, target, int(order), float(label_smoothing))


# ---- fake (meta) implementations and autograd formulas -------------------------------

def _contig_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _register() -> None:
    lib = "lamda_ext::"

    @torch.library.register_fake(lib + "taylor_unary")
    def _unary_fake(coeffs, kind, alpha):
        return _contig_like(coeffs)

    @torch.library.register_fake(lib + "taylor_unary_backward")
    def _unary_backward_fake(grad, coeffs, kind, alpha):
        return _contig_like(coeffs)

    @torch.library.register_fake(lib + "taylor_cross_entropy")
    def _ce_fake(logit_coeffs, target, label_smoothing):
        return logit_coeffs.new_empty(logit_coeffs.shape[:2])

    @torch.library.register_fake(lib + "taylor_cross_entropy_backward")
    def _ce_backward_fake(grad, logit_coeffs, target, label_smoothing):
        return _contig_like(logit_coeffs)

    @torch.library.register_fake(lib + "taylor_cross_entropy_deg1")
    def _deg1_fake(z0, v, target, order, label_smoothing):
        return v.new_empty((v.shape[0], v.shape[1], order))

    @torch.library.register_fake(lib + "taylor_cross_entropy_deg1_backward")
    def _deg1_backward_fake(grad, z0, v, target, order, label_smoothing):
        return _contig_like(z0), _contig_like(v)

    def _unary_setup(ctx, inputs, output):
        coeffs, kind, alpha = inputs
        ctx.save_for_backward(coeffs)
        ctx.kind, ctx.alpha = kind, alpha

    def _unary_backward(ctx, grad):
        (coeffs,) = ctx.saved_tensors
        return torch.ops.lamda_ext.taylor_unary_backward(grad, coeffs, ctx.kind, ctx.alpha), None, None

    def _ce_setup(ctx, inputs, output):
        z, target, label_smoothing = inputs
        ctx.save_for_backward(z, target)
        ctx.label_smoothing = label_smoothing

    def _ce_backward(ctx, grad):
        z, target = ctx.saved_tensors
        return torch.ops.lamda_ext.taylor_cross_entropy_backward(grad, z, target, ctx.label_smoothing), None, None

    def _deg1_setup(ctx, inputs, output):
        z0, v, target, order, label_smoothing = inputs
        ctx.save_for_backward(z0, v, target)
        ctx.order, ctx.label_smoothing = order, label_smoothing

    def _deg1_backward(ctx, grad):
        z0, v, target = ctx.saved_tensors
        gz0, gv = torch.ops.lamda_ext.taylor_cross_entropy_deg1_backward(grad, z0, v, target, ctx.order,
                                                                         ctx.label_smoothing)
        return gz0, gv, None, None, None

    torch.library.register_autograd(lib + "taylor_unary", _unary_backward, setup_context=_unary_setup)
    torch.library.register_autograd(lib + "taylor_cross_entropy", _ce_backward, setup_context=_ce_setup)
    torch.library.register_autograd(lib + "taylor_cross_entropy_deg1", _deg1_backward, setup_context=_deg1_setup)


if _ext.available():
    _register()
