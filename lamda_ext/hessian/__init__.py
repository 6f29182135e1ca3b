"""Curvature matrices of a model's loss (the Hessian, the GGN, the Fisher, its Monte-Carlo estimate, the empirical
Fisher) as matrix-free operators, and their spectra, traces and diagonals.

- :class:`HessianOperator` — a curvature over a data set as a matrix-free operator (``@``, ``to_scipy()``),
  ``curvature=``, parameter blocks (``params=``, :meth:`~HessianOperator.restrict`), data-parallel under
  ``torch.distributed`` (:func:`rank_local` turns that off for per-rank work).
- :func:`hessian_eigs` — extreme eigenpairs (Lanczos with full reorthogonalisation, or scipy ``eigsh``),
  with residual norms and converged flags (:class:`EigResult`); ``per_layer=True`` per parameter block.
- :func:`hessian_trace` — Hutchinson / Hutch++ / XTrace trace with its standard error and products used
  (:class:`TraceEstimate`), to a product budget or a target relative standard error; ``per_layer=True``.
- :func:`hessian_diagonal` — Hutchinson's diagonal, or the exact diagonal of the Gauss–Newton types
  (:class:`DiagonalEstimate`).
- :func:`hessian_density` — spectral density by stochastic Lanczos quadrature (:func:`slq_nodes`).
- The estimators on any operator (:class:`MatrixOperator` for a dense matrix): :func:`hutchinson_trace`,
  :func:`hutchpp_trace`, :func:`xtrace`, :func:`hutchinson_diagonal`.
"""
from .blocks import layer_blocks
from .data import check_deterministic, iter_batches, rank_local
from .density import hessian_density, slq_nodes
from .diagonal import hessian_diagonal
from .eigs import EigResult, hessian_eigs
from .estimates import DiagonalEstimate, TraceEstimate
from .hutchinson import hutchinson_diagonal, hutchinson_trace
from .hutchpp import hutchpp_trace
from .lanczos import Lanczos
from .matrix import MatrixOperator
from .operator import HessianOperator
from .trace import hessian_trace
from .xtrace import xtrace

__all__ = ["HessianOperator", "hessian_eigs", "hessian_trace", "hessian_diagonal", "hessian_density", "slq_nodes",
           "Lanczos", "check_deterministic", "iter_batches", "rank_local", "EigResult", "TraceEstimate",
           "DiagonalEstimate", "MatrixOperator", "hutchinson_trace", "hutchpp_trace", "xtrace",
           "hutchinson_diagonal", "layer_blocks"]
