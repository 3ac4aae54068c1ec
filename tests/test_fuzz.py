"""Fuzz and property suite (Hypothesis): options and model descriptions generated from their declarations with
invalid values, frames of random dtype, shape and content, corrupt files of every kind the product reads,
sources that fail at random points.

Properties: every failure is an expected, named error (no traceback, no other exception), nothing hangs,
existing outputs stay as they were, every frame gives exactly one record, and no verdict comes from a
non-finite score or threshold.

Bounded for CI by the "ci" profile (the default). A longer local run:
    HYPOTHESIS_PROFILE=long python -m pytest -q tests/test_fuzz.py
"""
import dataclasses
import math
import os
import shutil
import signal

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.options import TrainArgs, flag_of
from sdk import Detector, ModelFileError, Stream
from sdk.cli import EXIT_USAGE, build_parser, main
from sdk.data import DatasetError, read_image, read_mask
from sdk.model_info import ModelInfo, sidecar_path
from sdk.sources import Frame, SourceError, open_source
from tests.conftest import DEMO_ROOT

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

@pytest.fixture(autouse=True)
def no_hang():
    """A property that hangs fails after 300 s instead of stalling CI (SIGALRM; the main thread)."""
    def hung(signum, frame):
        raise TimeoutError("a fuzz case hung for 300 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(300)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


JSON_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.text(max_size=12),
                      st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=4),
                      st.dictionaries(st.text(max_size=4), st.integers(), max_size=3))
TEXT_JUNK = st.one_of(st.text(max_size=10), st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "", " ", "0x10",
                                                             "3.5", "-0", "1_000", "NaN", "None"]),
                      st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(repr))
CHECKED = [f for f in dataclasses.fields(TrainArgs) if f.metadata["cli"] and f.metadata["check"]]


# -- options, from their declaration ------------------------------------------------------------------

@given(field=st.sampled_from(CHECKED), text=TEXT_JUNK)
def test_any_train_flag_value_is_accepted_in_range_or_refused_in_one_line(field, text, capsys, tmp_path):
    out = tmp_path / "o"
    argv = ["train", "--data", "d", "--category", "c", "--out", str(out), flag_of(field), text]
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == EXIT_USAGE and flag_of(field) in err.strip().splitlines()[-1]
        assert "Traceback" not in err
        return
    value = getattr(ns, field.name)
    assert field.metadata["check"](value) is None  # what the parser lets through is in range
    if isinstance(value, float):
        assert math.isfinite(value)
    assert not out.exists()


@given(field=st.sampled_from(CHECKED), value=JSON_JUNK)
def test_train_args_built_in_python_are_validated_the_same_way(field, value):
    args = dataclasses.replace(TrainArgs("d", "c", "o", steps=1), **{field.name: value})
    if field.metadata["check"](value) is None:
        args.validate()
    else:
        with pytest.raises(ValueError, match=flag_of(field)):
            args.validate()


FIELD_FLAGS = [("run", "--batch-size"), ("run", "--queue-size"), ("run", "--min-area"), ("run", "--max-frames"),
               ("run", "--threshold"), ("run", "--infer-workers"), ("run", "--tile-scale"), ("run", "--tile-overlap"),
               ("eval", "--batch-size"), ("eval", "--fpr-limit"), ("export", "--target-frr"), ("bench", "--batch")]
HUGE = st.one_of(st.integers(2**31, 10**30).map(str), st.integers(-10**30, -1).map(str))  # beyond int32/int64


@given(flag=st.sampled_from(FIELD_FLAGS), text=st.one_of(TEXT_JUNK, HUGE))
def test_field_flags_refuse_non_finite_and_out_of_range_values(flag, text, capsys):
    command, name = flag
    base = {"run": ["--model", "m.onnx", "--source", "0"], "eval": ["--model", "m.onnx", "--data", "d",
                                                                     "--category", "c"],
            "export": ["model.pt", "-o", "m.onnx"], "bench": ["--model", "m.onnx"]}[command]
    try:
        ns = build_parser().parse_args([command, *base, name, text])
    except SystemExit as exc:
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.code == EXIT_USAGE and len(err) == 1 and name in err[0]  # one line, no usage
        return
    value = getattr(ns, name.replace("--", "").replace("-", "_"))
    if isinstance(value, float):
        assert math.isfinite(value) and (name != "--tile-scale" or 0 < value <= 64)
    if isinstance(value, int) and name not in ("--min-area", "--tile-overlap"):
        assert 1 <= value <= 4096 or name in ("--target-frr", "--max-frames")
    if isinstance(value, int):
        assert value <= 2**63 - 1  # what the C++ extension's int64 takes


# -- model descriptions --------------------------------------------------------------------------------

def _paths(d, prefix=()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


@given(data=st.data())
def test_a_mutated_model_description_loads_valid_or_is_refused_by_name(exported_model, data):
    d = exported_model[2].to_dict()
    paths = sorted(_paths(d))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = d
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            if data.draw(st.booleans()):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = data.draw(JSON_JUNK)
    try:
        info = ModelInfo.from_dict(d, "fuzzed model.json")
    except ModelFileError as exc:
        assert "fuzzed model.json" in str(exc) and "\n" not in str(exc)
        return
    for t in info.thresholds.values():  # what loads can give no verdict from a non-finite number
        assert math.isfinite(t.image) and math.isfinite(t.pixel)
    assert math.isfinite(info.score_normalisation.offset) and info.score_normalisation.scale > 0
    assert info.input.height >= 1 and info.input.width >= 1 and info.input.colour_order in ("RGB", "BGR")


@given(threshold=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.none(),
                           st.booleans()))
def test_no_detector_with_a_non_finite_or_unknown_threshold(exported_model, threshold):
    try:
        det = Detector(exported_model[1], threshold=threshold)
    except ValueError:
        return
    assert math.isfinite(det.image_threshold) and math.isfinite(det.pixel_threshold)


# -- frames ------------------------------------------------------------------------------------------

DTYPES = st.sampled_from([np.uint8, np.uint16, np.int8, np.float32, np.float64, np.bool_, np.int64])


@st.composite
def frames(draw):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.integers(0, 40)) for _ in range(ndim))
    if ndim == 3 and draw(st.booleans()):
        shape = shape[:2] + (draw(st.sampled_from([1, 3, 4])),)
    dtype = draw(DTYPES)
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).integers(0, 256, size=shape)
    frame = values.astype(dtype)
    if draw(st.booleans()) and frame.ndim >= 2 and frame.shape[1] > 1:
        frame = frame[:, ::2]  # not contiguous
    return frame


@pytest.fixture(scope="module")
def detector(exported_model):
    return Detector(exported_model[1])


@given(frame=st.one_of(frames(), st.sampled_from([None, [[1, 2]], "frame", 3.0])))
def test_any_frame_gives_a_result_or_a_named_error(detector, frame):
    try:
        r = detector(frame)
    except (TypeError, ValueError) as exc:
        assert "frame" in str(exc)
        return
    h, w = np.asarray(frame).shape[:2]
    assert r.mask.shape == (h, w) and r.anomaly_map.shape == (h, w) and math.isfinite(r.score)
    assert r.verdict in ("ok", "defect")


@given(batch=st.lists(st.one_of(frames(), st.just(None)), min_size=1, max_size=6),
       batch_size=st.integers(1, 3), workers=st.integers(1, 2))
def test_every_frame_gives_exactly_one_record_in_order(detector, batch, batch_size, workers):
    with Stream(detector, batch, batch_size=batch_size, infer_workers=workers, drain_timeout=60) as stream:
        records = list(stream)
    assert [r.frame_id for r in records] == list(range(len(batch)))
    for rec, frame in zip(records, batch):
        assert rec.status in ("ok", "error")
        if rec.status == "ok":
            assert math.isfinite(rec.result.score) and rec.result.verdict in ("ok", "defect")


class FlakySource:
    """Yields frames, raises (a camera that drops out) or hands over error frames at the drawn positions."""

    def __init__(self, plan, image):
        self.plan, self.image, self.i = plan, image, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= len(self.plan):
            raise StopIteration
        i, step = self.i, self.plan[self.i]
        self.i += 1
        if step == "raise":
            raise RuntimeError(f"camera dropped at {i}")
        if step == "error":
            return Frame(i, None, 0.0, "flaky", error=f"corrupt frame {i}")
        return Frame(i, self.image, 0.0, "flaky")


@given(plan=st.lists(st.sampled_from(["frame", "frame", "error", "raise"]), min_size=1, max_size=12))
def test_a_source_that_fails_at_random_points_loses_no_frame(detector, plan):
    image = np.full((48, 64, 3), 120, np.uint8)
    with Stream(detector, FlakySource(plan, image), max_source_errors=100,
                drain_timeout=60) as stream:
        records = list(stream)
    assert len(records) == len(plan) and [r.frame_id for r in records] == list(range(len(plan)))
    assert [r.status == "ok" for r in records] == [step == "frame" for step in plan]


# -- corrupt files ------------------------------------------------------------------------------------

REAL_JPEG = sorted((DEMO_ROOT / "ball_screw" / "test" / "good").glob("*.jpg"))[0].read_bytes()
REAL_MASK = sorted((DEMO_ROOT / "ball_screw" / "ground_truth" / "pitting").glob("*.png"))[0].read_bytes()


@st.composite
def corrupted(draw, original: bytes):
    kind = draw(st.sampled_from(["truncate", "flip", "garbage", "empty", "prefix"]))
    if kind == "truncate":
        return original[:draw(st.integers(0, len(original) - 1))]
    if kind == "flip":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 16))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=2048))
    if kind == "empty":
        return b""
    return original[:draw(st.integers(2, 64))] + draw(st.binary(max_size=256))


def _image_ok(image) -> bool:
    return image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _mask_ok(mask) -> bool:
    return mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


@pytest.mark.parametrize("name,original,read,valid", [("x.jpg", REAL_JPEG, read_image, _image_ok),
                                                      ("x.png", REAL_MASK, read_mask, _mask_ok)])
@given(data=st.data())
def test_a_corrupt_image_or_mask_reads_or_is_a_dataset_error(tmp_path_factory, name, original, read, valid, data):
    path = tmp_path_factory.mktemp("img") / name
    path.write_bytes(data.draw(corrupted(original)))
    try:
        decoded = read(path)
    except DatasetError as exc:
        assert str(path) in str(exc)
        return
    assert valid(decoded)


class _Bytes(tuple):
    def __repr__(self) -> str:  # Hypothesis prints the arguments of a failing case: not megabytes of them
        return f"<{len(self)} files: {[len(b) for b in self]} bytes>"


@pytest.fixture(scope="module")
def model_bytes(exported_model):
    return _Bytes((exported_model[1].read_bytes(), sidecar_path(exported_model[1]).read_bytes()))


@settings(max_examples=15)
@given(data=st.data())
def test_a_corrupt_model_file_or_description_is_a_model_file_error(tmp_path_factory, model_bytes, data):
    onnx_bytes, json_bytes = model_bytes
    folder = tmp_path_factory.mktemp("model")
    which = data.draw(st.sampled_from(["onnx", "json"]))
    (folder / "m.onnx").write_bytes(data.draw(corrupted(onnx_bytes)) if which == "onnx" else onnx_bytes)
    (folder / "m.json").write_bytes(data.draw(corrupted(json_bytes)) if which == "json" else json_bytes)
    try:
        det = Detector(folder / "m.onnx")
    except ModelFileError as exc:
        assert "m.onnx" in str(exc) or "m.json" in str(exc)
        return
    frame = np.full((40, 60, 3), 100, np.uint8)
    try:
        r = det(frame)
    except ValueError as exc:  # a damaged graph that still loads: its output is refused, not judged
        assert "not finite" in str(exc) or "model" in str(exc)
        return
    assert math.isfinite(r.score)


@settings(max_examples=10)
@given(data=st.data())
def test_a_corrupt_checkpoint_is_one_line_and_writes_nothing(tmp_path_factory, exported_model, data, capsys):
    folder = tmp_path_factory.mktemp("ckpt")
    shutil.copytree(exported_model[1].parent / "run", folder / "run")
    checkpoint = folder / "run" / "model.pt"
    checkpoint.write_bytes(data.draw(corrupted(checkpoint.read_bytes())))
    code = main(["export", str(checkpoint), "-o", str(folder / "m.onnx"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (folder / "m.onnx").exists() and not list(folder.glob(".*"))


@settings(max_examples=10)
@given(data=st.data())
def test_a_corrupt_video_gives_frames_or_a_source_error(tmp_path_factory, video_bytes, data):
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    path.write_bytes(data.draw(corrupted(video_bytes[0])))
    try:
        source = open_source(path)
    except SourceError as exc:
        assert "v.mp4" in str(exc)
        return
    try:
        frames = [f for _, f in zip(range(50), source)]
    except SourceError:
        return
    finally:
        source.close()
    assert all(f.error is not None or (f.image is not None and f.image.dtype == np.uint8) for f in frames)


@pytest.fixture(scope="module")
def video_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "v.mp4"
    image = cv2.imdecode(np.frombuffer(REAL_JPEG, np.uint8), cv2.IMREAD_COLOR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (image.shape[1], image.shape[0]))
    for _ in range(4):
        writer.write(image)
    writer.release()
    return _Bytes((path.read_bytes(),))
