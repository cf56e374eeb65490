"""``crashd ingest-coredump``: one systemd-coredump journal entry → one apport-format report.

systemd-coredump (``systemd-coredump@INSTANCE.service``) stores the core, usually
as ``/var/lib/systemd/coredump/core.*.zst``, and logs one journal entry with
``MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1`` and ``COREDUMP_*`` fields. The
drop-in ``systemd-coredump@.service.d/crashd.conf`` starts
``crashd-coredump@INSTANCE.service`` when that succeeds, which runs this command
(the pattern apport 2.28 uses, research/apport.md §6).

Mapping (research §6.4): ExecutablePath ← COREDUMP_EXE, ProcCmdline, ProcCwd,
ProcEnviron (allow-list), ProcStatus, ProcMaps, Signal/SignalName, Date ←
COREDUMP_TIMESTAMP, BootId ← _BOOT_ID, Unit/UserUnit, and CoreDump ← the stored
core. Differences from apport, on purpose:

* a ``.zst`` core goes in as its compressed stream, read in 96 KiB pieces and
  never decompressed (flat memory for any core size);
* ``COREDUMP_TRUNCATED=1`` really omits the core and says so in
  ``CoreDumpTruncated`` (apport's check looks at the wrong dict, §6.5);
* the entry must be systemd-coredump's by the fields journald adds itself
  (``_SYSTEMD_UNIT`` of the instance, ``_TRANSPORT``, ``_COMM``, a ``_UID``
  systemd-coredump logs as; :func:`crashd.capture.journal.untrusted`) — not by
  ``_UID=0``: systemd-coredump logs after dropping to the crashing user;
* the core file must be a regular, singly linked, root-owned ``core.*`` file
  directly in the coredump directory, named for this crash's uid and pid, opened
  ``O_NOFOLLOW`` — an export file or a forged entry cannot make crashd embed
  ``/etc/shadow`` or another crash's core in a user's report;
* the report is the crashing user's only when that user could read the core
  (:func:`core_owner`: every uid and gid match, and the process was dumpable);
  otherwise it is root's;
* crashes of crashd's own units (``crashd.service``, ``crashd-coredump@…``) are
  skipped: crashd never reports itself, so never in a loop.

The entry comes from :mod:`crashd.capture.journal` (an export file, or the
journal itself); every read is bounded. The command's options, wording and exit
codes are :mod:`crashd.cli.ingest_coredump`'s.
"""

from __future__ import annotations

import base64
import os
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crashd import fs, process
from crashd.capture.crashdir import Placed, place_report
from crashd.capture.excepthook import filter_environ, report_stem
from crashd.capture.journal import (
    MESSAGE_ID,
    InvalidEntry,
    JournalEntry,
    coredump_user_uid,
    parse_export,
    untrusted,
)
from crashd.report import Limits, size_text

__all__ = [
    "COREDUMP_DIR",
    "MESSAGE_ID",
    "InvalidEntry",
    "JournalEntry",
    "Skipped",
    "core_owner",
    "ingest",
    "parse_export",
    "report_fields",
]

COREDUMP_DIR = Path("/var/lib/systemd/coredump")

# base64 grows by 4/3, and a text value may take its bound beside the core: the report stays within
# the report-file bound (DESIGN.md §7 rule 3), whose one default is Limits'.
MAX_STORED_CORE = Limits().file_size * 3 // 4 - Limits().text_value
CRASHD_UNITS = re.compile(r"crashd\.service|crashd-coredump@.*\.service")  # crashd's own: never reported
_CHUNK = 96 * 1024  # → one 128 KiB base64 line per piece
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ELF_MAGIC = b"\x7fELF"
# auxv entry types (elf.h): what systemd-coredump itself weighs before letting a user read a core
_AT_NULL, _AT_UID, _AT_EUID, _AT_GID, _AT_EGID, _AT_SECURE = 0, 11, 12, 13, 14, 23


@dataclass(frozen=True)
class Skipped:
    """A crash crashd deliberately does not report (a container's, say), and why."""

    reason: str


# -- mapping ---------------------------------------------------------------------------------


def core_owner(entry: JournalEntry) -> tuple[int, str]:
    """(the report's owner, why): the crashing uid only when the process was an ordinary one of that user.

    The rule (issue 11, DESIGN.md §7 rule 7; apport's and systemd-coredump's own):
    real, effective, saved and filesystem uid *and* gid in ``COREDUMP_PROC_STATUS``
    all equal ``COREDUMP_UID``/``COREDUMP_GID``, and the process was dumpable —
    ``COREDUMP_DUMPABLE=1`` (the kernel's ``%d``) and ``COREDUMP_PROC_AUXV``
    without ``AT_SECURE`` and with matching ids, whichever of the two systemd
    logged (systemd 252 in Debian logs both, and weighs them alike before it
    grants the user its ACL on the core), else (no evidence either way) no
    capabilities in ``CapPrm``/``CapEff``. Anything else —
    a setuid or setgid program, a capability binary, missing fields — gives root:
    its core holds memory the user may not read.
    """
    uid, gid = _number(entry.get("COREDUMP_UID")), _number(entry.get("COREDUMP_GID"))
    if uid is None or gid is None:
        return 0, "no numeric COREDUMP_UID/COREDUMP_GID"
    if uid == 0:
        return 0, "root's crash"
    status = _status_lines(entry.get("COREDUMP_PROC_STATUS") or b"")
    for line, want in (("Uid", uid), ("Gid", gid)):
        ids = status.get(line, [])
        if len(ids) != 4 or any(value != str(want) for value in ids):
            return 0, f"{line}: {' '.join(ids) or '(missing)'} — not all four are {want} (setuid/setgid)"
    dumpable, auxv = entry.get("COREDUMP_DUMPABLE"), entry.get("COREDUMP_PROC_AUXV")
    if dumpable is not None and dumpable != b"1":
        return 0, f"COREDUMP_DUMPABLE={_shown(dumpable)}: the kernel did not let the user dump it"
    if auxv is not None:
        values = _parse_auxv(auxv)
        if values is None:
            return 0, "COREDUMP_PROC_AUXV cannot be read"
        if values.get(_AT_SECURE, 1) != 0:
            return 0, "AT_SECURE is set (a secure-execution program)"
        for key, want in ((_AT_UID, uid), (_AT_EUID, uid), (_AT_GID, gid), (_AT_EGID, gid)):
            if values.get(key, want) != want:
                return 0, "the ids the program was started with differ (auxv)"
    if dumpable is not None or auxv is not None:
        return uid, "dumpable, not a secure-execution program"
    for line in ("CapPrm", "CapEff"):
        if status.get(line, ["?"]) != ["0" * 16]:
            return 0, f"{line}: {' '.join(status.get(line, [])) or '(missing)'} — not dumpable by the user"
    return uid, "ids and capabilities of an ordinary process"


def _number(value: bytes | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and len(value) <= 10 else None


def _shown(value: bytes) -> str:
    return value[:20].decode("utf-8", "replace")


def _status_lines(status: bytes) -> dict[str, list[str]]:
    """``Name:\tvalue…`` lines of /proc/PID/status → {name: the value's words}."""
    return {name: value.split() for name, value in process.parse_status(status).items()}


def _parse_auxv(auxv: bytes) -> dict[int, int] | None:
    """/proc/PID/auxv → {type: value}, read as 64-bit pairs or else as 32-bit pairs; None when neither
    reads as an auxiliary vector (small types, one AT_NULL at the end)."""
    for size in (8, 4):
        pair = 2 * size
        if len(auxv) % pair:
            continue
        words = struct.unpack(f"<{len(auxv) // size}{'Q' if size == 8 else 'I'}", auxv)
        pairs = list(zip(words[::2], words[1::2], strict=True))
        ends = [index for index, (kind, _) in enumerate(pairs) if kind == _AT_NULL]
        if not ends:
            continue
        head, tail = pairs[: ends[0]], pairs[ends[0] :]
        if all(kind < 64 for kind, _ in head) and all(kind == _AT_NULL for kind, _ in tail):
            return dict(head)
    return None


def _core_name_matches(name: str, entry: JournalEntry) -> bool:
    """``core.COMM.UID.BOOTID.PID.TIMESTAMP[.EXT]`` (coredump.c, make_filename()) naming this crash's uid
    and pid: an entry cannot point at another crash's core."""
    parts = name.split(".")
    return (
        len(parts) >= 6 and parts[0] == "core"
        and parts[2].encode() == entry.get("COREDUMP_UID")
        and parts[4].encode() == entry.get("COREDUMP_PID")
    )  # fmt: skip


def _core_refusal(st: os.stat_result) -> str | None:
    if st.st_uid != 0:
        return f"is owned by uid {st.st_uid}, not root (systemd-coredump writes cores as root)"
    if st.st_size > MAX_STORED_CORE:
        return f"is {st.st_size} bytes, too large for a {size_text(Limits().file_size)} report"
    return None


def _open_core(path: str, coredump_dir: Path, entry: JournalEntry) -> tuple[int, os.stat_result] | str:
    """(fd, stat) of the stored core, or the reason it cannot be used.

    As systemd-coredump writes it: a regular file with one link, owned by root
    (the unit writes it before dropping privileges), directly in *coredump_dir*,
    named for this crash's uid and pid.
    """
    directory, name = os.path.split(path)
    if os.path.normpath(directory) != os.path.normpath(coredump_dir) or not name.startswith("core."):
        return f"COREDUMP_FILENAME {path!r} is not a core.* file in {coredump_dir}"
    if not _core_name_matches(name, entry):
        return f"COREDUMP_FILENAME {path!r} does not name this crash's COREDUMP_UID and COREDUMP_PID"
    try:
        dirfd = os.open(coredump_dir, fs.DIR_FLAGS)
    except OSError as error:
        return f"{coredump_dir}: {error.strerror}"
    try:
        opened = fs.open_regular(name, dir_fd=dirfd, one_link=True, refusal=_core_refusal, shown=path)
    except fs.UnsafeFileError as error:
        return str(error)
    except OSError as error:
        return f"{path}: {error.strerror} (removed by systemd-coredump's clean-up?)"
    finally:
        os.close(dirfd)
    return opened.fd, opened.stat


class _StoredLines:
    """The core's bytes as base64 lines (each its own base64 string) joined with ``\\n``,
    read with ``pread`` in 96 KiB pieces: exactly *size* bytes, or InvalidEntry (the
    file changed while it was read). Owns *fd*; :meth:`close` releases it even when
    the lines were never read (a repeat that was only counted)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def __iter__(self) -> Iterator[bytes]:
        done = 0
        try:
            while done < self.size:
                piece = os.pread(self.fd, min(_CHUNK, self.size - done), done)
                if not piece:
                    raise InvalidEntry("the core file shrank while it was read")
                yield (b"\n" if done else b"") + base64.b64encode(piece)
                done += len(piece)
        finally:
            self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def report_fields(
    entry: JournalEntry, coredump_dir: Path = COREDUMP_DIR, instance: str | None = None
) -> tuple[str, int, list[tuple[str, Any]]] | Skipped:
    """(report stem, owner uid, fields) for *entry*, or :class:`Skipped`; InvalidEntry if unusable.

    The entry must be systemd-coredump's (:func:`~crashd.capture.journal.untrusted`,
    of *instance* when given). The CoreDump value is a lazy
    :class:`~crashd.report.StoredBinary` (a zstd core), a file object (an
    uncompressed one, gzip-streamed) or absent with the reason in
    ``CoreDumpTruncated``/``CoreDumpUnavailable``.
    """
    from crashd.report import StoredBinary

    refused = untrusted(entry, instance, coredump_user_uid())
    if refused:
        raise InvalidEntry(refused)
    unit = entry.text("COREDUMP_UNIT") or ""
    if CRASHD_UNITS.fullmatch(unit):
        return Skipped(f"a crash of crashd itself ({unit}): crashd never reports itself")
    if entry.get("COREDUMP_CONTAINER_CMDLINE") is not None:
        return Skipped("the crash happened in a container (COREDUMP_CONTAINER_CMDLINE)")
    if entry.get("COREDUMP_ROOT") not in (None, b"/"):
        return Skipped("the process had its own root directory (COREDUMP_ROOT): a namespaced crash")
    raw_exe, raw_uid = entry.get("COREDUMP_EXE"), entry.get("COREDUMP_UID")
    if not raw_exe or not raw_uid or not raw_uid.isdigit():
        raise InvalidEntry("the entry has no COREDUMP_EXE or no numeric COREDUMP_UID")
    try:
        exe = raw_exe.decode("utf-8")
        stem = report_stem(exe, int(raw_uid))
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidEntry(f"COREDUMP_EXE: {error}") from None
    stamp = entry.get("COREDUMP_TIMESTAMP") or entry.get("__REALTIME_TIMESTAMP") or b""
    when = int(stamp) / 1e6 if stamp.isdigit() else time.time()
    fields: list[tuple[str, Any]] = [
        ("ProblemType", "Crash"),
        ("Date", time.asctime(time.localtime(when))),
        ("ExecutablePath", exe),
    ]
    for key, name in (
        ("ProcCmdline", "COREDUMP_CMDLINE"), ("ProcCwd", "COREDUMP_CWD"),
        ("ProcStatus", "COREDUMP_PROC_STATUS"), ("ProcMaps", "COREDUMP_PROC_MAPS"),
        ("Signal", "COREDUMP_SIGNAL"), ("SignalName", "COREDUMP_SIGNAL_NAME"),
        ("BootId", "_BOOT_ID"), ("Unit", "COREDUMP_UNIT"), ("UserUnit", "COREDUMP_USER_UNIT"),
    ):  # fmt: skip
        value = entry.text(name)
        if value:
            fields.append((key, value.rstrip("\n")))
    environ = entry.text("COREDUMP_ENVIRON")
    if environ is not None:
        fields.append(("ProcEnviron", filter_environ(environ.splitlines())))
    core_path = entry.text("COREDUMP_FILENAME")
    if entry.get("COREDUMP_TRUNCATED") == b"1":
        fields.append(("CoreDumpTruncated", "systemd-coredump cut the core at its size limit; not attached"))
    elif entry.core is not None:
        fields.append(("CoreDump", entry.core))
    elif core_path:
        opened = _open_core(core_path, coredump_dir, entry)
        if isinstance(opened, str):
            fields.append(("CoreDumpUnavailable", opened))
        else:
            fd, st = opened
            magic = os.pread(fd, 4, 0)
            if magic == _ZSTD_MAGIC:
                fields.append(("CoreDump", StoredBinary(_StoredLines(fd, st.st_size))))
            elif magic == _ELF_MAGIC:
                fields.append(("CoreDump", os.fdopen(fd, "rb")))
            else:
                os.close(fd)
                kind = os.path.splitext(core_path)[1] or "an unknown format"
                why = f"the core is stored as {kind}, which crashd cannot embed"
                fields.append(("CoreDumpUnavailable", why))
    else:
        fields.append(("CoreDumpUnavailable", "systemd-coredump stored no core (Storage=none?)"))
    return stem, core_owner(entry)[0], fields


def ingest(
    entry: JournalEntry,
    crash_dir: str | os.PathLike[str],
    coredump_dir: Path = COREDUMP_DIR,
    instance: str | None = None,
) -> Placed | Skipped:
    """Write (or count, or skip) the report for one coredump entry into *crash_dir*."""
    from crashd.report import write_report

    mapped = report_fields(entry, coredump_dir, instance)
    if isinstance(mapped, Skipped):
        return mapped
    stem, owner, fields = mapped
    try:
        return place_report(crash_dir, stem, lambda f: write_report(f, fields), owner_uid=owner)
    finally:
        for _, value in fields:  # a core fd not consumed (the repeat was only counted)
            if hasattr(value, "close"):
                value.close()
            elif isinstance(getattr(value, "body", None), _StoredLines):
                value.body.close()
