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
- Several cameras: Stream(detector, [src1, src2, ...]) (Sources or URIs; or {name: source}) merges them
  in a sdk.sources.MultiSource (one capture thread per camera); batches mix cameras (batch_size: one frame
  per camera by default), Record.source names the camera, each camera's frames keep their order, one
  camera's errors or end stop only that camera, and stats()["sources"] counts each. Sinks per camera:
  sdk.sinks.BySource.

Inside: lifecycle (Stream: start, iterate, drain, close), options (StreamOptions and the checks),
stages (the four thread loops), inference (worker replicas, ticket order, bad-frame isolation),
queues (pipes, ordered outbox, stop signal), fanout (sinks), stats, records (Record, items in flight).
"""
from .lifecycle import Stream
from .options import StreamOptions
from .records import STATUSES, Record
from .stats import STAGES

__all__ = ["STAGES", "STATUSES", "Record", "Stream", "StreamOptions"]
