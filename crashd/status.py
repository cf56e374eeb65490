"""``crashd status``: what crashd knows of every report in the crash directory, sending nothing.

Each report's line comes from its delivery record when one matches the file
(attempts, next attempt, OOPS id, last error), else from the stamps beside it:
sent by someone before, marked for upload, or new. Unsafe files are listed as
invalid with the reason, exactly as an upload would refuse them.
"""

from __future__ import annotations

from dataclasses import replace

from crashd import collector, delivery
from crashd.collector import Gate, State, Status, stamped_id
from crashd.network import NetworkGate
from crashd.spool import OpenReport, Spool
from crashd.state import Fingerprint, StateStore


def survey(
    spool: Spool, store: StateStore, consent: Gate | None = None, network: NetworkGate | None = None
) -> list[Status]:
    """Every report's status; with *consent*, those it would not let out read ``held``, with the reason;
    with *network* (:mod:`crashd.network`), so do those whose report or core waits for the network."""
    statuses = [_network_held(_held(status, consent), network) for status in _survey(spool, store)]
    return statuses


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


def _survey(spool: Spool, store: StateStore) -> list[Status]:
    statuses = []
    for name in spool.report_names():
        opened = collector.open_report(spool, name)
        if not isinstance(opened, OpenReport):
            if opened is not None:
                statuses.append(opened)
            continue
        with opened:
            record = store.peek(name.crash)
            if record is not None and record.fingerprint == Fingerprint.of(opened.stat):
                statuses.append(delivery.status(record))
                continue
            stamps = collector.read_stamps(spool, opened)
            if collector.sent_before(stamps, opened.stat):
                statuses.append(Status(name.crash, State.SENT, stamped_id(spool, opened), "uploaded before"))
            elif stamps.upload_ns is not None:
                statuses.append(Status(name.crash, State.QUEUED, detail="marked for upload"))
            else:
                statuses.append(Status(name.crash, State.NEW))
    return statuses
