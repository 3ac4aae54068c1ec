"""What the stream's threads share: the bounded pipes between stages, the ordered outbox, the stop signal."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable

from .records import STATUSES, Record, describe

log = logging.getLogger("sdk.stream")

END = object()  # end-of-stream marker between stages


class Pipe:
    """Bounded FIFO between two stages. put() waits while full (back-pressure) or drops the oldest."""

    def __init__(self, capacity: int, abort: threading.Event):
        self.capacity = capacity
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._abort = abort

    def put(self, item: Any, drop_oldest: bool = False) -> list:
        """Append item; returns the items dropped to make room (drop_oldest only)."""
        dropped = []
        with self._cond:
            while len(self._items) >= self.capacity and not self._abort.is_set():
                if drop_oldest:
                    dropped.append(self._items.popleft())
                else:
                    self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()
        return dropped

    def put_end(self) -> None:
        with self._cond:
            self._items.append(END)
            self._cond.notify_all()

    def get_batch(self, n: int, wait_more_s: float) -> list | object:
        """Up to n items (waiting at most wait_more_s for the 2nd..nth), or END."""
        with self._cond:
            while not self._items:
                if self._abort.is_set():
                    return END
                self._cond.wait(0.1)
            if self._items[0] is END:
                return END
            batch = [self._items.popleft()]
            self._cond.notify_all()  # room for the producer: a batch larger than the pipe fills without waiting
            deadline = time.monotonic() + wait_more_s
            while len(batch) < n:
                if self._items:
                    if self._items[0] is END:
                        break
                    batch.append(self._items.popleft())
                    self._cond.notify_all()
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._abort.is_set():
                    break
                self._cond.wait(left)
            self._cond.notify_all()
            return batch


class Outbox:
    """Records from every stage, handed out in frame_id order.

    Only ok records are bounded (``limit`` waiting); error/dropped records are small and never
    wait, and the record the consumer needs next is always accepted, so the bound cannot deadlock.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._pending: dict[int, Record] = {}
        self._next = 0
        self._total: int | None = None
        self._unbounded = False
        self._closed = False
        self._cond = threading.Condition()
        self.counts = dict.fromkeys(STATUSES, 0)
        self.by_source: dict[str, dict[str, int]] = {}  # the counts of each camera (Record.source)
        self._sources: dict[int, str] = {}  # the camera of each frame_id issued and not yet in the outbox

    def expect(self, frame_id: int, source: str) -> None:
        """A frame_id is issued for a frame of source (its record, even one made at shutdown, is tagged so)."""
        with self._cond:
            self._sources[frame_id] = source

    def put(self, rec: Record, bounded: bool = False) -> None:
        with self._cond:
            while (bounded and not self._unbounded and len(self._pending) >= self.limit
                   and rec.frame_id != self._next):
                self._cond.wait(0.1)
            if self._closed or rec.frame_id < self._next or rec.frame_id in self._pending:
                return  # a stuck stage answering after shutdown already accounted for this frame
            self._sources.pop(rec.frame_id, None)
            self._pending[rec.frame_id] = rec
            self._count(rec)
            self._cond.notify_all()

    def source_counts(self) -> dict[str, dict[str, int]]:
        with self._cond:
            return {name: dict(c) for name, c in self.by_source.items()}

    def _count(self, rec: Record) -> None:
        self.counts[rec.status] += 1
        if rec.source is not None:
            counts = self.by_source.setdefault(rec.source, dict.fromkeys(STATUSES, 0))
            counts[rec.status] += 1

    def pop(self, timeout: float) -> Record | None:
        with self._cond:
            if self._next not in self._pending:
                self._cond.wait(timeout)
            rec = self._pending.pop(self._next, None)
            if rec is not None:
                self._next += 1
                self._cond.notify_all()
            return rec

    def finish(self, total: int) -> None:
        with self._cond:
            self._total = total
            self._cond.notify_all()

    @property
    def exhausted(self) -> bool:
        with self._cond:
            return self._total is not None and self._next >= self._total and not self._pending

    def unbound(self) -> None:
        with self._cond:
            self._unbounded = True
            self._cond.notify_all()

    def close(self, issued: int, why: str) -> list[Record]:
        """All records not handed out, in order; frames without one get an error record."""
        with self._cond:
            rest = []
            for seq in range(self._next, max(issued, max(self._pending, default=-1) + 1)):
                rec = self._pending.pop(seq, None)
                if rec is None:
                    rec = Record(seq, "error", error=f"not processed: {why}", timestamps={"done": time.monotonic()},
                                 source=self._sources.pop(seq, None))
                    self._count(rec)
                rest.append(rec)
            self._next += len(rest)
            self._closed = True
            return rest


class StopSignal:
    """How the threads are told to end, and why: stop (capture ends, the rest drains) or abort (stages give up)."""

    def __init__(self, on_stop: Callable[[], None]):
        self.stop = threading.Event()
        self.abort = threading.Event()
        self.reason: str | None = None
        self._on_stop = on_stop  # wakes a source that may wait seconds

    def request(self, reason: str) -> None:
        """Stop taking frames, because of reason (the first request gives the reason)."""
        if not self.stop.is_set():
            self.reason = reason
            log.info("stream stopping: %s", reason)
            self.stop.set()
            self._on_stop()

    def note(self, reason: str) -> None:
        """Give the reason for stopping, unless one is given already."""
        self.reason = self.reason or reason

    @property
    def stopping(self) -> bool:
        return self.stop.is_set() or self.abort.is_set()

    def guard(self, stage: str, target: Callable[[], None]) -> None:
        """Run a stage; a bug in it must not hang the consumer: abort the stream instead."""
        try:
            target()
        except BaseException as exc:
            log.exception("stream stage %s crashed", stage)
            self.note(f"internal error in {stage}: {describe(exc)}")
            self.abort.set()
