"""Helpers for the stream, source and sink tests.

TinyOnnxDetector has sdk.Detector's three stages (preprocess / infer / postprocess) around a real
onnxruntime.InferenceSession of a tiny ONNX graph built here. The pipeline tests use it where the real
CFRG model (tested with the Stream in test_cli_run.py and test_stream.py) would be too slow or could not
fail on purpose: it infers in microseconds, can be slowed down and made to fail on given calls. Its
"anomaly map" is just brightness (channel mean / 255): it detects nothing.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

DATA_ROOT = Path(os.environ.get("CFRG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def tiny_onnx_model(conv_layers: int = 0, channels: int = 16) -> bytes:
    """uint8 NHWC 'image' (dynamic N, H, W) -> 'anomaly_map' (N,H,W) = channel mean / 255, 'score' (N,) = max.

    conv_layers > 0 adds that many 3x3 convolutions (fixed random weights) in front, to give the
    graph a measurable inference cost for benchmarks; the map is then their sigmoid output.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["x", "k255"], ["xn"])]
    inits = [numpy_helper.from_array(np.array(255.0, np.float32), "k255")]
    if conv_layers:
        rng = np.random.default_rng(0)
        nodes.append(helper.make_node("Transpose", ["xn"], ["c0"], perm=[0, 3, 1, 2]))
        cin = 3
        for i in range(conv_layers):
            cout = 1 if i == conv_layers - 1 else channels
            w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("Conv", [f"c{i}", f"w{i}"], [f"v{i}"], pads=[1, 1, 1, 1]))
            act = "Sigmoid" if i == conv_layers - 1 else "Relu"
            nodes.append(helper.make_node(act, [f"v{i}"], [f"c{i + 1}"]))
            cin = cout
        nodes.append(helper.make_node("Squeeze", [f"c{conv_layers}", "axis1"], ["anomaly_map"]))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    else:
        nodes.append(helper.make_node("ReduceMean", ["xn"], ["anomaly_map"], axes=[3], keepdims=0))
    nodes.append(helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2], keepdims=0))
    graph = helper.make_graph(
        nodes, "tiny_brightness",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", "H", "W"]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass(eq=False)
class TinyResult:
    score: float
    verdict: str
    anomaly_map: np.ndarray
    mask: np.ndarray
    regions: list
    timings: dict = field(default_factory=dict)


class TinyOnnxDetector:
    """sdk.Detector's three stages around a tiny real ONNX graph (see module docstring).

    infer_delay_s makes inference slower (a sleep, which like ONNX Runtime releases the GIL).
    fail_infer_on_calls: infer() call numbers (0-based) that raise, to test inference errors.
    """

    def __init__(self, size: tuple[int, int] = (64, 64), threshold: float = 0.6, *, model: bytes | str | None = None,
                 conv_layers: int = 0, infer_delay_s: float = 0.0, fail_infer_on_calls: tuple = (), threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model if model is not None else tiny_onnx_model(conv_layers),
                                            opts, providers=["CPUExecutionProvider"])
        self.size = (int(size[0]), int(size[1]))  # (height, width)
        self.threshold = float(threshold)
        self.infer_delay_s = infer_delay_s
        self.fail_infer_on_calls = set(fail_infer_on_calls)
        self.infer_calls = 0
        self.infer_threads: set[str] = set()

    @staticmethod
    def check_frame(frame) -> None:
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame dtype must be uint8, got {frame.dtype}")
        if frame.size == 0 or frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3)):
            raise ValueError(f"frame must be HxW or HxWx1/3 and non-empty, got shape {frame.shape}")

    def preprocess(self, frames: list) -> np.ndarray:
        batch = np.empty((len(frames), *self.size, 3), np.uint8)
        for i, frame in enumerate(frames):
            self.check_frame(frame)
            if frame.ndim == 2 or frame.shape[2] == 1:
                frame = cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2BGR)
            batch[i] = cv2.resize(frame, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        return batch

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        call, self.infer_calls = self.infer_calls, self.infer_calls + 1
        self.infer_threads.add(threading.current_thread().name)
        if call in self.fail_infer_on_calls:
            raise RuntimeError(f"injected inference failure on call {call}")
        if self.infer_delay_s:
            time.sleep(self.infer_delay_s)
        amap, score = self.session.run(["anomaly_map", "score"], {"image": batch})
        return amap, score

    def postprocess(self, frames: list, raw) -> list[TinyResult]:
        amaps, scores = raw
        out = []
        for frame, amap, score in zip(frames, amaps, scores):
            h, w = frame.shape[:2]
            full = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
            mask = (full > self.threshold).astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            regions = [{"box": [int(v) for v in stats[i, :4]], "area": int(stats[i, 4])} for i in range(1, n)]
            out.append(TinyResult(float(score), "defect" if score > self.threshold else "ok", full, mask, regions))
        return out

    def __call__(self, frame):
        return self.batch([frame])[0]

    def batch(self, frames):
        return self.postprocess(frames, self.infer(self.preprocess(frames)))


class FakeCapture:
    """Stands in for cv2.VideoCapture in reconnect tests; it proves the logic, not real camera hardware.

    Delivers ``deliver`` frames (None = forever), then read() fails, after blocking ``hang_s``
    seconds when set (a frozen driver).
    """

    def __init__(self, frames: list, deliver: int | None, hang_s: float = 0.0):
        self.frames, self.deliver, self.hang_s = frames, deliver, hang_s
        self.reads = 0
        self.released = False

    def isOpened(self) -> bool:
        return not self.released

    def read(self):
        if self.deliver is not None and self.reads >= self.deliver:
            if self.hang_s:
                time.sleep(self.hang_s)
            return False, None
        frame = self.frames[self.reads % len(self.frames)]
        self.reads += 1
        return True, frame.copy()

    def release(self) -> None:
        self.released = True


class FakeCameraFactory:
    """Opener for LiveSource. Open attempt i fails when open_results[i] is False; the k-th capture
    that opens delivers deliveries[k] frames (None or beyond the list: forever)."""

    def __init__(self, frames: list, deliveries: list, open_results: list | None = None, hang_s: float = 0.0):
        self.frames, self.deliveries, self.hang_s = frames, list(deliveries), hang_s
        self.open_results = list(open_results or [])
        self.opens = 0
        self.captures: list[FakeCapture] = []

    def __call__(self) -> FakeCapture:
        attempt, self.opens = self.opens, self.opens + 1
        if attempt < len(self.open_results) and not self.open_results[attempt]:
            failed = FakeCapture(self.frames, 0)
            failed.released = True  # isOpened() is False: "did not open"
            return failed
        k = len(self.captures)
        cap = FakeCapture(self.frames, self.deliveries[k] if k < len(self.deliveries) else None, self.hang_s)
        self.captures.append(cap)
        return cap


def real_images(data_root: Path, n: int, size: tuple[int, int] | None = None, category: str = "ball_screw") -> list:
    """n real BGR images from the data set (cycled), resized to (width, height) when given."""
    files = sorted((data_root / category / "test").glob("*/*.jpg")) or sorted((data_root / category).rglob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no jpg images under {data_root / category}")
    step = max(1, len(files) // n)
    out = []
    for i in range(n):
        image = cv2.imread(str(files[(i * step) % len(files)]), cv2.IMREAD_COLOR)
        out.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size else image)
    return out


def write_video(path: Path, frames: list, fps: float = 25.0) -> Path:
    """Write BGR frames with cv2.VideoWriter (mp4v); raises if nothing could be written."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot write {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def stream_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("cfrg-stream")]
