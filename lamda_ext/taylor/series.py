"""The Taylor-series value that flows through an unmodified model.

A [`TaylorSeries`][lamda_ext.taylor.series.TaylorSeries] stands for ``x(t) = Σ_n c_n t^n`` truncated at the run's order
N. It stores the primal ``c0`` (shape ``S``, shared by all K directions) and the higher normalised coefficients ``hi``
with shape ``[D, K, *S]`` where D ≥ 1 is the tracked degree (coefficients past D are exactly zero).

It is not a ``torch.Tensor``: it implements ``__torch_function__``, so torch functions, ``torch.nn.functional`` calls
and tensor methods used by a model's ``forward`` are routed to the rule table filled by
[`lamda_ext.taylor.op_table`][lamda_ext.taylor.op_table]. An op without a rule raises ``NotImplementedError`` naming the
op and the module that called it. Values read in Python (``bool(x.sum() > 0)``, ``x.item()``, comparisons) are the
primal's, which is exactly what autograd differentiates through: branches are taken at t = 0.

In-place ops (``x.add_(1)``, ``x += y``, ``x[:, :3].mul_(2)``, ``x[idx] = y``, ``F.relu(x, inplace=True)``) update the
series object itself. Views follow torch: a series produced by a view op (indexing, ``view``, ``transpose``, ...) whose
primal shares storage with its base's primal remembers that base; an in-place op on a view writes through to the base
(element positions found by applying the same view op to the base's flat indices), and a view whose base was mutated is
recomputed from it before its next use. An in-place op that would write a series into a plain tensor raises
``NotImplementedError`` naming the op and the module. A mutation is never lost silently.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Dict, Optional

import torch
from torch import nn

_state = threading.local()

# canonical-name table: filled by lamda_ext.taylor.op_table (name -> rule(*args, **kwargs) -> result)
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
    """One Taylor run's state: order N, direction count K, implementation (composite or fused) and module stack."""

    def __init__(self, order: int, k: int, impl, model: Optional[nn.Module] = None):
        self.order = order          # N: highest derivative order
        self.k = k                  # K: number of directions
        self.impl = impl
        self.names = {id(m): (n or "<root>") for n, m in model.named_modules()} if model is not None else {}
        self.stack: list = []
        # observe(name, out) -> out: sees (and may replace) the result of every dispatched op before it is
        # committed or returned (lamda_ext.taylor.quadratic records and contracts coefficients with it)
        self.observe: Optional[Callable] = None
        # a contracted quadratic-form pass in progress (lamda_ext.taylor.quadratic.Contraction): a rule whose
        # only second-order term is a product of first-order ones may contract it with the adjoint of its
        # output itself (contraction.adjoint(), contraction.add(q)) and return a degree-1 series
        self.contraction = None
        # scaled_dot_product_attention computes its scores for at most this many query rows at a time (None: all
        # rows at once); set by attention_row_blocks around a run
        self.attention_rows: Optional[int] = getattr(_state, "attention_rows", None)

    @property
    def n_coeffs(self) -> int:
        """N + 1, the coefficients kept per series."""
        return self.order + 1

    def where(self) -> str:
        """The module running now, for error messages."""
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


@contextlib.contextmanager
def attention_row_blocks(rows: Optional[int]):
    """Taylor runs started inside take the attention scores ``rows`` query rows at a time (None: all at once).

    The numbers are the same; the scores' memory is divided by ``L / rows`` for L query positions.
    """
    prev = getattr(_state, "attention_rows", None)
    _state.attention_rows = rows
    try:
        yield
    finally:
        _state.attention_rows = prev


def current_context() -> RunContext:
    """The Taylor run in progress (RuntimeError outside one)."""
    ctx = getattr(_state, "ctx", None)
    if ctx is None:
        raise RuntimeError("a TaylorSeries was used outside a Taylor run (lamda_ext.directional_derivs)")
    return ctx


class TaylorSeries:
    """Truncated Taylor series ``c0 + Σ_{n=1..D} hi[n-1] t^n`` over K directions.

    c0: ``[*S]`` primal; hi: ``[D, K, *S]`` normalised higher coefficients.
    """

    __slots__ = ("c0", "hi", "_version", "_view")

    def __init__(self, c0: torch.Tensor, hi: torch.Tensor):
        if hi.dim() != c0.dim() + 2 or hi.shape[2:] != c0.shape:
            hi = hi.expand((hi.shape[0], hi.shape[1]) + tuple(c0.shape))
        self.c0 = c0
        self.hi = hi
        self._version = 0      # bumped by every in-place update
        self._view = None      # _ViewOf(base, ...) when this series is a view of another one

    # ---- tensor-like metadata -------------------------------------------------------------
    @property
    def degree(self) -> int:
        """D, the number of higher coefficients kept (the series' degree)."""
        return self.hi.shape[0]

    @property
    def shape(self) -> torch.Size:
        """The primal's shape ``S``."""
        return self.c0.shape

    @property
    def dtype(self):
        """The primal's dtype."""
        return self.c0.dtype

    @property
    def device(self):
        """The primal's device."""
        return self.c0.device

    @property
    def ndim(self) -> int:
        """The primal's number of dims."""
        return self.c0.dim()

    @property
    def is_cuda(self) -> bool:
        """Whether the primal is on a CUDA device."""
        return self.c0.is_cuda

    @property
    def requires_grad(self) -> bool:
        """Whether any coefficient requires grad."""
        return self.c0.requires_grad or self.hi.requires_grad

    # tensor properties (attributes, not methods, as on torch.Tensor)
    @property
    def layout(self):
        """The primal's layout."""
        return self.c0.layout

    is_nested = property(lambda self: False)
    is_sparse = property(lambda self: False)
    is_quantized = property(lambda self: False)
    is_meta = property(lambda self: self.c0.is_meta)
    is_mkldnn = property(lambda self: False)
    T = property(lambda self: dispatch(torch.Tensor.permute, (self, tuple(range(self.c0.dim() - 1, -1, -1))), {}))
    mT = property(lambda self: dispatch(torch.Tensor.transpose, (self, -2, -1), {}))
    H = property(lambda self: self.T)       # real series: the conjugate transpose is the transpose
    mH = property(lambda self: self.mT)

    def is_floating_point(self) -> bool:
        """Whether the primal is floating point."""
        return self.c0.is_floating_point()

    def is_complex(self) -> bool:
        """Whether the primal is complex."""
        return False

    def is_contiguous(self, memory_format=torch.contiguous_format) -> bool:
        """Whether the primal is contiguous."""
        return self.c0.is_contiguous(memory_format=memory_format)

    def get_device(self) -> int:
        """The primal's device index (-1 on the CPU)."""
        return self.c0.get_device()

    def element_size(self) -> int:
        """Bytes per element of the primal."""
        return self.c0.element_size()

    def stride(self, dim=None):
        """The primal's strides (or the stride of ``dim``)."""
        return self.c0.stride() if dim is None else self.c0.stride(dim)

    def dim(self) -> int:
        """The primal's number of dims."""
        return self.c0.dim()

    def size(self, dim=None):
        """The primal's shape (or the size of ``dim``)."""
        return self.c0.size() if dim is None else self.c0.size(dim)

    def numel(self) -> int:
        """Elements of the primal."""
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
        """The primal's value as a Python number (a constant: no derivative flows through it)."""
        return self.c0.item()

    def tolist(self):
        """The primal's values as a nested list (constants: no derivative flows through them)."""
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
        if not callable(attr):   # a tensor property without an explicit TaylorSeries property (AttributeError, so
            # that hasattr/getattr(x, name, default) behave as for any missing attribute)
            raise AttributeError(f"Taylor mode: the tensor property '{name}' has no rule on a TaylorSeries "
                                 f"(read in {_where()}); backend='autograd' (or 'func') works")
        return lambda *args, **kwargs: dispatch(attr, (self,) + args, kwargs)


def _binary(name):
    def method(self, other):
        return dispatch(getattr(torch.Tensor, name), (self, other), {})
    method.__name__ = name
    return method


for _n in ("__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__",
           "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__pow__", "__rpow__", "__ipow__",
           "__matmul__", "__rmatmul__", "__getitem__"):
    setattr(TaylorSeries, _n, _binary(_n))
TaylorSeries.__setitem__ = lambda self, index, value: dispatch(torch.Tensor.__setitem__, (self, index, value), {})
TaylorSeries.__neg__ = lambda self: dispatch(torch.Tensor.__neg__, (self,), {})


def _compare(name):
    def method(self, other):
        return getattr(self.c0, name)(other.c0 if isinstance(other, TaylorSeries) else other)
    return method


for _n in ("__gt__", "__ge__", "__lt__", "__le__", "__eq__", "__ne__"):
    setattr(TaylorSeries, _n, _compare(_n))
TaylorSeries.__hash__ = object.__hash__
TaylorSeries.__pos__ = lambda self: self


def _where() -> str:
    ctx = getattr(_state, "ctx", None)
    return ctx.where() if ctx is not None else "code outside a Taylor run"


def pad_coeffs(coeffs: torch.Tensor, count: int) -> torch.Tensor:
    """Append zero coefficients along the leading axis up to ``count`` (the one padding helper).

    Args:
        coeffs: ``[M, ...]`` coefficients, e.g. a series' ``hi`` ``[D, K, *S]`` (then ``count`` is a degree) or
            full coefficients ``[C, K, *S]`` with the primal first.
        count: the length wanted along the leading axis.

    Returns:
        ``coeffs`` itself when ``M >= count``, else a new ``[count, ...]`` tensor: ``coeffs`` then zeros.
    """
    if coeffs.shape[0] >= count:
        return coeffs
    return torch.cat([coeffs, coeffs.new_zeros((count - coeffs.shape[0],) + tuple(coeffs.shape[1:]))])


def _primals(obj):
    if isinstance(obj, TaylorSeries):
        return obj.c0
    if isinstance(obj, (tuple, list)):
        return type(obj)(_primals(o) for o in obj)
    return obj


def _rule_failure(name, func, args, kwargs, inplace: bool, err: Exception) -> Exception:
    """The error to raise when the rule of ``name`` failed.

    The op's own error when the op fails on the primals too (the call is wrong, as it would be without Taylor mode),
    else a ``NotImplementedError`` naming the op and the module (the rule does not cover this form of the op).
    """
    if not inplace:
        try:
            func(*_primals(args), **{k: _primals(v) for k, v in kwargs.items()})
        except Exception:       # the plain op fails as well: the caller's own error
            return err
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return NotImplementedError(
        f"Taylor mode has no rule for op '{name}' in this form (called from {_where()}): its rule failed with "
        f"{type(err).__name__}: {first}. backend='autograd' (or 'func') works for any differentiable op.")


def dispatch(func, args, kwargs):
    """Run the rule of ``func`` on series arguments (NotImplementedError naming the op and module when none exists)."""
    name = canonical_name(func)
    rule = RULES.get(name)
    if rule is None:
        raise NotImplementedError(
            f"Taylor mode has no rule for op '{name}' (called from {_where()}). "
            "backend='autograd' (or 'func') works for any differentiable op.")
    views.refresh_args(args)
    views.refresh_args(kwargs.values())
    inplace = views.inplace_flag(func, args, kwargs)
    if inplace and not (args and isinstance(args[0], TaylorSeries)):
        views.commit_inplace(name, args[0] if args else None, None)   # raises: a plain tensor cannot hold a series
    try:
        out = rule(*args, **kwargs)
    except (IndexError, RuntimeError, TypeError, ValueError) as err:
        if isinstance(err, (NotImplementedError, torch.OutOfMemoryError)):
            raise
        raise _rule_failure(name, func, args, kwargs, inplace, err) from err
    observe = _state.ctx.observe if getattr(_state, "ctx", None) is not None else None
    if observe is not None:
        out = observe(name, out)
    if inplace:
        return views.commit_inplace(name, args[0], out)
    if name in views.VIEW_OPS:
        views.mark_views(name, func, rule, args, kwargs, out)
    return out


def is_series(x) -> bool:
    """Whether ``x`` is a ``TaylorSeries``."""
    return isinstance(x, TaylorSeries)


from . import views  # noqa: E402  (views imports TaylorSeries from this module)
