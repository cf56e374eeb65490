"""Applying :mod:`crashd.budget`'s decisions to the crash directory: count, rewrite, remove, record.

The thin side of the two rules: it looks at every report once (opened safely by
the spool, parsed once per file version and remembered), asks :mod:`crashd.budget`
what is a duplicate and what must go, and then acts:

- a kept report that is not sent yet is rewritten (atomically, by the spool) with
  ``CrashCounter`` raised by every crash its duplicates stood for and
  ``DuplicatesCollapsed`` by their number, so the crash database receives the
  count with it; its delivery record follows it to the new file;
- a duplicate is removed only once counted, and only while its name still is the
  file that was judged (:meth:`crashd.spool.Spool.remove`);
- reports over the budget are removed in the order :func:`crashd.budget.fit` says.

Every decision is one log line, and the groups and the last removals are kept in
``STATE_DIR/duplicates.json`` for ``crashd status``. Reports being delivered right
now (``busy``) are never rewritten or removed; they wait for the next sweep.

Past ~400 lines on purpose: the sweep and the admission of a new report share what was judged
(the groups, the reports seen, the room left), which is this module's state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from crashd import budget, collector, fs
from crashd.budget import Entry, Group
from crashd.lifecycle import Fingerprint, State, sent_before
from crashd.report import DEFAULT_LIMITS, Limits, Report, ReportError, read_report, write_report
from crashd.spool import OpenReport, ReportName, Spool, Stamps, UnsafeFileError
from crashd.state import StateStore

log = logging.getLogger(__name__)

LEDGER = "duplicates.json"
MAX_LEDGER = 4 * 1024 * 1024
KEEP_REMOVALS = 100  # the last removals `crashd status` lists
_FINISHED = (State.SENT, State.REJECTED, State.EXPIRED)
_COUNTERS = ("CrashCounter", "DuplicatesCollapsed")


@dataclass(frozen=True)
class _Seen:
    """What one version of one report file said: parsed once, reused while the file is unchanged."""

    fingerprint: Fingerprint
    key: str | None
    crashes: int  # its CrashCounter


@dataclass
class Tidy:
    """Duplicate collapse and the disk budget for one crash directory (settings ``duplicate_window``,
    ``max_use``). ``sweep()`` is called before reports are sent: by upload-all, and by the daemon
    whenever a new report arrived."""

    spool: Spool
    store: StateStore
    state_dir: Path | None  # where the ledger lives; None: this run only
    window: float = 86400.0
    max_use: str = "auto"
    limits: Limits = DEFAULT_LIMITS
    clock: Callable[[], float] = time.time
    _seen: dict[str, _Seen] = field(default_factory=dict)  # reports that have a duplicate key
    _keyless: set[int] = field(default_factory=set)  # _mark()s of report versions that have none
    _groups: dict[str, Group] | None = None
    _removed: list[dict[str, Any]] = field(default_factory=list)
    waiting: set[str] = field(default_factory=set)  # duplicates the last sweep could not count yet
    _room: int | None = None  # bytes left under the budget after the last sweep; None: sweep first
    _admitted: int = 0  # reports admitted without a sweep since the last one
    swept_ns: int = 0  # when the last sweep began, by the file clock: what changed before, it saw
    ADMIT_LIMIT = 1000  # then a full sweep again (one in 64 was a slow send in 64: a p99 of 28 ms)

    def __call__(self, busy: Collection[str] = (), fresh: Collection[str] | None = None) -> set[str]:
        """:meth:`sweep` for the daemon: the reports not to send now — removed, or duplicates that wait
        for their kept report to come free (it was *busy*, or could not be rewritten). With *fresh*, the
        names of the only reports new since the last sweep: when :meth:`admit` finds them unique and
        within the budget, that is the answer without a sweep. A failure is logged and holds nothing
        back: sending goes on."""
        try:
            if fresh and self.admit(fresh):
                return set(self.waiting)
            removed = self.sweep(busy)
            return removed | self.waiting
        except Exception:  # a bug here must not stop a report from being sent, nor the daemon
            log.exception("%s: duplicate collapse and disk budget failed", self.spool.path)
            return set()

    def admit(self, fresh: Collection[str], max_size: int | None = None) -> bool:
        """Whether the reports *fresh* — the only ones made or replaced since the last sweep — leave
        nothing to collapse or remove, judged on them alone: each has no duplicate key, or a key no
        other report and no group has (nor a name a group keeps), and they fit in the room the last
        sweep left, each counted twice its size (its enrichment rewrites it larger; the next sweep
        counts the truth). Then they are remembered as the sweep would have (their groups, their bytes) and
        True returned; a sweep per new report was O(reports in the directory) before each send. False
        (nothing remembered): a sweep decides. At most :attr:`ADMIT_LIMIT` reports between sweeps. With
        *max_size*, a report larger than that (judged on the opened file's ``fstat``) is not read here:
        False (the daemon's loop judges only small reports itself, whatever was swapped in meanwhile).
        """
        if self._room is None or self._groups is None or self._admitted + len(fresh) > self.ADMIT_LIMIT:
            return False
        keys = {judged.key for judged in self._seen.values()} | set(self._groups)
        kept = {group.kept for group in self._groups.values()}
        seen: dict[str, _Seen] = {}
        groups: dict[str, Group] = {}
        keyless: set[int] = set()
        size = 0
        for filename in fresh:
            if filename in self._seen or filename in kept:
                return False  # a new crash under a known name: the sweep's rules for that
            opened = self._open(ReportName.parse(filename))
            if opened is None:
                continue  # gone, or not a report crashd judges: nothing for it to decide
            with opened:
                if max_size is not None and opened.stat.st_size > max_size:
                    return False
                judged = self._read(opened)
                size += 2 * disk_use(opened.stat)
                if judged.key is None:
                    keyless.add(_mark(opened))
                    continue
                if judged.key in keys:
                    return False  # maybe a duplicate: the sweep decides
                keys.add(judged.key)
                seen[filename] = judged
                groups[judged.key] = Group(judged.key, filename, opened.stat.st_mtime)
        if size > self._room:
            return False
        self._room -= size
        self._admitted += len(fresh)
        self._seen.update(seen)
        self._keyless |= keyless
        self._groups = {**self._groups, **groups}  # saved with the next sweep's change: each has no
        return True  # duplicate yet, so `crashd status` would list none of them

    def sweep(self, busy: Collection[str] = ()) -> set[str]:
        """Collapse duplicates, then fit the budget; the names of the reports removed.

        Files are looked at one at a time (a crash directory may hold 100,000), and
        opened again to be acted on: only the very file that was judged is changed.
        Memory stays small however many reports there are (issue 11, robustness 7):
        a report without a duplicate key is remembered as one number, and every
        report's size, stamps and record are gathered only when the directory is over
        its budget.
        """
        self.swept_ns = fs.file_clock_ns()
        now = self.clock()
        keyed: dict[str, Entry] = {}
        seen: dict[str, _Seen] = {}
        keyless: set[int] = set()
        total = 0
        for name in self.spool.scan():
            opened = self._open(name)
            if opened is None:
                continue
            with opened:
                total += disk_use(opened.stat)
                mark = _mark(opened)
                if mark in self._keyless:
                    keyless.add(mark)  # unchanged, and never a duplicate: not parsed again
                    continue
                judged = self._judge(opened)
                if judged.key is None:
                    keyless.add(mark)
                    continue
                seen[name.crash] = judged
                keyed[name.crash] = self._entry(opened, judged, name.crash in busy)
        self._seen, self._keyless = seen, keyless
        groups = self._load() if self._groups is None else self._groups
        removals = len(self._removed)
        decision = budget.collapse(keyed.values(), groups, self.window, now)
        groups, removed = dict(decision.groups), set()
        for key, group in decision.groups.items():
            duplicates = [name for name in decision.of(key) if name not in busy]
            if duplicates and group.kept not in busy:
                groups[key], gone = self._collapse(group, duplicates)
                removed |= gone
        still = {name for name in decision.duplicates if name not in removed}
        self.waiting = still
        limit = budget.max_use_bytes(self.max_use, _filesystem_size(self.spool.path))
        if total > limit:  # over the budget: now every report's size, age and state are needed
            left = list(self._every_entry(busy, removed))
            for removal in budget.fit(left, limit, still):
                if self._remove(removal.name, f"over the {limit}-byte budget ({removal.reason})", now):
                    removed.add(removal.name)
                    self.waiting.discard(removal.name)
            self._seen = {name: judged for name, judged in self._seen.items() if judged.key is not None}
        if groups != self._groups or len(self._removed) != removals or removed:
            self._groups = groups
            self._save()  # only on a change: a daemon sweeping on every new report writes nothing else
        self._room = None if removed or total > limit else limit - total
        self._admitted = 0
        return removed

    def _open(self, name: ReportName) -> OpenReport | None:
        try:
            report = collector.open_report(self.spool, name)
        except PermissionError:
            return None  # another user's report, as that user runs upload-all: not theirs to judge
        return report if isinstance(report, OpenReport) else None

    def _every_entry(self, busy: Collection[str], removed: Collection[str]) -> Iterator[Entry]:
        """Every report still there, for the budget; their judgements kept for :meth:`_judged`."""
        for name in self.spool.scan():
            if name.crash in removed:
                continue
            opened = self._open(name)
            if opened is None:
                continue
            with opened:
                judged = self._seen[name.crash] = self._judge(opened)
                yield self._entry(opened, judged, name.crash in busy)

    def _judge(self, opened: OpenReport) -> _Seen:
        """What the report says for the decisions: remembered while the file is unchanged."""
        judged = self._seen.get(opened.name.crash)
        if judged is None or judged.fingerprint != Fingerprint.of(opened.stat):
            judged = self._read(opened)
        return judged

    def _entry(self, opened: OpenReport, judged: _Seen, busy: bool) -> Entry:
        name, st = opened.name.crash, opened.stat
        stamps = collector.read_stamps(self.spool, opened)
        uploaded = None if stamps.uploaded_ns is None else stamps.uploaded_ns / 1e9
        finished = self._finished(opened, stamps)
        return Entry(name, judged.key, disk_use(st), st.st_mtime, finished, busy, uploaded)

    def _judged(self, name: str) -> OpenReport | None:
        """The report *name* again, if it still is the file judged in this sweep."""
        opened = collector.open_report(self.spool, ReportName.parse(name))
        if not isinstance(opened, OpenReport):
            return None
        seen = self._seen.get(name)
        if seen is None or seen.fingerprint != Fingerprint.of(opened.stat):
            opened.close()
            return None  # changed since: the next sweep judges it afresh
        return opened

    def _read(self, opened: OpenReport) -> _Seen:
        fingerprint = Fingerprint.of(opened.stat)
        try:
            with opened.file() as file:
                fields = _key_fields(read_report(file, limits=self.limits, name=opened.name.crash))
        except ReportError:
            return _Seen(fingerprint, None, 1)  # not a report crashd can read: unique, never counted
        return _Seen(fingerprint, budget.duplicate_key(fields, opened.stat.st_uid), budget.counted(fields))

    def _finished(self, opened: OpenReport, stamps: Stamps) -> bool:
        """Needs no more sending: sent (stamp or record) with no core upload still due, or refused or
        expired for good."""
        record = self.store.peek(opened.name.crash)
        if record is not None and record.fingerprint == Fingerprint.of(opened.stat):
            return record.phase in _FINISHED and (record.core is None or record.core.phase.final)
        return sent_before(stamps.upload_ns, stamps.uploaded_ns, opened.stat.st_mtime_ns)

    def _collapse(self, group: Group, duplicates: list[str]) -> tuple[Group, set[str]]:
        """Count *duplicates* into the group's kept report (unless it went out already), then remove them."""
        crashes = sum(self._seen[name].crashes for name in duplicates)
        if not group.sent:
            kept = self._judged(group.kept)
            if kept is None:
                return group, set()  # changed meanwhile: the next sweep decides again
            with kept:
                if not self._count_into(kept, crashes, len(duplicates)):
                    return group, set()  # not counted: nothing is removed; the next sweep tries again
        if group.sent:
            why = f"duplicate of {group.kept}, which was sent already: counted, not sent again"
        else:
            why = f"duplicate of {group.kept}: counted into it (CrashCounter, DuplicatesCollapsed)"
        removed = {name for name in duplicates if self._remove(name, why, self.clock())}
        if group.sent:
            return replace(group, after_sent=group.after_sent + len(removed)), removed
        return replace(group, collapsed=group.collapsed + len(duplicates)), removed

    def _count_into(self, kept: OpenReport, crashes: int, reports: int) -> bool:
        """Rewrite the kept report with its counters raised; False if it could not be (logged)."""
        name = kept.name.crash
        try:
            with kept.file() as file:
                report = read_report(file, limits=self.limits, name=name)
                fields = _key_fields(report, _COUNTERS)
                counter = budget.counted(fields) + crashes
                collapsed = _number(fields.get("DuplicatesCollapsed")) + reports

                def write(out: BinaryIO) -> None:
                    old = [(key, collector._stored(report, key)) for key in report if key not in _COUNTERS]
                    write_report(out, [*old, ("CrashCounter", str(counter)),
                                       ("DuplicatesCollapsed", str(collapsed))])  # fmt: skip

                replaced = self.spool.replace_report(kept, write)
        except (OSError, ReportError, UnsafeFileError) as error:
            log.warning("%s: cannot count its duplicates into it: %s", name, error)
            return False
        if replaced is None:
            return False  # a newer crash took the name meanwhile
        with replaced:
            self._follow(kept, replaced)
        log.info("%s: kept for its crash; CrashCounter %d, DuplicatesCollapsed %d", name, counter, collapsed)
        return True

    def _follow(self, old: OpenReport, new: OpenReport) -> None:
        """The kept report's delivery record (attempts, backoff) stays with its rewritten file."""
        record = self.store.peek(old.name.crash)
        if record is not None and record.fingerprint == Fingerprint.of(old.stat):
            with contextlib.suppress(OSError):
                self.store.save(replace(record, fingerprint=Fingerprint.of(new.stat)), self.clock())
        self._seen.pop(old.name.crash, None)

    def _remove(self, name: str, why: str, now: float) -> bool:
        report = self._judged(name)
        if report is None:
            log.info("%s: not removed (%s): it changed or vanished meanwhile", name, why)
            return False
        with report:
            try:
                gone = self.spool.remove(report)
            except OSError as error:
                log.warning("%s: cannot remove it (%s): %s", name, why, error.strerror or error)
                return False
        if not gone:
            log.info("%s: not removed (%s): a newer crash took its name", name, why)
            return False
        log.info("%s: removed: %s", name, why)
        self._seen.pop(name, None)
        self._removed = [*self._removed, {"name": name, "reason": why, "when": now}][-KEEP_REMOVALS:]
        return True

    def _load(self) -> dict[str, Group]:
        ledger = read_ledger(self.state_dir)
        self._removed = ledger.removed
        return ledger.groups

    def _save(self) -> None:
        if self.state_dir is None:
            return
        groups = self._groups or {}
        # vars(): a group's fields are plain values, so its __dict__ is what asdict's deep copy would make
        # (~15 µs a group: a sweep of 200 new reports writes 200 groups).
        document = {"groups": [vars(group) for group in groups.values()], "removed": self._removed}
        data = json.dumps(document, sort_keys=True).encode()
        try:
            with fs.directory(self.state_dir) as fd:
                fs.place_file(fd, LEDGER, data, mode=0o600)
        except OSError as error:
            where = self.state_dir / LEDGER
            log.warning("cannot record duplicates in %s: %s", where, error.strerror or error)
            self.state_dir = None  # once is enough; counts stay in the reports and this run's memory


@dataclass(frozen=True)
class Ledger:
    """What ``STATE_DIR/duplicates.json`` holds: the groups, and the last removals."""

    groups: dict[str, Group]
    removed: list[dict[str, Any]]

    def lines(self) -> Iterator[str]:
        """What ``crashd status`` prints about duplicates and removals."""
        for group in self.groups.values():
            if group.total:
                late = f", {group.after_sent} after it was sent (not sent again)" if group.after_sent else ""
                yield f"{group.kept}: {group.total} duplicate(s) collapsed{late}"
        for removal in self.removed:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(removal["when"]))
            yield f"{removal['name']}: removed {when}: {removal['reason']}"

    def as_json(self) -> dict[str, object]:
        return {"duplicates": [asdict(group) for group in self.groups.values()], "removed": self.removed}


def read_ledger(state_dir: Path | None) -> Ledger:
    """The ledger, or an empty one when there is none or it cannot be read (logged: counts are lost,
    never a report)."""
    if state_dir is None:
        return Ledger({}, [])
    path = state_dir / LEDGER
    try:
        document = json.loads(fs.read_bounded(path, MAX_LEDGER))
        groups = {item["key"]: Group(**item) for item in document["groups"]}
        removed = [dict(item) for item in document["removed"] if {"name", "reason", "when"} <= item.keys()]
        return Ledger(groups, removed[-KEEP_REMOVALS:])
    except FileNotFoundError:
        return Ledger({}, [])
    except PermissionError:
        return Ledger({}, [])  # not root: status shows the reports, not the ledger
    except (OSError, UnsafeFileError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("%s is unreadable (%s): duplicate counts start afresh", path, error)
        return Ledger({}, [])


def disk_use(st: os.stat_result) -> int:
    """Bytes a report takes on disk, as ``du`` counts them: its allocated blocks (a sparse file takes
    little room however large it claims to be; the size bound refuses it anyway)."""
    return st.st_blocks * 512


def _mark(opened: OpenReport) -> int:
    """One number for one version of one report file (its name and fingerprint), kept for the reports
    that have no duplicate key: ~50 bytes each instead of a parsed entry's ~400."""
    st = opened.stat
    return hash((opened.name.crash, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def _filesystem_size(path: str) -> int:
    vfs = os.statvfs(path)
    return vfs.f_blocks * vfs.f_frsize


def _key_fields(report: Report, keys: Collection[str] = (*budget.KEY_FIELDS, *_COUNTERS)) -> dict[str, str]:
    """The few text fields the decisions read (never a binary one, never the whole report)."""
    fields = {}
    for key in keys:
        entry = report.entries.get(key)
        if entry is not None and not entry.binary:
            fields[key] = report.text_bytes(key).decode("utf-8", "surrogateescape")
    return fields


def _number(value: str | None) -> int:
    try:
        return max(0, int((value or "0").strip()))
    except ValueError:
        return 0
