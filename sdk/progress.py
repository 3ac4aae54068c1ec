"""Progress bars that suit where the output goes: tqdm's bar on a terminal; into a log (CI, systemd, nohup, a
file), where every bar update would be a line, a plain line now and then instead.

    bar = progress_bar(total=n, desc="predict", unit="img", disable=not progress)
    for item in progress_bar(items, desc="load", unit="img"): ...

The interval of the plain lines is CFRG_PROGRESS_SECONDS (default 30) seconds; a last line comes at close.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable


def _interactive(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LogProgress:
    """The part of tqdm's interface the product uses, printing "desc: n/total unit (p %), rate" lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", disable: bool = False, file=None, **_ignored: Any):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, 0, ""
        self.file = file or sys.stderr
        self.interval = float(os.environ.get("CFRG_PROGRESS_SECONDS", "30"))
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        first = self.n == 0
        self.n += n
        now = time.monotonic()
        if first or now - self.last >= self.interval:  # a line when the work starts, then every interval
            self.last = now
            self._line()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def _line(self) -> None:
        if self.disable:
            return
        elapsed = time.monotonic() - self.start
        done = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        rate = f", {self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{share}{rate}{extra}, {elapsed:.0f} s", file=self.file, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n:
                self._line()


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """tqdm on a terminal (stderr), LogProgress elsewhere; the same arguments."""
    if _interactive(kwargs.get("file") or sys.stderr):
        from tqdm import tqdm

        return tqdm(iterable, **kwargs)
    return LogProgress(iterable, **kwargs)
