"""Loader of the C++ extension ``sdk._native``, and the switch between the two implementations of
pre/post-processing: the extension and its NumPy/OpenCV twin.

Every public function in :mod:`sdk.preprocess`, :mod:`sdk.postprocess` and :mod:`sdk.tiling`
dispatches to ``sdk._native`` when it was built, and otherwise to a NumPy/OpenCV reference twin
that gives the same results (see the parity tests). A missing extension is reported once with a
``RuntimeWarning``; ``CFRG_NO_NATIVE=1`` selects the twin on purpose (read at every call, so tests
can switch implementations with ``monkeypatch.setenv``).

Build the extension with ``python setup.py build_ext --inplace``. The argument checks both share
are in :mod:`sdk.checks`.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from types import ModuleType
from typing import Iterator, Optional

from .checks import check_choice

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


def implementation() -> str:
    """'native' or 'twin': the implementation the next call will use."""
    return "native" if native_module() is not None else "twin"


def require_native() -> ModuleType:
    """The extension module; ImportError saying how to build it when it is missing."""
    with use_implementation("native"):
        module = native_module()
    if module is None:
        raise ImportError(f"sdk._native is not built ({_import_error}): run `python setup.py build_ext --inplace`")
    return module


@contextlib.contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """Within the block, calls use the 'native' extension or the 'twin' implementation (for tests and benchmarks:
    it sets CFRG_NO_NATIVE, which is process-wide, and restores it afterwards)."""
    check_choice(name, "implementation", ("native", "twin"))
    before = os.environ.get("CFRG_NO_NATIVE")
    os.environ["CFRG_NO_NATIVE"] = "1" if name == "twin" else "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["CFRG_NO_NATIVE"]
        else:
            os.environ["CFRG_NO_NATIVE"] = before


backend, use_backend = implementation, use_implementation  # the older names
