"""Range-checked ``argparse`` types shared by every sub-command.

Why: an out-of-range option (``--num-workers -1``, ``--img-size 0``, ``--temperature 0``) must be refused
when the command line is parsed, with a line naming the option, not deep inside torch with a traceback or,
worse, after a run that learned nothing. argparse prefixes the message with the option's name.
This module sits at the bottom of the package so that any layer's command can use it.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["float_range", "int_range"]


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type accepting whole numbers in ``[lo, hi]`` (either bound may be None); the message
    names the bound that was crossed (``must be at least 1``, ``must be at most 65535``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {text}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi}, got {text}")
        return value
    parse.__name__ = "int"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
                what: str = "a number", says: str | None = None) -> Callable[[str], float]:
    """An argparse type accepting finite numbers between ``lo`` and ``hi`` (open bounds when ``*_open``).

    ``what`` names the quantity (``a number of GB``); ``says`` replaces the generated description of the
    valid range when a unit makes a plainer one (``a finite number of GB, at least 1 MB``).
    """
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
        bad = not math.isfinite(value)
        bad = bad or (lo is not None and (value <= lo if lo_open else value < lo))
        bad = bad or (hi is not None and (value >= hi if hi_open else value > hi))
        if bad:
            raise argparse.ArgumentTypeError(f"must be {says or _describe(lo, hi, lo_open, hi_open, what)}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


def _describe(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool, what: str) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{what} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{what} {'<' if hi_open else '<='} {hi:g}"
    return what
