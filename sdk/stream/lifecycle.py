"""Stream: start the stage threads, hand out records in order, stop, drain, flush and close (see sdk.stream)."""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

from ..drift import stream_monitor
from ..sources import CAMERA_TYPES, MultiSource, Source, open_source
from .fanout import SinkFanout
from .inference import inference_workers
from .options import StreamOptions, check_detector, check_sinks
from .queues import Outbox, StopSignal
from .records import Record, SourceEvents, describe
from .stages import Stages
from .stats import StreamStats

log = logging.getLogger("sdk.stream")


class Stream:
    """Run ``detector`` over every frame of ``source`` in a pipeline of threads (see module doc).

    detector: an object with preprocess(frames) -> batch, infer(batch) -> raw and
    postprocess(frames, raw) -> list of results (sdk.Detector).
    source: a Source, a URI for open_source, or any iterable of Frames or numpy images; several cameras as a
    list of Sources / URIs or a dict {name: source} (merged by sdk.sources.MultiSource: their frames are
    batched together, each record tagged with its camera in Record.source, stats()["sources"] per camera).
    batch_size: default 1, or with several cameras one frame per camera (at most the backend's max_batch).
    drift: "auto" watches every ok frame with a sdk.DriftMonitor (one per camera) when the model has a drift
    reference (its events join the records' events; stats()["drift"]); None turns it off; or pass a DriftMonitor.
    """

    def __init__(self, detector: Any, source: Source | Iterable | str | int | os.PathLike, *,
                 queue_size: int = 4, drop: str = "none", batch_size: int | None = None, sinks: Sequence = (),
                 on_error: str = "continue", batch_timeout: float = 0.05, drain_timeout: float = 30.0,
                 max_source_errors: int = 10, infer_workers: int | str = "auto", max_frames: int | None = None,
                 drift: Any = "auto"):
        check_detector(detector)
        several = _several_cameras(source)
        if batch_size is None:
            batch_size = _default_batch(detector, len(source) if several or isinstance(source, MultiSource) else 1)
        self.drift = stream_monitor(detector, drift, cameras=several or isinstance(source, MultiSource))
        self.options = StreamOptions(queue_size=queue_size, drop=drop, batch_size=batch_size, on_error=on_error,
                                     batch_timeout=batch_timeout, drain_timeout=drain_timeout,
                                     max_source_errors=max_source_errors, infer_workers=infer_workers,
                                     max_frames=max_frames)
        check_sinks(sinks)
        if several:
            source = MultiSource(source)
        elif isinstance(source, (str, int, os.PathLike)):
            source = open_source(source)
        self.detector = detector
        self.source = source
        self.source_name = getattr(source, "uri", type(source).__name__)
        self._infers, self._replicas = inference_workers(detector, infer_workers)
        self.infer_workers = len(self._infers)
        self._signal = StopSignal(self._interrupt_live_source)
        self._stats = StreamStats()
        self._events = SourceEvents()
        self.events = self._events.recent  # recent source events
        self._outbox = Outbox(self.options.queue_size * self.options.batch_size)
        self._fanout = SinkFanout(sinks, self._stats, self._signal.request if self.options.on_error == "stop" else None)
        self.sinks = self._fanout.sinks
        self._stages: Stages | None = None  # made when the stream starts
        self._threads: list[threading.Thread] = []
        self._consumed = self._closed = False
        self.flushed: list[Record] = []  # records written to sinks at shutdown, not yielded
        if callable(getattr(source, "add_listener", None)):
            source.add_listener(self._events.add)

    def __getattr__(self, name: str) -> Any:  # the options read as before: stream.batch_size, stream.drop, ...
        if name != "options" and name in StreamOptions.__dataclass_fields__:
            return getattr(self.options, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def stop_reason(self) -> str | None:
        return self._signal.reason

    @property
    def _seq(self) -> int:
        """frame_ids issued so far."""
        return 0 if self._stages is None else self._stages.seq

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Stream":
        if self._closed:
            raise RuntimeError("this Stream is closed; create a new one")
        if self._stages is None:
            self._stats.t_start = time.monotonic()
            self._stages = Stages(self.detector, self.source, self.source_name, self.options, self._infers,
                                  self._outbox, self._signal, self._stats, self._events,
                                  watch=None if self.drift is None else self.drift.watch)
            tag = f"cfrg-stream-{id(self):x}"
            for stage, target in self._stages.loops():
                thread = threading.Thread(target=self._signal.guard, args=(stage, target), name=f"{tag}-{stage}",
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
            if self._stages is not None:
                raise RuntimeError("run(max_frames=...) must come before the stream starts; "
                                   "or pass max_frames to Stream()")
            limit = max_frames if self.options.max_frames is None else min(max_frames, self.options.max_frames)
            self.options = dataclasses.replace(self.options, max_frames=limit)
        with self:
            for _ in self:
                pass
        return self.stats()

    def close(self, reason: str = "closed") -> list[Record]:
        """Stop, drain, flush undelivered records to the sinks, close sinks and source; join threads."""
        self._shutdown(reason)
        return self.flushed

    def stats(self) -> dict:
        """Counts, throughput, mean ms per frame of each stage, latency (capture to done) percentiles."""
        o = self.options
        report = self._stats.report(dict(self._outbox.counts), self._events.counts(), flushed=len(self.flushed),
                                    sink_errors=self._fanout.errors, stop_reason=self.stop_reason,
                                    sources=self._outbox.source_counts(),
                                    settings={"queue_size": o.queue_size, "batch_size": o.batch_size,
                                              "infer_workers": self.infer_workers, "drop": o.drop})
        report["drift"] = None if self.drift is None else self.drift.summary()
        return report

    def _records(self) -> Iterator[Record]:
        try:
            while True:
                rec = self._outbox.pop(timeout=0.1)
                if rec is None:
                    if self._outbox.exhausted or self._signal.abort.is_set():
                        break
                    continue
                self._fanout.write(rec)
                self._stats.delivered += 1
                yield rec
        except KeyboardInterrupt:
            self._shutdown("interrupted (Ctrl-C)")
            raise
        except GeneratorExit:  # the consumer left the loop
            self._shutdown("consumer stopped iterating")
            raise
        except BaseException as exc:
            self._shutdown(f"stream failed: {describe(exc)}")
            raise
        self._shutdown(self.stop_reason or "end of stream")

    # ------------------------------------------------------------------ shutdown

    def _interrupt_live_source(self) -> None:
        """Live sources may wait seconds (read deadline, back-off); closing them is thread-safe."""
        if isinstance(self.source, MultiSource) or (getattr(self.source, "live", False)
                                                     and isinstance(self.source, Source)):
            self.source.close()  # a MultiSource closes a camera that may be reading from that camera's thread

    def _shutdown(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        interrupted = self._drain(reason) if self._stages is not None else None
        self._close_all()
        if self.flushed:
            log.info("stream shutdown (%s): %d record(s) written to sinks, not yielded", reason, len(self.flushed))
        if interrupted is not None:
            raise interrupted

    def _drain(self, reason: str) -> KeyboardInterrupt | None:
        """Stop capture, let the stages finish what was captured, write what was not delivered to the sinks.

        Returns a Ctrl-C that cut the wait or the flush short (raised once everything is closed)."""
        if reason != "end of stream":
            self._signal.note(reason)
        self._signal.stop.set()
        self._interrupt_live_source()
        self._outbox.unbound()  # nobody consumes now: let the stages finish
        interrupted = self._join_threads()
        self._stats.t_end = time.monotonic()
        self.flushed = self._outbox.close(self._seq, f"stream stopped ({reason}) before this frame finished")
        return self._fanout.flush(self.flushed) or interrupted

    def _join_threads(self) -> KeyboardInterrupt | None:
        """Wait drain_timeout for the threads; then abort the stages (their frames become error records)."""
        interrupted = None
        try:
            deadline = time.monotonic() + self.options.drain_timeout
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt as exc:  # a second Ctrl-C: stop waiting
            interrupted = exc
        if self._busy_threads():
            self._signal.abort.set()
            for thread in self._threads:
                thread.join(1.0)
            stuck = self._busy_threads()
            if stuck:
                log.error("stream threads still busy after shutdown (stuck in the source or detector): %s", stuck)
        return interrupted

    def _busy_threads(self) -> list[str]:
        return [t.name for t in self._threads if t.is_alive()]

    def _close_all(self) -> None:
        """Close the replicas (unless a stuck worker may still use one), the sinks and the source."""
        if not self._busy_threads():
            for replica in self._replicas:
                close = getattr(replica, "close", None)
                if callable(close):
                    close()
        self._fanout.close()
        try:
            close = getattr(self.source, "close", None)
            if callable(close):
                close()
        except Exception:
            log.exception("closing source %r failed", self.source)


def _several_cameras(source: Any) -> bool:
    """A dict of cameras, or a list / tuple of Sources and URIs (a list of images or Frames is one source)."""
    if isinstance(source, Mapping):
        return True
    if not isinstance(source, (list, tuple)) or not source:
        return False
    cameras = [isinstance(item, CAMERA_TYPES) and not isinstance(item, bool) for item in source]
    if any(cameras) and not all(cameras):
        raise TypeError("the source list mixes cameras (Sources, URIs) with other items: give a list of cameras "
                        "(Sources or URIs) or a list of images / Frames (one in-memory source), not both")
    return all(cameras)


def _default_batch(detector: Any, cameras: int) -> int:
    """One frame per camera, within the backend's largest batch (a TensorRT engine's)."""
    largest = getattr(getattr(detector, "backend", None), "max_batch", None)
    return max(1, min(cameras, largest)) if isinstance(largest, int) else cameras
