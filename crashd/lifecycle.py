"""A report's lifecycle, decided in one place: given what is known of a report, what happens next.

Everything that asks "was it sent?", "may it go now?", "when is it looked at again?" asks here: the
courier before it touches a report (:func:`next_step`), ``crashd status`` and the D-Bus ``List`` for how
a report reads (the same :func:`next_step`, whose :attr:`Next.status` they show), the daemon and
``upload-all`` for when to look again (:func:`retry_at`), the exception hook for whether an older report
may be replaced (:func:`sent_before`). The inputs are plain values — the delivery record, the stamps'
times, the file's fingerprint, the consent and network verdicts, ``now`` — so the whole lifecycle is
table-tested (``tests/test_lifecycle.py``).

Pure: no I/O, no logging, standard library only, so that the exception hook can import it inside any
Python program. The gates passed in are asked, never read from disk here.

::

    (no record) ──POST──▶ posting ──200──▶ sent ──core asked──▶ core pending ─▶ core sent/rejected/…
        │                   │  ╲──4xx──▶ rejected
        │                   ╰──5xx, offline──▶ queued (next_attempt) ──…──▶ expired
        ╰── refused before a POST ──▶ invalid / skipped

One :class:`State` is what a record persists and what ``crashd status`` prints; the states a record never
holds (new, failed, pending, held) describe a report in one run or one look.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "UPLOADED_BEFORE",
    "Core",
    "CorePhase",
    "Fingerprint",
    "Gate",
    "Next",
    "Record",
    "StampTimes",
    "State",
    "Status",
    "Step",
    "attempted",
    "due",
    "held",
    "next_step",
    "pending",
    "retry_at",
    "sent_before",
    "settled",
    "status",
    "uploaded_before",
]

# A gate answers None when the next POST may go out, else the reason it waits. Consent is asked with
# whether the report is marked .upload; the network (crashd.network) with whether the POST is a core.
Gate = Callable[[bool], str | None]

UPLOADED_BEFORE = "uploaded before"
MARKED = "marked for upload"


class State(StrEnum):
    """Where a report stands (DESIGN.md §3): records persist the first seven, ``crashd status`` prints all."""

    QUEUED = "queued"  # waiting for its first or next attempt
    POSTING = "posting"  # a POST under way or next: found after a restart, it is resent (daisy answers 409)
    SENT = "sent"
    REJECTED = "rejected"  # final: the server refused it
    EXPIRED = "expired"  # final: unsent for longer than expire_after
    INVALID = "invalid"  # final: crashd refuses to send this file (the reason is in last_error)
    SKIPPED = "skipped"  # final: a kind the crash database does not take (or a file not readable by you)
    # Never in a record:
    NEW = "new"  # nobody marked it .upload and crashd has not tried it
    FAILED = "failed"  # an attempt in this run failed; the report stays pending
    PENDING = "pending"  # not attempted before the deadline
    HELD = "held"  # consent or the network does not allow sending it (yet); kept, never dropped

    @property
    def persisted(self) -> bool:
        """Whether a delivery record may hold this state."""
        return self in _PERSISTED

    @property
    def final(self) -> bool:
        """Whether the report itself is never posted again (its requested core may still be)."""
        return self in _FINAL


_PERSISTED = frozenset(list(State)[:7])
_FINAL = frozenset({State.SENT, State.REJECTED, State.EXPIRED, State.INVALID, State.SKIPPED})


class CorePhase(StrEnum):
    """The sub-state of a core the server asked for, once its report is sent."""

    PENDING = "pending"  # the server asked for the core; not delivered yet
    POSTING = "posting"
    SENT = "sent"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNAVAILABLE = "unavailable"  # asked for, but the report has no usable CoreDump/Architecture

    @property
    def final(self) -> bool:
        return self not in (CorePhase.PENDING, CorePhase.POSTING)


@dataclass(frozen=True)
class Fingerprint:
    """Which file a record is about: a report replaced by a new crash has another one."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Core:
    """The core upload daisy asked for: it has its own attempts and backoff."""

    phase: CorePhase = CorePhase.PENDING
    attempts: int = 0
    next_attempt: float | None = None
    last_error: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Core:
        return cls(
            CorePhase(data["phase"]), int(data["attempts"]), _optional_float(data.get("next_attempt")),
            data.get("last_error"),
        )  # fmt: skip


@dataclass(frozen=True)
class Record:
    """What crashd knows of one report's delivery. Immutable: update with :func:`dataclasses.replace`."""

    name: str
    fingerprint: Fingerprint
    first_seen: float
    phase: State = State.QUEUED
    attempts: int = 0
    next_attempt: float | None = None
    last_error: str | None = None
    oops_id: str | None = None
    core: Core | None = None
    updated: float = field(default=0.0, compare=False)

    def as_json(self) -> dict[str, Any]:
        """The record as saved (what :meth:`from_json` reads). Spelled out: ``dataclasses.asdict``
        deep-copies every value, ~0.25 ms of each save, three saves per report sent."""
        fingerprint, core = self.fingerprint, self.core
        return {
            "name": self.name,
            "fingerprint": {"device": fingerprint.device, "inode": fingerprint.inode,
                            "size": fingerprint.size, "mtime_ns": fingerprint.mtime_ns},
            "first_seen": self.first_seen, "phase": self.phase.value, "attempts": self.attempts,
            "next_attempt": self.next_attempt, "last_error": self.last_error, "oops_id": self.oops_id,
            "core": None if core is None else {
                "phase": core.phase.value, "attempts": core.attempts,
                "next_attempt": core.next_attempt, "last_error": core.last_error,
            },
            "updated": self.updated,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """A record as saved; ValueError for a state no record holds (a record is never "held")."""
        phase = State(data["phase"])
        if not phase.persisted:
            raise ValueError(f"a record is never {phase.value!r}")
        core = data.get("core")
        return cls(
            name=str(data["name"]),
            fingerprint=Fingerprint(**data["fingerprint"]),
            first_seen=float(data["first_seen"]),
            phase=phase,
            attempts=int(data["attempts"]),
            next_attempt=_optional_float(data.get("next_attempt")),
            last_error=data.get("last_error"),
            oops_id=data.get("oops_id"),
            core=None if core is None else Core.from_json(core),
            updated=float(data.get("updated", 0.0)),
        )


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Status:
    """One report's state, with the OOPS id once sent and a reason whenever it is not."""

    name: str
    state: State
    oops_id: str | None = None
    detail: str | None = None
    attempts: int = 0
    next_attempt: float | None = None  # seconds since the epoch
    owner: int | None = field(default=None, compare=False)  # the file's uid, when known (who may see it)

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name, "state": self.state.value, "oops_id": self.oops_id, "detail": self.detail,
            "attempts": self.attempts, "next_attempt": self.next_attempt,
        }  # fmt: skip


class StampTimes(Protocol):
    """The modification times of a report's ``.upload`` and ``.uploaded`` in nanoseconds (None: absent
    or not trusted); :class:`crashd.spool.Stamps` is one."""

    @property
    def upload_ns(self) -> int | None: ...

    @property
    def uploaded_ns(self) -> int | None: ...


# -- was it sent? ---------------------------------------------------------------------------------


def pending(upload_ns: int | None, uploaded_ns: int | None) -> bool:
    """Whether a report waits to be sent: ``.upload`` exists and ``.uploaded`` is missing or strictly older.

    Nanoseconds, not seconds: whoopsie compared whole seconds and resent a report re-marked within the
    second it was sent. Equal times count as sent: file times tick with the kernel clock (a few ms), and
    a loopback upload can finish within one tick of its ``.upload`` — treating that as pending would send
    it twice.
    """
    if upload_ns is None:
        return False
    return uploaded_ns is None or uploaded_ns < upload_ns


def sent_before(upload_ns: int | None, uploaded_ns: int | None, report_mtime_ns: int) -> bool:
    """True when ``.uploaded`` is as new as the report and no newer ``.upload`` asks again.

    An older ``.uploaded`` marks an earlier crash under the same name.
    """
    if uploaded_ns is None or pending(upload_ns, uploaded_ns):
        return False
    return uploaded_ns >= report_mtime_ns


# -- what a record says ---------------------------------------------------------------------------


def due(record: Record) -> float | None:
    """When this record next needs a POST (seconds since the epoch), or None if it needs none."""
    if record.phase in (State.QUEUED, State.POSTING):
        return record.next_attempt or 0.0
    if record.phase is State.SENT and record.core is not None and not record.core.phase.final:
        return record.core.next_attempt or 0.0
    return None


def status(record: Record) -> Status:
    """How a record reads in ``crashd status`` and ``upload-all``."""
    notes = [record.last_error]
    core = record.core
    if record.phase is State.SENT and core is not None:
        if core.phase is CorePhase.SENT:
            notes.append("core sent on request")
        else:
            notes.append(f"core {core.phase.value}" + (f": {core.last_error}" if core.last_error else ""))
    detail = "; ".join(note for note in notes if note) or None
    return Status(record.name, record.phase, record.oops_id, detail, record.attempts, due(record))


def uploaded_before(name: str, oops_id: str | None) -> Status:
    """A report found sent (by crashd or by whoopsie) that needs nothing more: what a run says of it."""
    return Status(name, State.SENT, oops_id, UPLOADED_BEFORE)


def held(shown: Status, reason: str) -> Status:
    """*shown* as held for *reason*: kept, with no time of its own (a gate's change frees it)."""
    return replace(shown, state=State.HELD, detail=reason, next_attempt=None)


# -- what happens next ----------------------------------------------------------------------------


class Step(StrEnum):
    """What a driver does next with a report (:attr:`Next.status` says how it reads meanwhile)."""

    SEND = "send"  # collect it (hooks, .upload) and POST the report
    SEND_CORE = "send core"  # the report went out; POST the core the server asked for
    STAMP = "stamp"  # the report went out; only its .uploaded stamp is missing (a kill came between)
    WAIT = "wait"  # nothing until Next.when (its backoff)
    HELD = "held"  # consent or the network holds it: Next.status.detail says why
    DONE = "done"  # nothing, ever: Next.status.state is sent, rejected, expired, invalid or skipped


@dataclass(frozen=True)
class Next:
    """The decision on one report: the step, the record to work from and how the report reads."""

    step: Step
    record: Record  # the stored record, a fresh one (none, or the file changed), or one restarted
    status: Status
    when: float | None = None  # WAIT: when it falls due
    by_network: bool = False  # HELD: the network holds it, not consent


def next_step(
    name: str,
    record: Record | None,
    fingerprint: Fingerprint,
    stamps: StampTimes,
    now: float,
    *,
    consent: Gate | None = None,
    network: Gate | None = None,
    eager: bool = False,
) -> Next:
    """What happens next to the report whose file has *fingerprint* and *stamps*, knowing *record*.

    A record of another file (the report was replaced by a new crash) counts as none. *consent* None
    asks nobody (``upload-all``: someone asked to send everything); *eager* sends what is not final
    now, whatever its backoff says. *network* is asked only for a POST that is due: a report waiting
    for its backoff waits, and is looked at again then.
    """
    if record is not None and record.fingerprint != fingerprint:
        record = None
    current = record or Record(name=name, fingerprint=fingerprint, first_seen=now)
    core_due = current.phase is State.SENT and due(current) is not None
    if sent_before(stamps.upload_ns, stamps.uploaded_ns, fingerprint.mtime_ns) and not core_due:
        shown = status(current) if record is not None and record.phase is State.SENT else None
        return Next(Step.DONE, current, shown or uploaded_before(name, current.oops_id))
    if record is None or (
        current.phase is State.SENT
        and stamps.uploaded_ns is not None
        and pending(stamps.upload_ns, stamps.uploaded_ns)
    ):  # never tried, or a newer .upload asks again for a report sent before: (re)sent from the start
        if record is not None:
            current = replace(current, phase=State.QUEUED, core=None)
        marked = stamps.upload_ns is not None
        shown = Status(name, State.QUEUED, detail=MARKED) if marked else Status(name, State.NEW)
    else:
        shown = status(current)
    if current.phase.final and current.phase is not State.SENT:
        return Next(Step.DONE, current, shown)  # rejected, expired, invalid or skipped: this file, for good
    if consent is not None and (reason := consent(stamps.upload_ns is not None)) is not None:
        return Next(Step.HELD, current, held(shown, reason))
    when = due(current)
    if not eager and when is not None and when > now:
        return Next(Step.WAIT, current, shown, when)  # backing off: not yet
    core = current.phase is State.SENT
    if network is not None and when is not None and (reason := network(core)) is not None:
        return Next(Step.HELD, current, held(shown, reason), by_network=True)  # not an attempt: no backoff
    if not core:
        return Next(Step.SEND, current, shown)
    return Next(Step.SEND_CORE if when is not None else Step.STAMP, current, shown)


def settled(record: Record, network: Gate | None = None) -> Status:
    """How a record reads after its work: held when its next POST (report or core) waits for *network*."""
    shown = status(record)
    if network is None or due(record) is None:
        return shown
    reason = network(record.phase is State.SENT)
    return shown if reason is None else held(shown, reason)


# -- when to look again ---------------------------------------------------------------------------


def retry_at(shown: Status) -> float | None:
    """When to look at a report again after a pass: its retry, its requested core, or a failure's
    backoff. None: only an event (a new file, a gate's change, a rescan) brings it back."""
    return shown.next_attempt if shown.state in (State.QUEUED, State.SENT, State.FAILED) else None


def attempted(shown: Status) -> Status:
    """A report's outcome for a run that tried it: still queued means it failed in this run (and will be
    tried again)."""
    return replace(shown, state=State.FAILED) if shown.state is State.QUEUED else shown
