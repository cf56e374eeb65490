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
* the core file must be a regular, singly linked, root-owned ``core.*`` file
  directly in the coredump directory, opened ``O_NOFOLLOW`` — an export file or a
  forged entry cannot make crashd embed ``/etc/shadow`` in a user's report;
* the report is the crashing user's only when that user could read the core: a
  process whose real, effective and saved uids differ (setuid) gets a root report.

Input: ``--from-export FILE`` (``journalctl -o export``, binary-safe fields), or
the journal through ``systemd-python`` (``_SYSTEMD_UNIT=systemd-coredump@INSTANCE.service``
and the MESSAGE_ID, both trusted). Every read is bounded.

Exit codes: 0 written, counted (flood rule) or skipped with a printed reason;
2 usage (no input, missing crash dir, no systemd-python); 3 consent off; 4 invalid input.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from crashd.capture.excepthook import Placed, filter_environ, place_report, report_stem

__all__ = [
    "COREDUMP_DIR",
    "MESSAGE_ID",
    "InvalidEntry",
    "JournalEntry",
    "Skipped",
    "add_ingest_coredump_command",
    "cmd_ingest_coredump",
    "ingest",
    "main",
    "parse_export",
    "read_journal",
    "report_fields",
]

MESSAGE_ID = b"fc2e22bc6ee647b6b90729ab34a250b1"
COREDUMP_DIR = Path("/var/lib/systemd/coredump")
EXIT_OK, EXIT_USAGE, EXIT_CONSENT, EXIT_INVALID = 0, 2, 3, 4

MAX_FIELD = 16 << 20  # one journal field (ProcMaps of a big process is a few MiB); DESIGN §7 text bound
MAX_FIELDS = 1024  # fields in one export entry (systemd-coredump writes ~40)
MAX_INLINE_CORE = 2 << 30  # a core stored in the journal itself (Storage=journal)
MAX_STORED_CORE = (2 << 30) * 3 // 4 - (16 << 20)  # base64 grows by 4/3: keep the report under 2 GiB
_CHUNK = 96 * 1024  # → one 128 KiB base64 line per piece
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ELF_MAGIC = b"\x7fELF"
_FIELD_NAME = re.compile(rb"[A-Z0-9_]{1,64}")
_INSTANCE = re.compile(r"[A-Za-z0-9:_.\\-]{1,200}")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class InvalidEntry(ValueError):
    """The input is not a usable systemd-coredump entry (exit 4); the message says why."""


@dataclass(frozen=True)
class Skipped:
    """A crash crashd deliberately does not report (a container's, say), and why."""

    reason: str


@dataclass
class JournalEntry:
    """One journal entry: the first value of each field as bytes; a core stored in the
    journal itself (``COREDUMP``) is kept aside in an unnamed temporary file."""

    fields: dict[str, bytes] = field(default_factory=dict)
    core: BinaryIO | None = None

    def get(self, name: str) -> bytes | None:
        return self.fields.get(name)

    def text(self, name: str) -> str | None:
        value = self.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.core is not None:
            self.core.close()
            self.core = None


# -- input -----------------------------------------------------------------------------------


def parse_export(file: BinaryIO, *, max_field: int = MAX_FIELD) -> Iterator[JournalEntry]:
    """Entries of ``journalctl -o export`` text, streamed; InvalidEntry for malformed input.

    Text fields are ``NAME=value\\n``; binary-safe ones ``NAME\\n`` + 64-bit
    little-endian length + data + ``\\n``; a blank line ends an entry. Every read
    is bounded by *max_field* (the in-journal core by :data:`MAX_INLINE_CORE`,
    spooled to a temporary file).
    """
    entry = JournalEntry()
    count = 0
    while True:
        line = file.readline(max_field + 66)
        if not line or line == b"\n":
            if entry.fields or entry.core:
                yield entry
            entry, count = JournalEntry(), 0
            if not line:
                return
            continue
        if not line.endswith(b"\n"):
            raise InvalidEntry("export: a line is longer than the field limit or the file is cut short")
        count += 1
        if count > MAX_FIELDS:
            raise InvalidEntry(f"export: an entry has more than {MAX_FIELDS} fields")
        name, eq, value = line[:-1].partition(b"=")
        if not _FIELD_NAME.fullmatch(name):
            raise InvalidEntry(f"export: bad field name {name[:64]!r}")
        key = name.decode("ascii")
        if eq:
            entry.fields.setdefault(key, value)
            continue
        size_bytes = file.read(8)
        if len(size_bytes) != 8:
            raise InvalidEntry(f"export: {key}: the length is cut short")
        (size,) = struct.unpack("<Q", size_bytes)
        if key == "COREDUMP":
            if size > MAX_INLINE_CORE:
                raise InvalidEntry(f"export: COREDUMP is {size} bytes, over {MAX_INLINE_CORE}")
            core = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the entry, closed by its close()
            _copy_exactly(file, core, size)
            core.seek(0)
            if entry.core is None:
                entry.core = core
            else:
                core.close()
        else:
            if size > max_field:
                raise InvalidEntry(f"export: {key} is {size} bytes, over the {max_field} bytes limit")
            data = file.read(size)
            if len(data) != size:
                raise InvalidEntry(f"export: {key}: the value is cut short")
            entry.fields.setdefault(key, data)
        if file.read(1) != b"\n":
            raise InvalidEntry(f"export: {key}: no newline after the binary value")


def _copy_exactly(src: BinaryIO, dst: BinaryIO, size: int) -> None:
    left = size
    while left:
        piece = src.read(min(left, 1 << 20))
        if not piece:
            raise InvalidEntry("export: COREDUMP: the value is cut short")
        dst.write(piece)
        left -= len(piece)


def read_journal(instance: str, files: Sequence[str] | None = None) -> list[JournalEntry]:
    """The coredump entries of ``systemd-coredump@INSTANCE.service`` from the journal
    (or from journal *files*), through systemd-python; ImportError without it.

    Values are kept as raw bytes (no conversion: ProcMaps may not be UTF-8), and
    the reader's data threshold is raised to :data:`MAX_FIELD` — its 64 KiB default
    would silently cut ProcMaps.
    """
    from systemd import journal

    class _RawReader(journal.Reader):  # type: ignore[misc,name-defined]
        def _convert_field(self, key: str, value: Any) -> Any:
            return value

    reader = _RawReader(files=list(files)) if files else _RawReader()
    try:
        reader.data_threshold = MAX_FIELD
        reader.add_match(MESSAGE_ID=MESSAGE_ID.decode())
        reader.add_match(_SYSTEMD_UNIT=f"systemd-coredump@{instance}.service")
        entries = []
        for raw in reader:
            entry = JournalEntry()
            for key, value in raw.items():
                value = value[0] if isinstance(value, list) else value
                if key == "COREDUMP" and isinstance(value, bytes):
                    if len(value) >= MAX_FIELD:
                        continue  # cut at the threshold: not the whole core
                    entry.core = tempfile.TemporaryFile()  # noqa: SIM115 - closed by entry.close()
                    entry.core.write(value)
                    entry.core.seek(0)
                elif isinstance(value, bytes):
                    entry.fields[key] = value
                else:
                    entry.fields[key] = str(value).encode()
            entries.append(entry)
            if len(entries) > 8:
                break
        return entries
    finally:
        reader.close()


def _select(entries: Iterator[JournalEntry] | list[JournalEntry], instance: str | None) -> JournalEntry:
    """The one coredump entry (of *instance*, when given); InvalidEntry for none or several."""
    unit = f"systemd-coredump@{instance}.service".encode() if instance else None
    found: list[JournalEntry] = []
    for entry in entries:
        if entry.get("MESSAGE_ID") == MESSAGE_ID and (unit is None or entry.get("_SYSTEMD_UNIT") == unit):
            found.append(entry)
        else:
            entry.close()
    if len(found) == 1:
        return found[0]
    for entry in found:
        entry.close()
    what = f"for systemd-coredump@{instance}.service" if instance else "(name the INSTANCE)"
    count = f"{len(found)} systemd-coredump entries" if found else "no systemd-coredump entry"
    raise InvalidEntry(f"{count} {what}")


# -- mapping ---------------------------------------------------------------------------------


def _owner(entry: JournalEntry, uid: int) -> int:
    """The crashing uid when its real, effective, saved and fs uids agree; else root.

    A setuid program's core holds memory its user may not read; systemd-coredump
    only grants the user access when the uids agree, and so does crashd.
    """
    status = entry.text("COREDUMP_PROC_STATUS") or ""
    for line in status.splitlines():
        if line.startswith("Uid:"):
            ids = set(line.split()[1:])
            return uid if ids == {str(uid)} else 0
    return 0


def _open_core(path: str, coredump_dir: Path) -> tuple[int, os.stat_result] | str:
    """(fd, stat) of the stored core, or the reason it cannot be used."""
    directory, name = os.path.split(path)
    if os.path.normpath(directory) != os.path.normpath(coredump_dir) or not name.startswith("core."):
        return f"COREDUMP_FILENAME {path!r} is not a core.* file in {coredump_dir}"
    try:
        dirfd = os.open(coredump_dir, _DIR)
    except OSError as error:
        return f"{coredump_dir}: {error.strerror}"
    try:
        fd = os.open(name, _READ, dir_fd=dirfd)
    except OSError as error:
        return f"{path}: {error.strerror} (removed by systemd-coredump's clean-up?)"
    finally:
        os.close(dirfd)
    st = os.fstat(fd)
    reason = None
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        reason = f"{path}: not a regular file with one link"
    elif st.st_uid != 0:
        reason = f"{path}: owned by uid {st.st_uid}, not root (systemd-coredump writes cores as root)"
    elif st.st_size > MAX_STORED_CORE:
        reason = f"{path}: {st.st_size} bytes, too large for a 2 GiB report"
    if reason:
        os.close(fd)
        return reason
    os.set_blocking(fd, True)
    return fd, st


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
    entry: JournalEntry, coredump_dir: Path = COREDUMP_DIR
) -> tuple[str, int, list[tuple[str, Any]]] | Skipped:
    """(report stem, owner uid, fields) for *entry*, or :class:`Skipped`; InvalidEntry if unusable.

    The CoreDump value is a lazy :class:`~crashd.report.StoredBinary` (a zstd core),
    a file object (an uncompressed one, gzip-streamed) or absent with the reason in
    ``CoreDumpTruncated``/``CoreDumpUnavailable``.
    """
    from crashd.report import StoredBinary

    if entry.get("_UID") not in (None, b"0"):
        raise InvalidEntry("the entry was not logged by root (systemd-coredump runs as root)")
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
    uid = int(raw_uid)
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
        opened = _open_core(core_path, coredump_dir)
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
    return stem, _owner(entry, uid), fields


def ingest(
    entry: JournalEntry, crash_dir: str | os.PathLike[str], coredump_dir: Path = COREDUMP_DIR
) -> Placed | Skipped:
    """Write (or count, or skip) the report for one coredump entry into *crash_dir*."""
    from crashd.report import write_report

    mapped = report_fields(entry, coredump_dir)
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


# -- command line ----------------------------------------------------------------------------


def add_ingest_coredump_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ingest-coredump`` to cli.py's sub-parsers (mapped to :func:`cmd_ingest_coredump`)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ingest-coredump",
        help="write the report for one systemd-coredump crash",
        description="Turn one systemd-coredump crash into a report in the crash directory: the journal "
        "entry of systemd-coredump@INSTANCE.service, or the entry in a `journalctl -o export` file. A "
        "repeat of an unsent report less than a day old only increments its CrashCounter. Exit 0: written, "
        "counted or skipped (the reason is printed); 3: reporting is switched off; 4: invalid input.",
    )
    parser.add_argument("instance", nargs="?", metavar="INSTANCE", help="the systemd-coredump@ instance")
    parser.add_argument("--from-export", type=Path, metavar="FILE", help="read `journalctl -o export` text")
    parser.add_argument(
        "--journal-file", action="append", metavar="FILE", help="read this journal file (repeatable)"
    )
    parser.add_argument(
        "--coredump-dir", type=Path, default=COREDUMP_DIR, metavar="DIR",
        help=f"where systemd-coredump stores cores (default {COREDUMP_DIR})",
    )  # fmt: skip
    parser.add_argument(
        "--crash-dir", metavar="DIR", help="crash directory (default /var/crash, $APPORT_REPORT_DIR)"
    )
    parser.add_argument(
        "--state-dir", metavar="DIR", help="crashd's state directory (default /var/lib/crashd)"
    )
    return parser


def cmd_ingest_coredump(args: argparse.Namespace) -> int:
    """``crashd ingest-coredump``; see the module docstring for the exit codes."""
    from crashd.config import DEFAULT_CONFIG, ConfigError, load_settings
    from crashd.consent import load_consent

    config = getattr(args, "config", None)
    try:
        settings = load_settings(config, overrides={"crash_dir": args.crash_dir, "state_dir": args.state_dir})
        consent = load_consent(settings.state_dir, config=config or DEFAULT_CONFIG)
    except ConfigError as error:
        return _fail(EXIT_USAGE, f"configuration error: {error}")
    if not consent.report_crashes:
        why = f" ({consent.reason})" if consent.reason else ""
        return _fail(EXIT_CONSENT, f"reporting crashes is switched off{why}: no report written")
    if args.instance is not None and not _INSTANCE.fullmatch(args.instance):
        return _fail(EXIT_USAGE, f"{args.instance!r}: not a unit instance name")
    if not os.path.isdir(settings.crash_dir):
        return _fail(EXIT_USAGE, f"the crash directory {settings.crash_dir} does not exist")
    entry: JournalEntry | None = None
    try:
        if args.from_export is not None:
            try:
                with open(args.from_export, "rb") as f:
                    entry = _select(parse_export(f), args.instance)
            except OSError as error:
                return _fail(EXIT_USAGE, f"{args.from_export}: {error.strerror}")
        elif args.instance is None:
            return _fail(EXIT_USAGE, "name the systemd-coredump INSTANCE or give --from-export FILE")
        else:
            try:
                entries = read_journal(args.instance, args.journal_file)
            except ImportError:
                missing = "systemd-python (python3-systemd) is missing: use --from-export FILE"
                return _fail(EXIT_USAGE, missing)
            entry = _select(entries, args.instance)
        outcome = ingest(entry, settings.crash_dir, args.coredump_dir)
    except InvalidEntry as error:
        return _fail(EXIT_INVALID, str(error))
    finally:
        if entry is not None:
            entry.close()
    if isinstance(outcome, Skipped):
        print(f"skipped: {outcome.reason}")
    elif outcome.action == "counted":
        print(f"counted: {outcome.path} (CrashCounter {outcome.crash_counter}): {outcome.detail}")
    elif outcome.action == "skipped":
        print(f"skipped: {outcome.path}: {outcome.detail}")
    else:
        print(f"written: {outcome.path}" + (f" ({outcome.detail})" if outcome.detail else ""))
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    print(f"crashd: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m crashd.capture.coredump [--config FILE] ingest-coredump ...`` until cli.py has it."""
    parser = argparse.ArgumentParser(prog="crashd")
    parser.add_argument("--config", type=Path, metavar="FILE")
    commands = parser.add_subparsers(dest="command", required=True)
    add_ingest_coredump_command(commands)
    return cmd_ingest_coredump(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
