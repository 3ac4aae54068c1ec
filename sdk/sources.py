"""Frame sources by URI (numpy + opencv only).

``open_source(uri, **opts)`` returns a :class:`Source`: an iterator of :class:`Frame` with
``close()`` and context-manager support.

URIs:

    "0", "1", 0           camera index (cv2.VideoCapture(index))
    /dev/videoN           V4L2 camera device
    csi://N               Jetson CSI camera via the nvarguscamerasrc GStreamer pipeline
    gst://<pipeline>      any GStreamer pipeline ending in appsink
    rtsp://, rtsps://     network stream through OpenCV's FFmpeg backend, low-latency options
    http://, https://     network stream through FFmpeg (MJPEG/HLS cameras)
    <file>.mp4 ...        video file
    <folder>              image folder (sorted file names; .png .jpg .jpeg .bmp .tif .tiff)
    <glob>                image glob, e.g. "parts/*.png" or "runs/**/*.jpg" (sorted)
    <image file>          a single image

Rules:
- Every input gives exactly one item. An image that cannot be read gives a Frame whose ``error``
  says why and whose ``image`` is None; it never stops the source.
- Pixels: uint8, BGR by default (OpenCV's order); ``colour="rgb"`` converts. Image files are read
  with ``sdk.data.read_image`` (grayscale replicated to 3 channels, 16-bit scaled to 8-bit).
- ``loop=True`` (or a number of passes) replays a file or folder; frame ids keep increasing.
- Live sources (camera, csi, rtsp/http, gst) reconnect after a loss with exponential back-off
  (``max_retries``, ``backoff_initial``, ``backoff_max``), reads and opens have deadlines
  (``read_timeout``, ``open_timeout``) so a dead camera never hangs the caller, and every loss,
  failed retry and reconnect is logged and sent to listeners as a :class:`SourceEvent`. After
  ``max_retries`` failed reconnects the source raises :class:`SourceLost` once and then ends.
  A file or folder that ends is end of stream, not a loss.
- :class:`LineScanAccumulator` stacks rows (or row blocks) of a line camera into frames.
- :class:`MultiSource` merges several cameras into one source (one capture thread each), every frame
  tagged with its camera's name; sdk.Stream makes one from a list of sources or URIs.
"""
from __future__ import annotations

import glob as globlib
import itertools
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from .data import read_image
from .files import IMAGE_EXTENSIONS, image_files, is_image_file
from .checks import check_colour, older_spellings

log = logging.getLogger("sdk.sources")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".ts", ".h264", ".h265")
_GLOB_CHARS = re.compile(r"[*?\[]")
_ENV_LOCK = threading.Lock()  # OPENCV_FFMPEG_CAPTURE_OPTIONS is read from the process environment at open


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the source, the cause and the fix."""


class SourceLost(SourceError):
    """A live source was lost and every reconnect attempt failed."""


@dataclass(eq=False)
class Frame:
    frame_id: int | None  # the source's count; None for a MultiSource camera's exception (not a frame)
    image: np.ndarray | None  # uint8 HxW or HxWxC; None when error is set
    timestamp: float  # time.monotonic() at capture
    source: str
    meta: dict = field(default_factory=dict)
    error: str | None = None  # why this input gave no image (corrupt file, bad row block)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class SourceEvent:
    kind: str  # "lost" | "retry_failed" | "reconnected" | "gave_up"; "ended": one camera of a MultiSource
    source: str
    message: str
    timestamp: float  # time.monotonic()
    attempt: int = 0  # reconnect attempt number (1-based) where it applies
    downtime_s: float = 0.0  # time since the loss


class Source:
    """Base class: an iterator of Frame with close() and event listeners."""

    live = False

    def __init__(self, uri: str):
        self.uri = uri
        self._ids = itertools.count()
        self._listeners: list[Callable[[SourceEvent], None]] = []
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        raise NotImplementedError

    def add_listener(self, callback: Callable[[SourceEvent], None]) -> None:
        """Call ``callback(event)`` for every loss / reconnect (from the thread that reads)."""
        self._listeners.append(callback)

    def _emit(self, kind: str, message: str, level: int = logging.WARNING, *, source: str | None = None,
              **data: Any) -> None:
        name = self.uri if source is None else source
        log.log(level, "%s: %s", name, message)
        self._notify(SourceEvent(kind, name, message, time.monotonic(), **data))

    def _notify(self, event: SourceEvent) -> None:
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:  # a listener bug must not kill the capture
                log.exception("source event listener failed")

    def _frame(self, image: np.ndarray | None, meta: dict | None = None, error: str | None = None,
               timestamp: float | None = None) -> Frame:
        ts = time.monotonic() if timestamp is None else timestamp
        return Frame(next(self._ids), image, ts, self.uri, meta or {}, error)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        self._closed.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _to_order(image: np.ndarray, colour: str) -> np.ndarray:
    """OpenCV delivers BGR; convert 3-channel images when RGB is asked for."""
    if colour == "rgb" and image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _passes(loop: bool | int) -> int | None:
    """loop=False: 1 pass, True: forever (None), n: n passes."""
    if loop is True:
        return None
    if loop is False:
        return 1
    if int(loop) < 1:
        raise ValueError(f"loop must be True, False or a number of passes >= 1, got {loop!r}")
    return int(loop)


# ----------------------------------------------------------------------------- files


class ImageFilesSource(Source):
    """Images from a sorted list of paths (folder or glob); unreadable files give error frames."""

    @older_spellings(color="colour")
    def __init__(self, uri: str, paths: Sequence[str | os.PathLike], *, loop: bool | int = False,
                 colour: str = "bgr"):
        super().__init__(uri)
        if not paths:
            raise SourceError(f"{uri}: no image files ({' '.join(IMAGE_EXTENSIONS)}); check the path or pattern")
        self.paths = [str(p) for p in paths]
        self.colour = check_colour(colour)
        self._max_passes = _passes(loop)
        self._index = 0
        self._pass = 0

    def __len__(self) -> int:
        """Frames per pass."""
        return len(self.paths)

    def __next__(self) -> Frame:
        if self.closed:
            raise StopIteration
        if self._index == len(self.paths):
            self._pass += 1
            if self._max_passes is not None and self._pass >= self._max_passes:
                raise StopIteration
            self._index = 0
        path = self.paths[self._index]
        meta = {"path": path, "index": self._index, "pass": self._pass, "colour": self.colour}
        self._index += 1
        try:
            image = read_image(path, colour=self.colour)
        except Exception as exc:  # DatasetError, OSError, cv2.error: one error item, go on
            log.warning("%s: %s", self.uri, exc)
            return self._frame(None, meta, error=str(exc))
        return self._frame(image, meta)


class VideoFileSource(Source):
    """Frames of a video file, decoded by OpenCV (FFmpeg backend where present)."""

    @older_spellings(color="colour")
    def __init__(self, path: str | os.PathLike, *, loop: bool | int = False, colour: str = "bgr"):
        super().__init__(str(path))
        self.path = str(path)
        self.colour = check_colour(colour)
        self._max_passes = _passes(loop)
        self._pass = 0
        self._index = 0  # frame index within the current pass
        self._cap = self._open()
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)  # container's estimate
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def _open(self) -> cv2.VideoCapture:
        if not Path(self.path).is_file():
            raise SourceError(f"{self.path}: video file does not exist; check the path")
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"{self.path}: OpenCV cannot open this video (FFmpeg backend: "
                f"{'yes' if _opencv_has('FFMPEG') else 'no'}); the file is corrupt or its codec is "
                "unsupported; re-encode it (e.g. ffmpeg -i in -c:v libx264 out.mp4)"
            )
        return cap

    def __next__(self) -> Frame:
        while not self.closed:
            ok, image = self._cap.read()
            ts = time.monotonic()
            if ok and image is not None and image.size:
                meta = {"path": self.path, "index": self._index, "pass": self._pass, "colour": self.colour}
                self._index += 1
                return self._frame(_to_order(image, self.colour), meta, timestamp=ts)
            if self.frame_count and self._index < self.frame_count - 1:
                log.warning("%s: decoding stopped at frame %d of %d (truncated or corrupt file?)",
                            self.path, self._index, self.frame_count)
            self._pass += 1
            if self._index == 0 or (self._max_passes is not None and self._pass >= self._max_passes):
                break  # end of stream (an empty pass would loop forever)
            self._cap.release()
            self._cap = self._open()
            self._index = 0
        raise StopIteration

    def close(self) -> None:
        super().close()
        self._cap.release()


# ----------------------------------------------------------------------------- live


class _Worker:
    """One daemon thread that runs blocking calls (open, read) so the caller can give up at a deadline.

    After a timed-out call the worker is retired: it finishes the stuck call in the background,
    releases what that call returned (a capture) or the capture it was reading, then exits.
    """

    def __init__(self, name: str):
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, done, box = job
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller
                box["error"] = exc
            done.set()
            if box.get("abandoned") and hasattr(box.get("value"), "release"):
                _safe_release(box["value"])  # a capture that opened after its deadline

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        done, box = threading.Event(), {}
        self._jobs.put((fn, done, box))
        if not done.wait(timeout):
            box["abandoned"] = True
            raise TimeoutError(f"no answer within {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def retire(self, cleanup: Callable[[], None] | None = None) -> None:
        """Run cleanup after any stuck call returns, then exit."""
        if cleanup is not None:
            self._jobs.put((cleanup, threading.Event(), {}))
        self._jobs.put(None)


def _safe_release(cap: Any) -> None:
    try:
        cap.release()
    except Exception:
        log.exception("releasing a capture failed")


class LiveSource(Source):
    """A live capture (camera, CSI, network stream) with read deadlines and reconnection.

    ``opener()`` returns a cv2.VideoCapture-like object (``read``, ``isOpened``, ``release``);
    tests pass a fake one. The first open happens here and raises SourceError (with
    ``describe_failure()`` as the explanation) when it fails; later losses reconnect.
    """

    live = True

    @older_spellings(color="colour")
    def __init__(self, uri: str, opener: Callable[[], Any], *, read_timeout: float = 5.0,
                 open_timeout: float = 20.0, max_retries: int | None = 10, backoff_initial: float = 0.5,
                 backoff_max: float = 10.0, colour: str = "bgr",
                 describe_failure: Callable[[], str] | None = None):
        super().__init__(uri)
        if read_timeout <= 0 or open_timeout <= 0:
            raise ValueError("read_timeout and open_timeout must be > 0 seconds")
        if max_retries is not None and max_retries < 0:
            raise ValueError("max_retries must be >= 0 or None (retry forever)")
        if backoff_initial < 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 <= backoff_initial <= backoff_max")
        self._opener = opener
        self.read_timeout = float(read_timeout)
        self.open_timeout = float(open_timeout)
        self.max_retries = max_retries
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.colour = check_colour(colour)
        self._describe_failure = describe_failure or (lambda: "check the device, cable and URI")
        self.reconnects = 0
        self.losses = 0
        self._gave_up = False
        self._workers = (f"source-{uri}-{i}" for i in itertools.count())
        self._worker: _Worker | None = None
        self._cap: Any = None
        self._swap_lock = threading.Lock()
        why = self._connect()
        if why:
            raise SourceError(f"{uri}: cannot open ({why}); {self._describe_failure()}")

    def _connect(self) -> str | None:
        """Open a capture with a deadline; the reason on failure, None on success."""
        worker = _Worker(next(self._workers))
        try:
            cap = worker.call(self._opener, self.open_timeout)
        except TimeoutError:
            worker.retire()
            return f"open took longer than open_timeout={self.open_timeout:g} s"
        except Exception as exc:
            worker.retire()
            return f"open raised {type(exc).__name__}: {exc}"
        if cap is None or not cap.isOpened():
            if cap is not None:
                _safe_release(cap)
            worker.retire()
            return "the capture did not open"
        with self._swap_lock:
            self._worker, self._cap = worker, cap
        return None

    def _drop_capture(self) -> None:
        with self._swap_lock:  # close() may run in another thread than the reader
            worker, cap = self._worker, self._cap
            self._worker, self._cap = None, None
        if worker is not None:
            worker.retire(cleanup=(lambda: _safe_release(cap)) if cap is not None else None)

    def _reconnect(self, lost_at: float) -> None:
        for attempt in itertools.count(1):
            if self.max_retries is not None and attempt > self.max_retries:
                break
            wait = min(self.backoff_initial * 2 ** (attempt - 1), self.backoff_max)
            if self._closed.wait(wait):
                raise StopIteration
            why = self._connect()
            downtime = time.monotonic() - lost_at
            if why is None and self.closed:  # closed while opening
                self._drop_capture()
                raise StopIteration
            if why is None:
                self.reconnects += 1
                self._emit("reconnected", f"reconnected after {attempt} attempt(s), {downtime:.1f} s down",
                           level=logging.INFO, attempt=attempt, downtime_s=downtime)
                return
            self._emit("retry_failed", f"reconnect attempt {attempt} failed: {why}",
                       attempt=attempt, downtime_s=downtime)
        self._gave_up = True
        downtime = time.monotonic() - lost_at
        message = (f"gave up after {self.max_retries} reconnect attempts ({downtime:.1f} s down); "
                   f"{self._describe_failure()}; raise max_retries (None = forever) to wait longer")
        self._emit("gave_up", message, level=logging.ERROR, attempt=self.max_retries or 0, downtime_s=downtime)
        raise SourceLost(f"{self.uri}: {message}")

    def __next__(self) -> Frame:
        while not (self.closed or self._gave_up):
            worker, cap = self._worker, self._cap
            if worker is None or cap is None:
                self._reconnect(time.monotonic())
                continue
            try:
                ok, image = worker.call(cap.read, self.read_timeout)
                why = "read returned no frame"
            except TimeoutError:
                ok, image, why = False, None, f"no frame within read_timeout={self.read_timeout:g} s"
            except Exception as exc:
                ok, image, why = False, None, f"read raised {type(exc).__name__}: {exc}"
            if ok and image is not None and getattr(image, "size", 0):
                return self._frame(_to_order(image, self.colour), {"colour": self.colour})
            if self.closed:
                break
            self.losses += 1
            lost_at = time.monotonic()
            self._emit("lost", f"source lost: {why}")
            self._drop_capture()
            self._reconnect(lost_at)
        raise StopIteration

    def close(self) -> None:
        super().close()
        self._drop_capture()  # released by its worker thread, after any read in progress


def _opencv_has(feature: str) -> bool:
    """Whether cv2.getBuildInformation() lists a video I/O backend (e.g. 'GStreamer', 'FFMPEG') as YES."""
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip().lower() == feature.lower():
            return value.strip().upper().startswith("YES")
    return False


def csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: int = 30,
                 flip_method: int = 0) -> str:
    """The Jetson nvarguscamerasrc pipeline that hands BGR frames to OpenCV's appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"framerate=(fraction){fps}/1, format=(string)NV12 ! "
        f"nvvidconv flip-method={flip_method} ! video/x-raw, format=(string)BGRx ! "
        "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def _gstreamer_failure() -> str:
    if not _opencv_has("GStreamer"):
        return ("this OpenCV has no GStreamer support: on a Jetson use the system OpenCV from JetPack, "
                "not opencv-python from PyPI (pip uninstall opencv-python opencv-python-headless; "
                "cv2.getBuildInformation() must show 'GStreamer: YES')")
    return ("the GStreamer pipeline did not start: check the camera connection and sensor-id, that "
            "nvargus-daemon runs (sudo systemctl restart nvargus-daemon) and that width/height/fps "
            "match a sensor mode")


def _apply_props(cap: Any, width: int | None, height: int | None, fps: float | None) -> Any:
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                        (cv2.CAP_PROP_FPS, fps)):
        if value:
            cap.set(prop, value)
    return cap


def _ffmpeg_opener(url: str, transport: str, open_timeout: float, read_timeout: float) -> Callable[[], Any]:
    """Open a network stream with low-latency FFmpeg options (no input buffering, TCP by default)."""
    options = "fflags;nobuffer|flags;low_delay|max_delay;500000"
    if url.lower().startswith("rtsp"):
        options = f"rtsp_transport;{transport}|" + options
    params = []
    for name, seconds in (("CAP_PROP_OPEN_TIMEOUT_MSEC", open_timeout), ("CAP_PROP_READ_TIMEOUT_MSEC", read_timeout)):
        if hasattr(cv2, name):  # OpenCV >= 4.5.2; our own deadlines cover older builds
            params += [getattr(cv2, name), int(seconds * 1000)]

    def opener() -> cv2.VideoCapture:
        with _ENV_LOCK:  # the FFmpeg backend reads this variable when it opens
            saved = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = options
            try:
                cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
            finally:
                if saved is None:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                else:
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = saved
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    return opener


def _live_options(opts: dict) -> dict:
    keys = ("read_timeout", "open_timeout", "max_retries", "backoff_initial", "backoff_max", "colour")
    return {k: opts.pop(k) for k in keys if k in opts}


def _check_no_options(uri: str, opts: dict) -> None:
    if opts:
        raise TypeError(f"open_source({uri!r}): unknown option(s) {sorted(opts)} for this kind of source")


def _distinct_files(paths: list[str]) -> list[str]:
    """Each file once: a recursive glob through a symlinked folder (or a symlink loop) reaches the same file
    under many names; the shortest name, then the first in sorted order, stands for it."""
    seen, kept = set(), []
    for p in sorted(paths, key=lambda q: (q.count(os.sep), q)):
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            kept.append(p)
    return sorted(kept)


@older_spellings(color="colour")
def open_source(uri: str | int | os.PathLike, **opts: Any) -> Source:
    """Open a frame source from a URI (see the module docstring).

    Options: ``loop`` and ``colour`` for files/folders; for live sources ``read_timeout``,
    ``open_timeout``, ``max_retries``, ``backoff_initial``, ``backoff_max``, ``colour``, plus
    ``width``/``height``/``fps`` (camera, csi), ``flip_method`` (csi), ``transport`` ("tcp"/"udp",
    rtsp), ``backend`` (a cv2.CAP_* constant for camera indices).
    """
    text = os.fspath(uri) if isinstance(uri, os.PathLike) else str(uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
    lower = text.lower()

    if re.fullmatch(r"\d+", text) or re.fullmatch(r"/dev/video\d+", text):
        width, height, fps = opts.pop("width", None), opts.pop("height", None), opts.pop("fps", None)
        is_index = text.isdigit()
        backend = opts.pop("backend", cv2.CAP_ANY if is_index else cv2.CAP_V4L2)
        live = _live_options(opts)
        _check_no_options(text, opts)
        device = int(text) if is_index else text
        hint = ("check that the camera is connected and not used by another program "
                f"({'ls /dev/video*' if os.name == 'posix' else 'device manager'}), and the index/path")
        return LiveSource(f"camera:{text}" if is_index else text,
                          lambda: _apply_props(cv2.VideoCapture(device, backend), width, height, fps),
                          describe_failure=lambda: hint, **live)

    if lower.startswith("csi://"):
        sensor = text[len("csi://"):]
        if not sensor.isdigit():
            raise ValueError(f"csi URI must be csi://<sensor-id>, e.g. csi://0; got {text!r}")
        pipe_opts = {k: opts.pop(k) for k in ("width", "height", "fps", "flip_method") if k in opts}
        pipeline = csi_pipeline(int(sensor), **pipe_opts)
        live = _live_options(opts)
        _check_no_options(text, opts)
        log.info("%s: GStreamer pipeline %s", text, pipeline)
        return LiveSource(text, lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER),
                          describe_failure=_gstreamer_failure, **live)

    if lower.startswith("gst://"):
        pipeline = text[len("gst://"):]
        live = _live_options(opts)
        _check_no_options(text, opts)
        return LiveSource(text, lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER),
                          describe_failure=_gstreamer_failure, **live)

    if re.match(r"(rtsps?|https?|rtmp|udp|tcp)://", lower):
        transport = opts.pop("transport", "tcp")
        if transport not in ("tcp", "udp"):
            raise ValueError(f"transport must be 'tcp' or 'udp', got {transport!r}")
        live = _live_options(opts)
        _check_no_options(text, opts)
        opener = _ffmpeg_opener(text, transport, live.get("open_timeout", 20.0), live.get("read_timeout", 5.0))
        has_ffmpeg = _opencv_has("FFMPEG")
        hint = ("check the URL, credentials, network route and that the camera streams (try ffplay <url>)"
                if has_ffmpeg else "this OpenCV has no FFmpeg backend: install opencv-python(-headless) from PyPI")
        return LiveSource(text, opener, describe_failure=lambda: hint, **live)

    loop = opts.pop("loop", False)
    colour = opts.pop("colour", "bgr")
    _check_no_options(text, opts)
    path = Path(text)
    if path.is_dir():
        return ImageFilesSource(text, [str(p) for p in image_files(path)], loop=loop, colour=colour)
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return ImageFilesSource(text, [text], loop=loop, colour=colour)
        return VideoFileSource(path, loop=loop, colour=colour)
    if _GLOB_CHARS.search(text):
        files = _distinct_files(sorted(p for p in globlib.glob(text, recursive=True) if is_image_file(p)))
        return ImageFilesSource(text, files, loop=loop, colour=colour)
    raise SourceError(
        f"{text!r}: no such file or folder, and not a source URI; use a camera index (0), /dev/videoN, "
        "csi://N, rtsp://..., a video file, an image folder or a glob such as 'images/*.png'"
    )


# ----------------------------------------------------------------------------- line scan


class LineScanAccumulator(Source):
    """Stacks rows of a line camera into frames of ``frame_height`` rows.

    ``source_of_rows`` yields numpy arrays (or Frames holding them): a 1-D array is one grayscale
    row (W,); a 2-D array is a block of grayscale rows (h, W); a 3-D array is a block of colour
    rows (h, W, C), so one colour row is (1, W, C). Consecutive frames share ``overlap`` rows
    (frame k starts at row k * (frame_height - overlap)). At the end the rows that do not fill a
    frame come out as a shorter frame (``partial="emit"``, meta["partial"] True) or are dropped
    with a warning (``partial="drop"``). A bad block (wrong width, channels or dtype, or an error
    from the row source) gives one error frame and restarts accumulation at the next block.
    meta: first_row (global index of the frame's first row), rows, partial.
    """

    _MAX_CONSECUTIVE_ERRORS = 10

    def __init__(self, source_of_rows: Iterable, frame_height: int, overlap: int = 0, *,
                 partial: str = "emit", name: str = "linescan"):
        super().__init__(name)
        if frame_height < 1:
            raise ValueError(f"frame_height must be >= 1, got {frame_height}")
        if not 0 <= overlap < frame_height:
            raise ValueError(f"overlap must be in [0, frame_height), got {overlap} with frame_height {frame_height}")
        if partial not in ("emit", "drop"):
            raise ValueError(f"partial must be 'emit' or 'drop', got {partial!r}")
        self.frame_height, self.overlap, self.partial = int(frame_height), int(overlap), partial
        self._rows_source = source_of_rows
        self.live = bool(getattr(source_of_rows, "live", False))
        if isinstance(source_of_rows, Source):  # forward loss/reconnect events
            source_of_rows.add_listener(self._notify)
        self._frames = self._generate()

    def __next__(self) -> Frame:
        if self.closed:
            raise StopIteration
        return next(self._frames)

    def _block(self, item: Any) -> np.ndarray:
        image = item.image if isinstance(item, Frame) else item
        if isinstance(item, Frame) and item.error:
            raise ValueError(f"row source error: {item.error}")
        if not isinstance(image, np.ndarray) or image.size == 0:
            raise ValueError(f"row block must be a non-empty numpy array, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise ValueError(f"row block dtype must be uint8, got {image.dtype}; convert the camera output to 8 bit")
        if image.ndim == 1:
            return image[None, :]
        if image.ndim not in (2, 3):
            raise ValueError(f"row block must be (W,), (h, W) or (h, W, C), got shape {image.shape}")
        return image

    def _generate(self) -> Iterator[Frame]:
        height, stride = self.frame_height, self.frame_height - self.overlap
        buf: np.ndarray | None = None
        fill, first_row, next_row, errors = 0, 0, 0, 0
        rows = iter(self._rows_source)
        while True:
            try:
                item = next(rows)
            except StopIteration:
                break
            except Exception as exc:
                item = exc
            try:
                if isinstance(item, Exception):
                    raise ValueError(f"row source raised {type(item).__name__}: {item}")
                block = self._block(item)
                if buf is not None and block.shape[1:] != buf.shape[1:]:
                    raise ValueError(f"row block shape {block.shape} does not continue rows of shape "
                                     f"{buf.shape[1:]}; the line camera changed width or channels")
            except ValueError as exc:
                errors += 1
                if errors > self._MAX_CONSECUTIVE_ERRORS:
                    raise SourceError(f"{self.uri}: {errors} bad row blocks in a row; last: {exc}") from None
                lost = f" ({fill} buffered rows discarded)" if fill else ""
                yield self._frame(None, {"first_row": next_row}, error=f"{exc}{lost}")
                buf, fill, first_row = None, 0, next_row  # restart after the gap
                continue
            errors = 0
            if buf is None:
                buf = np.empty((height,) + block.shape[1:], np.uint8)
            pos = 0
            while pos < len(block):
                n = min(len(block) - pos, height - fill)
                buf[fill:fill + n] = block[pos:pos + n]
                fill, pos, next_row = fill + n, pos + n, next_row + n
                if fill == height:
                    yield self._frame(buf.copy(), {"first_row": first_row, "rows": height, "partial": False})
                    if self.overlap:
                        buf[:self.overlap] = buf[stride:]
                    fill, first_row = self.overlap, first_row + stride
        if buf is not None and fill > self.overlap:  # rows not yet in any frame
            if self.partial == "emit":
                yield self._frame(buf[:fill].copy(), {"first_row": first_row, "rows": fill, "partial": True})
            else:
                log.warning("%s: %d trailing rows dropped (fewer than frame_height=%d)",
                            self.uri, fill - self.overlap, height)

    def close(self) -> None:
        super().close()
        close = getattr(self._rows_source, "close", None)
        if callable(close):
            close()


# ----------------------------------------------------------------------------- several cameras

CAMERA_TYPES = (Source, str, int, os.PathLike)  # what a list of cameras holds (sdk.Stream tells it from images)


@dataclass(eq=False)
class _Camera:
    name: str
    source: Any  # a Source or any iterable of Frames / images
    items: Iterator
    frames: deque = field(default_factory=deque)  # read, not yet taken
    thread: threading.Thread | None = None
    ended: bool = False
    images: int = 0  # plain images wrapped into Frames (their frame ids)


class MultiSource(Source):
    """Several cameras as one source, as DeepStream's nvstreammux merges streams before one batched inference.

    cameras: a list of Sources, URIs (opened with open_source) or iterables of frames, or a dict
    {name: camera}; ``names`` may name the cameras of a list. A camera is called by its name (default: its
    URI, or cam0, cam1, ... when URIs repeat or a camera has none), and every Frame it gives carries that name
    in Frame.source and its camera's own frame_id.

    - One capture thread per camera, each buffering at most ``buffer`` frames: a camera that blocks (a read
      deadline, a reconnect back-off) or ends never holds up the others; next() takes ready frames from the
      cameras in turn, so batches mix cameras and each camera's frames stay in their order.
    - A camera's exception becomes an error Frame (frame_id None, image None, error "source error: ...")
      tagged with the camera; after ``max_errors`` in a row that camera is left out. A camera that ends (a
      file) or gives up (a LiveSource after max_retries) ends alone, with an "ended" SourceEvent; the
      MultiSource ends when every camera has ended.
    - Each camera's loss / reconnect events reach this source's listeners with the camera's name as source.
    - close() closes every camera (live ones at once, the others from their own thread, which may be
      reading) and joins the threads, waiting at most ``join_timeout`` seconds.
    """

    def __init__(self, cameras: Sequence | Mapping[str, Any], *, names: Sequence[str] | None = None,
                 buffer: int = 2, max_errors: int = 10, join_timeout: float = 2.0):
        if isinstance(cameras, Mapping):
            if names is not None:
                raise ValueError("give camera names either as the dict's keys or as names=, not both")
            names, cameras = list(cameras.keys()), list(cameras.values())
        cameras = list(cameras)
        if not cameras:
            raise ValueError("MultiSource needs at least one camera: give a list of Sources or URIs, "
                             "e.g. ['line1.mp4', 'rtsp://cam2/stream']")
        if buffer < 1 or max_errors < 1 or join_timeout <= 0:
            raise ValueError("buffer and max_errors must be >= 1 and join_timeout > 0 seconds")
        explicit = check_camera_names(names, len(cameras))
        for i, cam in enumerate(cameras):
            if isinstance(cam, np.ndarray):
                raise TypeError(f"camera {i} is a numpy image: give each camera as a Source, a URI or an iterable "
                                "of frames (a list of images is one source: pass it to sdk.Stream directly)")
        sources = _open_cameras(cameras, explicit)
        uris = [s.uri if isinstance(s, Source) else None for s in sources]
        if explicit is None:
            explicit = uris if None not in uris and len(set(uris)) == len(uris) else [f"cam{i}" for i in range(len(uris))]
        super().__init__(f"cameras({', '.join(explicit)})")
        self.buffer, self.max_errors, self.join_timeout = int(buffer), int(max_errors), float(join_timeout)
        self._cameras = [_Camera(name, src, iter(src)) for name, src in zip(explicit, sources)]
        self.live = any(getattr(src, "live", False) for src in sources)
        self._cond = threading.Condition()
        self._turn = 0
        self._started = False
        for cam in self._cameras:
            if callable(getattr(cam.source, "add_listener", None)):
                cam.source.add_listener(lambda event, name=cam.name: self._notify(
                    event if event.source == name else replace(event, source=name)))

    @property
    def names(self) -> list[str]:
        return [cam.name for cam in self._cameras]

    @property
    def cameras(self) -> dict[str, Any]:
        """{name: the camera's source}."""
        return {cam.name: cam.source for cam in self._cameras}

    def __len__(self) -> int:
        return len(self._cameras)

    def _start(self) -> None:
        with self._cond:
            if self._started or self.closed:
                return
            self._started = True
            for k, cam in enumerate(self._cameras):
                cam.thread = threading.Thread(target=self._capture, args=(cam,), name=f"cfrg-camera-{k}", daemon=True)
                cam.thread.start()

    def __next__(self) -> Frame:
        self._start()
        cams = self._cameras
        with self._cond:
            while not self.closed:
                for k in range(len(cams)):
                    cam = cams[(self._turn + k) % len(cams)]
                    if cam.frames:
                        self._turn = (self._turn + k + 1) % len(cams)
                        self._cond.notify_all()
                        return cam.frames.popleft()
                if all(cam.ended for cam in cams):
                    break
                self._cond.wait(0.1)
        raise StopIteration

    def _capture(self, cam: _Camera) -> None:
        """One camera's thread: read, tag, buffer; an exception is an error frame; end alone."""
        failures, why = 0, "ended"
        try:
            while not self.closed:
                try:
                    item = next(cam.items)
                except StopIteration:
                    break
                except Exception as exc:
                    failures += 1
                    error = f"source error: {type(exc).__name__}: {exc}"
                    if failures >= self.max_errors:
                        why = f"left out after {failures} errors in a row"
                        error += f"; camera {cam.name} {why}, the other cameras go on"
                    self._put(cam, Frame(None, None, time.monotonic(), cam.name, {}, error))
                    if failures >= self.max_errors:
                        break
                    continue
                failures = 0
                self._put(cam, self._tagged(cam, item))
        finally:
            _close_quietly(cam.source)
            with self._cond:
                cam.ended = True
                running = sum(not c.ended for c in self._cameras)
                self._cond.notify_all()
            if not self.closed:
                self._emit("ended", f"camera {cam.name} {why}; {running} camera(s) still running",
                           level=logging.INFO if why == "ended" else logging.ERROR, source=cam.name)

    def _tagged(self, cam: _Camera, item: Any) -> Frame:
        if isinstance(item, Frame):
            return item if item.source == cam.name else replace(item, source=cam.name)
        frame_id, cam.images = cam.images, cam.images + 1
        return Frame(frame_id, item, time.monotonic(), cam.name)

    def _put(self, cam: _Camera, frame: Frame) -> None:
        with self._cond:
            while len(cam.frames) >= self.buffer and not self.closed:
                self._cond.wait(0.1)
            if not self.closed:
                cam.frames.append(frame)
                self._cond.notify_all()

    def close(self) -> None:
        super().close()
        with self._cond:
            self._cond.notify_all()
            started = self._started
        for cam in self._cameras:
            if not started or getattr(cam.source, "live", False):  # a live source closes while read (to wake it)
                _close_quietly(cam.source)
        deadline = time.monotonic() + self.join_timeout
        for cam in self._cameras:
            if cam.thread is not None:
                cam.thread.join(max(0.0, deadline - time.monotonic()))
        busy = [cam.name for cam in self._cameras if cam.thread is not None and cam.thread.is_alive()]
        if busy:
            log.warning("%s: camera thread(s) of %s still reading after %.1f s; they close their camera when "
                        "the read returns", self.uri, ", ".join(busy), self.join_timeout)


def check_camera_names(names: Sequence[str] | None, count: int) -> list[str] | None:
    """The names given (checked: one per camera, non-empty text, distinct), or None."""
    if names is None:
        return None
    names = list(names)
    if len(names) != count:
        raise ValueError(f"{len(names)} camera names for {count} cameras: give one name per camera")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"camera name {name!r}: give a non-empty string")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"camera name(s) {', '.join(map(repr, repeated))} given to more than one camera; "
                         "each camera needs its own name (records and sinks are told apart by it)")
    return names


def _open_cameras(cameras: list, names: list[str] | None) -> list:
    """Open the cameras given as URIs (closing those opened when one fails); the others as they are."""
    opened: list = []
    try:
        for i, cam in enumerate(cameras):
            if isinstance(cam, (str, int, os.PathLike)) and not isinstance(cam, bool):
                try:
                    opened.append(open_source(cam))
                except SourceError as exc:
                    raise SourceError(f"camera {names[i] if names else i}: {exc}") from None
            else:
                try:
                    iter(cam)
                except TypeError:
                    raise TypeError(f"camera {names[i] if names else i} ({type(cam).__name__}) is not a source: give "
                                    "a Source, a URI or an iterable of frames") from None
                opened.append(cam)
    except BaseException:
        for src, given in zip(opened, cameras):
            if src is not given:
                _close_quietly(src)
        raise
    return opened


def _close_quietly(source: Any) -> None:
    close = getattr(source, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("closing camera %r failed", source)
