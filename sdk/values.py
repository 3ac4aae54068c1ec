"""Checks of option values, shared by the CLI's flags and the training options' declaration.

A check takes a value and returns what is wrong with it (a phrase that says the fix), or None.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable, Optional

Check = Callable[[Any], Optional[str]]  # the problem with a value, or None


INT64_MAX = 2**63 - 1  # what the C++ extension's int64 arguments (e.g. min_area) hold


def whole(low: int, high: int | None = None) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            return f"give a whole number >= {low}" + (f" and <= {high}" if high is not None else "")
        if high is not None and v > high:
            return f"give a whole number from {low} to {high}"
        return None
    return check


def number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = True) -> Check:
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "give a finite number"
        if v < low or (low_open and v == low) or v > high or (high_open and v == high):
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            return f"give a number in {lo}{low:g}, {high:g}{hi}"
        return None
    return check


def odd(v) -> Optional[str]:
    if whole(1)(v) or v % 2 == 0:
        return "give an odd whole number >= 1 (the window is centred)"
    return None


def multiple_of(k: int, low: int, high: int | None = None) -> Check:
    def check(v):
        if whole(low, high)(v) or v % k:
            return f"give a multiple of {k} that is >= {low}" + (f" and <= {high}" if high is not None else "")
        return None
    return check


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def checked_type(convert: Callable | None, check: Check | None) -> Callable | None:
    """An argparse type: convert the text, then check it; a bad value is an error naming the fix."""
    if convert is None or check is None:
        return convert

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a number; {check(None) or 'give a number'}") from None
        problem = check(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
        return value

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse
