"""Sink fan-out: each record written to every sink in order, resumed where a Ctrl-C cut it, failures counted."""
from __future__ import annotations

import logging
import time
from typing import Callable, Sequence

from .records import Record, describe
from .stats import StreamStats

log = logging.getLogger("sdk.stream")


class SinkFanout:
    """The stream's sinks, written in the consuming thread. A failing write is logged (the first ten) and
    counted; with stop_on_failure, it also asks the stream to stop."""

    def __init__(self, sinks: Sequence, stats: StreamStats, stop_on_failure: Callable[[str], None] | None):
        self.sinks = list(sinks)
        self.errors = 0
        self._stats = stats
        self._stop_on_failure = stop_on_failure
        self._resume: tuple[Record, int] | None = None  # a record a sink was interrupted on, and that sink

    def write(self, rec: Record, first: int = 0) -> None:
        t0 = time.monotonic()
        for i in range(first, len(self.sinks)):
            self._resume = (rec, i)
            try:
                self.sinks[i].write(rec)
            except Exception as exc:
                self.errors += 1
                if self.errors <= 10:
                    log.error("sink %r failed on frame %d: %s", self.sinks[i], rec.frame_id, describe(exc))
                if self._stop_on_failure is not None:
                    self._stop_on_failure(f"sink {type(self.sinks[i]).__name__} failed: {describe(exc)}")
        self._resume = None
        if self.sinks:
            self._stats.add("sinks", time.monotonic() - t0, 1)

    def flush(self, records: list[Record]) -> KeyboardInterrupt | None:
        """Finish the interrupted record, then write records; a Ctrl-C here stops the flush (and is returned)."""
        try:
            if self._resume is not None:
                rec, first = self._resume
                self.write(rec, first)
            for rec in records:
                self.write(rec)
        except KeyboardInterrupt as exc:
            log.error("flush interrupted: some records did not reach the sinks")
            return exc
        return None

    def close(self) -> None:
        for sink in self.sinks:
            try:
                close = getattr(sink, "close", None)
                if callable(close):
                    close()
            except Exception:
                log.exception("closing sink %r failed", sink)
