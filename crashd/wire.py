"""The wire: the exchanges with the crash database, one at a time, in the order they were handed over.

Delivery's rule for the server (:mod:`crashd.delivery`): a POST's answer is recorded before the next
POST goes out, so that a kill repeats at most the one POST that was on the wire (daisy answers 409).
An *exchange* is that pair — the POST and the recording of its answer — and the wire runs each one to
its end before it starts the next.

The wire has no thread of its own: the thread that hands over an exchange while none is running runs
it, and then every exchange handed over meanwhile by the other threads, until none is left; those
threads only wait for their outcome. So the next POST goes out as soon as the last answer is recorded,
by a thread that is already running — where a lock passed from thread to thread cost each report the
next thread's wake-up and its job's preparation in the one-at-a-time section (issue 15, the queued
rate) — and a report alone goes out in its own thread, with no hand-over at all (the latency of a
report in hand).

An exchange can also be run in two parts by one thread (:meth:`Wire.begin`, :meth:`Wire.end`): its POST
sent, then — after that thread has prepared the next report — its answer received and recorded
(:meth:`crashd.delivery.Courier.pipeline`). The wire is that thread's from ``begin`` to ``end``; exchanges
handed over meanwhile wait, and ``end`` runs them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Wire:
    """Runs exchanges one at a time, first handed over first run, each on a thread that handed one over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Exchanges handed over, and (None) turns of threads waiting in begin().
        self._waiting: deque[tuple[Callable[[], Any] | None, Future[Any]]] = deque()
        self._running = False  # a thread is running exchanges; it takes those handed over meanwhile

    @property
    def busy(self) -> bool:
        """Whether an exchange is running now (for tests and logs)."""
        return self._running

    @property
    def waiting(self) -> int:
        """Exchanges handed over and not begun (for tests and logs)."""
        return len(self._waiting)

    def run(self, exchange: Callable[[], T]) -> T:
        """Run *exchange* after every exchange handed over before it; its result, or its exception."""
        outcome: Future[T] = Future()
        with self._lock:
            self._waiting.append((exchange, outcome))
            drive, self._running = not self._running, True
        if drive:  # nothing was running: ours is first, and this thread runs it and what comes meanwhile
            self._drive()
        return outcome.result()

    def begin(self) -> None:
        """Take the wire, after every exchange handed over before, for an exchange this thread runs in two
        parts; it stays this thread's, whatever it does meanwhile, until :meth:`end`."""
        turn: Future[None] = Future()
        with self._lock:
            if not self._running:
                self._running = True
                return
            self._waiting.append((None, turn))
        turn.result()  # the thread running the exchanges before it hands the wire over

    def end(self) -> None:
        """Give the wire back (after :meth:`begin`): the exchanges handed over meanwhile run now, in this
        thread, up to the next thread's turn."""
        self._drive()

    def _drive(self) -> None:
        while True:
            with self._lock:
                if not self._waiting:
                    self._running = False
                    return
                exchange, outcome = self._waiting.popleft()
            if exchange is None:  # a thread's turn (begin): the wire is its own now, still running
                outcome.set_result(None)
                return
            try:
                result = exchange()
            except BaseException as error:  # the outcome of the thread that handed it over, not ours
                outcome.set_exception(error)
            else:
                outcome.set_result(result)
