"""Stream a model over a source into a run's outputs, as `cfrg run` does (run_stream): the Detector, the sinks of
one run unit (sdk.run_unit), verdict counts, and what a write failure or an interruption leaves behind."""
from __future__ import annotations

import sys
from pathlib import Path


def run_stream(model, source, out: Path | None, *, masks=True, overlays=True, video=None, batch_size=1,
               queue_size=4, drop="none", threshold="default", min_area=0, progress=True, limit=None,
               infer_workers="auto", tiling: dict | None = None, drift="auto") -> dict:
    """Stream a source through a Detector into sinks; returns stream stats plus verdict counts.

    The outputs form one unit (sdk.run_unit): written into OUT.incomplete and swapped in for OUT when the run
    is complete. The model and the source are opened and the output folder checked before anything is written.
    A write failure stops the run (OSError naming the path; exit 6); an interruption says where the complete and
    the incomplete results are."""
    from .backends import is_server_url
    from .detector import Detector
    from .model_info import file_sha256
    from .progress import progress_bar
    from .run_unit import RunUnit
    from .sinks import JsonlSink, MaskSink, OverlaySink, StopOnWriteError, VideoSink
    from .sources import open_source
    from .stream import Stream

    det = Detector(model, threshold=threshold, min_area=min_area, **(tiling or {}))
    unit = None
    if out is not None:
        served = is_server_url(model)  # a served model: its URL; its file is the server's
        unit = RunUnit(out, {"model": model if served else str(Path(model).resolve()),
                             "model_sha256": None if served else file_sha256(model),
                             "precision": det.info.precision, "source": str(source),
                             "threshold": {"option": threshold, "image": det.image_threshold,
                                           "pixel": det.pixel_threshold},
                             "min_area": min_area, "tiling": tiling or None})
        unit.check()
    stream_source = open_source(source) if isinstance(source, (str, int, Path)) else source
    sinks, failures = [], []
    try:
        if unit is not None:
            for note in unit.notes:
                print(note, file=sys.stderr)
            folder = unit.open()
            sinks.append(JsonlSink(folder / "verdicts.jsonl", append=True))
            if masks:
                sinks.append(MaskSink(folder / "masks", in_place=True))
            if overlays:
                sinks.append(OverlaySink(folder / "overlays", in_place=True))
            if video:
                sinks.append(VideoSink(folder / video, fps=10, in_place=True))
        stream = Stream(det, stream_source, batch_size=batch_size, queue_size=queue_size, drop=drop,
                        sinks=[StopOnWriteError(sink, failures) for sink in sinks], infer_workers=infer_workers,
                        max_frames=limit, drift=drift)
    except BaseException as exc:
        for sink in sinks:
            sink.discard()
        getattr(stream_source, "close", lambda: None)()
        if unit is not None and unit.state is not None:
            unit.abandon(f"could not start: {exc}")
        raise
    counts = {"ok": 0, "defect": 0, "error": 0, "dropped": 0}
    bar = progress_bar(desc="run", unit="frame", disable=not progress, total=limit)
    try:
        with stream:
            for n, rec in enumerate(stream, 1):
                key = rec.verdict if rec.status == "ok" else rec.status
                counts[key] = counts.get(key, 0) + 1
                bar.update(1)
                for event in rec.events:
                    if getattr(event, "kind", "").startswith("drift"):
                        print(f"drift: frame {rec.frame_id}: {event.message}", flush=True)
                if n % 10 == 0:
                    bar.set_postfix(fps=f"{stream.stats()['fps']:.1f}", defects=counts["defect"],
                                    errors=counts["error"])
                if failures:
                    break
        bar.close()
        stats = stream.stats()
        stats["verdicts"] = counts
        if failures:
            path, exc = failures[0]
            raise OutputWriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc} (after {stats['frames']} "
                                   f"frames); free space or fix the folder's permissions, or give another --out"
                                   + (f"; {unit.abandon(f'write failed: {exc}', {'verdicts': counts})}" if unit else ""))
        if unit is not None:
            unit.complete({"frames": stats["frames"], "verdicts": counts})
    except KeyboardInterrupt as exc:
        bar.close()
        why = interruption(exc)
        where = unit.abandon(f"interrupted ({why})", {"verdicts": counts}) if unit else ""
        raise type(exc)(why + (f"; {where}" if where else "")) from None
    except OutputWriteError:
        raise
    except BaseException as exc:
        if unit is not None:
            print(unit.abandon(f"failed: {type(exc).__name__}: {exc}", {"verdicts": counts}), file=sys.stderr)
        raise
    return stats


class OutputWriteError(OSError):
    """An output could not be written mid-run (exit code 6); the message names the path, the cause, the fix."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the same clean-up, one line, exit code 130."""


def interruption(exc: KeyboardInterrupt) -> str:
    """What stopped a run, in words: the interruption's own, else SIGTERM or Ctrl-C."""
    return str(exc) or ("SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C")
