"""Loader for the C++ extension ``sdk._native`` and the argument checks shared with its twin.

Every public function in :mod:`sdk.preprocess`, :mod:`sdk.postprocess` and :mod:`sdk.tiling`
dispatches to ``sdk._native`` when it was built, and otherwise to a NumPy/OpenCV reference twin
that gives the same results (see the parity tests). A missing extension is reported once with a
``RuntimeWarning``; ``CFRG_NO_NATIVE=1`` selects the twin on purpose (read at every call, so tests
can switch backends with ``monkeypatch.setenv``).

Build the extension with ``python setup.py build_ext --inplace``.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from types import ModuleType
from typing import Any, Iterator, Optional

import numpy as np

Rect = tuple[int, int, int, int]  # (x, y, w, h)

_native: Optional[ModuleType] = None
_import_error: Optional[BaseException] = None
_tried = False
_warned = False


def native_disabled() -> bool:
    """True when the environment variable CFRG_NO_NATIVE asks for the NumPy/OpenCV twin."""
    return os.environ.get("CFRG_NO_NATIVE", "").strip().lower() not in ("", "0", "false", "no")


def native_module() -> Optional[ModuleType]:
    """The extension module, or None (twin) when CFRG_NO_NATIVE=1 or it is not built."""
    global _native, _import_error, _tried, _warned
    if native_disabled():
        return None
    if not _tried:
        _tried = True
        try:
            from sdk import _native as module  # type: ignore[attr-defined]

            _native = module
        except ImportError as exc:  # not built on this machine
            _import_error = exc
    if _native is None and not _warned:
        _warned = True
        warnings.warn(
            f"sdk._native is not available ({_import_error}); pre/post-processing falls back to the "
            "slower NumPy/OpenCV twin. Build it with `python setup.py build_ext --inplace`.",
            RuntimeWarning,
            stacklevel=3,
        )
    return _native


def backend() -> str:
    """'native' or 'twin': what the next call will use."""
    return "native" if native_module() is not None else "twin"


def require_native() -> ModuleType:
    """The extension module; ImportError saying how to build it when it is missing."""
    with use_backend("native"):
        module = native_module()
    if module is None:
        raise ImportError(f"sdk._native is not built ({_import_error}): run `python setup.py build_ext --inplace`")
    return module


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block, calls use the 'native' extension or the 'twin' (for tests and benchmarks:
    it sets CFRG_NO_NATIVE, which is process-wide, and restores it afterwards)."""
    check_choice(name, "backend", ("native", "twin"))
    before = os.environ.get("CFRG_NO_NATIVE")
    os.environ["CFRG_NO_NATIVE"] = "1" if name == "twin" else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CFRG_NO_NATIVE"]
        else:
            os.environ["CFRG_NO_NATIVE"] = before


# ---- argument checks (messages say what was expected and what came) ----------------------------


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


def as_rect(value: Any, name: str) -> Rect:
    """(x, y, w, h) as ints."""
    try:
        x, y, w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a tuple (x, y, w, h) of ints; got {value!r}") from None
    return x, y, w, h


def check_rect_inside(rect: Rect, width: int, height: int, name: str, inside: str) -> Rect:
    x, y, w, h = rect
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(
            f"{name} (x={x}, y={y}, w={w}, h={h}) must have w, h >= 1 and lie inside {inside} "
            f"of width {width} and height {height}"
        )
    return rect


def check_threads(threads: Any) -> int:
    if not isinstance(threads, (int, np.integer)) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0 = automatic); got {threads!r}")
    return int(threads)


def check_color(value: Any, name: str = "color") -> str:
    """'bgr' or 'rgb' (any case), returned in lower case."""
    order = value.lower() if isinstance(value, str) else value
    if order not in ("bgr", "rgb"):
        raise ValueError(f"{name} must be 'bgr' or 'rgb' (any case); got {value!r}")
    return order


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value
