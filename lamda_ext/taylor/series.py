"""The Taylor-series value that flows through an unmodified model.

A :class:`TaylorSeries` stands for ``x(t) = Σ_n c_n t^n`` truncated at the run's order N.
It stores the primal ``c0`` (shape ``S``, shared by all K directions) and the higher
normalised coefficients ``hi`` with shape ``[D, K, *S]`` where D ≥ 1 is the tracked
degree (coefficients past D are exactly zero).

It is not a ``torch.Tensor``: it implements ``__torch_function__``, so torch functions,
``torch.nn.functional`` calls and tensor methods used by a model's ``forward`` are
routed to the rule table in :mod:`lamda_ext.taylor.op_rules`. An op without a rule
raises ``NotImplementedError`` naming the op and the module that called it. Values read
in Python (``bool(x.sum() > 0)``, ``x.item()``, comparisons) are the primal's, which is
exactly what autograd differentiates through: branches are taken at t = 0.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, Optional

import torch
from torch import nn

_state = threading.local()

# canonical-name table: filled by op_rules (name -> rule(args, kwargs) -> result)
RULES: Dict[str, Callable] = {}

_REFLECTED = {"__radd__": "radd", "__rsub__": "rsub", "__rmul__": "rmul", "__rtruediv__": "rtruediv",
              "__rdiv__": "rtruediv", "__rpow__": "rpow", "__rmatmul__": "rmatmul"}


def canonical_name(func) -> str:
    """``torch.add``, ``Tensor.add_``, ``Tensor.__iadd__`` → ``"add"``; reflected dunders keep an ``r`` prefix."""
    name = getattr(func, "__name__", None) or str(func)
    if name in _REFLECTED:
        return _REFLECTED[name]
    if name.startswith("__i") and name.endswith("__") and name[3:-2] in ("add", "sub", "mul", "truediv", "div", "pow"):
        name = name[3:-2]
    elif name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    elif name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return {"truediv": "div", "divide": "div", "multiply": "mul", "subtract": "sub", "true_divide": "div",
            "negative": "neg", "max_pool2d_with_indices": "max_pool2d", "_max_pool2d": "max_pool2d"}.get(name, name)


class RunContext:
    """State of one Taylor run: truncation order N, direction count K, the elementwise/head
    implementation (composite rules or fused kernels) and the stack of module paths."""

    def __init__(self, order: int, k: int, impl, model: Optional[nn.Module] = None):
        self.order = order          # N: highest derivative order
        self.k = k                  # K: number of directions
        self.impl = impl
        self.names = {id(m): (n or "<root>") for n, m in model.named_modules()} if model is not None else {}
        self.stack: list = []

    @property
    def n_coeffs(self) -> int:
        return self.order + 1

    def where(self) -> str:
        if not self.stack:
            return "the model's top-level forward"
        mod = self.stack[-1]
        return f"module '{self.names.get(id(mod), '?')}' ({type(mod).__name__})"

    @contextlib.contextmanager
    def active(self):
        """Make this context current and track which module is running (for error messages)."""
        prev = getattr(_state, "ctx", None)
        _state.ctx = self
        def enter(module, args):
            self.stack.append(module)

        def leave(module, args, output):
            if self.stack:
                self.stack.pop()

        pre = nn.modules.module.register_module_forward_pre_hook(enter)
        post = nn.modules.module.register_module_forward_hook(leave)
        try:
            yield self
        finally:
            pre.remove()
            post.remove()
            _state.ctx = prev


def current_context() -> RunContext:
    ctx = getattr(_state, "ctx", None)
    if ctx is None:
        raise RuntimeError("a TaylorSeries was used outside a Taylor run (lamda_ext.directional_derivs)")
    return ctx


class TaylorSeries:
    """Truncated Taylor series ``c0 + Σ_{n=1..D} hi[n-1] t^n`` over K directions.

    c0: ``[*S]`` primal; hi: ``[D, K, *S]`` normalised higher coefficients.
    """

    __slots__ = ("c0", "hi")

    def __init__(self, c0: torch.Tensor, hi: torch.Tensor):
        if hi.dim() != c0.dim() + 2 or hi.shape[2:] != c0.shape:
            hi = hi.expand((hi.shape[0], hi.shape[1]) + tuple(c0.shape))
        self.c0 = c0
        self.hi = hi

    # ---- tensor-like metadata -------------------------------------------------------------
    @property
    def degree(self) -> int:
        return self.hi.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.c0.shape

    @property
    def dtype(self):
        return self.c0.dtype

    @property
    def device(self):
        return self.c0.device

    @property
    def ndim(self) -> int:
        return self.c0.dim()

    @property
    def is_cuda(self) -> bool:
        return self.c0.is_cuda

    @property
    def requires_grad(self) -> bool:
        return self.c0.requires_grad or self.hi.requires_grad

    def dim(self) -> int:
        return self.c0.dim()

    def size(self, dim=None):
        return self.c0.size() if dim is None else self.c0.size(dim)

    def numel(self) -> int:
        return self.c0.numel()

    def __len__(self) -> int:
        return len(self.c0)

    def terms(self) -> list:
        """``[c0, c1, ..., cD]``: c0 ``[*S]``, higher ones ``[K, *S]`` (they broadcast)."""
        return [self.c0] + list(self.hi.unbind(0))

    def __repr__(self) -> str:
        return f"TaylorSeries(shape={tuple(self.shape)}, degree={self.degree}, K={self.hi.shape[1]}, dtype={self.dtype})"

    # ---- values read in Python are the primal's (as autograd sees them: constants) ---------
    def __bool__(self):
        return bool(self.c0)

    def item(self):
        return self.c0.item()

    def tolist(self):
        return self.c0.tolist()

    def __float__(self):
        return float(self.c0)

    def __int__(self):
        return int(self.c0)

    # ---- dispatch ---------------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return dispatch(func, args, kwargs or {})

    def __getattr__(self, name):
        attr = getattr(torch.Tensor, name, None)
        if attr is None or name.startswith("_"):
            raise AttributeError(f"TaylorSeries has no attribute {name!r}")
        return lambda *args, **kwargs: dispatch(attr, (self,) + args, kwargs)


def _binary(name):
    def method(self, other):
        return dispatch(getattr(torch.Tensor, name), (self, other), {})
    method.__name__ = name
    return method


for _n in ("__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__",
           "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__pow__", "__rpow__", "__matmul__",
           "__rmatmul__", "__getitem__"):
    setattr(TaylorSeries, _n, _binary(_n))
TaylorSeries.__neg__ = lambda self: dispatch(torch.Tensor.__neg__, (self,), {})


def _compare(name):
    def method(self, other):
        return getattr(self.c0, name)(other.c0 if isinstance(other, TaylorSeries) else other)
    return method


for _n in ("__gt__", "__ge__", "__lt__", "__le__", "__eq__", "__ne__"):
    setattr(TaylorSeries, _n, _compare(_n))
TaylorSeries.__hash__ = object.__hash__
TaylorSeries.__pos__ = lambda self: self


def dispatch(func, args, kwargs):
    name = canonical_name(func)
    rule = RULES.get(name)
    if rule is None:
        ctx = current_context()
        raise NotImplementedError(
            f"Taylor mode has no rule for op '{name}' (called from {ctx.where()}). "
            "backend='autograd' (or 'func') works for any differentiable op.")
    return rule(*args, **kwargs)


def is_series(x) -> bool:
    return isinstance(x, TaylorSeries)
