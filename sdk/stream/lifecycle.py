"""Pipelined streaming: capture -> pre-process -> inference -> post-process, one thread per stage
(inference: ``infer_workers`` threads).

    with Stream(detector, open_source("line.mp4"), sinks=[JsonlSink("out.jsonl")]) as stream:
        for record in stream:          # one Record per frame, in frame_id order
            ...
    print(stream.stats())

- Stages run in their own threads joined by bounded queues (``queue_size`` items each: frames
  before pre-processing, batches after). OpenCV and ONNX Runtime release the GIL, so the stages
  overlap on 2+ cores.
- Inference workers: "auto" runs two single-frame ONNX Runtime sessions side by side when the
  detector runs on a multi-core CPU (Detector.replica); batches still leave the stage in order.
- Back-pressure by default: when the pipeline is full, capture waits. ``drop="oldest"`` instead
  discards the oldest frame waiting for pre-processing; it still yields a "dropped" record.
  It is meant for live sources: on a file, capture reads as fast as it decodes and drops what
  the detector cannot keep up with.
- Every frame yields exactly one Record (status "ok", "error" or "dropped"), in frame_id order.
  Record.frame_id is the stream's own count of items taken from the source (0, 1, 2, ...); with
  the sources of sdk.sources it equals Frame.frame_id. An exception raised by the source also
  takes a frame_id and gives an "error" record.
- Errors: a bad frame (the detector's preprocess raises), a failed inference or post-processing
  gives error records and the stream goes on; ``on_error="stop"`` ends the stream cleanly after the
  first error (frames already captured are still processed and delivered).
- Shutdown (end of stream, Ctrl-C in the consuming thread, the consumer leaving the loop, close()):
  capture stops, the workers drain what was captured, every record not yet delivered is written
  to the sinks (``stream.flushed`` holds them), sinks and source are closed, threads joined.
  A stage stuck longer than ``drain_timeout`` turns its frames into error records.
- Sinks are called in the consuming thread, in order, before the record is yielded.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..sources import Frame, Source, SourceEvent, open_source

log = logging.getLogger("sdk.stream")

STATUSES = ("ok", "error", "dropped")
STAGES = ("capture", "preprocess", "infer", "postprocess", "sinks")
_END = object()  # end-of-stream marker between stages


@dataclass(eq=False)
class Record:
    frame_id: int
    status: str  # "ok" | "error" | "dropped"
    result: Any = None  # the detector's Result when status is "ok"
    error: str | None = None  # why, when status is "error" or "dropped"
    timestamps: dict = field(default_factory=dict)  # time.monotonic(): captured, preprocessed, inferred, done
    frame: Frame | None = None  # the source's frame (its image is None for dropped frames)
    events: tuple = ()  # SourceEvents (loss, reconnect) reported since the previous record

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
class _Item:
    seq: int
    frame: Frame
    events: tuple
    t: dict


@dataclass(eq=False)
class _Batch:
    items: list
    data: Any


class _Pipe:
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
            self._items.append(_END)
            self._cond.notify_all()

    def get_batch(self, n: int, wait_more_s: float) -> list | object:
        """Up to n items (waiting at most wait_more_s for the 2nd..nth), or _END."""
        with self._cond:
            while not self._items:
                if self._abort.is_set():
                    return _END
                self._cond.wait(0.1)
            if self._items[0] is _END:
                return _END
            batch = [self._items.popleft()]
            deadline = time.monotonic() + wait_more_s
            while len(batch) < n:
                if self._items:
                    if self._items[0] is _END:
                        break
                    batch.append(self._items.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._abort.is_set():
                    break
                self._cond.wait(left)
            self._cond.notify_all()
            return batch


class _Outbox:
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

    def put(self, rec: Record, bounded: bool = False) -> None:
        with self._cond:
            while (bounded and not self._unbounded and len(self._pending) >= self.limit
                   and rec.frame_id != self._next):
                self._cond.wait(0.1)
            if self._closed or rec.frame_id < self._next or rec.frame_id in self._pending:
                return  # a stuck stage answering after shutdown already accounted for this frame
            self._pending[rec.frame_id] = rec
            self.counts[rec.status] += 1
            self._cond.notify_all()

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
                    rec = Record(seq, "error", error=f"not processed: {why}", timestamps={"done": time.monotonic()})
                    self.counts["error"] += 1
                rest.append(rec)
            self._next += len(rest)
            self._closed = True
            return rest


class _Timers:
    """Seconds and frames per stage, plus recent latencies (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.frames = dict.fromkeys(STAGES, 0)
        self.latencies: deque = deque(maxlen=4096)

    def add(self, stage: str, seconds: float, frames: int) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.frames[stage] += frames

    def ms_per_frame(self) -> dict:
        with self._lock:
            return {s: round(1000 * self.seconds[s] / self.frames[s], 3) if self.frames[s] else None for s in STAGES}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _inference_workers(detector: Any, workers: int | str) -> tuple[list, list]:
    """The infer callables of the inference workers, and the replicas made for them (the stream closes those).

    "auto": as many as the detector's backend says suit it (preferred_workers(): two single-thread
    sessions on a multi-core CPU, one on a GPU), else one. With several, each worker gets its own
    replica from detector.replicas(n); a detector without replicas() is shared by its workers, so its
    infer() must be thread-safe.
    """
    if workers == "auto":
        preferred = getattr(detector, "preferred_workers", None)
        workers = int(preferred()) if callable(preferred) else 1
    if workers == 1:
        return [detector.infer], []
    replicas = getattr(detector, "replicas", None)
    if not callable(replicas):
        return [detector.infer] * workers, []
    made = replicas(workers)
    return [d.infer for d in made], made


class Stream:
    """Run ``detector`` over every frame of ``source`` in a pipeline of threads (see module doc).

    detector: an object with preprocess(frames) -> batch, infer(batch) -> raw and
    postprocess(frames, raw) -> list of results (sdk.Detector).
    source: a Source, a URI for open_source, or any iterable of Frames or numpy images.
    """

    def __init__(self, detector: Any, source: Source | Iterable | str | int | os.PathLike, *,
                 queue_size: int = 4, drop: str = "none", batch_size: int = 1, sinks: Sequence = (),
                 on_error: str = "continue", batch_timeout: float = 0.05, drain_timeout: float = 30.0,
                 max_source_errors: int = 10, infer_workers: int | str = "auto", max_frames: int | None = None):
        for stage in ("preprocess", "infer", "postprocess"):
            if not callable(getattr(detector, stage, None)):
                raise TypeError(f"detector has no {stage}() method; pass an sdk.Detector or an object "
                                "with preprocess(frames), infer(batch) and postprocess(frames, raw)")
        if drop not in ("none", "oldest"):
            raise ValueError(f"drop must be 'none' (back-pressure) or 'oldest', got {drop!r}")
        if on_error not in ("continue", "stop"):
            raise ValueError(f"on_error must be 'continue' or 'stop', got {on_error!r}")
        if queue_size < 1 or batch_size < 1:
            raise ValueError(f"queue_size and batch_size must be >= 1, got {queue_size} and {batch_size}")
        if max_source_errors < 1:
            raise ValueError("max_source_errors must be >= 1")
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                       or max_frames < 1):
            raise ValueError(f"max_frames must be None (no limit) or an int >= 1, got {max_frames!r}")
        if infer_workers != "auto" and (not isinstance(infer_workers, int) or infer_workers < 1):
            raise ValueError(f"infer_workers must be 'auto' or an int >= 1, got {infer_workers!r}")
        for sink in sinks:
            if not callable(getattr(sink, "write", None)):
                raise TypeError(f"sink {sink!r} has no write(record) method")
        if isinstance(source, (str, int, os.PathLike)):
            source = open_source(source)
        self.detector = detector
        self.source = source
        self.sinks = list(sinks)
        self.queue_size, self.drop, self.batch_size = int(queue_size), drop, int(batch_size)
        self.on_error, self.batch_timeout, self.drain_timeout = on_error, float(batch_timeout), float(drain_timeout)
        self.max_source_errors = int(max_source_errors)
        self.max_frames = max_frames  # capture stops after this many frames: exactly that many records
        self._infers, self._replicas = _inference_workers(detector, infer_workers)
        self.infer_workers = len(self._infers)
        self._infer_take = threading.Lock()  # tickets are handed out in queue order
        self._infer_turn = threading.Condition()  # results go on in ticket order
        self._tickets = self._next_turn = 0
        self._infer_running = self.infer_workers
        self.source_name = getattr(source, "uri", type(source).__name__)

        self._stop = threading.Event()  # capture stops taking frames; the rest drains
        self._abort = threading.Event()  # stages stop processing; frames become error records
        self._q_pre = _Pipe(self.queue_size, self._abort)
        self._q_inf = _Pipe(self.queue_size, self._abort)
        self._q_post = _Pipe(self.queue_size, self._abort)
        self._outbox = _Outbox(self.queue_size * self.batch_size)
        self._timers = _Timers()
        self._seq = 0  # frame_ids issued (capture thread only)
        self._events_lock = threading.Lock()
        self._new_events: list[SourceEvent] = []
        self.events: deque[SourceEvent] = deque(maxlen=1000)  # recent source events
        self._event_counts: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._started = self._consumed = self._closed = False
        self._t_start: float | None = None
        self._t_end: float | None = None
        self._delivered = 0
        self._sink_errors = 0
        self._sink_resume: tuple[Record, int] | None = None  # a record a sink was interrupted on
        self.stop_reason: str | None = None
        self.flushed: list[Record] = []  # records written to sinks at shutdown, not yielded
        if callable(getattr(source, "add_listener", None)):
            source.add_listener(self._on_event)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Stream":
        if self._closed:
            raise RuntimeError("this Stream is closed; create a new one")
        if not self._started:
            self._started = True
            self._t_start = time.monotonic()
            tag = f"cfrg-stream-{id(self):x}"
            stages = [("capture", self._capture_loop), ("preprocess", self._preprocess_loop)]
            stages += [(f"infer-{k}" if len(self._infers) > 1 else "infer",
                        lambda infer=infer: self._infer_loop(infer)) for k, infer in enumerate(self._infers)]
            stages.append(("postprocess", self._postprocess_loop))
            for stage, target in stages:
                thread = threading.Thread(target=self._guarded, args=(stage, target), name=f"{tag}-{stage}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    def __iter__(self) -> Iterator[Record]:
        if self._consumed:
            raise RuntimeError("a Stream can be iterated once; create a new Stream for another pass")
        self._consumed = True
        self.start()
        return self._records()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("interrupted (Ctrl-C)" if exc_type is KeyboardInterrupt else "closed")

    def run(self, max_frames: int | None = None) -> dict:
        """Consume the stream (records go to the sinks only), at most max_frames frames; returns stats()."""
        if max_frames is not None:
            if self._started:
                raise RuntimeError("run(max_frames=...) must come before the stream starts; "
                                   "or pass max_frames to Stream()")
            self.max_frames = max_frames if self.max_frames is None else min(max_frames, self.max_frames)
        with self:
            for _ in self:
                pass
        return self.stats()

    def close(self, reason: str = "closed") -> list[Record]:
        """Stop, drain, flush undelivered records to the sinks, close sinks and source; join threads."""
        self._shutdown(reason)
        return self.flushed

    def _records(self) -> Iterator[Record]:
        try:
            while True:
                rec = self._outbox.pop(timeout=0.1)
                if rec is None:
                    if self._outbox.exhausted or self._abort.is_set():
                        break
                    continue
                self._to_sinks(rec)
                self._delivered += 1
                yield rec
        except KeyboardInterrupt:
            self._shutdown("interrupted (Ctrl-C)")
            raise
        except GeneratorExit:  # the consumer left the loop
            self._shutdown("consumer stopped iterating")
            raise
        except BaseException as exc:
            self._shutdown(f"stream failed: {_describe(exc)}")
            raise
        self._shutdown(self.stop_reason or "end of stream")

    def _interrupt_live_source(self) -> None:
        """Live sources may wait seconds (read deadline, back-off); closing them is thread-safe."""
        if getattr(self.source, "live", False) and isinstance(self.source, Source):
            self.source.close()

    def _request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            log.info("stream stopping: %s", reason)
            self._stop.set()
            self._interrupt_live_source()

    def _shutdown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        interrupted: KeyboardInterrupt | None = None
        if self._started:
            if self.stop_reason is None and reason not in ("end of stream",):
                self.stop_reason = reason
            self._stop.set()
            self._interrupt_live_source()
            self._outbox.unbound()  # nobody consumes now: let the stages finish
            try:
                deadline = time.monotonic() + self.drain_timeout
                for thread in self._threads:
                    thread.join(max(0.0, deadline - time.monotonic()))
            except KeyboardInterrupt as exc:  # a second Ctrl-C: stop waiting
                interrupted = exc
            stuck = [t.name for t in self._threads if t.is_alive()]
            if stuck:
                self._abort.set()
                for thread in self._threads:
                    thread.join(1.0)
                stuck = [t.name for t in self._threads if t.is_alive()]
                if stuck:
                    log.error("stream threads still busy after shutdown (stuck in the source or detector): %s", stuck)
            self._t_end = time.monotonic()
            self.flushed = self._outbox.close(self._seq, f"stream stopped ({reason}) before this frame finished")
            interrupted = self._flush(self.flushed) or interrupted
        if not any(t.is_alive() for t in self._threads):  # a stuck worker may still use its replica
            for replica in self._replicas:
                close = getattr(replica, "close", None)
                if callable(close):
                    close()
        for sink in self.sinks:
            try:
                close = getattr(sink, "close", None)
                if callable(close):
                    close()
            except Exception:
                log.exception("closing sink %r failed", sink)
        try:
            close = getattr(self.source, "close", None)
            if callable(close):
                close()
        except Exception:
            log.exception("closing source %r failed", self.source)
        if self.flushed:
            log.info("stream shutdown (%s): %d record(s) written to sinks, not yielded", reason, len(self.flushed))
        if interrupted is not None:
            raise interrupted

    def _flush(self, records: list[Record]) -> KeyboardInterrupt | None:
        """Write undelivered records to the sinks; a Ctrl-C here stops the flush."""
        try:
            if self._sink_resume is not None:
                rec, first = self._sink_resume
                self._to_sinks(rec, first)
            for rec in records:
                self._to_sinks(rec)
        except KeyboardInterrupt as exc:
            log.error("flush interrupted: some records did not reach the sinks")
            return exc
        return None

    def _to_sinks(self, rec: Record, first: int = 0) -> None:
        t0 = time.monotonic()
        for i in range(first, len(self.sinks)):
            self._sink_resume = (rec, i)
            try:
                self.sinks[i].write(rec)
            except Exception as exc:
                self._sink_errors += 1
                if self._sink_errors <= 10:
                    log.error("sink %r failed on frame %d: %s", self.sinks[i], rec.frame_id, _describe(exc))
                if self.on_error == "stop":
                    self._request_stop(f"sink {type(self.sinks[i]).__name__} failed: {_describe(exc)}")
        self._sink_resume = None
        if self.sinks:
            self._timers.add("sinks", time.monotonic() - t0, 1)

    # ------------------------------------------------------------------ stages

    def _guarded(self, stage: str, target) -> None:
        """A bug in a stage must not hang the consumer: abort the stream instead."""
        try:
            target()
        except BaseException as exc:
            log.exception("stream stage %s crashed", stage)
            self.stop_reason = self.stop_reason or f"internal error in {stage}: {_describe(exc)}"
            self._abort.set()

    def _on_event(self, event: SourceEvent) -> None:
        with self._events_lock:
            self._new_events.append(event)
            self.events.append(event)
            self._event_counts[event.kind] = self._event_counts.get(event.kind, 0) + 1

    def _take_events(self) -> tuple:
        with self._events_lock:
            events, self._new_events = tuple(self._new_events), []
        return events

    def _emit(self, rec: Record, bounded: bool = False) -> None:
        rec.timestamps.setdefault("done", time.monotonic())
        if rec.status == "ok" and "captured" in rec.timestamps:
            self._timers.latencies.append(rec.timestamps["done"] - rec.timestamps["captured"])
        self._outbox.put(rec, bounded)
        if rec.status == "error" and self.on_error == "stop":
            self._request_stop(f"on_error='stop': frame {rec.frame_id}: {rec.error}")

    def _fail(self, items: list[_Item], message: str) -> None:
        for it in items:
            self._emit(Record(it.seq, "error", error=message, timestamps=dict(it.t), frame=it.frame, events=it.events))

    def _capture_loop(self) -> None:
        source = iter(self.source)
        failures = 0
        try:
            while not (self._stop.is_set() or self._abort.is_set()):
                if self.max_frames is not None and self._seq >= self.max_frames:
                    self.stop_reason = self.stop_reason or f"max_frames ({self.max_frames}) reached"
                    break
                t0 = time.monotonic()
                try:
                    item = next(source)
                except StopIteration:
                    break
                except Exception as exc:
                    failures += 1
                    seq, self._seq = self._seq, self._seq + 1
                    self._emit(Record(seq, "error", error=f"source error: {_describe(exc)}",
                                      timestamps={"captured": t0}, events=self._take_events()))
                    if failures >= self.max_source_errors:
                        self._request_stop(f"source failed {failures} times in a row; last: {_describe(exc)}")
                    continue
                failures = 0
                t1 = time.monotonic()
                self._timers.add("capture", t1 - t0, 1)
                seq, self._seq = self._seq, self._seq + 1
                frame = item if isinstance(item, Frame) else Frame(seq, item, t1, self.source_name)
                it = _Item(seq, frame, self._take_events(), {"captured": frame.timestamp})
                if frame.error is not None:
                    self._emit(Record(seq, "error", error=frame.error, timestamps=dict(it.t), frame=frame,
                                      events=it.events))
                    continue
                for old in self._q_pre.put(it, drop_oldest=self.drop == "oldest"):
                    self._emit(Record(old.seq, "dropped", error="dropped: pipeline full (drop='oldest')",
                                      timestamps=dict(old.t), frame=dataclasses.replace(old.frame, image=None),
                                      events=old.events))
        finally:
            self._q_pre.put_end()

    def _preprocess_loop(self) -> None:
        det = self.detector
        while True:
            items = self._q_pre.get_batch(self.batch_size, self.batch_timeout)
            if items is _END:
                self._q_inf.put_end()
                return
            if self._abort.is_set():
                self._fail(items, "not processed: stream aborted")
                continue
            t0 = time.monotonic()
            good, data = self._preprocess_isolating(det, items)
            t1 = time.monotonic()
            self._timers.add("preprocess", t1 - t0, len(items))
            if good:
                for it in good:
                    it.t["preprocessed"] = t1
                self._q_inf.put(_Batch(good, data))

    def _preprocess_isolating(self, det: Any, items: list[_Item]) -> tuple[list[_Item], Any]:
        """Pre-process a batch; when it fails, find the bad frames one by one and go on without them."""
        try:
            return items, det.preprocess([it.frame.image for it in items])
        except Exception as exc:
            if len(items) == 1:
                self._fail(items, f"bad frame: {_describe(exc)}")
                return [], None
        good = []
        for it in items:
            try:
                det.preprocess([it.frame.image])
                good.append(it)
            except Exception as exc:
                self._fail([it], f"bad frame: {_describe(exc)}")
        if not good:
            return [], None
        try:
            return good, det.preprocess([it.frame.image for it in good])
        except Exception as exc:
            self._fail(good, f"preprocess failed: {_describe(exc)}")
            return [], None

    def _infer_loop(self, infer) -> None:
        """One inference worker. With several, batches are taken and passed on in queue order."""
        try:
            while True:
                with self._infer_take:
                    batch = self._q_inf.get_batch(1, 0.0)
                    if batch is _END:
                        return
                    ticket, self._tickets = self._tickets, self._tickets + 1
                batch = batch[0]
                raw, error = None, "not processed: stream aborted"
                if not self._abort.is_set():
                    t0 = time.monotonic()
                    try:
                        raw, error = infer(batch.data), None
                    except Exception as exc:
                        error = f"inference failed: {_describe(exc)}"
                    t1 = time.monotonic()
                    if error is None:
                        self._timers.add("infer", t1 - t0, len(batch.items))
                        for it in batch.items:
                            it.t["inferred"] = t1
                with self._infer_turn:
                    while self._next_turn != ticket and not self._abort.is_set():
                        self._infer_turn.wait(0.1)
                    if error is None:
                        self._q_post.put(_Batch(batch.items, raw))
                    else:
                        self._fail(batch.items, error)
                    self._next_turn = max(self._next_turn, ticket + 1)
                    self._infer_turn.notify_all()
        finally:
            with self._infer_turn:
                self._infer_running -= 1
                last = self._infer_running == 0
            if last:
                self._q_post.put_end()

    def _postprocess_loop(self) -> None:
        try:
            while True:
                batch = self._q_post.get_batch(1, 0.0)
                if batch is _END:
                    return
                items = batch[0].items
                if self._abort.is_set():
                    self._fail(items, "not processed: stream aborted")
                    continue
                t0 = time.monotonic()
                try:
                    results = list(self.detector.postprocess([it.frame.image for it in items], batch[0].data))
                    if len(results) != len(items):
                        raise RuntimeError(f"postprocess returned {len(results)} results for {len(items)} frames")
                except Exception as exc:
                    self._fail(items, f"postprocess failed: {_describe(exc)}")
                    continue
                self._timers.add("postprocess", time.monotonic() - t0, len(items))
                for it, result in zip(items, results):
                    self._emit(Record(it.seq, "ok", result=result, timestamps=dict(it.t), frame=it.frame,
                                      events=it.events), bounded=True)
        finally:
            self._outbox.finish(self._seq)  # capture has ended: every frame_id is issued

    # ------------------------------------------------------------------ stats

    def stats(self) -> dict:
        """Counts, throughput, mean ms per frame of each stage, latency (capture to done) percentiles."""
        counts = dict(self._outbox.counts)
        now = self._t_end or time.monotonic()
        elapsed = (now - self._t_start) if self._t_start is not None else 0.0
        processed = counts["ok"] + counts["error"]
        lat = np.asarray(list(self._timers.latencies)) * 1000
        latency = ({"mean": round(float(lat.mean()), 3), "p50": round(float(np.percentile(lat, 50)), 3),
                    "p95": round(float(np.percentile(lat, 95)), 3), "max": round(float(lat.max()), 3)}
                   if lat.size else None)
        with self._events_lock:
            event_counts = dict(self._event_counts)
        return {
            "frames": sum(counts.values()),
            "ok": counts["ok"],
            "errors": counts["error"],
            "dropped": counts["dropped"],
            "delivered": self._delivered,
            "flushed": len(self.flushed),
            "elapsed_s": round(elapsed, 3),
            "fps": round(processed / elapsed, 2) if elapsed > 0 else 0.0,
            "stage_ms": self._timers.ms_per_frame(),
            "latency_ms": latency,
            "reconnects": event_counts.get("reconnected", 0),
            "losses": event_counts.get("lost", 0),
            "events": event_counts,
            "sink_errors": self._sink_errors,
            "stop_reason": self.stop_reason,
            "queue_size": self.queue_size,
            "batch_size": self.batch_size,
            "infer_workers": self.infer_workers,
            "drop": self.drop,
        }
