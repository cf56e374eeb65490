"""Collection: from a name in the crash directory to a report ready to send, or the reason it is not.

Each report goes through the same steps whoever asks (``upload-all`` now, the
daemon later): open it safely, see whether it was already sent, index it, check
it is a kind the crash database takes, and stamp it ``.upload``. Enrichment
(package information and hooks) will slot in before the stamp. Every report
that is not collected comes back as a :class:`Status` with a reason — nothing
is dropped silently, and a refused file is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

from crashd.report import Limits, Report, ReportError, read_report
from crashd.spool import OpenReport, ReportName, Spool, UnsafeFileError

log = logging.getLogger(__name__)

# The kinds daisy handles (DESIGN.md §3). Bug reports belong in a bug tracker and
# daisy refuses kernel vmcores, so those are left alone, with the reason.
SENT_KINDS = frozenset({"Crash", "Package", "KernelOops", "Hang", "RecoverableProblem"})


class State(StrEnum):
    """Where a report stands (DESIGN.md §3); ``crashd status`` and ``upload-all`` print these."""

    QUEUED = "queued"  # collected and stamped .upload; not sent yet
    SENT = "sent"
    REJECTED = "rejected"  # the server refused it for good
    FAILED = "failed"  # this attempt failed; the report stays pending
    PENDING = "pending"  # not attempted before the deadline
    INVALID = "invalid"  # refused input, left untouched
    SKIPPED = "skipped"  # a kind that is not sent to the crash database


@dataclass(frozen=True)
class Status:
    """One report's state, with the OOPS id once sent and a reason whenever it is not."""

    name: str
    state: State
    oops_id: str | None = None
    detail: str | None = None

    def as_json(self) -> dict[str, str | None]:
        return {"name": self.name, "state": self.state.value, "oops_id": self.oops_id, "detail": self.detail}


@dataclass
class Collected:
    """A validated, indexed report, stamped ``.upload``; the caller must :meth:`close` it."""

    opened: OpenReport
    file: BinaryIO
    report: Report

    @property
    def name(self) -> str:
        return self.opened.name.crash

    def close(self) -> None:
        self.file.close()
        self.opened.close()


def collect(spool: Spool, name: ReportName, limits: Limits) -> Collected | Status | None:
    """Collect one report; None when it vanished meanwhile (apport or a user removed it)."""
    try:
        opened = spool.open_report(name)
    except FileNotFoundError:
        return None
    except UnsafeFileError as error:
        return _invalid(name, error.reason)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(opened.close)
        if _already_sent(spool, opened):
            return Status(name.crash, State.SENT, spool.oops_id(name, opened.stat.st_uid), "uploaded before")
        file = cleanup.enter_context(opened.file())
        try:
            report = read_report(file, limits=limits, name=name.crash)
            kind = report.problem_type
        except ReportError as error:
            return _invalid(name, error.detail)
        if kind not in SENT_KINDS:
            what = f"ProblemType {kind}" if kind else "a report without a ProblemType"
            return Status(name.crash, State.SKIPPED, detail=f"{what} is not sent to the crash database")
        try:
            spool.mark_upload(opened)
        except OSError as error:
            log.warning("%s: cannot stamp it for upload: %s", name.crash, error)
            return Status(name.crash, State.FAILED, detail=f"cannot write {name.upload}: {error.strerror}")
        cleanup.pop_all()
        return Collected(opened, file, report)


def _already_sent(spool: Spool, opened: OpenReport) -> bool:
    """True when ``.uploaded`` is newer than the report and no newer ``.upload`` asks again."""
    try:
        stamps = spool.stamps(opened.name, opened.stat.st_uid)
    except UnsafeFileError as error:
        # A stamp planted by another user, or left by whoopsie under its own uid:
        # ignore it; crashd's own stamps replace it (a resend is answered 409).
        log.info("%s: ignoring a stamp crashd cannot trust: %s", opened.name.crash, error)
        return False
    sent = stamps.uploaded_ns is not None and not stamps.pending
    return sent and stamps.uploaded_ns >= opened.stat.st_mtime_ns  # else it marks an earlier crash


def _invalid(name: ReportName, reason: str) -> Status:
    log.info("%s: refused: %s", name.crash, reason)
    return Status(name.crash, State.INVALID, detail=reason)
