"""Loss-landscape tools (research layer): ρ-sharpness, linear mode connectivity, filter-normalised
loss surfaces with plots, and a finite-difference curvature probe with a learning-rate wrapper.

Hessian spectra live in the core: ``lamda_ext.hessian`` (HessianOperator, hessian_eigs,
hessian_trace, hessian_density).
"""
from .connectivity import ConnectivityResult, mode_connectivity, recompute_bn_stats
from .evaluate import evaluate
from .probe import CurvatureAdaptiveLR, CurvatureEstimate, CurvatureProbe
from .sharpness import data_gradient, sharpness
from .surface import (SurfaceResult, loss_surface, plot_contour, plot_surface_1d, plot_surface_3d,
                      random_direction)

__all__ = ["sharpness", "data_gradient", "mode_connectivity", "ConnectivityResult", "recompute_bn_stats",
           "loss_surface", "SurfaceResult", "random_direction", "plot_surface_1d", "plot_contour", "plot_surface_3d",
           "CurvatureProbe", "CurvatureEstimate", "CurvatureAdaptiveLR", "evaluate"]
