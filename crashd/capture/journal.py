"""systemd-coredump's journal entry: read it (journal, ``journalctl``, export text), judge its origin.

:func:`find_entry` is what ``crashd ingest-coredump INSTANCE`` uses: the entries
of ``systemd-coredump@INSTANCE.service`` with coredump's MESSAGE_ID, read
through systemd-python when it is importable, else from ``journalctl -o export``
(Debian's crashd need not pull in python3-systemd). The unit is started when
systemd-coredump exits, and journald may not have stored the entry yet, so a
missing entry is looked for again a few times, briefly (:data:`ENTRY_WAIT`).

:func:`untrusted` decides whether an entry is systemd-coredump's, by the fields
journald itself adds (a client cannot set a ``_``-field). systemd-coredump logs
*after* dropping privileges (coredump.c, ``change_uid_gid()`` before
``sd_journal_sendv()``): as the crashing user, as the ``systemd-coredump``
user for a system uid, or as root when that user is missing — so ``_UID`` is
never the proof; the unit is.
"""

from __future__ import annotations

import contextlib
import pwd
import re
import struct
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from crashd import process
from crashd.errors import CrashdError

__all__ = [
    "ENTRY_WAIT",
    "MESSAGE_ID",
    "InvalidEntry",
    "JournalEntry",
    "NoEntry",
    "find_entry",
    "parse_export",
    "read_journal",
    "read_journalctl",
    "select_entry",
    "untrusted",
]

MESSAGE_ID = b"fc2e22bc6ee647b6b90729ab34a250b1"
MAX_FIELD = 16 << 20  # one journal field (ProcMaps of a big process is a few MiB); DESIGN §7 text bound
MAX_FIELDS = 1024  # fields in one export entry (systemd-coredump writes ~40)
MAX_INLINE_CORE = 2 << 30  # a core stored in the journal itself (Storage=journal)
MAX_ENTRIES = 8  # entries of one instance: there is one; more is a forgery or a bug, refused
ENTRY_WAIT = 5.0
"""Seconds to look for an entry journald has not stored yet (attempts 0.05 s apart, doubling to 0.5 s)."""
JOURNALCTL_TIMEOUT = 120.0  # a journal-stored core is up to 767 MiB of export text
COREDUMP_COMM = b"systemd-coredum"  # /proc/PID/comm: 15 characters of "systemd-coredump"
_FIELD_NAME = re.compile(rb"[A-Z0-9_]{1,64}")
_UNIT = re.compile(rb"systemd-coredump@[A-Za-z0-9:_.\\-]{1,200}\.service")


class InvalidEntry(CrashdError, ValueError):
    """The input is not a usable systemd-coredump entry (exit 4); the message says why."""


class NoEntry(InvalidEntry):
    """No entry for the instance (yet): the one failure worth looking again for."""


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


# -- export text ---------------------------------------------------------------------------------


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


# -- the journal ---------------------------------------------------------------------------------


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
            if len(entries) > MAX_ENTRIES:
                break
        return entries
    finally:
        reader.close()


def read_journalctl(instance: str, files: Sequence[str] | None = None) -> list[JournalEntry]:
    """The same entries as :func:`read_journal`, from ``journalctl -o export`` (no systemd-python).

    The output goes to an unnamed temporary file first (``journalctl`` is bounded by
    :data:`JOURNALCTL_TIMEOUT`), then through :func:`parse_export` and its bounds.
    """
    argv = ["journalctl", "--no-pager", "-q", "-o", "export", f"--lines={MAX_ENTRIES + 1}"]
    argv += [f"--file={name}" for name in files or ()]
    argv += [f"MESSAGE_ID={MESSAGE_ID.decode()}", f"_SYSTEMD_UNIT=systemd-coredump@{instance}.service"]
    with tempfile.TemporaryFile() as out:
        try:
            done = process.run(argv, timeout=JOURNALCTL_TIMEOUT, stdout=out, stderr=process.PIPE, cap=1 << 16)
        except FileNotFoundError:
            raise ImportError("neither systemd-python nor journalctl is available") from None
        if done.status is None:
            raise InvalidEntry(f"journalctl {done.problem}") from None
        if done.status != 0:
            detail = done.output.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
            raise NoEntry(f"journalctl failed (exit {done.status}): {detail[0][:200]}")
        out.seek(0)
        entries: list[JournalEntry] = []
        try:
            for entry in parse_export(out):  # type: ignore[arg-type]
                entries.append(entry)
                if len(entries) > MAX_ENTRIES:
                    break
        except BaseException:
            for entry in entries:
                entry.close()
            raise
        return entries


def select_entry(entries: Iterable[JournalEntry], instance: str | None) -> JournalEntry:
    """The one coredump entry (of *instance*, when given); NoEntry for none, InvalidEntry for several."""
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
    if not found:
        raise NoEntry(f"no systemd-coredump entry {what}")
    raise InvalidEntry(f"{len(found)} systemd-coredump entries {what}")


def find_entry(
    instance: str, files: Sequence[str] | None = None, *, wait: float = ENTRY_WAIT
) -> JournalEntry:
    """The entry of ``systemd-coredump@INSTANCE.service``, looked for again until *wait* seconds
    have passed when it is not there yet (one line on stderr says so). ImportError when
    neither systemd-python nor journalctl can read the journal."""
    try:
        import systemd.journal  # noqa: F401

        read = read_journal
    except ImportError:
        read = read_journalctl
    deadline = time.monotonic() + wait
    delay, announced = 0.05, False
    while True:
        try:
            return select_entry(read(instance, files), instance)
        except (NoEntry, OSError) as error:  # OSError: a journal file not there (yet)
            left = deadline - time.monotonic()
            if left <= 0:
                if isinstance(error, NoEntry):
                    raise
                raise NoEntry(f"cannot read the journal: {error}") from None
        if not announced:
            print(f"crashd: waiting up to {wait:g} s for the journal entry", file=sys.stderr, flush=True)
            announced = True
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.5)


# -- where the entry came from -------------------------------------------------------------------


def coredump_user_uid() -> int | None:
    """The uid of the ``systemd-coredump`` user, as which systemd-coredump logs crashes of system uids."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam("systemd-coredump").pw_uid
    return None


def untrusted(entry: JournalEntry, instance: str | None, coredump_uid: int | None) -> str | None:
    """Why *entry* is not systemd-coredump's own, or None when it is.

    What systemd guarantees (journald adds these; a client's own ``_`` fields are
    dropped): ``_TRANSPORT=journal`` (sd_journal_sendv), ``_SYSTEMD_UNIT`` — the
    sender's cgroup — is the instance ``systemd-coredump@…service``, ``_COMM``
    (when journald could read it) is ``systemd-coredum``, and ``_UID`` is one of
    those systemd-coredump logs as: the crashing uid, the ``systemd-coredump``
    user (*coredump_uid*), or root.
    """
    unit = entry.get("_SYSTEMD_UNIT")
    wanted = f"systemd-coredump@{instance}.service".encode() if instance else None
    if unit is None or not _UNIT.fullmatch(unit) or (wanted is not None and unit != wanted):
        return f"the entry was not logged by systemd-coredump's unit (_SYSTEMD_UNIT={_show(unit)})"
    if entry.get("_TRANSPORT") != b"journal":
        return f"the entry did not come through the journal API (_TRANSPORT={_show(entry.get('_TRANSPORT'))})"
    comm = entry.get("_COMM")
    if comm is not None and comm != COREDUMP_COMM:
        return f"the entry was logged by {_show(comm)}, not systemd-coredump (_COMM)"
    uid, crashing = entry.get("_UID"), entry.get("COREDUMP_UID")
    allowed = {b"0", crashing} | ({str(coredump_uid).encode()} if coredump_uid is not None else set())
    if uid is None or uid not in allowed:
        return f"the entry was logged as uid {_show(uid)}, not by systemd-coredump for uid {_show(crashing)}"
    return None


def _show(value: bytes | None) -> str:
    return "(none)" if value is None else repr(value[:80].decode("utf-8", "replace"))
