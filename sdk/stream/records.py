"""What the stream hands out and carries: Record, the frames in flight between stages, source events."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..sources import Frame, SourceEvent

STATUSES = ("ok", "error", "dropped")


@dataclass(eq=False)
class Record:
    frame_id: int
    status: str  # "ok" | "error" | "dropped"
    result: Any = None  # the detector's Result when status is "ok"
    error: str | None = None  # why, when status is "error" or "dropped"
    timestamps: dict = field(default_factory=dict)  # time.monotonic(): captured, preprocessed, inferred, done
    frame: Frame | None = None  # the source's frame (its image is None for dropped frames)
    events: tuple = ()  # SourceEvents (loss, reconnect) since the previous record; this frame's sdk.drift DriftEvents
    source: str | None = None  # the camera (Frame.source; the stream's source name when the frame is gone)

    def __post_init__(self):
        if self.source is None and self.frame is not None:
            self.source = self.frame.source

    @property
    def image(self) -> np.ndarray | None:
        return None if self.frame is None else self.frame.image

    @property
    def score(self) -> float | None:
        return None if self.result is None else float(self.result.score)

    @property
    def verdict(self) -> str | None:
        return None if self.result is None else self.result.verdict

    @property
    def latency_ms(self) -> float | None:
        t = self.timestamps
        return (t["done"] - t["captured"]) * 1000 if "done" in t and "captured" in t else None


@dataclass(eq=False)
class Item:
    """One captured frame on its way through the stages."""
    seq: int
    frame: Frame
    events: tuple
    t: dict

    def record(self, status: str, *, frame: Frame | None = None, **fields) -> Record:
        """This item's Record (with its own frame unless another is given)."""
        return Record(self.seq, status, timestamps=dict(self.t), frame=self.frame if frame is None else frame,
                      events=self.events, **fields)


@dataclass(eq=False)
class Batch:
    """Items pre-processed (data: the detector's batch) or inferred (data: its raw output) together."""
    items: list
    data: Any


class SourceEvents:
    """The source's events (loss, reconnect): the recent ones, counts by kind, and those not yet on a record."""

    def __init__(self, recent: int = 1000):
        self._lock = threading.Lock()
        self._new: list[SourceEvent] = []
        self.recent: deque[SourceEvent] = deque(maxlen=recent)
        self._counts: dict[str, int] = {}

    def add(self, event: SourceEvent) -> None:
        with self._lock:
            self._new.append(event)
            self.recent.append(event)
            self._counts[event.kind] = self._counts.get(event.kind, 0) + 1

    def take(self) -> tuple:
        """The events since the last take(), for the next record."""
        with self._lock:
            events, self._new = tuple(self._new), []
        return events

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
