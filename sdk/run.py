"""Stream a model over a source into a run's outputs, as `cfrg run` does (run_stream): the Detector, the sinks of
one run unit (sdk.run_unit), verdict counts, and what a write failure or an interruption leaves behind."""
from __future__ import annotations

import sys
from pathlib import Path


def run_stream(model, source, out: Path | None, *, masks=True, overlays=True, video=None, batch_size=None,
               queue_size=4, drop="none", threshold="default", min_area=0, progress=True, limit=None,
               infer_workers="auto", tiling: dict | None = None, drift="auto") -> dict:
    """Stream a source through a Detector into sinks; returns stream stats plus verdict counts.

    source: one source (a URI or a Source), or several cameras as {name: URI or Source}: their frames are
    batched together (one frame per camera by default) and OUT gets one folder per camera, OUT/<name>/ with
    the single-source layout (verdicts.jsonl, masks/, overlays/, the video), beside one RUN.json;
    stats["verdicts_by_source"] has each camera's counts.
    The outputs form one unit (sdk.run_unit): written into OUT.incomplete and swapped in for OUT when the run
    is complete. The model and the source are opened and the output folder checked before anything is written.
    A write failure stops the run (OSError naming the path; exit 6); an interruption says where the complete and
    the incomplete results are."""
    from .backends import is_server_url
    from .detector import Detector
    from .model_info import file_sha256
    from .progress import progress_bar
    from .run_unit import RunUnit
    from .sinks import BySource, StopOnWriteError
    from .sources import MultiSource, open_source
    from .stream import Stream

    cameras = source if isinstance(source, dict) else None
    det = Detector(model, threshold=threshold, min_area=min_area, **(tiling or {}))
    unit = None
    if out is not None:
        described = ({"sources": {name: str(uri) for name, uri in cameras.items()}} if cameras is not None
                     else {"source": str(source)})
        served = is_server_url(model)  # a served model: its URL; its file is the server's
        unit = RunUnit(out, {"model": model if served else str(Path(model).resolve()),
                             "model_sha256": None if served else file_sha256(model),
                             "precision": det.info.precision, **described,
                             "threshold": {"option": threshold, "image": det.image_threshold,
                                           "pixel": det.pixel_threshold},
                             "min_area": min_area,
                             "tiling": ({"tile": list(det.tile_plan.tile), "overlap": det.tile_plan.overlap,
                                         "scale": det.tile_plan.scale, "from_model": bool(det.info.tiling)}
                                        if det.tiling else None)})
        unit.check()
    if cameras is not None:
        stream_source = MultiSource(cameras)
    else:
        stream_source = open_source(source) if isinstance(source, (str, int, Path)) else source
    made, failures = [], []  # every sink, and the first write failure
    try:
        sinks = []
        if unit is not None:
            for note in unit.notes:
                print(note, file=sys.stderr)
            folder = unit.open()
            if cameras is None:
                made = _unit_sinks(folder, masks, overlays, video)
                sinks = [StopOnWriteError(sink, failures) for sink in made]
            else:
                routes = {}
                for name in cameras:  # a camera's files are named by its own frame ids
                    own = _unit_sinks(folder / name, masks, overlays, video, "{source_frame_id:06d}")
                    made += own
                    routes[name] = [StopOnWriteError(sink, failures) for sink in own]
                sinks = [BySource(routes)]
        stream = Stream(det, stream_source, batch_size=batch_size, queue_size=queue_size, drop=drop, sinks=sinks,
                        infer_workers=infer_workers, max_frames=limit, drift=drift)
    except BaseException as exc:
        for sink in made:
            sink.discard()
        getattr(stream_source, "close", lambda: None)()
        if unit is not None and unit.state is not None:
            unit.abandon(f"could not start: {exc}")
        raise
    counts = _verdict_counts()
    by_source = {name: _verdict_counts() for name in cameras or ()}
    summary = {"verdicts": counts, **({"verdicts_by_source": by_source} if cameras is not None else {})}
    bar = progress_bar(desc="run", unit="frame", disable=not progress, total=limit)
    try:
        with stream:
            for n, rec in enumerate(stream, 1):
                key = rec.verdict if rec.status == "ok" else rec.status
                counts[key] = counts.get(key, 0) + 1
                if rec.source in by_source:
                    by_source[rec.source][key] = by_source[rec.source].get(key, 0) + 1
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
        stats.update(summary)
        if failures:
            path, exc = failures[0]
            raise OutputWriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc} (after {stats['frames']} "
                                   f"frames); free space or fix the folder's permissions, or give another --out"
                                   + (f"; {unit.abandon(f'write failed: {exc}', summary)}" if unit else ""))
        if unit is not None:
            unit.complete({"frames": stats["frames"], **summary})
    except KeyboardInterrupt as exc:
        bar.close()
        why = interruption(exc)
        where = unit.abandon(f"interrupted ({why})", summary) if unit else ""
        raise type(exc)(why + (f"; {where}" if where else "")) from None
    except OutputWriteError:
        raise
    except BaseException as exc:
        if unit is not None:
            print(unit.abandon(f"failed: {type(exc).__name__}: {exc}", summary), file=sys.stderr)
        raise
    return stats


def _verdict_counts() -> dict:
    return {"ok": 0, "defect": 0, "error": 0, "dropped": 0}


def _unit_sinks(folder: Path, masks: bool, overlays: bool, video: str | None, number: str = "{frame_id:06d}") -> list:
    """The sinks of one source inside a run unit: verdicts.jsonl, masks/, overlays/ (files named by number), the
    video."""
    from .sinks import JsonlSink, MaskSink, OverlaySink, VideoSink

    sinks = [JsonlSink(folder / "verdicts.jsonl", append=True)]
    if masks:
        sinks.append(MaskSink(folder / "masks", f"{number}_mask.png", in_place=True))
    if overlays:
        sinks.append(OverlaySink(folder / "overlays", f"{number}_overlay.png", in_place=True))
    if video:
        sinks.append(VideoSink(folder / video, fps=10, in_place=True))
    return sinks


class OutputWriteError(OSError):
    """An output could not be written mid-run (exit code 6); the message names the path, the cause, the fix."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the same clean-up, one line, exit code 130."""


def interruption(exc: KeyboardInterrupt) -> str:
    """What stopped a run, in words: the interruption's own, else SIGTERM or Ctrl-C."""
    return str(exc) or ("SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C")
