"""Loss-landscape tools (research layer).

ρ-sharpness, linear mode connectivity, filter-normalised loss surfaces with plots, and a finite-difference curvature
probe with a learning-rate wrapper.

Hessian spectra live in the core: ``lamda_ext.hessian`` (HessianOperator, hessian_eigs,
hessian_trace, hessian_density).
"""
from .connectivity import ConnectivityResult, PathBarrier, mode_connectivity, path_barrier, recompute_bn_stats
from .evaluate import evaluate
from .curvature_probe import CurvatureAdaptiveLR, CurvatureEstimate, CurvatureProbe
from .sharpness import data_gradient, sharpness
from .surface import (SurfaceResult, loss_surface, plot_contour, plot_contour_panels, plot_surface_1d, plot_surface_3d,
                      random_direction, surface_grid)

__all__ = ["sharpness", "data_gradient", "mode_connectivity", "ConnectivityResult", "PathBarrier", "path_barrier", "recompute_bn_stats",
           "loss_surface", "SurfaceResult", "random_direction", "plot_surface_1d", "plot_contour", "plot_surface_3d",
           "plot_contour_panels", "surface_grid",
           "CurvatureProbe", "CurvatureEstimate", "CurvatureAdaptiveLR", "evaluate"]
