"""Hessian spectra of a model's loss from forward-over-reverse HVPs.

- :class:`HessianOperator` — the Hessian over a data set as a matrix-free operator (``@``, ``to_scipy()``),
  data-parallel under ``torch.distributed`` (:func:`rank_local` turns that off for per-rank work).
- :func:`hessian_eigs` — extreme eigenpairs (Lanczos with full reorthogonalisation, or scipy ``eigsh``).
- :func:`hessian_trace` — Hutchinson / Hutch++ trace.
- :func:`hessian_density` — spectral density by stochastic Lanczos quadrature (:func:`slq_nodes`).
"""
from .data import check_deterministic, iter_batches, rank_local
from .density import hessian_density, slq_nodes
from .eigs import hessian_eigs
from .lanczos import Lanczos
from .operator import HessianOperator
from .trace import hessian_trace

__all__ = ["HessianOperator", "hessian_eigs", "hessian_trace", "hessian_density", "slq_nodes",
           "Lanczos", "check_deterministic", "iter_batches", "rank_local"]
