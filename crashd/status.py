"""``crashd status``: what crashd knows of every report in the crash directory, sending nothing.

Each report's line is what :func:`crashd.lifecycle.next_step` says of it — the
decision the daemon's next look would act on: from its delivery record when one
matches the file (attempts, next attempt, OOPS id, last error), else from the
stamps beside it: sent by someone before, marked for upload, or new. Unsafe files are listed as
invalid with the reason, exactly as an upload would refuse them; a report the
caller may not read (a user running it beside other users' 0640 reports) is
listed as skipped, "not readable by you". Every status carries the file's
owner, so ``Reports1.List`` can show each caller only its own reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace

from crashd import collector, lifecycle
from crashd.collector import stamped_id
from crashd.lifecycle import UPLOADED_BEFORE, Fingerprint, Gate, Status
from crashd.spool import OpenReport, Spool
from crashd.state import StateStore

__all__ = ["survey"]


def survey(
    spool: Spool,
    store: StateStore,
    consent: Gate | None = None,
    network: Gate | None = None,
) -> Iterator[Status]:
    """Every report's status, by name, one at a time (100,000 reports are never all in memory); with
    *consent*, those it would not let out read ``held``, with the reason; with *network*
    (:mod:`crashd.network`), so do those whose report or core is due and waits for the network."""
    for name in sorted(spool.scan()):
        opened = collector.open_report(spool, name)
        if not isinstance(opened, OpenReport):
            if opened is not None:
                yield opened if opened.owner is not None else replace(opened, owner=spool.owner(name.crash))
            continue
        with opened:
            shown = _of_open(spool, store, opened, consent, network, time.time())
            yield replace(shown, owner=opened.stat.st_uid)


def _of_open(
    spool: Spool,
    store: StateStore,
    opened: OpenReport,
    consent: Gate | None,
    network: Gate | None,
    now: float,
) -> Status:
    name = opened.name.crash
    stamps = collector.read_stamps(spool, opened)
    step = lifecycle.next_step(
        name, store.peek(name), Fingerprint.of(opened.stat), stamps, now, consent=consent, network=network
    )
    shown = step.status
    if shown.detail == UPLOADED_BEFORE and shown.oops_id is None:  # sent by someone: its stamp has the id
        return replace(shown, oops_id=stamped_id(spool, opened))
    return shown
