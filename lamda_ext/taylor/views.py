"""In-place ops and views of Taylor series.

A series made by a view op whose primal shares storage with its base's primal remembers that base (``_ViewOf``); an
in-place op on a view writes through to the base, and a view whose base was mutated is recomputed before its next use.
[`dispatch`][lamda_ext.taylor.series.dispatch] calls these around every rule.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional

import torch

from .series import TaylorSeries, _where, pad_coeffs

_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__ipow__", "__setitem__"}
_SIGNATURES: Dict[object, Optional[inspect.Signature]] = {}


def inplace_flag(func, args, kwargs) -> bool:
    """True when ``func(*args, **kwargs)`` mutates its first argument (``add_``, ``+=``, ``inplace=True``)."""
    raw = getattr(func, "__name__", "")
    if raw in _INPLACE_DUNDERS or (raw.endswith("_") and not raw.startswith("_")):
        return True
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    if func not in _SIGNATURES:
        try:
            sig = inspect.signature(func)
            _SIGNATURES[func] = sig if "inplace" in sig.parameters else None
        except (TypeError, ValueError):
            _SIGNATURES[func] = None
    sig = _SIGNATURES[func]
    if sig is None:
        return False
    try:
        return bool(sig.bind(*args, **kwargs).arguments.get("inplace", False))
    except TypeError:
        return False


class _ViewOf:
    """A view of ``base``: ``remake(base)`` recomputes it, ``locate()`` places it in the base, ``version`` syncs it."""

    __slots__ = ("base", "remake", "locate", "op", "version")

    def __init__(self, base, remake, locate, op):
        self.base, self.remake, self.locate, self.op = base, remake, locate, op
        self.version = base._version


def _shares_primal(out, base) -> bool:
    try:
        return out.c0.untyped_storage().data_ptr() == base.c0.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return False


def mark_views(name, func, rule, args, kwargs, out):
    """Attach view information to the outputs of a view op whose primal aliases the input's (as torch does)."""
    base = args[0] if args else None
    if not isinstance(base, TaylorSeries):
        return
    rest = args[1:]
    plain_rest = tuple(a.c0 if isinstance(a, TaylorSeries) else a for a in rest)
    multi = isinstance(out, (tuple, list))
    for i, o in enumerate(out if multi else (out,)):
        if isinstance(o, TaylorSeries) and o is not base and _shares_primal(o, base):
            def remake(b, _i=i):
                r = rule(b, *rest, **kwargs)
                return r[_i] if multi else r

            def locate(_i=i):   # the same view op applied to the flat positions of the base
                pos = torch.arange(base.c0.numel(), device=base.c0.device).reshape(base.c0.shape)
                r = func(pos, *plain_rest, **kwargs)
                return r[_i] if multi else r
            o._view = _ViewOf(base, remake, locate, name)


def _refresh(x) -> None:
    """Recompute a view whose base has been mutated since the view was made (torch views see base mutations)."""
    v = x._view
    if v is None:
        return
    _refresh(v.base)
    if v.version != v.base._version:
        fresh = v.remake(v.base)
        x.c0, x.hi = fresh.c0, fresh.hi
        x._version += 1
        v.version = v.base._version


def refresh_args(args) -> None:
    """Refresh every series in ``args`` (nested tuples and lists too) whose base was mutated."""
    for a in args:
        if isinstance(a, TaylorSeries):
            _refresh(a)
        elif isinstance(a, (tuple, list)):
            refresh_args(a)


def _assign(target: "TaylorSeries", c0: torch.Tensor, hi: torch.Tensor, name: str) -> None:
    """Give ``target`` new coefficients in place, writing through to its base when it is a view."""
    v = target._view
    if v is not None:
        base = v.base
        pos = v.locate().reshape(-1)
        if pos.numel() != torch.unique(pos).numel():
            raise RuntimeError(f"in-place op '{name}' on a view made by '{v.op}' in which several elements share "
                               "one memory location (as torch, Taylor mode refuses to write into it)")
        deg = max(base.degree, hi.shape[0])
        k = max(base.hi.shape[1], hi.shape[1])
        bc0 = base.c0.reshape(-1).clone()
        bc0[pos] = c0.reshape(-1)
        bhi = pad_coeffs(base.hi, deg).expand((deg, k) + tuple(base.c0.shape)).reshape(deg, k, -1).clone()
        bhi[:, :, pos] = pad_coeffs(hi, deg).expand((deg, k) + tuple(c0.shape)).reshape(deg, k, -1)
        _assign(base, bc0.reshape(base.c0.shape), bhi.reshape((deg, k) + tuple(base.c0.shape)), name)
        v.version = base._version
    target.c0, target.hi = c0, hi
    target._version += 1


def commit_inplace(name, target, out):
    """Make the in-place op's result ``out`` the new value of ``target`` (never a lost mutation)."""
    if not isinstance(target, TaylorSeries):
        raise NotImplementedError(
            f"Taylor mode: in-place op '{name}' would write a Taylor series into a plain tensor (in {_where()}); "
            "the tensor cannot carry the derivatives. Build the value out of place (e.g. torch.cat/torch.where, "
            "y = x.add(s)) or use backend='autograd'")
    if isinstance(out, tuple) and name in ("max_pool2d", "max_pool1d"):
        out = out[0]
    if not isinstance(out, TaylorSeries):
        if not isinstance(out, torch.Tensor):
            raise NotImplementedError(f"Taylor mode: in-place op '{name}' on a Taylor series (in {_where()}) "
                                      "has no in-place rule; use the out-of-place op or backend='autograd'")
        out = TaylorSeries(out, out.new_zeros((1, target.hi.shape[1]) + tuple(out.shape)))
    if tuple(out.c0.shape) != tuple(target.c0.shape):
        raise RuntimeError(f"in-place op '{name}': the result of shape {list(out.c0.shape)} does not fit the "
                           f"tensor of shape {list(target.c0.shape)} it would be written into")
    _assign(target, out.c0, out.hi, name)
    return target


VIEW_OPS = {"getitem", "view", "reshape", "view_as", "reshape_as", "flatten", "permute", "transpose", "t",
            "unsqueeze", "squeeze", "expand", "expand_as", "chunk", "split", "unbind", "narrow", "select",
            "contiguous", "movedim", "unflatten", "swapaxes", "swapdims"}
