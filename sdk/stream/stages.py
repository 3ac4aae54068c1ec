"""The stream's four stages (capture, pre-process, inference, post-process), each a loop run by its own thread(s)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable

from ..sources import Frame
from .inference import TicketOrder, preprocess_isolating
from .options import StreamOptions
from .queues import END, Outbox, Pipe, StopSignal
from .records import Batch, Item, Record, SourceEvents, describe
from .stats import StreamStats


class Stages:
    """The loops of one stream's threads, joined by bounded pipes; every frame ends as one record in the outbox."""

    def __init__(self, detector: Any, source: Iterable, source_name: str, options: StreamOptions, infers: list,
                 outbox: Outbox, signal: StopSignal, stats: StreamStats, events: SourceEvents,
                 watch: Callable[[Record], tuple] | None = None):
        self.watch = watch  # events for an ok record (the drift monitor), in frame order
        self.detector, self.source, self.source_name, self.options = detector, source, source_name, options
        self.outbox, self.signal, self.stats, self.events = outbox, signal, stats, events
        self.infers = infers
        self.q_pre = Pipe(options.queue_size, signal.abort)
        self.q_inf = Pipe(options.queue_size, signal.abort)
        self.q_post = Pipe(options.queue_size, signal.abort)
        self.order = TicketOrder(len(infers), signal.abort)
        self.seq = 0  # frame_ids issued (capture thread only)

    def loops(self) -> list[tuple[str, Callable[[], None]]]:
        """(stage name, loop) for each thread: capture, preprocess, infer (or infer-0, infer-1, ...), postprocess."""
        several = len(self.infers) > 1
        return ([("capture", self.capture_loop), ("preprocess", self.preprocess_loop)]
                + [(f"infer-{k}" if several else "infer", lambda infer=infer: self.infer_loop(infer))
                   for k, infer in enumerate(self.infers)]
                + [("postprocess", self.postprocess_loop)])

    def emit(self, rec: Record, bounded: bool = False) -> None:
        rec.timestamps.setdefault("done", time.monotonic())
        self.stats.done(rec)
        self.outbox.put(rec, bounded)
        if rec.status == "error" and self.options.on_error == "stop":
            self.signal.request(f"on_error='stop': frame {rec.frame_id}: {rec.error}")

    def fail(self, items: list[Item], message: str) -> None:
        for it in items:
            self.emit(it.record("error", error=message))

    def capture_loop(self) -> None:
        source = iter(self.source)
        failures = 0
        max_frames = self.options.max_frames
        try:
            while not self.signal.stopping:
                if max_frames is not None and self.seq >= max_frames:
                    self.signal.note(f"max_frames ({max_frames}) reached")
                    break
                t0 = time.monotonic()
                try:
                    item = next(source)
                except StopIteration:
                    break
                except Exception as exc:
                    failures += 1
                    seq, self.seq = self.seq, self.seq + 1
                    self.emit(Record(seq, "error", error=f"source error: {describe(exc)}",
                                     timestamps={"captured": t0}, events=self.events.take(), source=self.source_name))
                    if failures >= self.options.max_source_errors:
                        self.signal.request(f"source failed {failures} times in a row; last: {describe(exc)}")
                    continue
                failures = 0
                t1 = time.monotonic()
                self.stats.add("capture", t1 - t0, 1)
                seq, self.seq = self.seq, self.seq + 1
                frame = item if isinstance(item, Frame) else Frame(seq, item, t1, self.source_name)
                self.outbox.expect(seq, frame.source)
                self._pass_on(Item(seq, frame, self.events.take(), {"captured": frame.timestamp}))
        finally:
            self.q_pre.put_end()

    def _pass_on(self, it: Item) -> None:
        """A captured frame to pre-processing (or its error record); a frame dropped for it gives its record."""
        if it.frame.error is not None:
            self.emit(it.record("error", error=it.frame.error))
            return
        for old in self.q_pre.put(it, drop_oldest=self.options.drop == "oldest"):
            self.emit(old.record("dropped", error="dropped: pipeline full (drop='oldest')",
                                 frame=dataclasses.replace(old.frame, image=None)))

    def preprocess_loop(self) -> None:
        while True:
            items = self.q_pre.get_batch(self.options.batch_size, self.options.batch_timeout)
            if items is END:
                self.q_inf.put_end()
                return
            if self.signal.abort.is_set():
                self.fail(items, "not processed: stream aborted")
                continue
            t0 = time.monotonic()
            good, data = preprocess_isolating(self.detector.preprocess, items, self.fail)
            t1 = time.monotonic()
            self.stats.add("preprocess", t1 - t0, len(items))
            if good:
                for it in good:
                    it.t["preprocessed"] = t1
                self.q_inf.put(Batch(good, data))

    def infer_loop(self, infer: Callable) -> None:
        """One inference worker. With several, batches are taken and passed on in queue order."""
        try:
            while True:
                taken = self.order.take(self.q_inf)
                if taken is END:
                    return
                ticket, batch = taken
                raw, error = self._infer(infer, batch)
                with self.order.turn(ticket):
                    if error is None:
                        self.q_post.put(Batch(batch.items, raw))
                    else:
                        self.fail(batch.items, error)
        finally:
            if self.order.worker_done():
                self.q_post.put_end()

    def _infer(self, infer: Callable, batch: Batch) -> tuple[Any, str | None]:
        """(raw output, None) or (None, why not)."""
        if self.signal.abort.is_set():
            return None, "not processed: stream aborted"
        t0 = time.monotonic()
        try:
            raw = infer(batch.data)
        except Exception as exc:
            return None, f"inference failed: {describe(exc)}"
        t1 = time.monotonic()
        self.stats.add("infer", t1 - t0, len(batch.items))
        for it in batch.items:
            it.t["inferred"] = t1
        return raw, None

    def postprocess_loop(self) -> None:
        try:
            while True:
                batch = self.q_post.get_batch(1, 0.0)
                if batch is END:
                    return
                items = batch[0].items
                if self.signal.abort.is_set():
                    self.fail(items, "not processed: stream aborted")
                    continue
                t0 = time.monotonic()
                try:
                    results = list(self.detector.postprocess([it.frame.image for it in items], batch[0].data))
                    if len(results) != len(items):
                        raise RuntimeError(f"postprocess returned {len(results)} results for {len(items)} frames")
                except Exception as exc:
                    self.fail(items, f"postprocess failed: {describe(exc)}")
                    continue
                self.stats.add("postprocess", time.monotonic() - t0, len(items))
                for it, result in zip(items, results):
                    rec = it.record("ok", result=result)
                    if self.watch is not None:
                        rec.events += self.watch(rec)
                    self.emit(rec, bounded=True)
        finally:
            self.outbox.finish(self.seq)  # capture has ended: every frame_id is issued
