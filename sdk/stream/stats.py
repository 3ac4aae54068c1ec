"""The stream's statistics: seconds and frames per stage, latencies, elapsed time, records delivered."""
from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from .records import Record

STAGES = ("capture", "preprocess", "infer", "postprocess", "sinks")


class StreamStats:
    """Counters the stages add to (thread-safe), and the stats() report made from them."""

    def __init__(self):
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.frames = dict.fromkeys(STAGES, 0)
        self.latencies: deque = deque(maxlen=4096)  # seconds from capture to done of recent ok records
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.delivered = 0  # records yielded to the consumer

    def add(self, stage: str, seconds: float, frames: int) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.frames[stage] += frames

    def done(self, rec: Record) -> None:
        if rec.status == "ok" and "captured" in rec.timestamps:
            self.latencies.append(rec.timestamps["done"] - rec.timestamps["captured"])

    def ms_per_frame(self) -> dict:
        with self._lock:
            return {s: round(1000 * self.seconds[s] / self.frames[s], 3) if self.frames[s] else None for s in STAGES}

    def latency_ms(self) -> dict | None:
        lat = np.asarray(list(self.latencies)) * 1000
        if not lat.size:
            return None
        return {"mean": round(float(lat.mean()), 3), "p50": round(float(np.percentile(lat, 50)), 3),
                "p95": round(float(np.percentile(lat, 95)), 3), "max": round(float(lat.max()), 3)}

    def report(self, counts: dict, events: dict, *, flushed: int, sink_errors: int, stop_reason: str | None,
               sources: dict, settings: dict) -> dict:
        """stats(): counts by status, throughput, stage ms, latency, source events, then the settings."""
        now = self.t_end or time.monotonic()
        elapsed = (now - self.t_start) if self.t_start is not None else 0.0
        processed = counts["ok"] + counts["error"]
        return {
            "frames": sum(counts.values()),
            "ok": counts["ok"],
            "errors": counts["error"],
            "dropped": counts["dropped"],
            "delivered": self.delivered,
            "flushed": flushed,
            "elapsed_s": round(elapsed, 3),
            "fps": round(processed / elapsed, 2) if elapsed > 0 else 0.0,
            "stage_ms": self.ms_per_frame(),
            "latency_ms": self.latency_ms(),
            "reconnects": events.get("reconnected", 0),
            "losses": events.get("lost", 0),
            "events": events,
            "sink_errors": sink_errors,
            "stop_reason": stop_reason,
            "sources": {name: {"frames": sum(c.values()), "ok": c["ok"], "errors": c["error"], "dropped": c["dropped"]}
                        for name, c in sorted(sources.items())},
            **settings,
        }
