"""Curvature matrices of a model's loss as matrix-free operators, and their spectra, traces and diagonals.

The curvatures are the Hessian, the generalised Gauss–Newton matrix (GGN), the Fisher, its Monte-Carlo estimate and the
empirical Fisher.

- [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator] — a curvature over a data set as a matrix-free
  operator (``@``, ``to_scipy()``), ``curvature=``, parameter blocks (``params=``,
  [`restrict`][lamda_ext.hessian.operator.HessianOperator.restrict]), data-parallel under ``torch.distributed``
  ([`rank_local`][lamda_ext.hessian.data.rank_local] turns that off for per-rank work).
- [`hessian_eigs`][lamda_ext.hessian.eigs.hessian_eigs] — extreme eigenpairs (Lanczos with full reorthogonalisation, or
  scipy ``eigsh``), with residual norms and converged flags ([`EigResult`][lamda_ext.hessian.eigs.EigResult]);
  ``per_layer=True`` per parameter block.
- [`hessian_trace`][lamda_ext.hessian.trace.hessian_trace] — Hutchinson / Hutch++ / XTrace trace with its standard error
  and products used ([`TraceEstimate`][lamda_ext.hessian.estimates.TraceEstimate]), to a product budget or a target
  relative standard error; ``per_layer=True``.
- [`hessian_diagonal`][lamda_ext.hessian.diagonal.hessian_diagonal] — Hutchinson's diagonal, or the exact diagonal of
  the Gauss–Newton types ([`DiagonalEstimate`][lamda_ext.hessian.estimates.DiagonalEstimate]).
- [`hessian_density`][lamda_ext.hessian.density.hessian_density] — spectral density by stochastic Lanczos quadrature
  ([`slq_nodes`][lamda_ext.hessian.density.slq_nodes]).
- The estimators on any operator ([`MatrixOperator`][lamda_ext.hessian.matrix.MatrixOperator] for a dense matrix):
  [`hutchinson_trace`][lamda_ext.hessian.hutchinson.hutchinson_trace],
  [`hutchinson_block_traces`][lamda_ext.hessian.hutchinson.hutchinson_block_traces],
  [`hutchpp_trace`][lamda_ext.hessian.hutchpp.hutchpp_trace], [`xtrace`][lamda_ext.hessian.xtrace],
  [`hutchinson_diagonal`][lamda_ext.hessian.hutchinson.hutchinson_diagonal].
"""
from .blocks import layer_blocks
from .data import check_deterministic, iter_batches, rank_local
from .density import hessian_density, slq_nodes
from .diagonal import hessian_diagonal
from .eigs import EigResult, hessian_eigs
from .estimates import DiagonalEstimate, TraceEstimate
from .hutchinson import hutchinson_block_traces, hutchinson_diagonal, hutchinson_trace
from .hutchpp import hutchpp_trace
from .lanczos import Lanczos
from .matrix import MatrixOperator
from .operator import HessianOperator
from .trace import hessian_trace
from .xtrace import xtrace

__all__ = ["HessianOperator", "hessian_eigs", "hessian_trace", "hessian_diagonal", "hessian_density", "slq_nodes",
           "Lanczos", "check_deterministic", "iter_batches", "rank_local", "EigResult", "TraceEstimate",
           "DiagonalEstimate", "MatrixOperator", "hutchinson_trace", "hutchpp_trace", "xtrace",
           "hutchinson_block_traces", "hutchinson_diagonal", "layer_blocks"]
