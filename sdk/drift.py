"""Drift watch: what good frames looked like at export (model.json "drift_reference") and a monitor that says,
frame by frame, when the line no longer looks like it. numpy and OpenCV only (the export calls it too).

    reference = drift_reference(good_rgb_images, good_scores, info.score_normalisation)   # at export
    monitor = DriftMonitor(info.drift_reference)
    for frame in frames:
        result = detector(frame)
        for event in monitor.update(frame, result):
            print(event.message)          # "brightness dropped 18 %", "image blurred (sharpness -41 %)", ...

Image statistics are computed on a copy of the frame resized (every step-th pixel, keeping at least 4 a grid cell,
then area-averaged) to a fixed grid, a quarter of the model's input size, so they hardly depend on the camera's resolution: brightness and RMS contrast per channel, the
share of each colour, sharpness (the variance of the Laplacian over the grey variance, so a dimmer lamp does
not read as blur), and the centroid of the gradient energy (where the part sits) as fractions of the frame.

The test: a two-sided CUSUM per watched statistic on z = (value - reference mean) / scale, z clipped to
+-CLIP, with slack k and decision level h (sdk.drift.cusum_arl gives the in-control run length). The scale is
the reference's standard deviation widened for a small reference (few held-back images), never below a floor
per statistic: the smallest change worth an alarm. The normalised score is watched, upwards only, on frames
judged good. See docs/drift.md for how k, h and the floors were chosen.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import cv2
import numpy as np

from .checks import check_colour

VERSION = 1
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
CHANNELS = ("r", "g", "b")
IMAGE_STATISTICS = ("brightness", "contrast", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b",
                    "red_share", "blue_share", "sharpness", "centre_x", "centre_y")
SCORE_STATISTICS = ("score", "normalised_score")
WATCHED = ("brightness", "contrast", "red_share", "blue_share", "sharpness", "centre_x", "centre_y")
# the smallest scale of z per watched statistic: ("relative", f) is f times the reference mean
FLOORS = {"brightness": ("relative", 0.05), "contrast": ("relative", 0.05), "red_share": ("absolute", 0.005),
          "blue_share": ("absolute", 0.005), "sharpness": ("absolute", 0.1), "centre_x": ("absolute", 0.01),
          "centre_y": ("absolute", 0.01), "normalised_score": ("absolute", 0.1)}
CLIP = 4.0  # |z| above this counts as this: one odd part cannot raise an alarm alone
SLACK = 1.0
DECISION = 8.0
WINDOW = 25


class DriftReferenceError(ValueError):
    """A drift reference that cannot be used (model.json's "drift_reference")."""


# -- image statistics ------------------------------------------------------------------------------------------

def statistics_grid(model_hw: Sequence[int]) -> tuple[int, int]:
    """The grid (h, w) image statistics are computed on: a quarter of the model's input size, at least 32 a side.
    Frames at least twice the grid (half the model's size) give nearly the same sharpness at any resolution."""
    return max(32, int(model_hw[0]) // 4), max(32, int(model_hw[1]) // 4)


def image_statistics(frame: np.ndarray, grid: Sequence[int], colour: str = "bgr") -> np.ndarray:
    """IMAGE_STATISTICS of one uint8 frame (HxW grey, HxWx3 in `colour` order, or HxWx4), as float64."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
        raise ValueError(f"image_statistics needs a uint8 HxW or HxWxC frame, got {frame.dtype} {frame.shape}")
    gh, gw = int(grid[0]), int(grid[1])
    step = max(1, int(min(frame.shape[0] / gh, frame.shape[1] / gw) // 4))  # keeps >= 4 pixels a grid cell
    small = cv2.resize(np.ascontiguousarray(frame[::step, ::step]), (gw, gh), interpolation=cv2.INTER_AREA)
    if small.ndim == 3 and small.shape[2] == 1:
        small = small[:, :, 0]
    if small.ndim == 2:
        grey = small
        mean, std = cv2.meanStdDev(grey)
        means, stds = np.repeat(mean.ravel(), 3), np.repeat(std.ravel(), 3)
    else:
        small = small[:, :, :3]
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY if check_colour(colour) == "rgb" else cv2.COLOR_BGR2GRAY)
        mean, std = cv2.meanStdDev(small)
        means, stds = mean.ravel(), std.ravel()
        if colour != "rgb":
            means, stds = means[::-1], stds[::-1]
    g_mean, g_std = (float(v) for v in np.concatenate(cv2.meanStdDev(grey)).ravel())
    lap_std = float(cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F, ksize=1))[1][0, 0])
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    m = cv2.moments(cv2.magnitude(gx, gy) ** 2)
    cx, cy = (m["m10"] / m["m00"] / gw, m["m01"] / m["m00"] / gh) if m["m00"] > 0 else (0.5, 0.5)
    total = float(means.sum()) or 1.0
    return np.array([g_mean, g_std / max(g_mean, 1.0), *means, *stds, means[0] / total, means[2] / total,
                     2 * math.log((lap_std + 1e-3) / (g_std + 1e-3)), cx, cy], np.float64)


def summarise(values: Iterable[float]) -> dict:
    """n, mean, std (ddof 1; 0 for one value), min, max and QUANTILES of a sample."""
    v = np.asarray(list(values), np.float64)
    if not v.size or not np.isfinite(v).all():
        raise DriftReferenceError(f"cannot summarise {v.size} values (none, or some not finite)")
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()),
            "quantiles": [float(q) for q in np.quantile(v, QUANTILES)]}


def drift_reference(good_images: Iterable[np.ndarray], scores: Sequence[float], score_normalisation,
                    model_hw: Sequence[int]) -> dict:
    """model.json's "drift_reference" from the held-back good images (RGB uint8, as read from their files, any
    size), their image scores from the exported graph and the model's ScoreNormalisation."""
    grid = statistics_grid(model_hw)
    rows = np.array([image_statistics(img, grid, "rgb") for img in good_images])
    scores = np.asarray(scores, np.float64)
    if len(rows) != len(scores) or not len(rows):
        raise DriftReferenceError(f"{len(rows)} good images but {len(scores)} scores: give one score per image")
    offset, scale = score_normalisation.offset, score_normalisation.scale
    stats = {name: summarise(rows[:, i]) for i, name in enumerate(IMAGE_STATISTICS)}
    stats["score"] = summarise(scores)
    stats["normalised_score"] = summarise((scores - offset) / scale)
    return {"version": VERSION, "n_images": int(len(rows)), "grid": list(grid), "quantile_levels": list(QUANTILES),
            "colour_order": "RGB", "statistics": stats}


def reference_from_files(files: Sequence[str], scores: Sequence[float], score_normalisation,
                         model_hw: Sequence[int]) -> dict:
    """drift_reference of image files (read as RGB, as the thresholds were measured)."""
    from .data import read_image

    return drift_reference((read_image(f, "rgb") for f in files), scores, score_normalisation, model_hw)


def check_reference(d) -> dict:
    """A drift reference as model.json holds it, validated; DriftReferenceError naming what is wrong."""
    if not isinstance(d, dict):
        raise DriftReferenceError(f"must be an object, got {type(d).__name__}")
    if d.get("version") != VERSION:
        raise DriftReferenceError(f"version {d.get('version')!r} is not {VERSION}, the one this release reads")
    grid = d.get("grid")
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in grid)):
        raise DriftReferenceError(f"'grid' must be [height, width], whole numbers >= 8, got {grid!r}")
    stats = d.get("statistics")
    if not isinstance(stats, dict):
        raise DriftReferenceError("'statistics' must be an object")
    for name in IMAGE_STATISTICS + SCORE_STATISTICS:
        s = stats.get(name)
        if not isinstance(s, dict):
            raise DriftReferenceError(f"'statistics.{name}' is missing")
        for key in ("mean", "std"):
            v = s.get(key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (
                    key == "std" and v < 0):
                raise DriftReferenceError(f"'statistics.{name}.{key}' must be a finite number"
                                          f"{' >= 0' if key == 'std' else ''}, got {v!r}")
        n = s.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DriftReferenceError(f"'statistics.{name}.n' must be a whole number >= 1, got {n!r}")
    return d


# -- the sequential test ---------------------------------------------------------------------------------------

def small_sample_factor(n: int) -> float:
    """How much wider a sample's standard deviation is taken for n values: the ratio of a new value's predictive
    spread to the sample's, and the sample's own uncertainty (its ~95 % upper bound), 1.0 for many values."""
    n = max(int(n), 2)
    return math.sqrt(1 + 1 / n) * (1 + 2.0 / math.sqrt(2 * (n - 1)))


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def cusum_arl(slack: float = SLACK, decision: float = DECISION, shift: float = 0.0, clip: float = CLIP,
              states: int = 300) -> float:
    """Average frames to an alarm of one one-sided CUSUM, S = max(0, S + clip(z) - slack) > decision, for
    z ~ N(shift, 1), by the Markov chain of Brook & Evans (1972) on `states` levels."""
    erf = np.vectorize(math.erf)

    def below(t):  # P(clip(z) < t)
        return np.where(t <= -clip, 0.0, np.where(t > clip, 1.0, 0.5 * (1 + erf((t - shift) / math.sqrt(2)))))

    width = decision / states
    edges = np.arange(states + 1) * width
    centres = edges[:-1] + width / 2
    cum = below(edges[None, 1:] - centres[:, None] + slack)  # P(S' < upper edge of each level)
    p = np.diff(np.concatenate([np.zeros((states, 1)), cum], axis=1), axis=1)
    return float(np.linalg.solve(np.eye(states) - p, np.ones(states))[0])


def detection_frames(shift: float, slack: float = SLACK, decision: float = DECISION) -> float:
    """Frames a CUSUM needs, roughly, to flag a sustained shift of `shift` scales (h / (shift - k))."""
    return math.inf if shift <= slack else decision / (shift - slack)


@dataclass(frozen=True)
class DriftEvent:
    """A drift alarm (kind "drift") or its end (kind "drift_cleared"), on the record of the frame that raised it."""

    statistic: str  # one of WATCHED or "normalised_score"
    direction: str  # "up" | "down"
    message: str  # "brightness dropped 18 %"
    frame_id: int  # the frames the monitor has seen so far (the stream's frame_id inside Stream)
    change: float  # the recent mean against the reference: relative for brightness/contrast/sharpness, else absolute
    recent: float  # the statistic's mean since the test began to rise (alarms), or over the window (cleared)
    reference: float  # the reference's mean
    kind: str = "drift"
    timestamp: float = 0.0  # time.monotonic()


def _message(name: str, direction: str, change: float, frame_hw: tuple[int, int]) -> str:
    up = direction == "up"
    if name == "brightness":
        return f"brightness {'rose' if up else 'dropped'} {abs(change) * 100:.0f} %"
    if name == "contrast":
        return f"contrast {'rose' if up else 'fell'} {abs(change) * 100:.0f} %"
    if name == "sharpness":
        return (f"image sharper or noisier ({change * 100:+.0f} %)" if up
                else f"image blurred (sharpness {change * 100:+.0f} %)")
    if name in ("red_share", "blue_share"):
        colour = name.split("_")[0]
        return f"colour shifted {'towards' if up else 'away from'} {colour} ({change * 100:+.1f} points of the mix)"
    if name in ("centre_x", "centre_y"):
        side = frame_hw[1] if name == "centre_x" else frame_hw[0]
        way = ("right" if up else "left") if name == "centre_x" else ("down" if up else "up")
        return f"part shifted {abs(change) * side:.0f} px {way}"
    return f"good-part scores rising (normalised {change:+.2f} on the reference mean)"


class DriftMonitor:
    """Watches frames against a model's drift reference; update() returns the DriftEvents each frame raises.

    reference: model.json's "drift_reference" (ModelInfo.drift_reference). slack (k) and decision (h): the
    CUSUM's, in scales of z. window: frames the event's magnitude is averaged over. colour: the frames' order
    ("bgr" as OpenCV delivers, or "rgb"). False alarms: each of the 2 x 7 image tests and the score test has
    an in-control average run length cusum_arl(k, h) (about 45 million frames at the defaults for z ~ N(0, 1));
    by Bonferroni the monitor's false-alarm rate is at most 15 / that per frame (false_alarm_bound())."""

    def __init__(self, reference: dict, *, slack: float = SLACK, decision: float = DECISION, window: int = WINDOW,
                 colour: str = "bgr"):
        self.reference = check_reference(reference)
        if not (slack >= 0 and decision > 0 and isinstance(window, int) and window >= 1):
            raise ValueError(f"slack must be >= 0, decision > 0 and window a whole number >= 1; got {slack!r}, "
                             f"{decision!r}, {window!r}")
        self.slack, self.decision, self.window = float(slack), float(decision), window
        self.colour = check_colour(colour)
        self.grid = tuple(reference["grid"])
        stats = reference["statistics"]
        names = WATCHED + ("normalised_score",)
        self.names = names
        self.centre = np.array([stats[n]["mean"] for n in names])
        self.scale = np.array([self._scale(n, stats[n]) for n in names])
        self._index = [IMAGE_STATISTICS.index(n) for n in WATCHED]
        self.up = np.zeros(len(names))
        self.down = np.zeros(len(names))
        self.runs = {"up": np.zeros(len(names), int), "down": np.zeros(len(names), int)}  # frames since S left 0
        self.active = {}  # (statistic, direction) -> the event that raised it
        self._recent = np.zeros((window, len(names)))
        self._filled = np.zeros(len(names), int)  # values in each column of _recent
        self.frames = 0
        self.scored = 0
        self.events: list[DriftEvent] = []
        self.seconds = 0.0
        self.skipped = 0  # frames watch() could not read
        self._lock = threading.Lock()  # update() in the stream's post-processing thread, summary() anywhere

    @staticmethod
    def _scale(name: str, s: dict) -> float:
        kind, value = FLOORS[name]
        floor = value * abs(s["mean"]) if kind == "relative" else value
        return max(s["std"] * small_sample_factor(s["n"]), floor, 1e-9)

    def tests(self) -> int:
        """One-sided tests run: two per image statistic, one (upwards) for the score."""
        return 2 * len(WATCHED) + 1

    def false_alarm_bound(self) -> float:
        """At most this many false alarms per frame while nothing drifts (z ~ N(0, 1), Bonferroni over tests)."""
        return self.tests() / cusum_arl(self.slack, self.decision)

    def update(self, frame: np.ndarray, result=None, frame_id: int | None = None) -> list[DriftEvent]:
        """Add one frame (and its Result, whose score counts when its verdict is "ok"); returns the new events."""
        with self._lock:
            return self._update(frame, result, frame_id)

    def watch(self, record) -> tuple:
        """sdk.Stream's hook: the events of one "ok" Record (its frame and Result); a frame it cannot read is
        counted in summary()["skipped"] and raises nothing."""
        try:
            return tuple(self.update(record.image, record.result, record.frame_id))
        except ValueError:
            self.skipped += 1
            return ()

    def _update(self, frame, result, frame_id) -> list[DriftEvent]:
        t0 = time.perf_counter()
        values = np.full(len(self.names), np.nan)
        values[:-1] = image_statistics(frame, self.grid, self.colour)[self._index]
        if result is not None and getattr(result, "verdict", None) == "ok":
            score = float(getattr(result, "normalised_score", math.nan))
            if math.isfinite(score):
                values[-1] = score
                self.scored += 1
        events = self.observe(values, self.frames if frame_id is None else frame_id, np.shape(frame)[:2])
        self.seconds += time.perf_counter() - t0
        return events

    def observe(self, values: np.ndarray, frame_id: int, frame_hw) -> list[DriftEvent]:
        """One frame's watched values (WATCHED, then the normalised score or NaN) -> the new events."""
        seen = np.isfinite(values)
        z = np.where(seen, np.clip((values - self.centre) / self.scale, -CLIP, CLIP), 0.0)
        self.up = np.where(seen, np.maximum(0.0, self.up + z - self.slack), self.up)
        self.down = np.where(seen, np.maximum(0.0, self.down - z - self.slack), self.down)
        self.down[-1] = 0.0  # scores falling is no drift to report
        for direction, sums in (("up", self.up), ("down", self.down)):
            self.runs[direction] = np.where(seen, np.where(sums > 0, self.runs[direction] + 1, 0),
                                            self.runs[direction])
        columns = np.flatnonzero(seen)
        self._recent[self._filled[columns] % self.window, columns] = values[columns]
        self._filled += seen
        events = []
        now = time.monotonic()
        for i, name in enumerate(self.names):
            if not seen[i]:
                continue
            recent = self._recent_mean(i, self.window)
            for direction, sums in (("up", self.up), ("down", self.down)):
                key = (name, direction)
                if sums[i] > self.decision:
                    sums[i] = 0.0
                    if key not in self.active:  # its size: the mean since the sum left 0 (the change's estimate)
                        since = self._recent_mean(i, int(self.runs[direction][i]))
                        change = self._change(i, since)
                        event = DriftEvent(name, direction, _message(name, direction, change, tuple(frame_hw)),
                                           frame_id, round(change, 6), round(since, 6), float(self.centre[i]),
                                           timestamp=now)
                        self.active[key] = event
                        events.append(event)
                elif key in self.active and abs(recent - self.centre[i]) < self.slack * self.scale[i]:
                    del self.active[key]
                    events.append(DriftEvent(name, direction, f"{name.replace('_', ' ')} back to reference",
                                             frame_id, round(self._change(i, recent), 6), round(recent, 6),
                                             float(self.centre[i]), kind="drift_cleared", timestamp=now))
        self.events.extend(events)
        self.frames += 1
        return events

    def _recent_mean(self, i: int, n: int) -> float:
        """The statistic's mean over the last n (at most `window`) frames that had it."""
        filled = int(self._filled[i])
        n = max(1, min(n, filled, self.window))
        return float(self._recent[(filled - 1 - np.arange(n)) % self.window, i].mean())

    def _change(self, i: int, recent: float) -> float:
        name, ref = self.names[i], self.centre[i]
        if name in ("brightness", "contrast"):
            return (recent - ref) / ref if ref else 0.0
        if name == "sharpness":  # log of a variance ratio: as a relative change of that ratio
            return math.exp(recent - ref) - 1
        return recent - ref

    def summary(self) -> dict:
        """Frames watched, events raised, drifts still active, the cost, the test's settings."""
        with self._lock:
            return self._summary()

    def _summary(self) -> dict:
        return {"frames": self.frames, "scored_frames": self.scored, "skipped": self.skipped,
                "alarms": sum(e.kind == "drift" for e in self.events),
                "active": [e.message for e in self.active.values()],
                "events": [f"frame {e.frame_id}: {e.message}" for e in self.events][-20:],
                "ms_per_frame": round(1000 * self.seconds / self.frames, 4) if self.frames else None,
                "settings": {"slack": self.slack, "decision": self.decision, "window": self.window,
                             "false_alarms_per_frame_at_most": float(f"{self.false_alarm_bound():.3g}")}}


class CameraMonitors:
    """One DriftMonitor per camera of a multi-camera stream (each camera drifts on its own), made like `model`
    at the camera's first record; summary() adds them up and keeps each camera's under "by_source"."""

    def __init__(self, model: DriftMonitor):
        self.model = model
        self.monitors: dict[str, DriftMonitor] = {}
        self._lock = threading.Lock()

    def watch(self, record) -> tuple:
        with self._lock:
            monitor = self.monitors.get(record.source)
            if monitor is None:
                m = self.model
                monitor = self.monitors[record.source] = DriftMonitor(m.reference, slack=m.slack, decision=m.decision,
                                                                      window=m.window, colour=m.colour)
        events = monitor.watch(record)
        return tuple(dataclasses.replace(e, message=f"{record.source}: {e.message}") for e in events)

    def summary(self) -> dict:
        with self._lock:
            each = {name: m.summary() for name, m in self.monitors.items()}
        total = self.model.summary()  # the settings; no frames of its own
        for key in ("frames", "scored_frames", "skipped", "alarms"):
            total[key] = sum(e[key] for e in each.values())
        total["active"] = [f"{name}: {a}" for name, e in each.items() for a in e["active"]]
        total["events"] = [f"{name}: {x}" for name, e in each.items() for x in e["events"]][-20:]
        seconds = sum(m.seconds for m in self.monitors.values())
        total["ms_per_frame"] = round(1000 * seconds / total["frames"], 4) if total["frames"] else None
        total["by_source"] = each
        return total


def stream_monitor(detector, drift, cameras: bool = False) -> DriftMonitor | CameraMonitors | None:
    """sdk.Stream's drift= option: "auto" (a monitor when the detector's model has a drift reference), None or
    False (off), or a DriftMonitor to use; with several cameras, one monitor per camera like it."""
    if isinstance(drift, DriftMonitor):
        return CameraMonitors(drift) if cameras else drift
    if drift is None or drift is False:
        return None
    if drift != "auto":
        raise ValueError(f"drift must be 'auto', None (off) or a sdk.DriftMonitor, got {drift!r}")
    reference = getattr(getattr(detector, "info", None), "drift_reference", None)
    if not reference:
        return None
    monitor = DriftMonitor(reference, colour=getattr(detector, "colour", "bgr"))
    return CameraMonitors(monitor) if cameras else monitor
