"""sdk.backends: the file's suffix picks the runtime, and what the Stream needs of a backend (how many
parallel sessions suit it, and their options) is asked of the backend itself."""
import os

import numpy as np
import pytest

from sdk import ModelFileError, Stream
from sdk.backends import backend_for, load_backend
from sdk.backends.onnxruntime import CPU, OnnxRuntimeBackend
from sdk.detector import Detector


def test_suffix_picks_the_runtime():
    assert backend_for("a/model.onnx") == "onnxruntime" and backend_for("m.ENGINE") == "tensorrt"
    assert backend_for("m.plan") == "tensorrt" and backend_for("m.bin", "onnxruntime") == "onnxruntime"
    with pytest.raises(ModelFileError, match="expected .onnx or .engine"):
        backend_for("model.bin")
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        backend_for("model.onnx", "tflite")
    try:
        import tensorrt  # noqa: F401 - only whether it imports
    except ImportError:
        with pytest.raises(ImportError, match="TensorRT's Python bindings"):
            load_backend("model.engine")


def test_onnxruntime_backend_says_how_many_sessions_suit_it(exported_model):
    backend = load_backend(exported_model[1])
    assert isinstance(backend, OnnxRuntimeBackend) and backend.providers == [CPU]
    cpus = os.cpu_count() or 1
    assert backend.preferred_workers() == (2 if cpus >= 2 else 1)
    assert backend.worker_options(2) == {"providers": [CPU], "threads": max(1, cpus // 2)}
    frames = np.zeros((2, *backend.input_shape("frames")[1:]), np.uint8)
    out = backend.run({"frames": frames})
    assert set(out) == {"anomaly_map", "score"} and out["score"].shape == (2,)


def test_stream_asks_the_backend_for_its_workers(exported_model, monkeypatch):
    """With infer_workers="auto" the Stream runs as many sessions as the backend prefers, each a replica
    made with the backend's worker options."""
    det = Detector(exported_model[1])
    made = []
    real_replica = Detector.replica

    def spy(self, **options):
        made.append(options)
        return real_replica(self, **options)

    monkeypatch.setattr(Detector, "replica", spy)
    monkeypatch.setattr(type(det.backend), "preferred_workers", lambda self: 3)
    frames = [np.full((60, 80, 3), v, np.uint8) for v in (40, 90, 140, 190)]
    with Stream(det, frames) as stream:
        records = list(stream)
    assert stream.stats()["infer_workers"] == 3 and len(made) == 3
    assert made[0] == det.backend.worker_options(3)
    assert [r.status for r in records] == ["ok"] * 4
    monkeypatch.setattr(type(det.backend), "preferred_workers", lambda self: 1)
    with Stream(det, frames) as stream:
        list(stream)
    assert stream.stats()["infer_workers"] == 1 and len(made) == 3  # one session: the detector itself
