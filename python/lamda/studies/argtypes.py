"""``argparse`` types that reject meaningless flag values while the command line is parsed.

A bad value makes ``argparse`` print one ``error:`` line naming the flag (after the usage line) and exit
with status 2, before any data is loaded. Used by the ``landscape`` and ``spectrum`` experiments.
"""
from __future__ import annotations

import argparse
import math

__all__ = ["int_at_least", "float_in", "int_list"]


def int_at_least(lo: int):
    """An ``int`` ≥ ``lo``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be ≥ {lo}, got {v}")
        return v
    parse.__name__ = f"integer ≥ {lo}"
    return parse


def float_in(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
    """A finite ``float`` in ``[lo, hi]`` (``lo_open``/``hi_open`` exclude the end points)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
        if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise argparse.ArgumentTypeError(f"must lie in {left}{lo:g}, {hi:g}{right}, got {v:g}")
        return v
    parse.__name__ = "number"
    return parse


def int_list(lo: int = 1):
    """Comma-separated integers, each ≥ ``lo`` (e.g. hidden widths ``128,128``) → ``tuple[int, ...]``."""
    def parse(text: str) -> tuple[int, ...]:
        parts = [t.strip() for t in str(text).split(",")]
        try:
            vals = tuple(int(t) for t in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers like 128,128, got {text!r}") from None
        bad = [v for v in vals if v < lo]
        if bad:
            raise argparse.ArgumentTypeError(f"every value must be ≥ {lo}, got {text!r}")
        return vals
    parse.__name__ = "list of integers"
    return parse
