"""``argparse`` types that reject meaningless flag values while the command line is parsed.

A bad value makes ``argparse`` print one ``error:`` line naming the flag (after the usage line) and exit with
status 2, before any data is loaded. Every flag of ``lamda run`` that takes a number, a list of numbers or a
list of names uses one of these.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Sequence

__all__ = ["number", "int_list", "name_list", "SEED_MAX", "seed"]

SEED_MAX = 2**31 - 1        # every seed (and the offsets studies add to it) fits torch's and numpy's seeds


def _bound(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    """``"in [0, 1)"``, ``"≥ 1"``, ``"< 2"`` or ``""`` (no bound)."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '≥'} {_bound(low)}"
    if high is not None:
        return f"{'<' if high_open else '≤'} {_bound(high)}"
    return ""


def number(kind: type = float, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type=`` that parses a finite ``kind`` (``int`` or ``float``) inside ``[low, high]``.

    Args:
        kind: ``int`` or ``float``.
        low: the lower bound (None: unbounded below).
        high: the upper bound (None: unbounded above).
        low_open: exclude ``low``.
        high_open: exclude ``high``.

    Returns:
        The parser: anything else (not a number, inf, NaN, out of range) raises ``ArgumentTypeError`` with a
        message that names the allowed range, so ``lamda run`` exits 2 with one error line.
    """
    if kind not in (int, float):
        raise TypeError(f"number() parses int or float, got {kind!r}")
    rng = _range_text(low, high, low_open, high_open)
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            v = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if (low is not None and (v < low or (low_open and v == low))) or \
                (high is not None and (v > high or (high_open and v == high))):
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v

    parse.__name__ = kind.__name__          # argparse names the type in its messages
    return parse


def seed(text: str) -> int:
    """An argparse ``type=`` for a seed: an integer in ``[0, SEED_MAX]``."""
    return number(int, low=0, high=SEED_MAX)(text)


def int_list(low: int = 1) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated integers, each ≥ ``low`` (e.g. hidden widths ``128,128``) → ``tuple[int, ...]``."""
    def parse(text: str) -> tuple[int, ...]:
        parts = [t.strip() for t in str(text).split(",")]
        try:
            vals = tuple(int(t) for t in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be comma-separated integers like 128,128, got {text!r}") from None
        if any(v < low for v in vals):
            raise argparse.ArgumentTypeError(f"every value must be ≥ {low}, got {text!r}")
        return vals

    parse.__name__ = "list of integers"
    return parse


def name_list(choices: Sequence[str]) -> Callable[[str], str]:
    """Comma-separated distinct names from ``choices`` (e.g. ``cnn,resnet``); returns the text as given."""
    def parse(text: str) -> str:
        names = [a.strip() for a in str(text).split(",")]
        if any(a not in choices for a in names) or len(set(names)) != len(names):
            raise argparse.ArgumentTypeError(f"choose distinct names from {', '.join(choices)}, got {text!r}")
        return text

    parse.__name__ = "list of names"
    return parse
