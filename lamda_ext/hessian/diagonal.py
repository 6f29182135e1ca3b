"""The diagonal of a curvature matrix: Hutchinson's estimate for any curvature, exact for the Gauss–Newton types."""
from __future__ import annotations

import torch

from ..losses import LossSpec
from .estimates import DiagonalEstimate
from .hutchinson import hutchinson_diagonal
from .operator import as_operator

__all__ = ["hessian_diagonal"]


def hessian_diagonal(model, loss: LossSpec | None = None, data=None, method: str = "hutchinson", *,
                     matvecs: int = 100, generator: torch.Generator | None = None, block: int = 32,
                     **operator_kw) -> DiagonalEstimate:
    """``diag(A)`` of the curvature ``A`` (``curvature=`` in ``operator_kw``; the Hessian by default).

    Args:
        model: an ``nn.Module`` (with ``loss`` and ``data``) or a
            [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        loss: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        data: as for [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].
        method: ``"hutchinson"`` (``mean z ⊙ Az`` over ``matvecs`` Rademacher probes, any curvature) or ``"exact"``
            (``ggn``, ``fisher``, ``fisher_mc``, ``empirical_fisher``: per-sample vector–Jacobian products, one data
            pass per output dimension — for models with few outputs, e.g. classifiers).
        matvecs: probes of ``hutchinson``.
        generator: draws them (on the CPU).
        block: probes per block product.
        **operator_kw: passed to [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator].

    Returns:
        A [`DiagonalEstimate`][lamda_ext.hessian.estimates.DiagonalEstimate]: ``estimate`` ``[P]`` and ``std_error``
        ``[P]`` (float64, CPU; zeros when exact).

    Raises:
        NotImplementedError: ``method="exact"`` for the Hessian.
        ValueError: an unknown ``method``.

    Example:
        >>> import torch, lamda_ext
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
        >>> x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
        >>> G = lamda_ext.HessianOperator(model, "cross_entropy", (x, y), curvature="ggn")
        >>> diag = lamda_ext.hessian_diagonal(G, method="exact")
        >>> tuple(diag.estimate.shape), diag.estimate.dtype
        ((26,), torch.float64)
        >>> torch.allclose(diag.estimate, torch.diagonal(G @ torch.eye(G.size, dtype=torch.float64)))
        True
        >>> est = lamda_ext.hessian_diagonal(model, "cross_entropy", (x, y), matvecs=64)   # Hutchinson, the Hessian
        >>> tuple(est.std_error.shape), est.method, est.matvecs
        ((26,), 'hutchinson', 64)
    """
    if method not in ("hutchinson", "exact"):
        raise ValueError(f"method must be 'hutchinson' or 'exact', got {method!r}")
    op = as_operator(model, loss, data, **operator_kw)
    if method == "hutchinson":
        return hutchinson_diagonal(op, matvecs=matvecs, generator=generator, block=block)
    d = op.exact_diagonal().to("cpu", torch.float64)
    return DiagonalEstimate(d, torch.zeros_like(d), "exact", 0)
