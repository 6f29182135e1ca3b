"""A dense symmetric matrix with the operator protocol of the estimators and eigensolvers."""
from __future__ import annotations

import torch

__all__ = ["MatrixOperator"]


class MatrixOperator:
    """A symmetric matrix ``A`` ``[P, P]`` as an operator.

    ``@`` / [`matvec`][lamda_ext.hessian.matrix.MatrixOperator.matvec] on ``[P]`` or rows ``[K, P]``,
    [`quadratic_forms`][lamda_ext.hessian.matrix.MatrixOperator.quadratic_forms], and a counter of the products taken
    ([`n_products`][lamda_ext.hessian.matrix.MatrixOperator.n_products], rows). For checks and small problems:
    [`hutchpp_trace`][lamda_ext.hessian.hutchpp_trace], [`xtrace`][lamda_ext.hessian.xtrace], ... take it like a
    [`HessianOperator`][lamda_ext.hessian.HessianOperator].

    Args:
        A: a square floating-point tensor (only its symmetric part is used: ``(A + Aᵀ)/2``).
    """

    def __init__(self, A: torch.Tensor):
        if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix [P, P], got {getattr(A, 'shape', type(A).__name__)}")
        if not A.dtype.is_floating_point:
            raise TypeError(f"A must be floating point, got {A.dtype}")
        self.A = (A + A.t()) / 2
        self.size = A.shape[0]
        self.shape = (self.size, self.size)
        self.dtype, self.device = A.dtype, A.device
        self.n_products = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for ``v`` ``[P]`` or each row of ``[K, P]`` (same shape out)."""
        self.n_products += 1 if v.dim() == 1 else v.shape[0]
        return v @ self.A

    __matmul__ = matvec

    def quadratic_forms(self, Z: torch.Tensor) -> torch.Tensor:
        """``z_iᵀ A z_i`` for the rows of ``Z`` ``[n, P]`` → ``[n]`` float64 (CPU)."""
        return (Z.to(torch.float64) * self.matvec(Z).to(torch.float64)).sum(dim=1).cpu()

    def broadcast(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` itself (a dense matrix is the same on every rank)."""
        return t
