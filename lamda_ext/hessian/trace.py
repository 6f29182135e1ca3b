"""Stochastic trace of a curvature matrix (the loss Hessian by default), with its standard error and cost.

Three estimators, each in its own module: [`hutchinson_trace`][lamda_ext.hessian.hutchinson_trace] (``"hutchinson"``),
[`hutchpp_trace`][lamda_ext.hessian.hutchpp_trace] (``"hutch++"``) and [`xtrace`][lamda_ext.hessian.xtrace]
(``"xtrace"``).
"""
from __future__ import annotations

import torch

from ..checks import check_int
from ..losses import LossSpec
from .blocks import layer_blocks
from .estimates import TraceEstimate
from .hutchinson import hutchinson_block_traces, hutchinson_trace
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

    ``hutchinson``: the mean of ``zᵀAz`` over Rademacher ``z`` (quadratic forms: no product needed, see
    [`HessianOperator.quadratic_forms`][lamda_ext.hessian.operator.HessianOperator.quadratic_forms]). ``hutch++``: a
    low-rank sketch from block products traced exactly, Hutchinson on the deflated rest. ``xtrace``: every test vector
    serves both parts (leave-one-out sketches); with ``matvecs ≥ 2P`` the sketch spans the whole space and the trace
    is exact.

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a
            [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        loss: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        data: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        probes: the product budget (the number of probes for Hutchinson); default 100 products, or up to 10 000 with
            ``rtol``.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        generator: draws the probes on the CPU (rank 0's probes are used on every rank).
        matvecs: another name for ``probes`` (give at most one).
        rtol: a target relative standard error: the estimator adds products until ``std_error ≤ rtol · |estimate|``
            or the budget ends (then a ``RuntimeWarning``).
        block: rows per block product ``A @ [block, P]`` (and probes per adaptive step).
        per_layer: one estimate per parameter block (the parameters of each module, see
            [`layer_blocks`][lamda_ext.hessian.blocks.layer_blocks]), each the trace of its diagonal block; the blocks'
            traces sum to the full trace. Hutchinson shares its probes among the blocks (one product of the whole
            operator per probe serves all: [`hutchinson_block_traces`][lamda_ext.hessian.hutchinson.hutchinson_block_traces]);
            Hutch++ and XTrace run on each block's own operator (its sketch captures that block's outliers).
        **operator_kw: passed to [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator] (``curvature``,
            ``loss_fn``, ``reduction``, ``params``, ``memory_budget``, ...).

    Returns:
        A [`TraceEstimate`][lamda_ext.hessian.estimates.TraceEstimate] (a ``float`` with ``std_error``, ``matvecs``,
        ``samples``, ...), or with ``per_layer`` a dict block name →
        [`TraceEstimate`][lamda_ext.hessian.estimates.TraceEstimate] in parameter order.

    Raises:
        ValueError: an unknown ``method``, both ``probes`` and ``matvecs``, a budget too small for the method
            (Hutch++ needs 3 products, XTrace 4), an ``rtol`` outside (0, 1).

    Example:
        >>> import torch, lamda_ext
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
        >>> H = lamda_ext.HessianOperator(model, "cross_entropy", (x, y))
        >>> exact = float(torch.trace(H @ torch.eye(H.size, dtype=torch.float64)))
        >>> tr = lamda_ext.hessian_trace(H, probes=40, generator=torch.Generator().manual_seed(0))
        >>> tr.method, tr.probes, tr.std_error > 0
        ('hutchinson', 40, True)
        >>> xt = lamda_ext.hessian_trace(H, method="xtrace", matvecs=2 * H.size, generator=torch.Generator().manual_seed(0))
        >>> abs(xt - exact) < 1e-8                 # the sketch spans all 26 dimensions: exact
        True
        >>> layers = lamda_ext.hessian_trace(H, method="xtrace", matvecs=2 * H.size, per_layer=True)
        >>> abs(sum(layers.values()) - exact) < 1e-8   # the blocks' traces sum to the trace
        True
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"method must be one of {tuple(TRACE_METHODS)}, got {method!r}")
    if probes is not None and matvecs is not None:
        raise ValueError("probes and matvecs both set the product budget: pass one of them")
    budget = check_int(matvecs, "matvecs", allow_none=True) if probes is None else check_int(probes, "probes")
    op = as_operator(model, loss, data, **operator_kw)

    def run(o) -> TraceEstimate:
        return TRACE_METHODS[method](o, matvecs=budget, rtol=rtol, generator=generator, block=block)

    if per_layer and method == "hutchinson":
        return hutchinson_block_traces(op, layer_blocks(op.params), matvecs=budget, rtol=rtol, generator=generator,
                                       block=block)
    if per_layer:
        return {name: run(op.restrict(names)) for name, names in layer_blocks(op.params).items()}
    return run(op)
