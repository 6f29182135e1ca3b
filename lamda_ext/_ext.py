"""Safe loader of the compiled extension ``lamda_ext._C`` and its build information.

Importing this module never fails: when the extension is missing (not built, or
built against another torch) `available` is False and `load_error`
says why.
"""
from __future__ import annotations

from typing import Optional

import torch

try:  # importing _C runs the TORCH_LIBRARY registrations of the lamda_ext ops
    from . import _C  # type: ignore[attr-defined]
    _LOAD_ERROR: Optional[str] = None
except (ImportError, OSError) as exc:  # not built, or ABI mismatch with the installed torch
    _C = None
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def available() -> bool:
    """True when the extension is importable (its CPU kernels are always compiled)."""
    return _C is not None


def load_error() -> Optional[str]:
    """Why the extension could not be imported (None when it was)."""
    return _LOAD_ERROR


def build_info() -> dict:
    """What was compiled and what can run here.

    Keys: ``cpu`` (the CPU kernels are built: True when the extension loads),
    ``cuda_compiled`` (the CUDA kernels were compiled in), ``cuda_available``
    (compiled and a CUDA device is visible), ``torch`` (``torch.__version__``),
    ``torch_cuda`` (``torch.version.cuda``), ``extension_error`` (None or the
    import error).
    """
    cuda_compiled = bool(getattr(_C, "cuda_compiled", 0)) if _C is not None else False
    return {
        "cpu": _C is not None,
        "cuda_compiled": cuda_compiled,
        "cuda_available": cuda_compiled and torch.cuda.is_available(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension_error": _LOAD_ERROR,
    }
