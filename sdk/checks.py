"""Argument and option checks: each says what was expected and what came.

Two kinds:

* array checks (``check_frame``, ``check_map``, ``check_output``, ...) used by the pre/post-processing
  and tiling functions and their C++ twin: they return the value or raise ValueError;
* option rules (``whole``, ``number``, ``odd``, ``multiple_of``, ``optional``) declared once and used by the
  CLI's flags (``checked_type``), the training options (export/options.py) and the Detector
  (``require``). A rule maps a value to what is wrong with it (a phrase that says the fix) or None;
  read it through ``allows(rule, value)`` or ``require(value, rule, message)``.

``older_spellings`` lets a public function keep accepting a keyword under its older (US) spelling.
"""
from __future__ import annotations

import argparse
import functools
import math
from typing import Any, Callable, Optional, TypeVar

import numpy as np

INT64_MAX = 2**63 - 1  # what the C++ extension's int64 arguments (e.g. min_area) hold

Rule = Callable[[Any], Optional[str]]  # what is wrong with a value, or None
T = TypeVar("T")


def older_spellings(**older: str) -> Callable[[Callable], Callable]:
    """Decorator: each keyword older=newer (e.g. color="colour") is accepted and passed on as the newer one; a
    TypeError when a call gives both."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in older.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__qualname__}() got both {new}= and {old}= (its older spelling): "
                                        f"pass {new}= only")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return call
    return decorate


# ---- option rules ---------------------------------------------------------------------------------


def allows(rule: Rule, value: Any) -> bool:
    """True when the rule finds nothing wrong with the value."""
    return rule(value) is None


def require(value: T, rule: Rule, message: str) -> T:
    """The value when the rule allows it; else ValueError(message)."""
    if not allows(rule, value):
        raise ValueError(message)
    return value


def whole(low: int, high: int | None = None) -> Rule:
    """A whole number (an int, not a bool) >= low, and <= high when given."""
    def problem(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            return f"give a whole number >= {low}" + (f" and <= {high}" if high is not None else "")
        if high is not None and v > high:
            return f"give a whole number from {low} to {high}"
        return None
    return problem


def number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = True) -> Rule:
    """A finite int or float in the interval from low to high (each end open or closed)."""
    def problem(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return "give a finite number"
        if v < low or (low_open and v == low) or v > high or (high_open and v == high):
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            return f"give a number in {lo}{low:g}, {high:g}{hi}"
        return None
    return problem


def odd(v) -> Optional[str]:
    """An odd whole number >= 1 (a centred window)."""
    if allows(whole(1), v) and v % 2 == 1:
        return None
    return "give an odd whole number >= 1 (the window is centred)"


def multiple_of(k: int, low: int, high: int | None = None) -> Rule:
    """A whole multiple of k from low (to high when given)."""
    def problem(v):
        if allows(whole(low, high), v) and v % k == 0:
            return None
        return f"give a multiple of {k} that is >= {low}" + (f" and <= {high}" if high is not None else "")
    return problem


def optional(rule: Rule) -> Rule:
    """None, or a value the rule allows."""
    return lambda v: None if v is None else rule(v)


def checked_type(convert: Callable | None, rule: Rule | None) -> Callable | None:
    """An argparse type: convert the text, then check it; a bad value is an error naming the fix."""
    if convert is None or rule is None:
        return convert

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: not a number; {rule(None) or 'give a number'}") from None
        problem = rule(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
        return value

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def threshold_arg(text: str) -> str | float:
    """An argparse type for --threshold: a finite score, or a name (default, good_only, f1) that the
    model looks up (sdk.ModelInfo.threshold says which it has)."""
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite score, or default, good_only or f1")
    return value


# ---- array and argument checks of the pre/post-processing functions -------------------------------


def describe(obj: Any) -> str:
    """'float32 array of shape (480, 640, 3)', or the type name for non-arrays."""
    if obj is None:
        return "None"
    if isinstance(obj, np.ndarray):
        text = f"{obj.dtype} array of shape {tuple(obj.shape)}"
        return text if obj.flags.writeable else text + " (read-only)"
    return type(obj).__name__


class NotAnArrayError(TypeError, ValueError):
    """An argument that should be a numpy array is not one (caught as either kind of bad argument)."""


def check_frame(frame: Any, name: str = "frame") -> np.ndarray:
    """A uint8 image H x W, H x W x 1 or H x W x 3 with any strides (not copied). TypeError for a
    non-array (also a ValueError), ValueError for a wrong dtype, shape or an empty frame."""
    expected = "uint8 array of shape (H, W), (H, W, 1) or (H, W, 3)"
    if not isinstance(frame, np.ndarray):
        raise NotAnArrayError(f"{name} must be a numpy array, a {expected}; got {describe(frame)}")
    if frame.dtype != np.uint8:
        raise ValueError(f"{name} dtype is {frame.dtype}; expected uint8 (convert 16-bit frames with "
                         f"(frame >> 8).astype(np.uint8) or cv2.convertScaleAbs); got {describe(frame)}")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3))):
        raise ValueError(f"{name} shape is {frame.shape}; expected HxW, HxWx1 or HxWx3, a {expected}; "
                         f"got {describe(frame)}")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"{name} is empty; got {describe(frame)}")
    return frame


def check_map(anomaly_map: Any, name: str = "anomaly_map") -> np.ndarray:
    """A float32 H x W map with any strides (not copied)."""
    if not isinstance(anomaly_map, np.ndarray) or anomaly_map.dtype != np.float32 or anomaly_map.ndim != 2:
        raise ValueError(f"{name} must be a float32 array of shape (H, W); got {describe(anomaly_map)}")
    if anomaly_map.shape[0] < 1 or anomaly_map.shape[1] < 1:
        raise ValueError(f"{name} must not be empty; got {describe(anomaly_map)}")
    return anomaly_map


def check_output(out: Any, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A writeable array of exactly this dtype and shape (any strides)."""
    expected = f"{np.dtype(dtype)} array of shape {shape}"
    if not isinstance(out, np.ndarray) or out.dtype != dtype or tuple(out.shape) != shape:
        raise ValueError(f"{name} must be a writeable {expected}; got {describe(out)}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writeable; got {describe(out)}")
    return out


def check_threads(threads: Any) -> int:
    if not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0 = automatic); got {threads!r}")
    return int(threads)


def check_colour(value: Any, name: str = "colour") -> str:
    """'bgr' or 'rgb' (any case), returned in lower case."""
    order = value.lower() if isinstance(value, str) else value
    if order not in ("bgr", "rgb"):
        raise ValueError(f"{name} must be 'bgr' or 'rgb' (any case); got {value!r}")
    return order


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value
