"""``crashd upload-all``: every report in the crash directory collected, sent and stamped, now.

A CI box runs this after a test run and wants one answer: did every crash reach
the crash database? Reports are handled by a few worker threads (HTTP waits
dominate; keep-alive connections are reused per thread), and an optional
deadline bounds the whole run: what has not been attempted by then is
``pending``, and calls in flight get no more than the time that is left.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

from crashd.collector import Collected, State, Status, collect
from crashd.report import Limits, ReportError
from crashd.spool import ReportName, Spool, UnsafeFileError
from crashd.uploader import CoreState, Outcome, Transport, UploadError, Verdict, upload

log = logging.getLogger(__name__)

WORKERS = 4  # enough to hide loopback and WAN latency; daisy is one server


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
        """The document ``upload-all --json`` prints (DESIGN.md §9)."""
        counts = Counter(status.state.value for status in self.reports)
        document: dict[str, object] = {
            name: counts[name] for name in ("sent", "rejected", "failed", "pending", "invalid", "skipped")
        }
        document["reports"] = [status.as_json() for status in self.reports]
        return document


def upload_all(
    spool: Spool,
    transport: Transport,
    url: str,
    system_id: str,
    *,
    limits: Limits,
    deadline: float | None = None,
    workers: int = WORKERS,
) -> Summary:
    """Collect and send every report in *spool*; *deadline* is a ``time.monotonic()`` value."""

    def one(name: ReportName) -> Status | None:
        if deadline is not None and time.monotonic() >= deadline:
            return _pending(name)
        collected = collect(spool, name, limits)
        if not isinstance(collected, Collected):
            return collected
        try:
            return _send(spool, collected, transport, url, system_id)
        finally:
            collected.close()

    names = spool.report_names()
    results: dict[ReportName, Status] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload") as pool:
        futures = {pool.submit(one, name): name for name in names}
        waiting = set(futures)
        while waiting and (deadline is None or time.monotonic() < deadline):
            left = None if deadline is None else deadline - time.monotonic()
            _, waiting = wait(waiting, timeout=left, return_when=FIRST_COMPLETED)
        for future in waiting:  # the deadline passed: what has not started never will
            future.cancel()
        for future, name in futures.items():
            if future.cancelled():
                results[name] = _pending(name)
            elif (status := future.result()) is not None:  # in flight: bounded by the deadline too
                results[name] = status
    return Summary([results[name] for name in names if name in results])


def _pending(name: ReportName) -> Status:
    return Status(name.crash, State.PENDING, detail="the timeout ran out before it was sent")


def _send(spool: Spool, collected: Collected, transport: Transport, url: str, system_id: str) -> Status:
    name = collected.name
    try:
        outcome = upload(collected.report, transport, url, system_id)
    except ReportError as error:
        log.info("%s: not sent: %s", name, error.detail)
        return Status(name, State.INVALID, detail=error.detail)
    except UploadError as error:
        log.info("%s: upload failed, it stays pending: %s", name, error)
        return Status(name, State.FAILED, detail=str(error))
    if outcome.verdict is Verdict.SENT:
        try:
            spool.mark_uploaded(collected.opened, outcome.oops_id or "")
        except (OSError, UnsafeFileError) as error:  # sent, but the stamp could not be written
            log.error("%s: sent as %s, but the .uploaded stamp failed: %s", name, outcome.oops_id, error)
        log.info("%s: sent, OOPS id %s%s", name, outcome.oops_id or "(none)", _core_note(outcome))
        return Status(name, State.SENT, outcome.oops_id, _sent_detail(outcome))
    if outcome.verdict is Verdict.REJECTED:
        log.info("%s: rejected by the server: %s", name, outcome.detail)
        return Status(name, State.REJECTED, detail=outcome.detail)
    log.warning("%s: not accepted this time, it stays pending: %s", name, outcome.detail)
    return Status(name, State.FAILED, detail=outcome.detail)


def _sent_detail(outcome: Outcome) -> str | None:
    notes = [note for note in (outcome.detail, _core_note(outcome).removeprefix("; ")) if note]
    return "; ".join(notes) or None


def _core_note(outcome: Outcome) -> str:
    if outcome.core is CoreState.SENT:
        return "; core sent on request"
    if outcome.core is not None:
        return f"; core {outcome.core.value}: {outcome.core_detail}"
    return ""
