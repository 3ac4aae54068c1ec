"""Sinks: where stream records go (numpy + opencv only).

A sink has ``write(record)`` and ``close()`` (idempotent) and is a context manager; sdk.Stream
calls write() for every record in frame_id order and close() at shutdown.

    MaskSink(dir)          binary masks as PNG (0/255), one per ok record
    OverlaySink(dir)       heat map blended on the frame, defect contours, verdict and score
    JsonlSink(path)        one JSON line per record (ok, error and dropped alike)
    VideoSink(path, fps)   annotated video (cv2.VideoWriter, mp4v), finalised on close
    BySource(sinks)        each camera's records to its own sinks (several cameras in one stream)

Files are written atomically: a temporary file in the same folder, then os.replace, so a reader
never sees half a PNG or half a video. JsonlSink writes each line with one write() and flushes
it, and fsyncs at close. File names take ``{frame_id}`` (the stream's), ``{source_frame_id}`` (the camera's:
Frame.frame_id) and ``{stem}`` (the source file's stem, or the zero-padded frame id when the frame has no
path), e.g. pattern="{stem}_mask.png".
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from .checks import older_spellings
from .files import (IMAGE_EXTENSIONS, check_output_folder, encode_png, replace_with_temp, temp_path_beside,
                    write_png)

log = logging.getLogger("sdk.sinks")



def _to_bgr(image: np.ndarray, colour: str = "bgr") -> np.ndarray:
    """uint8 HxW, HxWx1, HxWx3 or HxWx4 -> HxWx3 BGR."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR if colour == "rgb" else cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if colour == "rgb" else image


@older_spellings(color="colour")
def overlay(image: np.ndarray, anomaly_map: np.ndarray | None, mask: np.ndarray | None = None, *,
            alpha: float = 0.45, map_range: Sequence[float] | None = None, label: str | None = None,
            defect: bool | None = None, colour: str = "bgr") -> np.ndarray:
    """Heat map of ``anomaly_map`` blended on ``image`` (BGR uint8 out), mask contours, a label.

    map_range (lo, hi) maps scores to the colour scale; by default (0, 1) when the map lies in
    [0, 1] (normalised scores), else (0, map max). The map is resized to the image when needed
    (sdk.postprocess.map_to_frame, as the Detector resizes it).
    """
    from .postprocess import blend_heatmap, map_to_frame

    base = _to_bgr(np.asarray(image), colour)
    h, w = base.shape[:2]
    out = base.copy()
    m = np.zeros((h, w), np.uint8)
    if mask is not None:
        m = (np.asarray(mask).reshape(np.asarray(mask).shape[:2]) > 0).astype(np.uint8)
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    if anomaly_map is not None:
        amap = np.asarray(anomaly_map, dtype=np.float32).reshape(np.asarray(anomaly_map).shape[:2])
        amap = map_to_frame(amap, (h, w))
        if map_range is None:
            top = float(np.nanmax(amap)) if amap.size else 1.0
            lo, hi = 0.0, (1.0 if top <= 1.0 else top)
        else:
            lo, hi = float(map_range[0]), float(map_range[1])
        out = blend_heatmap(base, np.nan_to_num(amap), m, alpha=alpha, value_range=(lo, hi))
    elif mask is not None:
        out = blend_heatmap(base, np.zeros((h, w), np.float32), m, alpha=0.0)
    if label:
        scale = max(0.4, min(w, h) / 400.0)
        thick = max(1, int(round(scale * 1.5)))
        (tw, th), base_line = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        cv2.rectangle(out, (0, 0), (tw + 8, th + base_line + 8), (0, 0, 0), cv2.FILLED)  # legible on any frame
        tint = (80, 80, 255) if defect else (80, 230, 80)
        cv2.putText(out, label, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, tint, thick, cv2.LINE_AA)
    return out


def _displayable(image: Any) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.size > 0
            and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))))


def _label(record: Any) -> str:
    if record.status != "ok":
        return f"#{record.frame_id} {record.status.upper()}: {record.error or ''}"[:120]
    return f"#{record.frame_id} {record.result.verdict} {float(record.result.score):.3f}"


def annotate(record: Any, *, alpha: float = 0.45, map_range: Sequence[float] | None = None) -> np.ndarray | None:
    """The record's frame with its overlay (ok) or an error label; None when it has no usable image."""
    image = getattr(record, "image", None)
    if not _displayable(image):  # dropped frames, source errors, and bad frames (wrong dtype or shape)
        return None
    colour = (record.frame.meta.get("colour", "bgr") if record.frame is not None else "bgr")
    if record.status != "ok" or record.result is None:
        return overlay(image, None, None, label=_label(record), defect=True, colour=colour)
    res = record.result
    return overlay(image, res.anomaly_map, res.mask, alpha=alpha, map_range=map_range, label=_label(record),
                   defect=res.verdict != "ok", colour=colour)


def _jsonable(obj: Any, max_array: int = 64) -> Any:
    """Results to JSON types: dataclasses and namedtuples to dicts, numpy to Python, NaN/inf to null."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return _jsonable(obj.item(), max_array)
    if isinstance(obj, np.ndarray):
        if obj.size <= max_array:
            return _jsonable(obj.tolist(), max_array)
        return {"shape": list(obj.shape), "dtype": str(obj.dtype)}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name), max_array) for f in dataclasses.fields(obj)}
    if hasattr(obj, "_asdict"):
        return _jsonable(obj._asdict(), max_array)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, max_array) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v, max_array) for v in obj]
    return str(obj)


def record_to_dict(record: Any) -> dict:
    """The JSON fields of a record: frame_id, status, score, verdict, regions, timings, error, ..."""
    res = record.result
    frame = record.frame
    return {
        "frame_id": record.frame_id,
        "status": record.status,
        "score": _jsonable(None if res is None else float(res.score)),
        "verdict": None if res is None else res.verdict,
        "regions": [] if res is None else _jsonable(getattr(res, "regions", []) or []),
        "timings": {} if res is None else _jsonable(getattr(res, "timings", {}) or {}),
        "tiling": None if res is None else _jsonable(getattr(res, "tiling", None)),
        "error": record.error,
        "source": getattr(record, "source", None) or (None if frame is None else frame.source),
        "source_frame_id": None if frame is None else frame.frame_id,
        "path": None if frame is None else frame.meta.get("path"),
        "timestamps": _jsonable(record.timestamps),
        "events": [_jsonable(e) for e in getattr(record, "events", ())],
    }


class Sink:
    """Base: write(record), close(); counts written and skipped records."""

    def __init__(self):
        self.written = 0
        self.skipped = 0
        self.closed = False

    def write(self, record: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def discard(self) -> None:
        """Close without publishing anything: for a run that failed before its first record."""
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{type(self).__name__} is closed; create a new sink")


def _check_overlay_options(alpha: Any, map_range: Any) -> tuple[float, tuple[float, float] | None]:
    """alpha in [0, 1]; map_range None or two finite numbers lo < hi (checked when the sink is made)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (the heat map's weight), got {alpha!r}")
    if map_range is None:
        return float(alpha), None
    try:
        lo, hi = (float(v) for v in map_range)
    except (TypeError, ValueError):
        raise ValueError(f"map_range must be (lo, hi), two numbers, got {map_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"map_range must be two finite numbers with lo < hi, got {map_range!r}")
    return float(alpha), (lo, hi)


def _write_png_in_place(path: Path, image: np.ndarray) -> None:
    data = encode_png(path, image)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:  # name the file: a failed write() does not
        raise OSError(exc.errno, exc.strerror, str(path)) from None


class _ImageDirSink(Sink):
    """in_place=True writes each PNG straight to its name (inside a run unit, sdk.run_unit, which says itself
    whether it is whole); else through a temporary file and a rename."""

    def __init__(self, directory: str | os.PathLike, pattern: str, in_place: bool = False):
        super().__init__()
        self.write_image = _write_png_in_place if in_place else write_png
        self.directory = Path(directory)
        check_output_folder(self.directory)  # created at the first write: a failed run leaves no empty folder
        self._made = False
        self.pattern = pattern
        try:
            pattern.format(frame_id=0, source_frame_id=0, stem="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"pattern {pattern!r} may only use {{frame_id}}, {{source_frame_id}} and {{stem}}: "
                             f"{exc}") from None

    def path_for(self, record: Any) -> Path:
        meta = record.frame.meta if record.frame is not None else {}
        src = meta.get("path")
        if not src:
            stem = f"{record.frame_id:06d}"
        elif Path(src).suffix.lower() in IMAGE_EXTENSIONS:  # one file per frame
            stem = Path(src).stem + (f"_pass{meta['pass']}" if meta.get("pass") else "")
        else:  # frames of a video share its path
            stem = f"{Path(src).stem}_{record.frame_id:06d}"
        if not self._made:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._made = True
        own = None if record.frame is None else record.frame.frame_id
        return self.directory / self.pattern.format(frame_id=record.frame_id, stem=stem,
                                                    source_frame_id=record.frame_id if own is None else own)


class MaskSink(_ImageDirSink):
    """One PNG per ok record: the binary mask as 0/255 uint8 at frame resolution."""

    def __init__(self, directory: str | os.PathLike, pattern: str = "{frame_id:06d}_mask.png", *,
                 in_place: bool = False):
        super().__init__(directory, pattern, in_place)

    def write(self, record: Any) -> None:
        self._check_open()
        if record.status != "ok" or record.result is None or record.result.mask is None:
            self.skipped += 1
            return
        mask = np.asarray(record.result.mask)
        self.write_image(self.path_for(record), np.where(mask.reshape(mask.shape[:2]) > 0, 255, 0).astype(np.uint8))
        self.written += 1


class OverlaySink(_ImageDirSink):
    """One PNG per record with an image: heat map + contours + verdict (or the error) on the frame.

    only_defects=True keeps the PNGs of "defect" verdicts (and errors) only.
    """

    def __init__(self, directory: str | os.PathLike, pattern: str = "{frame_id:06d}_overlay.png", *,
                 alpha: float = 0.45, map_range: Sequence[float] | None = None, only_defects: bool = False,
                 in_place: bool = False):
        super().__init__(directory, pattern, in_place)
        self.alpha, self.map_range = _check_overlay_options(alpha, map_range)
        self.only_defects = only_defects

    def write(self, record: Any) -> None:
        self._check_open()
        if self.only_defects and record.status == "ok" and record.result.verdict == "ok":
            self.skipped += 1
            return
        picture = annotate(record, alpha=self.alpha, map_range=self.map_range)
        if picture is None:  # dropped frames and source errors have no image
            self.skipped += 1
            return
        self.write_image(self.path_for(record), picture)
        self.written += 1


class JsonlSink(Sink):
    """One JSON object per line and per record (record_to_dict), flushed per line, fsynced at close.

    A new file (append=False) is written beside ``path`` under a hidden temporary name and replaces
    ``path`` at close, so an earlier run's file stays whole until this run's is complete (a run that
    is discarded, or dies, leaves it untouched); ``live_path`` is the file being written, readable
    line by line while the run goes on. append=True adds lines to ``path`` itself as they come.
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        super().__init__()
        self.path = Path(path)
        check_output_folder(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = None if append else temp_path_beside(self.path)
        self.live_path = self.path if append else self._tmp
        self._file = open(self.live_path, "a" if append else "w", encoding="utf-8")

    def write(self, record: Any) -> None:
        self._check_open()
        line = json.dumps(record_to_dict(record), allow_nan=False, separators=(",", ":")) + "\n"
        self._file.write(line)
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        if self._tmp is not None:
            replace_with_temp(self._tmp, self.path)

    def discard(self) -> None:
        if self.closed:
            return
        super().discard()
        self._file.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


class VideoSink(Sink):
    """Annotated frames into a video (cv2.VideoWriter, default codec mp4v).

    The video is written to a hidden temp file beside ``path`` and renamed into place by close().
    Its size is the first frame's (later frames of another size are resized). Records without an
    image (dropped frames, source errors) add no video frame; ``skipped`` counts them.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0, *, fourcc: str = "mp4v",
                 alpha: float = 0.45, map_range: Sequence[float] | None = None, in_place: bool = False):
        super().__init__()
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
        alpha, map_range = _check_overlay_options(alpha, map_range)
        if len(fourcc) != 4:
            raise ValueError(f"fourcc must be 4 characters such as 'mp4v', got {fourcc!r}")
        self.path = Path(path)
        check_output_folder(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps, self.fourcc, self.alpha, self.map_range = float(fps), fourcc, alpha, map_range
        self.in_place = in_place  # inside a run unit: written under its own name
        self._tmp = self.path if in_place else temp_path_beside(self.path if self.path.suffix else
                                                                self.path.with_suffix(".mp4"))
        self._writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None  # (width, height)

    def _open(self, width: int, height: int) -> cv2.VideoWriter:
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError(f"{self.path}: cv2.VideoWriter cannot write fourcc {self.fourcc!r} into "
                               f"{self.path.suffix or 'this container'}; use .mp4 with 'mp4v' or .avi with 'MJPG'")
        return writer

    def write(self, record: Any) -> None:
        self._check_open()
        picture = annotate(record, alpha=self.alpha, map_range=self.map_range)
        if picture is None:
            self.skipped += 1
            return
        if self._writer is None:
            self.size = (picture.shape[1], picture.shape[0])
            self._writer = self._open(*self.size)
        if (picture.shape[1], picture.shape[0]) != self.size:
            picture = cv2.resize(picture, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(picture))
        self.written += 1

    def close(self) -> None:
        self._end(publish=True)

    def discard(self) -> None:
        self._end(publish=False)

    def _end(self, publish: bool) -> None:
        """Release the writer; move the video into place (close) or remove it (discard, or no frame)."""
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            self._writer.release()
        if publish and self.written:
            if not self.in_place:
                replace_with_temp(self._tmp, self.path)
            return
        self._tmp.unlink(missing_ok=True)
        if publish:
            log.warning("%s: no frame had an image; no video written", self.path)


class BySource(Sink):
    """Each record to the sinks of its camera (Record.source), for a stream of several cameras.

    sinks: {camera name: a sink or a list of sinks}, or a factory ``sinks(name) -> sink or list`` called at
    the first record of each camera (e.g. ``BySource(lambda name: [JsonlSink(f"out/{name}.jsonl")])``).
    A record of a camera without sinks in the dict is counted in ``skipped``. The sinks of a camera are
    written in order; when one fails the others still get the record, then the first error is raised.
    """

    def __init__(self, sinks: dict | Any):
        super().__init__()
        if callable(sinks) and not isinstance(sinks, dict):
            self._factory, self.routes = sinks, {}
        elif isinstance(sinks, dict):
            self._factory, self.routes = None, {name: self._checked(name, made) for name, made in sinks.items()}
        else:
            raise TypeError(f"BySource takes {{camera name: sinks}} or a function name -> sinks, "
                            f"got {type(sinks).__name__}")

    @staticmethod
    def _checked(name: str, made: Any) -> list:
        made = list(made) if isinstance(made, (list, tuple)) else [made]
        for sink in made:
            if not callable(getattr(sink, "write", None)):
                raise TypeError(f"sink {sink!r} of camera {name!r} has no write(record) method")
        return made

    def write(self, record: Any) -> None:
        self._check_open()
        name = getattr(record, "source", None)
        sinks = self.routes.get(name)
        if sinks is None and self._factory is not None and name is not None:
            sinks = self.routes[name] = self._checked(name, self._factory(name))
        if not sinks:
            self.skipped += 1
            return
        first = None
        for sink in sinks:
            try:
                sink.write(record)
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first
        self.written += 1

    def _each(self, method: str) -> None:
        first = None
        for sink in (sink for sinks in self.routes.values() for sink in sinks):
            try:
                getattr(sink, method, lambda: None)()
            except Exception as exc:
                first = first or exc
        if first is not None:
            raise first

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._each("close")

    def discard(self) -> None:
        if not self.closed:
            super().discard()
            self._each("discard")


class StopOnWriteError:
    """A sink whose first OSError (a full disk, EIO, a permission taken away mid-run) is kept in `failures`
    instead of being logged by the stream frame after frame; the caller stops the run on it."""

    def __init__(self, sink: Sink, failures: list):
        self.sink, self.failures = sink, failures

    def _path(self) -> str:
        return str(getattr(self.sink, "live_path", None) or getattr(self.sink, "path", None)
                   or getattr(self.sink, "directory", ""))

    def write(self, record: Any) -> None:
        if self.failures:
            return
        try:
            self.sink.write(record)
        except OSError as exc:
            self.failures.append((exc.filename or self._path(), exc))

    def close(self) -> None:
        try:
            self.sink.close()
        except OSError as exc:
            self.failures.append((exc.filename or self._path(), exc))

    def discard(self) -> None:
        self.sink.discard()
