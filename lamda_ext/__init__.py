"""lamda_ext: the geometry of neural-network losses.

Core API:
    directional_derivs  batched n-th directional derivatives of the loss ``[B, K, N]`` / ``[K, N]``
    plan                how a call splits its work within ``memory_budget`` (chunks, peak, cost)
    curvature_rate      λ, the slope of log|d_n| over n
    random_directions, random_param_directions
    hvp                 Hessian-vector products (forward-over-reverse, vmapped over K)
    HessianOperator, hessian_eigs, hessian_trace, hessian_density, hessian_diagonal
                        curvatures "hessian", "ggn", "fisher", "fisher_mc", "empirical_fisher" (``curvature=``)
    build_info          what the C++/CUDA extension was built with
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
