"""A run's outputs as one unit: `cfrg run --out DIR` never leaves a folder whose files come from two runs.

The run writes into DIR.incomplete/ (beside DIR), whose RUN.json says "running", with the process id. At
the end it writes RUN.json "complete" with what the folder holds and swaps the folder in for DIR (DIR ->
DIR.replaced, DIR.incomplete -> DIR, DIR.replaced removed). Until then the previous complete unit in DIR
stays as it was, readable. A run that stops early (a signal, a full disk, a crash) leaves DIR as it was and
DIR.incomplete marked "incomplete" with the reason and its counts (after SIGKILL: still "running" with a pid
that no longer lives). The next run says what it found and replaces the incomplete folder; a crash in the
middle of the swap is finished by the next run. Files inside a unit are written in place (the unit itself
says whether it is whole), so no hidden temporary file is left behind by any stop.

A folder holding anything but a run's own files is never replaced: the run is refused instead. With several
cameras the unit holds RUN.json (its "sources" names them) and one folder per camera with those files.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .files import check_output_folder

STATE = "RUN.json"
FORMAT = "cfrg-run-1"
RUN_FILES = {STATE, "verdicts.jsonl", "masks", "overlays"}
VIDEO_SUFFIXES = (".mp4", ".avi")


class RunFolderError(ValueError):
    """--out names a folder a run may not replace (it holds other files, or another run is writing it)."""


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(folder: Path) -> dict | None:
    try:
        state = json.loads((Path(folder) / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT else None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _foreign_files(folder: Path) -> list[str]:
    """What a run did not write in folder, sorted: a run writes RUN_FILES and videos (a folder of an earlier
    release has no RUN.json but the same names), and with several cameras one such folder per camera."""
    state = read_state(folder) or {}
    cameras = state.get("sources") if isinstance(state.get("sources"), dict) else {}
    return sorted(p.name for p in folder.iterdir() if not (p.name in RUN_FILES or p.suffix.lower() in VIDEO_SUFFIXES
                                                           or (p.name in cameras and p.is_dir())))


def _holds(folder: Path) -> dict:
    def count(name):
        inside = folder / name
        return sum(1 for _ in inside.iterdir()) if inside.is_dir() else 0

    log = folder / "verdicts.jsonl"
    lines = sum(1 for _ in open(log, "rb")) if log.is_file() else 0
    return {"records": lines, "masks": count("masks"), "overlays": count("overlays")}


class RunUnit:
    def __init__(self, out: str | os.PathLike, about: dict | None = None):
        self.final = Path(os.path.abspath(out))
        self.partial = self.final.with_name(self.final.name + ".incomplete")
        self.replaced = self.final.with_name(self.final.name + ".replaced")
        self.about = dict(about or {})
        self.notes: list[str] = []  # what was found and done at start, for the user
        self.state: dict | None = None

    # -- before any work ------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse an --out that a run may not replace; finish a swap an earlier run left half done."""
        check_output_folder(self.final.parent)
        if self.final.exists() and not self.final.is_dir():
            raise RunFolderError(f"--out {self.final} is a file; give a folder (new, empty, or an earlier run's)")
        if self.replaced.is_dir():
            self._recover()
        foreign = _foreign_files(self.final) if self.final.is_dir() else []
        if foreign:
            raise RunFolderError(f"--out {self.final} holds files a run did not write ({', '.join(foreign[:3])}"
                                 f"{', ...' if len(foreign) > 3 else ''}); a run replaces its --out folder as a whole: "
                                 f"give a new or empty folder, or an earlier run's")
        if self.partial.exists():
            state = read_state(self.partial) or {}
            pid = state.get("pid")
            if state.get("status") == "running" and pid != os.getpid() and _pid_alive(pid):
                raise RunFolderError(f"another cfrg run (pid {pid}) is writing {self.partial}; wait for it, stop it, "
                                     f"or give another --out")
            what = state.get("status", "unreadable")
            self.notes.append(f"replacing the incomplete run left in {self.partial} ({what}"
                              + (f": {state['reason']}" if state.get("reason") else "") + ")")

    def _recover(self) -> None:
        """A swap stopped between its two renames: finish it (or undo it) before anything else."""
        state = read_state(self.partial) or {}
        if not self.final.exists() and state.get("status") == "complete":
            os.rename(self.partial, self.final)
            self.notes.append(f"finished moving the complete run of {state.get('finished')} into {self.final}")
        elif not self.final.exists():
            os.rename(self.replaced, self.final)
            self.notes.append(f"restored the previous complete run in {self.final}")
        if self.replaced.exists():
            shutil.rmtree(self.replaced)

    # -- the run -----------------------------------------------------------------------------------

    def open(self) -> Path:
        """A fresh DIR.incomplete with RUN.json "running"; returns the folder to write into."""
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.partial.mkdir(parents=True)
        self.state = {"format": FORMAT, "status": "running", "pid": os.getpid(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **self.about}
        self._write_state()
        return self.partial

    def _write_state(self) -> None:
        path = self.partial / STATE
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.state, indent=2, sort_keys=True, allow_nan=False))
            f.flush()
            os.fsync(f.fileno())

    def holds(self) -> dict:
        """What the folder holds now: lines of verdicts.jsonl, masks, overlays; with several cameras their sums
        and each camera's under "sources"."""
        cameras = self.about.get("sources")
        if not isinstance(cameras, dict):
            return _holds(self.partial)
        each = {name: _holds(self.partial / name) for name in cameras}
        return {**{key: sum(h[key] for h in each.values()) for key in ("records", "masks", "overlays")},
                "sources": each}

    def complete(self, summary: dict) -> Path:
        """RUN.json "complete", then DIR.incomplete takes DIR's place; returns DIR."""
        self.state.update(status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), holds=self.holds(),
                          **summary)
        self.state.pop("pid", None)
        self._write_state()
        _fsync_dir(self.partial)
        if self.final.exists():
            os.rename(self.final, self.replaced)
        os.rename(self.partial, self.final)
        _fsync_dir(self.final.parent)
        if self.replaced.exists():
            shutil.rmtree(self.replaced)
        return self.final

    def abandon(self, reason: str, summary: dict | None = None) -> str:
        """Mark DIR.incomplete "incomplete" with the reason (best effort: the disk may be full); the line to print."""
        if self.state is None:
            return ""
        try:
            self.state.update(status="incomplete", reason=reason, stopped=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              holds=self.holds(), **(summary or {}))
            self._write_state()
            marked = "marked incomplete"
        except OSError as exc:
            marked = f"not marked: {exc.strerror or exc}"
        previous = (f"the previous complete run is still in {self.final}" if self.final.is_dir()
                    else f"{self.final} was not written")
        return f"{previous}; this run's partial output is in {self.partial} ({marked})"
