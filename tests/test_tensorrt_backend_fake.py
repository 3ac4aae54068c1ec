"""sdk/backends/tensorrt.py's data flow with a FAKE TensorRT and a FAKE CUDA runtime (this machine has neither).

The fake "engine" is the ONNX graph run by ONNX Runtime, and "device memory" is NumPy arrays keyed by address.
What this proves: the backend binds every tensor by name, sets the input shape per batch, copies inputs in
and outputs out through its pinned buffers (or uses the caller's in-place batch), refuses batches beyond the
profile and engines built for another TensorRT or GPU before deserializing, and shares one engine between
replicas with a context each. What it does not prove: that real TensorRT or CUDA accept these calls (the
names are checked by test_tensorrt_api.py, the behaviour by tests/gpu on a GPU)."""
import dataclasses
import json
import shutil
import sys
import types

import numpy as np
import pytest

from sdk import Detector, ModelFileError, Stream
from sdk.backends import tensorrt as trt_backend

MAX_BATCH = 4


class FakeCuda:
    name = "fake-cuda"

    def __init__(self):
        self.memory, self.next, self.copies = {}, 4096, 0

    def stream(self):
        return object()

    def stream_handle(self, stream) -> int:
        return id(stream)

    def malloc(self, nbytes):
        addr, self.next = self.next, self.next + nbytes + 4096
        self.memory[addr] = np.zeros(nbytes, np.uint8)
        return addr

    def free(self, ptr):
        del self.memory[ptr]

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def free_pinned(self, array):
        pass

    def to_device(self, dst, src, stream):
        self.copies += 1
        self.memory[dst][: src.nbytes] = np.ascontiguousarray(src).view(np.uint8).ravel()

    def to_host(self, dst, src, stream):
        dst.view(np.uint8).reshape(-1)[:] = self.memory[src][: dst.nbytes]

    def synchronize(self, stream):
        pass

    def destroy(self, stream):
        pass

    def device(self):
        return {"gpu": "Fake Orin", "compute_capability": "8.7"}


class FakeEngine:
    """The ONNX graph, run by ONNX Runtime, behind TensorRT's engine interface."""

    def __init__(self, onnx_bytes: bytes, cuda: FakeCuda):
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.cuda = cuda
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = {o.name: o for o in self.session.get_outputs()}
        self.names = list(self.inputs) + list(self.outputs)
        self.contexts = 0

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "input" if name in self.inputs else "output"

    def get_tensor_shape(self, name):
        shape = (self.inputs.get(name) or self.outputs[name]).shape
        return tuple(-1 if not isinstance(d, int) else d for d in shape)

    def get_tensor_dtype(self, name):
        return np.uint8 if name in self.inputs else np.float32

    def get_tensor_profile_shape(self, name, profile):
        shape = self.get_tensor_shape(name)
        return [(1, *shape[1:]), (1, *shape[1:]), (MAX_BATCH, *shape[1:])]

    def create_execution_context(self):
        self.contexts += 1
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.addresses, self.shapes = engine, {}, {}

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)

    def execute_async_v3(self, stream_handle):
        e, memory = self.engine, self.engine.cuda.memory
        feeds = {}
        for name, shape in self.shapes.items():
            n = int(np.prod(shape))
            feeds[name] = memory[self.addresses[name]][:n].view(np.uint8).reshape(shape)
        outputs = e.session.run(list(e.outputs), feeds)
        for name, value in zip(e.outputs, outputs):
            raw = np.ascontiguousarray(value, np.float32).view(np.uint8).ravel()
            memory[self.addresses[name]][: raw.size] = raw
        return True


@pytest.fixture()
def fake_tensorrt(monkeypatch):
    cuda = FakeCuda()
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.3.0"
    fake.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity=2: None})
    fake.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    fake.nptype = lambda dtype: dtype
    fake.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: FakeEngine(data, cuda))
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_backend, "cuda_runtime", lambda choice="auto": cuda)
    return cuda


@pytest.fixture()
def engine_file(exported_model, tmp_path):
    """model.engine holding the ONNX bytes (the fake engine runs them), with a TensorRT engine's model.json."""
    from sdk.model_info import ModelInfo

    engine = tmp_path / "model.engine"
    shutil.copy(exported_model[1], engine)
    info = dataclasses.replace(exported_model[2], precision="fp16",
                               engine={"tensorrt": "10.3.0", "gpu": "Fake Orin", "compute_capability": "8.7"})
    info.write_beside(engine)
    assert ModelInfo.read(engine).engine["tensorrt"] == "10.3.0"
    return engine


def _frames(n, seed=0):
    return [np.random.default_rng(seed + i).integers(0, 256, (90, 200, 3), dtype=np.uint8) for i in range(n)]


def test_fake_engine_gives_the_onnx_results_through_the_backends_buffers(fake_tensorrt, engine_file, exported_model):
    det, ref = Detector(engine_file), Detector(exported_model[1])
    assert det.backend.name == "tensorrt" and det.backend.max_batch == MAX_BATCH and det.info.precision == "fp16"
    frames = _frames(3)
    for got, want in zip(det.batch(frames), ref.batch(frames)):
        assert got.score == pytest.approx(want.score, abs=1e-5) and np.array_equal(got.mask, want.mask)
    copies = fake_tensorrt.copies
    batch = det.backend.input_buffer("frames", 2)
    det.preprocess(frames[:2], batch)  # the pre-processing fills the pinned buffer in place
    maps, scores = det.infer(batch)
    assert fake_tensorrt.copies == copies + 1 and scores.shape == (2,)
    assert scores == pytest.approx([r.score for r in ref.batch(frames[:2])], abs=1e-5)
    with pytest.raises(ValueError, match="built for batches of 1 to 4"):
        det.batch(_frames(5))


def test_replicas_share_the_engine_with_a_context_each(fake_tensorrt, engine_file, exported_model):
    det = Detector(engine_file)
    assert det.preferred_workers() == 1
    twins = det.replicas(2)
    assert all(t.backend.engine is det.backend.engine and t.backend.context is not det.backend.context
               for t in twins)
    assert det.backend.engine.contexts == 3
    with Stream(det, _frames(6), infer_workers=2, batch_size=2) as stream:
        records = list(stream)
    ref = Detector(exported_model[1])
    assert [r.status for r in records] == ["ok"] * 6
    # batches of 2 against single frames: float32 rounding, relative to scores of ~100
    assert [r.score for r in records] == pytest.approx([ref(f).score for f in _frames(6)], rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("change,words", [({"tensorrt": "11.0.0"}, "built with TensorRT 11.0.0, this machine has 10.3"),
                                          ({"compute_capability": "9.0", "gpu": "H100"}, "compute capability 9.0")])
def test_an_engine_built_elsewhere_is_refused_before_deserializing(fake_tensorrt, engine_file, change, words):
    side = engine_file.with_suffix(".json")
    d = json.loads(side.read_text())
    d["engine"].update(change)
    side.write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match=words):
        Detector(engine_file)
