"""``crashd status``: what crashd knows of every report in the crash directory, sending nothing.

Each report's line comes from its delivery record when one matches the file
(attempts, next attempt, OOPS id, last error), else from the stamps beside it:
sent by someone before, marked for upload, or new. Unsafe files are listed as
invalid with the reason, exactly as an upload would refuse them; a report the
caller may not read (a user running it beside other users' 0640 reports) is
listed as skipped, "not readable by you". Every status carries the file's
owner, so ``Reports1.List`` can show each caller only its own reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from crashd import collector, delivery
from crashd.collector import Gate, State, Status, stamped_id
from crashd.network import NetworkGate
from crashd.spool import OpenReport, Spool
from crashd.state import Fingerprint, StateStore

__all__ = ["survey"]


def survey(
    spool: Spool, store: StateStore, consent: Gate | None = None, network: NetworkGate | None = None
) -> Iterator[Status]:
    """Every report's status, by name, one at a time (100,000 reports are never all in memory); with
    *consent*, those it would not let out read ``held``, with the reason; with *network*
    (:mod:`crashd.network`), so do those whose report or core waits for the network."""
    return (_network_held(_held(status, consent), network) for status in _survey(spool, store))


def _network_held(status: Status, network: NetworkGate | None) -> Status:
    if network is None:
        return status
    core = status.state is State.SENT and status.next_attempt is not None  # only its core is left
    if not core and status.state not in (State.NEW, State.QUEUED, State.POSTING):
        return status
    reason = network(core)
    return status if reason is None else replace(status, state=State.HELD, detail=reason, next_attempt=None)


def _held(status: Status, consent: Gate | None) -> Status:
    if consent is None or status.state not in (State.NEW, State.QUEUED, State.POSTING):
        return status
    reason = consent(status.state is not State.NEW)  # NEW: nobody marked it .upload yet
    return status if reason is None else replace(status, state=State.HELD, detail=reason)


def _survey(spool: Spool, store: StateStore) -> Iterator[Status]:
    """Each report's status with its owner, name by name (the directory is streamed, not listed)."""
    for name in sorted(spool.scan()):
        opened = collector.open_report(spool, name)
        if not isinstance(opened, OpenReport):
            if opened is not None:
                yield opened if opened.owner is not None else replace(opened, owner=spool.owner(name.crash))
            continue
        with opened:
            yield replace(_of_open(spool, store, opened), owner=opened.stat.st_uid)


def _of_open(spool: Spool, store: StateStore, opened: OpenReport) -> Status:
    name = opened.name
    record = store.peek(name.crash)
    if record is not None and record.fingerprint == Fingerprint.of(opened.stat):
        return delivery.status(record)
    stamps = collector.read_stamps(spool, opened)
    if collector.sent_before(stamps, opened.stat):
        return Status(name.crash, State.SENT, stamped_id(spool, opened), "uploaded before")
    if stamps.upload_ns is not None:
        return Status(name.crash, State.QUEUED, detail="marked for upload")
    return Status(name.crash, State.NEW)
