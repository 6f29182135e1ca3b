"""lamda_ext: the geometry of neural-network losses.

- [`directional_derivs`][lamda_ext.derivs.directional_derivs]: batched n-th directional derivatives of the loss,
  ``[B, K, N]`` (input space) or ``[K, N]`` (parameter space); [`plan`][lamda_ext.derivs.plan]: how a call splits
  its work within ``memory_budget``.
- [`curvature_rate`][lamda_ext.curvature.curvature_rate]: λ, the slope of ln|d_n| over n;
  [`random_directions`][lamda_ext.directions.random_directions],
  [`random_param_directions`][lamda_ext.directions.random_param_directions]: seeded directions.
- [`hvp`][lamda_ext.hvp.hvp]: Hessian-vector products (forward-over-reverse, vmapped over K), or products with the
  other curvatures (``curvature=``).
- [`HessianOperator`][lamda_ext.hessian.operator.HessianOperator],
  [`hessian_eigs`][lamda_ext.hessian.eigs.hessian_eigs], [`hessian_trace`][lamda_ext.hessian.trace.hessian_trace],
  [`hessian_diagonal`][lamda_ext.hessian.diagonal.hessian_diagonal],
  [`hessian_density`][lamda_ext.hessian.density.hessian_density]: the curvatures ``"hessian"``, ``"ggn"``,
  ``"fisher"``, ``"fisher_mc"``, ``"empirical_fisher"`` as matrix-free operators, and their spectra, traces,
  diagonals and densities.
- [`build_info`][lamda_ext._ext.build_info]: what the C++/CUDA extension was built with.

Every entry point takes a tensor batch or a Hugging Face batch (a dict of keyword arguments,
[`lamda_ext.batches`][lamda_ext.batches]) and a parameter block (``params=``, [`lamda_ext.params`][lamda_ext.params]).
"""
from ._ext import build_info
from ._state import frozen_batchnorm_stats
from .curvature import curvature_rate
from .derivs import directional_derivs, plan
from .memory import resolve_budget
from .planning import Plan
from .hessian import HessianOperator, hessian_density, hessian_diagonal, hessian_eigs, hessian_trace
from .hvp import hvp
from .directions import num_parameters, random_directions, random_param_directions
from .losses import resolve_loss

__version__ = "0.1.0"

__all__ = ["directional_derivs", "plan", "Plan", "resolve_budget", "curvature_rate", "random_directions", "random_param_directions",
           "num_parameters", "resolve_loss", "build_info", "hvp", "HessianOperator", "hessian_eigs",
           "hessian_trace", "hessian_density", "hessian_diagonal", "frozen_batchnorm_stats"]
