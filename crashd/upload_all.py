"""``crashd upload-all``: every report in the crash directory collected, sent and stamped, now.

A CI box runs this after a test run and wants one answer: did every crash reach
the crash database? The first round attempts every report at once, whatever
backoff an earlier run recorded (the user asked for *now*). With a deadline,
reports that failed are retried when their backoff says, until each is final
or the deadline passes; the loop sleeps until the next retry is due, it never
polls. Without one, a single round is made and failures stay pending.

A round's reports are worked through in a few batches (:meth:`crashd.delivery.Courier.pipeline`: the
next report prepared while one is on the wire), one batch at a time — a batch's thread lets another
work while a report's hooks run — and the POSTs go out one at a time (see :mod:`crashd.delivery`). The
delivery records
are made durable once per round (:meth:`crashd.state.StateStore.flush`), before the
run says what was sent, instead of one fsync per report.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from crashd import lifecycle
from crashd.collector import HookOptions
from crashd.delivery import Courier
from crashd.lifecycle import State, Status
from crashd.report import Limits
from crashd.spool import ReportName, Spool

log = logging.getLogger(__name__)

WORKERS = 4  # batches a round is cut into, each a thread's: one works while the others' hooks run
_COUNTED = ("sent", "rejected", "failed", "pending", "expired", "invalid", "skipped", "held")


@dataclass(frozen=True)
class Summary:
    """The outcome of one run, report by report, in crash-directory order."""

    reports: list[Status]

    def count(self, state: State) -> int:
        return sum(1 for status in self.reports if status.state is state)

    @property
    def complete(self) -> bool:
        """True when every report was sent or is a kind that is never sent."""
        return all(status.state in (State.SENT, State.SKIPPED) for status in self.reports)

    def as_json(self) -> dict[str, object]:
        """The document ``upload-all --json`` prints (DESIGN.md §9, plus the extra counts)."""
        counts = Counter(status.state.value for status in self.reports)
        document: dict[str, object] = {name: counts[name] for name in _COUNTED}
        document["reports"] = [status.as_json() for status in self.reports]
        return document


def upload_all(
    spool: Spool,
    courier: Courier,
    *,
    limits: Limits,
    deadline: float | None = None,
    stop: threading.Event | None = None,
    workers: int = WORKERS,
    hooks: HookOptions | None = None,
) -> Summary:
    """Collect and deliver every report in *spool*; *deadline* is in ``courier.clock()`` time."""
    stop = stop or threading.Event()

    def attempt(batch: list[ReportName]) -> list[tuple[ReportName, Status | None]]:
        def allowed() -> Iterator[ReportName]:
            for name in batch:
                if stop.is_set() or (deadline is not None and courier.clock() >= deadline):
                    return
                yield name

        begun = dict(courier.pipeline(spool, allowed(), limits, hooks=hooks))
        late = "the timeout ran out before it was sent"
        return [(name, begun[name] if name in begun else Status(name.crash, State.PENDING, detail=late))
                for name in batch]  # fmt: skip

    names = spool.report_names()
    results: dict[ReportName, Status] = {}
    due = dict.fromkeys(names, 0.0)  # round one: everything, now
    grouped, courier.grouped = courier.grouped, True
    try:
        _rounds(courier, names, due, results, attempt, deadline, stop, workers)
    finally:
        courier.grouped = grouped
        courier.flush()
    return Summary([results[name] for name in names if name in results])


def _rounds(
    courier: Courier,
    names: list[ReportName],
    due: dict[ReportName, float],
    results: dict[ReportName, Status],
    attempt: Callable[[list[ReportName]], list[tuple[ReportName, Status | None]]],
    deadline: float | None,
    stop: threading.Event,
    workers: int,
) -> None:
    """Attempt what is due until nothing is, or the deadline passes; durable after each round."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
        while due and not stop.is_set():
            now = courier.clock()
            ready = [name for name, when in due.items() if when <= now]
            if not ready:
                wake = min(due.values())
                if deadline is None or wake >= deadline:
                    break  # nothing more can happen before the deadline (or there is none)
                courier.flush()  # before sleeping on it: what went out is durable now
                stop.wait(wake - now)
                continue
            size = -(-len(ready) // workers)  # in as many batches as there are threads
            batches = [ready[start : start + size] for start in range(0, len(ready), size)]
            for name, status in itertools.chain.from_iterable(pool.map(attempt, batches)):
                del due[name]
                if status is None:
                    continue  # the report vanished
                if (when := lifecycle.retry_at(status)) is not None and deadline is not None:
                    # A retry of the report, of its core, or of a failure; without a deadline every
                    # report is tried once, however soon its retry would fall due.
                    due[name] = when
                results[name] = lifecycle.attempted(status)  # still queued: failed in this run
