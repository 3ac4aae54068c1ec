"""sdk.Detector: frames of any size in, verdicts and pixel masks at the frame's resolution out."""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import Backend, ModelFileError, load_backend
from .postprocess import Region, postprocess
from .preprocess import preprocess

METADATA_FORMAT = "cfrg-model-1"


@dataclass
class Result:
    """One frame's outcome. verdict is "defect" when score >= the image threshold (and, with
    min_area > 0, a region survives the filter). score is the model's image score (see model.json
    "outputs"): the max of its map, or with a patch memory the sum of two z-scored branch scores, which
    also rises with the extent of a texture change. With min_area 0 a "defect" frame can therefore have
    an empty mask: the pixel threshold is calibrated on the map's peaks, the image threshold on scores."""

    score: float
    verdict: str  # "ok" | "defect"
    anomaly_map: np.ndarray  # float32, frame resolution
    mask: np.ndarray  # uint8 0/1, frame resolution, after the minimum-area filter
    regions: list[Region]
    normalized_score: float = float("nan")  # 1.0 at the image threshold
    timings: dict = field(default_factory=dict)  # ms per stage

    @property
    def is_defect(self) -> bool:
        return self.verdict == "defect"


def read_model_info(path: Path, backend: Backend) -> dict:
    """model.json beside the model, else the same keys from the ONNX metadata."""
    side = path.with_suffix(".json")
    info = None
    if side.is_file():
        try:
            info = json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{side} is not valid JSON ({exc}); re-export the model") from exc
    else:
        meta = backend.metadata()
        if "cfrg" in meta:
            try:
                info = json.loads(meta["cfrg"])
            except json.JSONDecodeError as exc:
                raise ModelFileError(f"{path}: its 'cfrg' metadata is not valid JSON ({exc}); "
                                     f"re-export the model") from exc
    if not isinstance(info, dict) or info.get("format") != METADATA_FORMAT:
        raise ModelFileError(f"{path}: no CFRG model description ({side.name} beside it or 'cfrg' ONNX metadata); "
                             f"export the model with `cfrg export`")
    try:
        name = info["input"]["name"]
        want = [int(info["input"]["height"]), int(info["input"]["width"]), 3]
        info["input"]["colour_order"].lower()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path}: the model description lacks a valid input entry ({type(exc).__name__}: "
                             f"{exc}); re-export the model with `cfrg export`") from exc
    shape = backend.input_shape(name) if name in backend.input_names else None
    if shape is None:
        raise ModelFileError(f"{path}: the graph has no input {name!r} "
                             f"(it has {backend.input_names}); {side.name} belongs to another model")
    if list(shape[1:]) != want:
        raise ModelFileError(f"{path}: graph input is {list(shape[1:])} but {side.name} says {want}; "
                             f"the model and its description do not match, re-export both")
    return info


class Detector:
    """Anomaly detector around an exported CFRG model.

    frames: uint8 HxW (grayscale), HxWx1, HxWx3 in `color` order ("bgr" as OpenCV delivers, or "rgb").
    threshold: "default" (as recorded at export), "good_only", "f1", or a number (raw score).
    """

    def __init__(self, path: str | Path, backend: str = "auto", threshold: str | float = "default",
                 min_area: int = 0, color: str = "bgr", **backend_options):
        self.path = Path(path)
        self._backend_choice, self._backend_options = backend, dict(backend_options)
        self.backend = load_backend(self.path, backend, **backend_options)
        self.info = read_model_info(self.path, self.backend)
        if color not in ("bgr", "rgb"):
            raise ValueError(f"color must be 'bgr' or 'rgb', not {color!r}")
        self.color = color
        self.input_name = self.info["input"]["name"]
        self.size = (int(self.info["input"]["height"]), int(self.info["input"]["width"]))
        self.model_colour = self.info["input"]["colour_order"].lower()
        self.min_area = int(min_area)
        self.image_threshold, self.pixel_threshold = self._thresholds(threshold)
        norm = self.info.get("score_normalisation") or {}
        self._norm = (float(norm.get("offset", 0.0)), float(norm.get("scale", 1.0)))

    def _thresholds(self, choice) -> tuple[float, float]:
        if isinstance(choice, (int, float)):
            return float(choice), float(choice)
        table = self.info.get("thresholds", {})
        name = table.get("default", "good_only") if choice == "default" else choice
        entry = table.get(name)
        if not entry:
            raise ValueError(f"threshold {choice!r}: this model has {sorted(k for k in table if k != 'default')}")
        return float(entry["image"]), float(entry["pixel"])

    # -- the three stages (sdk.Stream runs them in separate threads) --------------------------

    def check_frame(self, frame) -> np.ndarray:
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise ValueError(f"frame dtype is {frame.dtype}; expected uint8 (convert 16-bit frames with "
                             f"(frame >> 8).astype(np.uint8) or cv2.convertScaleAbs)")
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
            raise ValueError(f"frame shape is {frame.shape}; expected HxW, HxWx1 or HxWx3")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise ValueError(f"frame is empty (shape {frame.shape})")
        return frame

    def preprocess(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """Validated frames -> uint8 NHWC batch at the model size, in the model's colour order."""
        frames = [self.check_frame(f) for f in frames]
        batch = np.empty((len(frames), *self.size, 3), np.uint8)
        for i, f in enumerate(frames):
            preprocess(f, batch, index=i, color_in=self.color, color_out=self.model_colour)
        return batch

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.backend.run({self.input_name: batch})
        return out["anomaly_map"], out["score"]

    def postprocess(self, frames: Sequence[np.ndarray], raw) -> list[Result]:
        maps, scores = raw
        return [self._result(np.asarray(f).shape[:2], m, float(s)) for f, m, s in zip(frames, maps, scores)]

    def _result(self, frame_hw, amap: np.ndarray, score: float) -> Result:
        full, mask, regions = postprocess(amap, frame_hw, self.pixel_threshold, self.min_area, mask_value=1)
        defect = score >= self.image_threshold and (self.min_area == 0 or bool(regions))
        offset, scale = self._norm
        return Result(score=score, verdict="defect" if defect else "ok", anomaly_map=full, mask=mask,
                      regions=regions, normalized_score=(score - offset) / scale)

    # -- convenience ------------------------------------------------------------------------

    def replica(self, **backend_options) -> "Detector":
        """The same detector with its own backend session (e.g. threads=1), for parallel inference."""
        twin = copy.copy(self)
        twin.backend = load_backend(self.path, self._backend_choice, **{**self._backend_options, **backend_options})
        return twin

    def predictor(self):
        """An sdk.evaluate Predictor: RGB uint8 NHWC batches at the model size -> (maps, scores)."""

        def predict(frames_rgb: np.ndarray):
            batch = frames_rgb if self.model_colour == "rgb" else frames_rgb[..., ::-1]
            return self.infer(np.ascontiguousarray(batch))

        return predict

    def batch(self, frames: Sequence[np.ndarray]) -> list[Result]:
        if len(frames) == 0:
            return []
        t0 = time.perf_counter()
        batch = self.preprocess(frames)
        t1 = time.perf_counter()
        raw = self.infer(batch)
        t2 = time.perf_counter()
        results = self.postprocess(frames, raw)
        t3 = time.perf_counter()
        n = len(frames)
        for r in results:
            r.timings = {"preprocess_ms": 1e3 * (t1 - t0) / n, "infer_ms": 1e3 * (t2 - t1) / n,
                         "postprocess_ms": 1e3 * (t3 - t2) / n}
        return results

    def __call__(self, frame: np.ndarray) -> Result:
        return self.batch([frame])[0]

    def __repr__(self) -> str:
        return (f"Detector({str(self.path)!r}, backend={self.backend.name}, size={self.size}, "
                f"threshold={self.image_threshold:.4g})")
