"""sdk.Detector: frames of any size in, verdicts and pixel masks at the frame's resolution out."""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .backends import is_server_url, load_backend
from .checks import INT64_MAX, check_colour, check_frame, number, older_spellings, optional, require, whole
from .evaluate import backend_predictor
from .model_info import ModelInfo
from .postprocess import Region, postprocess
from .preprocess import preprocess
from .tiling import TilePlan


@dataclass
class Result:
    """One frame's outcome. verdict is "defect" when score >= the image threshold (and, with
    min_area > 0, a region survives the filter). score is the model's image score (see model.json
    "outputs"): the max of its map, or with a patch memory the sum of its z-scored branch scores, which
    also rises with the extent of a texture change. With min_area 0 a "defect" frame can therefore have
    an empty mask: the pixel threshold is measured on the map's peaks, the image threshold on scores."""

    score: float
    verdict: str  # "ok" | "defect"
    anomaly_map: np.ndarray  # float32, frame resolution
    mask: np.ndarray  # uint8 0/1, frame resolution, after the minimum-area filter
    regions: list[Region]
    normalised_score: float = float("nan")  # 1.0 at the image threshold
    timings: dict = field(default_factory=dict)  # ms per stage
    tiling: dict | None = None  # tiled inference: tile (h, w), overlap and scale in model pixels, tile count

    @property
    def is_defect(self) -> bool:
        return self.verdict == "defect"

    @property
    def normalized_score(self) -> float:
        """normalised_score under its older spelling (read-only)."""
        return self.normalised_score


def _python_int(value):
    """A NumPy integer as a Python int (for the whole-number checks); anything else unchanged."""
    return int(value) if isinstance(value, np.integer) else value


@dataclass
class TiledBatch:
    """Pre-processed tiles of several frames: tiles (N, h, w, 3) and, per frame, (first, count, origins,
    scaled (h, w), scale)."""

    tiles: np.ndarray
    layout: list


@dataclass
class TiledRaw:
    maps: np.ndarray
    scores: np.ndarray
    layout: list


class Detector:
    """Anomaly detector around an exported CFRG model.

    path: model.onnx, an engine of cfrg build, or a model on a Triton server: "grpc://HOST:PORT/NAME" or
    "http://HOST:PORT/NAME" (cfrg serve; backend options timeout_s, retry_initial_s, retry_max_s).
    frames: uint8 HxW (grayscale), HxWx1, HxWx3 in `colour` order ("bgr" as OpenCV delivers, or "rgb").
    threshold: "default" (as recorded at export), "good_only", "f1", or a number (raw score).
    tiling: for frames much larger than the model input (line-scan strips, large sheets): each frame is
    scaled by `tile_scale` (model pixels per frame pixel; default: so that its short side fits the model's), cut
    into overlapping tiles of the model's size (`tile_overlap` model pixels), the tiles run as batches, their
    maps are stitched (max in the overlaps) and the frame's score is its highest tile score. Results come at the
    frame's resolution. A model trained on tiles (cfrg train --scale; model.json "tiling") tiles every frame as
    its training saw it: tiling, tile_scale and tile_overlap default to its own.
    """

    @older_spellings(color="colour")
    def __init__(self, path: str | Path, backend: str = "auto", threshold: str | float = "default",
                 min_area: int = 0, colour: str = "bgr", tiling: bool | None = None, tile_overlap: int | None = None,
                 tile_scale: float | None = None, **backend_options):
        self.path = path if is_server_url(path) else Path(path)  # a served model keeps its URL
        self._backend_choice, self._backend_options = backend, dict(backend_options)
        self.backend = load_backend(self.path, backend, **backend_options)
        self.info = ModelInfo.read(self.path, self.backend)
        self.colour = check_colour(colour)
        self.input_name = self.info.input.name
        self.size = (self.info.input.height, self.info.input.width)
        self.model_colour = self.info.input.colour_order.lower()
        self.min_area = int(require(_python_int(min_area), whole(0, INT64_MAX),
                                    f"min_area must be a whole number of pixels from 0 to {INT64_MAX}, got {min_area!r}"))
        self.image_threshold, self.pixel_threshold = self.info.threshold(threshold)
        trained = self.info.tile_plan  # None: a model of whole frames
        if trained is not None and tiling is not None and not tiling:
            raise ValueError(f"{self.path}: this model was trained on {self.size[1]}x{self.size[0]} tiles at "
                             f"{self.info.tiling['scale']:g} frame pixels per model pixel and judges frames only "
                             f"in tiles: leave tiling out (or pass tiling=True)")
        self.tiling = trained is not None if tiling is None else bool(tiling)
        overlap = (trained.overlap if trained else 32) if tile_overlap is None else tile_overlap
        self.tile_overlap = int(require(_python_int(overlap), whole(0, min(self.size) - 1),
                                        f"tile_overlap must be a whole number of model pixels in [0, {min(self.size)}), "
                                        f"got {overlap!r}"))
        scale = (trained.scale if trained else None) if tile_scale is None else tile_scale
        self.tile_scale = require(scale, optional(number(0, low_open=True)),
                                  f"tile_scale must be a finite number > 0 (model pixels per frame pixel) or None, "
                                  f"got {scale!r}")
        self.tile_plan = (replace(trained, overlap=self.tile_overlap, scale=self.tile_scale) if trained
                          else TilePlan(self.size, self.tile_overlap, self.tile_scale))

    # -- the three stages (sdk.Stream runs them in separate threads) --------------------------

    def check_frame(self, frame) -> np.ndarray:
        frame = check_frame(frame)
        return frame[:, :, 0] if frame.ndim == 3 and frame.shape[2] == 1 else frame

    def preprocess(self, frames: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray | TiledBatch:
        """Validated frames -> uint8 NHWC batch at the model size, in the model's colour order (into `out`,
        e.g. a backend's pinned input buffer, when given); with tiling, the frames' tiles."""
        frames = [self.check_frame(f) for f in frames]
        if self.tiling:
            return self._tiles(frames)
        batch = np.empty((len(frames), *self.size, 3), np.uint8) if out is None else out
        for i, f in enumerate(frames):
            preprocess(f, batch, index=i, colour_in=self.colour, colour_out=self.model_colour)
        return batch

    def infer(self, batch: np.ndarray | TiledBatch):
        if isinstance(batch, TiledBatch):
            step = getattr(self.backend, "max_batch", 8)  # tiles in batches the backend takes
            parts = [self.infer(batch.tiles[s:s + step]) for s in range(0, len(batch.tiles), step)]
            return TiledRaw(np.concatenate([m for m, _ in parts]), np.concatenate([s for _, s in parts]), batch.layout)
        out = self.backend.run({self.input_name: batch})
        return out["anomaly_map"], out["score"]

    def postprocess(self, frames: Sequence[np.ndarray], raw) -> list[Result]:
        if isinstance(raw, TiledRaw):
            return [self._tiled_result(np.asarray(f).shape[:2], raw, k) for k, f in enumerate(frames)]
        maps, scores = raw
        return [self._result(np.asarray(f).shape[:2], m, float(s)) for f, m, s in zip(frames, maps, scores)]

    def _tiles(self, frames: list[np.ndarray]) -> TiledBatch:
        tiles, layout, first = [], [], 0
        for frame in frames:
            frame_tiles, origins, scaled_hw, scale = self.tile_plan.cut(frame, self.colour, self.model_colour)
            layout.append((first, len(frame_tiles), origins, scaled_hw, scale))
            first += len(frame_tiles)
            tiles.append(frame_tiles)
        return TiledBatch(np.ascontiguousarray(np.concatenate(tiles)), layout)

    def _tiled_result(self, frame_hw, raw: TiledRaw, k: int) -> Result:
        first, count, origins, scaled_hw, scale = raw.layout[k]
        amap = self.tile_plan.join(raw.maps[first:first + count], origins, scaled_hw)
        result = self._result(frame_hw, amap, self.tile_plan.frame_score(raw.scores[first:first + count]))
        result.tiling = {"tile": list(self.size), "overlap": self.tile_overlap, "tiles": count,
                         "scale": round(scale, 6)}
        return result

    def _result(self, frame_hw, amap: np.ndarray, score: float) -> Result:
        if not (math.isfinite(score) and np.isfinite(amap).all()):
            raise ValueError(f"the model gave a score of {score} and a map with {np.size(amap) - np.isfinite(amap).sum()}"
                             f" non-finite values: not finite, so no verdict; check the model file (re-export it)")
        full, mask, regions = postprocess(amap, frame_hw, self.pixel_threshold, self.min_area, mask_value=1)
        defect = score >= self.image_threshold and (self.min_area == 0 or bool(regions))
        return Result(score=score, verdict="defect" if defect else "ok", anomaly_map=full, mask=mask,
                      regions=regions, normalised_score=self.info.normalise_score(score))

    # -- convenience ------------------------------------------------------------------------

    @property
    def frame_plan(self) -> TilePlan | None:
        """How this detector cuts a frame (None: it squeezes the whole frame into the model's input)."""
        return self.tile_plan if self.tiling else None

    def replica(self, **backend_options) -> "Detector":
        """The same detector with its own backend session (e.g. threads=1), for parallel inference."""
        twin = copy.copy(self)
        twin.backend = load_backend(self.path, self._backend_choice, **{**self._backend_options, **backend_options})
        return twin

    def preferred_workers(self) -> int:
        """Parallel inference sessions that suit the backend (sdk.Stream's infer_workers="auto")."""
        return self.backend.preferred_workers()

    def replicas(self, workers: int) -> list["Detector"]:
        """`workers` detectors, each with its own backend session set up for running side by side."""
        options = self.backend.worker_options(workers)
        return [self.replica(**options) for _ in range(workers)]

    def predictor(self):
        """An sdk.evaluate Predictor: RGB uint8 NHWC batches at the model size -> (maps, scores)."""
        return backend_predictor(self.backend, self.input_name, self.model_colour)

    def batch(self, frames: Sequence[np.ndarray]) -> list[Result]:
        if len(frames) == 0:
            return []
        t0 = time.perf_counter()
        filled_input = None if self.tiling else getattr(self.backend, "filled_input", None)  # pinned memory
        with filled_input(self.input_name, len(frames)) if filled_input else contextlib.nullcontext() as buffer:
            batch = self.preprocess(frames, buffer)  # in place, under the backend's lock, then run
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

    @property
    def color(self) -> str:
        """colour under its older spelling (read-only)."""
        return self.colour

    def close(self) -> None:
        """Release the backend (a TensorRT engine's context, stream and buffers; an ONNX Runtime session).
        Idempotent; the detector cannot run afterwards. `with Detector(...) as det:` closes on the way out."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Detector({str(self.path)!r}, backend={self.backend.name}, size={self.size}, "
                f"threshold={self.image_threshold:.4g})")
