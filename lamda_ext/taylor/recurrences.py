"""Univariate Taylor-coefficient recurrences of elementwise functions and the cross-entropy head, in ordinary torch ops.

All series are in *normalised* coefficients, ``c_n = f^(n)(0) / n!``. These are the
reference the fused kernels ([`lamda_ext.ops`][lamda_ext.ops]) are checked against, and the
implementation of the ``taylor`` backend. Written with differentiable torch ops, so
autograd back-propagates through them to the model parameters.

List form (used by the engine): a series is a list ``[x_0, x_1, ..., x_D]`` whose
entries broadcast against each other (``x_0`` may lack the direction axis of the
higher coefficients); coefficients past ``D`` are zero. Tensor form (the public
reference API mirrored by the kernels): a tensor ``[C, *S]`` with the coefficient
axis first.
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch

Series = List[torch.Tensor]

__all__ = ["UNARY", "UNARY_KINDS", "unary_list", "unary_coeffs", "mul_list", "pow_list", "recip_list",
           "cross_entropy_list", "cross_entropy_coeffs", "cross_entropy_deg1", "cumulants_from_central"]


def _get(x: Sequence[torch.Tensor], k: int):
    return x[k] if k < len(x) else None


def mul_list(a: Series, b: Series, n_out: int) -> Series:
    """Cauchy product of two series, truncated to ``n_out`` coefficients (and to degree len(a)+len(b)-2)."""
    n_out = min(n_out, len(a) + len(b) - 1)
    out = []
    for n in range(n_out):
        acc = None
        for i in range(max(0, n - len(b) + 1), min(n, len(a) - 1) + 1):
            term = a[i] * b[n - i]
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def _deriv_recurrence(x: Series, w: Series, n: int):
    """(1/n) Σ_{k=1..n} k x_k w_{n-k}: coefficient n of y where y' = w x'."""
    acc = None
    for k in range(1, min(n, len(x) - 1) + 1):
        term = x[k] * w[n - k] * (k / n)
        acc = term if acc is None else acc + term
    return acc


def _zero_like_series(x: Series):
    """A zero that broadcasts like the higher coefficients (used when a recurrence sum is empty)."""
    return torch.zeros_like(x[1] if len(x) > 1 else x[0])


def exp_list(x: Series, n_out: int) -> Series:
    y = [torch.exp(x[0])]
    for n in range(1, n_out):
        t = _deriv_recurrence(x, y, n)
        y.append(t if t is not None else _zero_like_series(x))
    return y


def log_list(x: Series, n_out: int) -> Series:
    """Log of a series with x_0 > 0: x y' = x'."""
    y = [torch.log(x[0])]
    inv = 1.0 / x[0]
    for n in range(1, n_out):
        acc = x[n] if n < len(x) else None
        for k in range(1, n):
            xk = _get(x, n - k)
            if xk is None:
                continue
            term = y[k] * xk * (-k / n)
            acc = term if acc is None else acc + term
        y.append((acc if acc is not None else _zero_like_series(x)) * inv)
    return y


def pow_list(x: Series, a: float, n_out: int) -> Series:
    """x**a for a real exponent a (x_0 > 0 unless a is a non-negative integer): x y' = a x' y."""
    y = [x[0] ** a]
    inv = 1.0 / x[0]
    for n in range(1, n_out):
        acc = None
        for k in range(1, min(n, len(x) - 1) + 1):
            term = x[k] * y[n - k] * ((a * k - (n - k)) / n)
            acc = term if acc is None else acc + term
        y.append((acc if acc is not None else _zero_like_series(x)) * inv)
    return y


def recip_list(x: Series, n_out: int) -> Series:
    """1/x: y_n = -(Σ_{k=1..n} x_k y_{n-k}) / x_0."""
    y = [1.0 / x[0]]
    for n in range(1, n_out):
        acc = None
        for k in range(1, min(n, len(x) - 1) + 1):
            term = x[k] * y[n - k]
            acc = term if acc is None else acc + term
        y.append(-(acc if acc is not None else _zero_like_series(x)) * y[0])
    return y


def _ode_list(x: Series, y0: torch.Tensor, w_of: callable, n_out: int) -> Series:
    """Series of y with y' = w(y) x', where w_of(y, j) returns coefficient j of w given y_0..y_j."""
    y = [y0]
    w = []
    for n in range(1, n_out):
        w.append(w_of(y, n - 1))
        t = _deriv_recurrence(x, w, n)
        y.append(t if t is not None else _zero_like_series(x))
    return y


def _sq_coeff(y: Series, j: int):
    """Coefficient j of y*y (needs y_0..y_j)."""
    acc = None
    for i in range(j + 1):
        term = y[i] * y[j - i]
        acc = term if acc is None else acc + term
    return acc


def sigmoid_list(x: Series, n_out: int) -> Series:
    # s' = s (1 - s) x'
    return _ode_list(x, torch.sigmoid(x[0]), lambda s, j: s[j] - _sq_coeff(s, j), n_out)


def tanh_list(x: Series, n_out: int) -> Series:
    # y' = (1 - y^2) x'
    def w(y, j):
        return 1.0 - y[0] * y[0] if j == 0 else -_sq_coeff(y, j)
    return _ode_list(x, torch.tanh(x[0]), w, n_out)


def softplus_list(x: Series, n_out: int) -> Series:
    # y' = sigmoid(x) x'
    s = sigmoid_list(x, max(n_out - 1, 1))
    y = [torch.logaddexp(x[0], torch.zeros_like(x[0]))]   # no threshold: the engine applies torch's
    for n in range(1, n_out):
        t = _deriv_recurrence(x, s, n)
        y.append(t if t is not None else _zero_like_series(x))
    return y


def _normal_cdf_list(x: Series, n_out: int) -> Series:
    # Φ' = φ(x) x', φ = exp(-x²/2)/√(2π)
    g = [-0.5 * c for c in mul_list(x, x, max(n_out - 1, 1))]
    phi = [c * (1.0 / math.sqrt(2.0 * math.pi)) for c in exp_list(g, max(n_out - 1, 1))]
    y = [0.5 * (1.0 + torch.erf(x[0] * (1.0 / math.sqrt(2.0))))]
    for n in range(1, n_out):
        t = _deriv_recurrence(x, phi, n)
        y.append(t if t is not None else _zero_like_series(x))
    return y


def gelu_list(x: Series, n_out: int) -> Series:
    return mul_list(x, _normal_cdf_list(x, n_out), n_out)


def silu_list(x: Series, n_out: int) -> Series:
    return mul_list(x, sigmoid_list(x, n_out), n_out)


def elu_list(x: Series, n_out: int, alpha: float = 1.0) -> Series:
    """ELU: identity where x_0 > 0, alpha·(exp(x) − 1) elsewhere (branch chosen by the primal)."""
    pos = x[0] > 0
    e = exp_list(x, n_out)
    out = [torch.where(pos, x[0], alpha * (e[0] - 1.0))]
    for n in range(1, n_out):
        xn = x[n] if n < len(x) else torch.zeros_like(e[n])
        out.append(torch.where(pos, xn, alpha * e[n]))
    return out


# The one list of elementwise kinds on the Python side: kind -> (composite recurrence, torch reference function).
# It mirrors LX_UNARY_KINDS in csrc/taylor_recurrences.h (same names, same order; tests/test_kernels.py checks the
# kernels accept exactly these). lamda_ext.ops, the op table (op_table) and the tests all derive from it.
# Adding a kind: its row here + its recurrence in taylor_recurrences.h (list and unary_series), its block
# recurrence in cpu/pack.h and its primal transcendental in cpu/taylor_cpu.cpp (unary_primal).
UNARY = {
    "sigmoid": (lambda x, n, alpha=1.0: sigmoid_list(x, n), torch.sigmoid),
    "tanh": (lambda x, n, alpha=1.0: tanh_list(x, n), torch.tanh),
    "softplus": (lambda x, n, alpha=1.0: softplus_list(x, n), torch.nn.functional.softplus),
    "gelu": (lambda x, n, alpha=1.0: gelu_list(x, n), torch.nn.functional.gelu),
    "silu": (lambda x, n, alpha=1.0: silu_list(x, n), torch.nn.functional.silu),
    "elu": (elu_list, torch.nn.functional.elu),
    "exp": (lambda x, n, alpha=1.0: exp_list(x, n), torch.exp),
    "log": (lambda x, n, alpha=1.0: log_list(x, n), torch.log),
}
UNARY_KINDS = tuple(UNARY)


def unary_list(kind: str, x: Series, n_out: int, alpha: float = 1.0) -> Series:
    """Series of ``f(x)`` for an elementwise ``f`` named ``kind`` (see `UNARY`)."""
    entry = UNARY.get(kind)
    if entry is None:
        raise ValueError(f"unknown unary kind {kind!r}; expected one of {UNARY_KINDS}")
    return entry[0](x, n_out, alpha)


def unary_coeffs(kind: str, x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Tensor form of `unary_list`: ``x [C, *S]`` → ``[C, *S]`` (same number of coefficients)."""
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"coefficients must have shape [C, ...] with C ≥ 1, got {list(x.shape)}")
    return torch.stack(unary_list(kind, list(x.unbind(0)), x.shape[0], alpha))


def _smoothed_target_dot(z: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """q·z over the class axis (last), q = (1-ε)·onehot(target) + ε/classes. z [..., M, classes] → [..., M]."""
    idx = target.reshape((1,) * (z.dim() - target.dim() - 1) + target.shape + (1,))
    zy = torch.gather(z, -1, idx.expand(z.shape[:-1] + (1,))).squeeze(-1)
    if label_smoothing == 0.0:
        return zy
    return (1.0 - label_smoothing) * zy + label_smoothing * z.mean(dim=-1)


def cross_entropy_list(z: Series, target: torch.Tensor, n_out: int, label_smoothing: float = 0.0) -> Series:
    """Per-sample softmax cross-entropy series: list of ``[..., M, classes]`` → list of ``[..., M]``.

    ``lse(z) − q·z`` with a max-shifted log-sum-exp series.
    """
    m = z[0].detach().amax(dim=-1, keepdim=True)
    e = exp_list([z[0] - m] + list(z[1:]), n_out)
    s = [c.sum(dim=-1) for c in e]
    lse = log_list(s, n_out)
    lse[0] = lse[0] + m.squeeze(-1)
    out = []
    for n in range(n_out):
        if n < len(z):
            out.append(lse[n] - _smoothed_target_dot(z[n], target, label_smoothing))
        else:
            out.append(lse[n])
    return out


def cross_entropy_coeffs(z: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Tensor form: logit coefficients ``[C, M, classes]``, targets ``[M]`` → loss coefficients ``[C, M]``."""
    if z.dim() != 3:
        raise ValueError(f"logit coefficients must have shape [C, M, classes], got {list(z.shape)}")
    return torch.stack(cross_entropy_list(list(z.unbind(0)), target, z.shape[0], label_smoothing))


def cumulants_from_central(m: List[torch.Tensor], order: int) -> List[torch.Tensor]:
    """Cumulants κ_2..κ_order from central moments ``m[j]`` (j = 2..order; m[0], m[1] unused).

    κ_n = m_n − Σ_{k=2}^{n−2} C(n−1, k−1) κ_k m_{n−k}  (central: κ_1 = m_1 = 0).
    Returns a list indexed by n (entries 0 and 1 are None).
    """
    kappa: List = [None, None]
    for n in range(2, order + 1):
        acc = m[n]
        for k in range(2, n - 1):
            acc = acc - math.comb(n - 1, k - 1) * kappa[k] * m[n - k]
        kappa.append(acc)
    return kappa


def cross_entropy_deg1(z0: torch.Tensor, v: torch.Tensor, target: torch.Tensor, order: int,
                       label_smoothing: float = 0.0) -> torch.Tensor:
    """Derivatives d_1..d_order of CE(z0 + t·v) at t = 0 for degree-1 logits.

    z0 ``[B, classes]``, v ``[K, B, classes]``, target ``[B]`` → ``[K, B, order]`` (true derivatives).
    d_1 = E_p[v] − q·v and d_n = κ_n(v) under p = softmax(z0) for n ≥ 2.
    """
    p = torch.softmax(z0, dim=-1)
    mu = (p * v).sum(dim=-1)
    out = [mu - _smoothed_target_dot(v, target, label_smoothing)]
    if order >= 2:
        w = v - mu.unsqueeze(-1)
        moments: List = [None, None]
        wp = w * w
        for j in range(2, order + 1):
            moments.append((p * wp).sum(dim=-1))
            if j < order:
                wp = wp * w
        out += cumulants_from_central(moments, order)[2:]
    return torch.stack(out, dim=-1)
