"""The schedule of :meth:`crashd.delivery.Courier.pipeline`: a batch of reports, one thread, the next report
prepared while one is on the wire.

Each report's delivery is a generator of steps (:meth:`crashd.delivery.Courier._process`) that yields what
it waits for on the wire — a :class:`~crashd.delivery.Post` (its POST, and what records the answer) or an
:class:`~crashd.delivery.Exchange` (run whole) — and is sent the outcome. The schedule sends report N's
POST (:meth:`crashd.wire.Wire.begin`), runs report N+1's steps up to its own POST, then receives and
records N's answer (:meth:`crashd.wire.Wire.end`), and only then sends N+1's: a kill repeats at most the
POST on the wire, as with :meth:`~crashd.delivery.Courier.process`. Done in one thread, the overlap costs
no hand-over and no wait for the GIL. It is the courier's own schedule (it uses the courier's private
steps), in a module of its own so that the idle daemon does not load it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from crashd.delivery import Exchange, Post, Steps
from crashd.lifecycle import Status
from crashd.spool import ReportName
from crashd.uploader import Answer, UploadError

if TYPE_CHECKING:
    from crashd.delivery import Courier


class Pipeline:
    """:meth:`Courier.pipeline`'s schedule, in one thread. At most one POST is on the wire (*posted*) and one
    report is read ahead of it (what *waiting* holds); a report's steps after its answer (*ready*: stamps,
    log line, write-back) run once the next POST is out."""

    def __init__(self, courier: Courier) -> None:
        self.courier = courier
        # To resume: (name, steps, what is sent into them or thrown into them, whether it is thrown).
        self.ready: deque[tuple[ReportName, Steps[Status | None], Any, bool]] = deque()
        # Ready for the wire, in order: what each report's steps yielded.
        self.waiting: deque[tuple[ReportName, Steps[Status | None], Post | Exchange]] = deque()
        # On the wire, sent: the call that receives its answer.
        self.posted: tuple[ReportName, Steps[Status | None], Post, Callable[[], Answer | UploadError]] | None
        self.posted = None

    @contextlib.contextmanager
    def hooks_running(self) -> Iterator[None]:
        """While a report's hook process runs: the POST on the wire answered and recorded first, so that the
        wire is free for the other threads (:meth:`Courier.waiting` lets them work meanwhile)."""
        if self.posted is not None:
            self._settle()
        with self.courier.waiting():
            yield

    def run(
        self, reports: Iterator[tuple[ReportName, Steps[Status | None]]]
    ) -> Iterator[tuple[ReportName, Status | None]]:
        """Each report's outcome, in the order the reports end: the wire first (a POST ready goes out as
        soon as the wire is free), then what waits for its turn to go on, then the next report."""
        courier = self.courier
        try:
            while True:
                if self.posted is None and self.waiting:
                    name, steps, wait = self.waiting.popleft()
                    if isinstance(wait, Post):
                        courier.wire.begin()
                        try:
                            self.posted = (name, steps, wait, courier._start(wait.job))
                        except Exception as error:  # not the network's (a bug?): the report's, not ours
                            courier.wire.end()
                            self.ready.append((name, steps, error, True))
                        continue
                    try:  # a core's exchange: whole, in its turn
                        self.ready.append((name, steps, courier.wire.run(wait.run), False))
                    except Exception as error:
                        self.ready.append((name, steps, error, True))
                    continue
                if self.ready or (not self.waiting and (report := next(reports, None)) is not None):
                    name, steps, value, raised = (
                        self.ready.popleft() if self.ready else (*report, None, False)
                    )
                    ended, outcome = self._advance(name, steps, value, raised)
                    if ended:
                        yield name, outcome
                elif self.posted is not None:
                    self._settle()
                else:
                    return
        finally:  # stopped early (the caller's error, a bug): the answer on its way is still recorded
            if self.posted is not None:
                self._settle()
            for _name, steps, *_ in (*self.ready, *self.waiting):
                steps.close()

    def _advance(
        self, name: ReportName, steps: Steps[Status | None], value: Any, raised: bool
    ) -> tuple[bool, Status | None]:
        """Run the report's steps to what they wait for next, or to their end: (ended, its outcome)."""
        try:
            wait = steps.throw(value) if raised else steps.send(value)
        except StopIteration as done:
            self.courier.failures.pop(name.crash, None)
            return True, done.value
        except Exception as error:  # contained per report, as in Courier.process
            return True, self.courier._failed(name, error)
        self.waiting.append((name, steps, wait))
        return False, None

    def _settle(self) -> None:
        """The POST on the wire: its answer received and recorded (its steps go on later), the wire freed."""
        assert self.posted is not None
        name, steps, post, receive = self.posted
        self.posted = None
        try:
            self.ready.append((name, steps, post.settle(receive()), False))
        except Exception as error:  # raised where the steps wait for the answer
            self.ready.append((name, steps, error, True))
        finally:
            self.courier.wire.end()
