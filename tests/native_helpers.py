"""Helpers for the tests of sdk.preprocess, sdk.postprocess and sdk.tiling: one call on a chosen backend."""
from __future__ import annotations

import pytest

from sdk.native import use_backend


def run(backend: str, fn):
    """fn() with the 'native' extension or the 'twin'."""
    with use_backend(backend):
        return fn()


def assert_refused(backend: str, fn, words) -> None:
    """fn() on that backend raises a ValueError whose message holds every one of words."""
    with pytest.raises(ValueError) as info:
        run(backend, fn)
    for word in words:
        assert word in str(info.value)
