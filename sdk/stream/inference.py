"""Inference across worker replicas, kept in order (tickets), and pre-processing that isolates bad frames."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .queues import END, Pipe
from .records import Item, describe


def inference_workers(detector: Any, workers: int | str) -> tuple[list, list]:
    """The infer callables of the inference workers, and the replicas made for them (the stream closes those).

    "auto": as many as the detector's backend says suit it (preferred_workers(): two single-thread
    sessions on a multi-core CPU, one on a GPU), else one. With several, each worker gets its own
    replica from detector.replicas(n); a detector without replicas() is shared by its workers, so its
    infer() must be thread-safe.
    """
    if workers == "auto":
        preferred = getattr(detector, "preferred_workers", None)
        workers = int(preferred()) if callable(preferred) else 1
    if workers == 1:
        return [detector.infer], []
    replicas = getattr(detector, "replicas", None)
    if not callable(replicas):
        return [detector.infer] * workers, []
    made = replicas(workers)
    return [d.infer for d in made], made


class TicketOrder:
    """Keeps parallel inference workers in queue order: a worker takes a batch with a ticket, and passes
    its result on only in its ticket's turn. The last worker to finish ends the stage."""

    def __init__(self, workers: int, abort: threading.Event):
        self._take = threading.Lock()  # tickets are handed out in queue order
        self._turn = threading.Condition()  # results go on in ticket order
        self._tickets = self._next_turn = 0
        self._running = workers
        self._abort = abort

    def take(self, pipe: Pipe) -> tuple[int, Any] | object:
        """(ticket, the next batch) or END."""
        with self._take:
            batch = pipe.get_batch(1, 0.0)
            if batch is END:
                return END
            ticket, self._tickets = self._tickets, self._tickets + 1
        return ticket, batch[0]

    @contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        """Wait for ticket's turn (or abort), hold it while the body passes the result on."""
        with self._turn:
            while self._next_turn != ticket and not self._abort.is_set():
                self._turn.wait(0.1)
            yield
            self._next_turn = max(self._next_turn, ticket + 1)
            self._turn.notify_all()

    def worker_done(self) -> bool:
        """A worker has ended; True for the last one."""
        with self._turn:
            self._running -= 1
            return self._running == 0


def preprocess_isolating(preprocess: Callable, items: list[Item],
                         fail: Callable[[list[Item], str], None]) -> tuple[list[Item], Any]:
    """Pre-process a batch; when it fails, find the bad frames one by one (fail() each) and go on without them."""
    try:
        return items, preprocess([it.frame.image for it in items])
    except Exception as exc:
        if len(items) == 1:
            fail(items, f"bad frame: {describe(exc)}")
            return [], None
    good = []
    for it in items:
        try:
            preprocess([it.frame.image])
            good.append(it)
        except Exception as exc:
            fail([it], f"bad frame: {describe(exc)}")
    if not good:
        return [], None
    try:
        return good, preprocess([it.frame.image for it in good])
    except Exception as exc:
        fail(good, f"preprocess failed: {describe(exc)}")
        return [], None
