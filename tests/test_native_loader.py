"""sdk.native: the choice of implementation, the one-time fallback warning, and GIL release in native calls."""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

from sdk import native, tiling


def test_environment_variable_selects_the_twin(monkeypatch):
    monkeypatch.setenv("CFRG_NO_NATIVE", "1")
    assert native.native_module() is None and native.implementation() == "twin"
    monkeypatch.setenv("CFRG_NO_NATIVE", "0")
    assert native.implementation() == "native", "sdk._native is not built: run `python setup.py build_ext --inplace`"
    assert native.backend is native.implementation and native.use_backend is native.use_implementation  # older names


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delenv("CFRG_NO_NATIVE", raising=False)
    monkeypatch.setattr(native, "_tried", True)
    monkeypatch.setattr(native, "_native", None)
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setattr(native, "_import_error", ImportError("No module named 'sdk._native'"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = np.zeros((20, 30), np.uint8)
        tiles, _ = tiling.make_tiles(frame, 8, 2)  # works through the twin
        tiling.make_tiles(frame, 8, 2)
    assert tiles.shape == (15, 8, 8)  # 3 rows x 5 columns of tiles
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "build_ext --inplace" in messages[0]


def test_native_calls_release_the_gil(monkeypatch):
    """While one thread is inside a long native call, Python code keeps running in another."""
    monkeypatch.setenv("CFRG_NO_NATIVE", "0")
    if native.native_module() is None:
        pytest.fail("sdk._native is not built: run `python setup.py build_ext --inplace` first")
    maps = np.random.default_rng(0).random((64, 256, 256), dtype=np.float32)
    origins = np.array([(x, y) for y in range(0, 1792, 224) for x in range(0, 1792, 224)], dtype=np.int64)
    calls = []  # (start, end) of each native call

    def work():  # native calls for 0.1 s at least (a fast machine did 4 of them in under 0.02 s)
        start = time.perf_counter()
        while len(calls) < 4 or time.perf_counter() - start < 0.1:
            t0 = time.perf_counter()
            tiling.stitch(maps, origins, (2048, 2048), "mean", threads=1)
            calls.append((t0, time.perf_counter()))

    worker = threading.Thread(target=work)
    ticks = []
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    inside = [t for t in ticks if any(t0 + 0.001 < t < t1 - 0.001 for t0, t1 in calls)]
    # Holding the GIL, the worker would stall this loop for each whole native call: no tick inside one.
    assert len(inside) >= 5, (len(inside), len(calls), calls[-1][1] - calls[0][0])


def test_concurrent_callers_get_the_same_results(monkeypatch):
    """Python threads calling the extension at once (the pool is then busy: callers run their
    chunks themselves) produce what sequential calls produce."""
    monkeypatch.setenv("CFRG_NO_NATIVE", "0")
    from sdk import postprocess, preprocess

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (700, 900, 3), dtype=np.uint8) for _ in range(4)]
    amap = rng.random((64, 64), dtype=np.float32)

    def job(i: int):
        batch = preprocess.make_batch(1, (128, 160))
        preprocess.preprocess(frames[i], batch, threads=2)
        full, mask, regions = postprocess.postprocess(amap, (720 + i, 1280), 0.9, 3, threads=2)
        return batch, mask, regions

    expected = [job(i) for i in range(4)]
    results = [None] * 4

    def run(i: int):
        for _ in range(5):
            results[i] = job(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[2] == want[2]
