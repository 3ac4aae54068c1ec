"""Helpers for the tests of sdk.preprocess, sdk.postprocess and sdk.tiling: one call on a chosen implementation."""
from __future__ import annotations

import pytest

from sdk.native import use_implementation


def run(implementation: str, fn):
    """fn() with the 'native' extension or the 'twin'."""
    with use_implementation(implementation):
        return fn()


def assert_refused(implementation: str, fn, words) -> None:
    """fn() on that implementation raises a ValueError whose message holds every one of words."""
    with pytest.raises(ValueError) as info:
        run(implementation, fn)
    for word in words:
        assert word in str(info.value)
