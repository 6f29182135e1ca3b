"""Stochastic trace of a curvature matrix (the loss Hessian by default), with its standard error and cost.

Three estimators, each in its own module: :func:`~lamda_ext.hessian.hutchinson_trace` (``"hutchinson"``),
:func:`~lamda_ext.hessian.hutchpp_trace` (``"hutch++"``) and :func:`~lamda_ext.hessian.xtrace` (``"xtrace"``).
"""
from __future__ import annotations

import torch

from ..checks import check_int
from ..losses import LossSpec
from .blocks import layer_blocks
from .estimates import TraceEstimate
from .hutchinson import hutchinson_trace
from .hutchpp import hutchpp_trace
from .operator import as_operator
from .xtrace import xtrace

__all__ = ["hessian_trace", "TRACE_METHODS"]

TRACE_METHODS = {"hutchinson": hutchinson_trace, "hutch++": hutchpp_trace, "xtrace": xtrace}


def hessian_trace(model, loss: LossSpec | None = None, data=None, probes: int | None = None,
                  method: str = "hutchinson", generator: torch.Generator | None = None, *,
                  matvecs: int | None = None, rtol: float | None = None, block: int = 32, per_layer: bool = False,
                  **operator_kw) -> TraceEstimate | dict[str, TraceEstimate]:
    """Estimate ``tr(A)`` of the curvature ``A`` (``curvature=`` in ``operator_kw``; the Hessian by default).

    ``hutchinson``: mean of ``zᵀAz`` over Rademacher ``z`` (quadratic forms: no product needed, see
    :meth:`HessianOperator.quadratic_forms`). ``hutch++``: a low-rank sketch from block products traced exactly,
    Hutchinson on the deflated rest. ``xtrace``: every test vector serves both parts (leave-one-out sketches).

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a :class:`HessianOperator`.
        probes, matvecs: the product budget (two names for one number: give at most one); default 100 products,
            or up to 10 000 with ``rtol``.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        generator: draws the probes on the CPU (rank 0's probes are used on every rank).
        rtol: a target relative standard error: the estimator adds products until ``std_error ≤ rtol ·
            |estimate|`` or the budget ends (then a ``RuntimeWarning``).
        block: rows per block product ``A @ [block, P]`` (and probes per adaptive step).
        per_layer: one estimate per parameter block (the parameters of each module, see
            :func:`~lamda_ext.hessian.blocks.layer_blocks`), each the trace of its diagonal block; the blocks'
            traces sum to the full trace.
        operator_kw: passed to :class:`HessianOperator` (``curvature``, ``loss_fn``, ``reduction``, ``params``,
            ``memory_budget``, ...).

    Returns:
        A :class:`TraceEstimate` (a ``float`` with ``std_error``, ``matvecs``, ``samples``, ...), or with
        ``per_layer`` a dict block name → :class:`TraceEstimate` in parameter order.
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {tuple(TRACE_METHODS)}, got {method!r}")
    if probes is not None and matvecs is not None:
        raise ValueError("probes and matvecs both set the product budget: pass one of them")
    budget = check_int(matvecs, "matvecs", allow_none=True) if probes is None else check_int(probes, "probes")
    op = as_operator(model, loss, data, **operator_kw)

    def run(o) -> TraceEstimate:
        return TRACE_METHODS[method](o, matvecs=budget, rtol=rtol, generator=generator, block=block)

    if per_layer:
        return {name: run(op.restrict(names)) for name, names in layer_blocks(op.params).items()}
    return run(op)
