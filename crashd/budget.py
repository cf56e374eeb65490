"""Duplicate collapse and the disk budget of the crash directory, as pure decisions.

A crash loop must neither fill ``/var/crash`` nor send the same crash a thousand
times. Two rules, decided here over small value objects and applied by
:mod:`crashd.tidy` (which counts, rewrites and removes):

**Duplicates.** Reports with the same :func:`duplicate_key` — apport's crash
signature (:func:`crashd.signature.crash_signature`) from the same executable
and package version, owned by the same user — within ``duplicate_window`` seconds of the first one form a
*group*: its first report is *kept* and sent; every later one is a *duplicate*,
counted into the kept report (``CrashCounter`` and ``DuplicatesCollapsed``, which
go out with it) and removed. When the kept report was already sent, a later
duplicate inside the window is counted in the group (``crashd status`` shows it)
and removed, never sent: the crash database already has that crash, and a crash
loop must not send it a thousand times. After the window a new crash of the same
signature starts a new group and is sent: a loop that goes on for days is
reported once a day, with its count.

**Budget.** When the reports take more than ``max_use`` bytes (like
coredump.conf's MaxUse), the ones that need no more sending (sent, rejected,
expired) and duplicates go first, oldest first; a unique unsent report only when
nothing else is left to remove — and then the oldest one, so the newest crashes
stay. Reports in use are counted but never chosen.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from crashd.signature import crash_signature

GiB = 1024**3
DEFAULT_CAP = GiB  # the automatic budget: 10 % of the file system, at most this...
DEFAULT_FLOOR = 1024**2  # ...and at least this: on a tiny file system 10 % would not hold one report
DEFAULT_SHARE = 0.10
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

# The text fields a duplicate key and the counters are computed from (crash_signature's inputs).
KEY_FIELDS = (
    "ProblemType", "ExecutablePath", "Package", "Signal", "AssertionMessage", "StacktraceTop", "Traceback",
    "_PythonExceptionQualifier", "Stacktrace", "Failure", "MachineType", "dmi.bios.version", "OopsText",
)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """What the decisions need to know of one report in the crash directory."""

    name: str
    key: str | None  # duplicate_key(); None: it has no signature, so it is never a duplicate
    size: int  # bytes it takes on disk
    mtime: float  # when it was written (seconds since the epoch)
    sent: bool  # needs no more sending: sent, or refused or expired for good
    busy: bool = False  # being worked on right now: counted, never removed
    uploaded: float | None = None  # when its name's ``.uploaded`` stamp was written, if there is one


@dataclass(frozen=True)
class Group:
    """Reports of one crash (one key) inside one window: the kept report and what was counted into it."""

    key: str
    kept: str  # the report that is (or was) sent for the whole group
    since: float  # when the first of them was written: the window starts here
    sent: bool = False
    collapsed: int = 0  # duplicates counted into the kept report before it went out
    after_sent: int = 0  # duplicates removed after it went out: only `crashd status` shows them

    @property
    def total(self) -> int:
        return self.collapsed + self.after_sent


@dataclass(frozen=True)
class Collapse:
    """The decision: every group after it, and which reports are duplicates (name → key)."""

    groups: dict[str, Group]
    duplicates: dict[str, str]

    def of(self, key: str) -> list[str]:
        """The duplicates of one group, oldest first (the order they were decided in)."""
        return [name for name, dup_key in self.duplicates.items() if dup_key == key]


@dataclass(frozen=True)
class Removal:
    name: str
    reason: str  # "sent", "duplicate" or "unsent, over the budget"


def duplicate_key(fields: Mapping[str, str], owner: int) -> str | None:
    """What makes two reports one crash: signature, ExecutablePath, package version — and the same
    owner, so that no user's report can make another user's crash a duplicate (and have it removed).
    None without a signature (an unsymbolised stack says nothing about sameness). A digest: signatures
    can be long."""
    signature = crash_signature(fields)
    if signature is None:
        return None
    package = fields.get("Package", "").split()
    version = package[1] if len(package) > 1 else ""
    text = "\0".join((str(owner), signature, fields.get("ExecutablePath", ""), version))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def collapse(
    entries: Iterable[Entry],
    groups: Mapping[str, Group],
    window: float,
    now: float,
) -> Collapse:
    """Which reports are duplicates of which kept report, given the groups known from before.

    Oldest first: the first report of a key (or the first after its group's window
    closed) heads a new group. A report with the head's name is the head itself —
    unless the head was sent and this one was not: then a new crash replaced the
    sent file, and it is a duplicate too (a ``.uploaded`` stamp newer than the group's
    start says its kept report was sent, even when crashd sent it after deciding).
    When an unsent kept report is gone, the next report of its key heads the group
    instead. Sent reports are never duplicates (they cost nothing more to keep than
    their bytes, which the budget handles). Groups whose window has closed and whose
    kept report is gone are forgotten.
    """
    entries = sorted(entries, key=lambda entry: (entry.mtime, entry.name))
    present = {entry.name for entry in entries}
    groups = dict(groups)
    duplicates: dict[str, str] = {}
    for entry in entries:
        if entry.key is None:
            continue
        group = groups.get(entry.key)
        stamped = entry.uploaded is not None and group is not None and entry.uploaded >= group.since
        if group is not None and not group.sent and entry.name == group.kept and stamped:
            group = groups[entry.key] = replace(group, sent=True)  # stamped after the group began: sent
        if group is not None and not group.sent and group.kept not in present:
            group = None  # the unsent kept report is gone (removed by hand?): nothing to count into
        if group is not None and entry.name == group.kept and (entry.sent or not group.sent):
            groups[entry.key] = replace(group, sent=group.sent or entry.sent)
            continue
        inside = group is not None and abs(entry.mtime - group.since) < window
        if inside and not entry.sent:
            duplicates[entry.name] = entry.key
            continue
        if inside:
            continue  # sent before crashd tidied: leave it be
        groups[entry.key] = Group(entry.key, entry.name, entry.mtime, sent=entry.sent)
    live = {key: kept for key, kept in groups.items() if kept.kept in present or now < kept.since + window}
    return Collapse(live, duplicates)


def fit(entries: Iterable[Entry], max_use: int, duplicates: Collection[str] = ()) -> list[Removal]:
    """What to remove, in order, so that the reports take at most *max_use* bytes.

    Sent (or otherwise finished) reports and duplicates first, oldest first; then
    unique unsent reports, oldest first. Busy reports count but are never chosen,
    so the result may still be over the budget while they are in use.
    """
    entries = list(entries)
    total = sum(entry.size for entry in entries)
    if total <= max_use:
        return []

    def reason(entry: Entry) -> str:
        if entry.name in duplicates:
            return "duplicate"
        return "sent" if entry.sent else "unsent, over the budget"

    def rank(entry: Entry) -> tuple[int, float, str]:
        return (0 if entry.sent or entry.name in duplicates else 1, entry.mtime, entry.name)

    removals = []
    for entry in sorted((entry for entry in entries if not entry.busy), key=rank):
        if total <= max_use:
            break
        removals.append(Removal(entry.name, reason(entry)))
        total -= entry.size
    return removals


def counted(fields: Mapping[str, str]) -> int:
    """How many crashes a report stands for: its ``CrashCounter`` (apport's), else 1."""
    try:
        return max(1, int(fields.get("CrashCounter", "1").strip()))
    except ValueError:
        return 1


def parse_size(text: str) -> int:
    """``10M``, ``1G``, ``512K``, ``1.5GiB``, ``4096``: bytes (powers of 1024, as coredump.conf's MaxUse)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError("must be a size: bytes, or a number with K, M, G or T (powers of 1024)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])


def max_use_bytes(setting: str, filesystem_size: int) -> int:
    """The budget in bytes: the setting, or with ``auto`` 10 % of the file system, at least 1 MiB and
    at most 1 GiB."""
    if setting.strip().lower() == "auto":
        return min(DEFAULT_CAP, max(DEFAULT_FLOOR, int(filesystem_size * DEFAULT_SHARE)))
    return parse_size(setting)
