"""The Stream's options (checked once, when made) and the checks of the detector and sinks it is given."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class StreamOptions:
    queue_size: int = 4  # items in each queue between stages (frames, then batches)
    drop: str = "none"  # "none": capture waits when the pipeline is full; "oldest": drop the oldest frame waiting
    batch_size: int = 1
    on_error: str = "continue"  # "stop": end the stream cleanly after the first error
    batch_timeout: float = 0.05  # seconds to wait for the 2nd..nth frame of a batch
    drain_timeout: float = 30.0  # seconds a stage may take to drain at shutdown
    max_source_errors: int = 10  # the source failing this many times in a row stops the stream
    infer_workers: int | str = "auto"
    max_frames: int | None = None  # capture stops after this many frames: exactly that many records

    def __post_init__(self):
        if self.drop not in ("none", "oldest"):
            raise ValueError(f"drop must be 'none' (back-pressure) or 'oldest', got {self.drop!r}")
        if self.on_error not in ("continue", "stop"):
            raise ValueError(f"on_error must be 'continue' or 'stop', got {self.on_error!r}")
        if self.queue_size < 1 or self.batch_size < 1:
            raise ValueError(f"queue_size and batch_size must be >= 1, got {self.queue_size} and {self.batch_size}")
        if self.max_source_errors < 1:
            raise ValueError("max_source_errors must be >= 1")
        max_frames = self.max_frames
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                       or max_frames < 1):
            raise ValueError(f"max_frames must be None (no limit) or an int >= 1, got {max_frames!r}")
        workers = self.infer_workers
        if workers != "auto" and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"infer_workers must be 'auto' or an int >= 1, got {workers!r}")
        for name, kind in (("queue_size", int), ("batch_size", int), ("batch_timeout", float),
                           ("drain_timeout", float), ("max_source_errors", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))


def check_detector(detector: Any) -> None:
    for stage in ("preprocess", "infer", "postprocess"):
        if not callable(getattr(detector, stage, None)):
            raise TypeError(f"detector has no {stage}() method; pass an sdk.Detector or an object "
                            "with preprocess(frames), infer(batch) and postprocess(frames, raw)")


def check_sinks(sinks: Sequence) -> None:
    for sink in sinks:
        if not callable(getattr(sink, "write", None)):
            raise TypeError(f"sink {sink!r} has no write(record) method")
