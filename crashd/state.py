"""Per-report delivery state: one small JSON record per report in ``STATE_DIR/reports/``.

A record's file name is a hash of the report's name (``<sha256 prefix>.json``), so any name the
crash directory accepts — up to 255 bytes, or not UTF-8 — has a record; the name itself is inside.
Records written by older versions as ``<report name>.json`` are still read and moved to the new
name on their next save. Records of reports that are gone are removed by :meth:`StateStore.collect`,
so the directory holds at most one record per report in the crash directory.

A record says how far a report got — attempts, when to try next, the last
error, the OOPS id, the core upload — so that a restart, or a ``kill -9`` at any
point, neither loses a report nor sends it again without need. A record's file is
created once, atomically (temporary file, rename), padded with spaces; the report's
later states overwrite it in place (:func:`crashd.fs.rewrite_file`: one ``pwrite`` of at
most a page, which a killed process cannot tear, under a ``flock`` that readers share, so
``crashd status`` never sees half of one). Durability is grouped: a save without *sync*
is in the page cache — it survives ``kill -9`` — and :meth:`StateStore.flush` makes every
such save durable at once (one fsync per record written, one of the directory). A power
cut before that may lose or tear a record — a tear could even mix two valid versions into
one that parses, so every record carries a CRC-32 of itself (``check``) — and a torn
record is unreadable and started afresh: the worst that does is one resend, which daisy
answers 409 "already reported".
A record carries the
report's fingerprint (device, inode, size, mtime): when the file changes — a
new crash of the same program replaced it — the old record is stale and is
started afresh.

What a record holds and what it means (:class:`~crashd.lifecycle.Record`, the states it passes
through) is :mod:`crashd.lifecycle`'s; this module only keeps records on disk.

The state directory is crashd's own (root, 0700); a user flushing their own
reports without access to it gets a :class:`StateStore` with no directory,
which keeps records in memory for that run only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from crashd import fs
from crashd.lifecycle import Fingerprint, Record

log = logging.getLogger(__name__)

MAX_RECORD = 64 * 1024  # a record is a few hundred bytes; anything bigger is not ours
_HASHED_NAME = re.compile(r"[0-9a-f]{40}\.json")  # StateStore.record_path's names


class StateStore:
    """Records by report name, in *directory* (created 0700 if missing) or, with None, in memory.

    The state directory above it is 0711: users may reach the consent file in it, not the records.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory: dict[str, Record] = {}
        # Saved without sync, not yet durable: record name -> its file was created (a new name
        # in the directory, which needs the directory's fsync too). Shared by delivery threads.
        self._unsynced: dict[str, bool] = {}
        self._legacy: set[str] = set()  # names whose record was read from the pre-hash file name
        # Whether the directory held any record under a pre-hash name when opened (_remove_leftovers
        # looks): without one (every store written since), a report with no record costs one failed
        # open, not two (issue 15).
        self._has_legacy = False
        self._lock = threading.Lock()
        if directory is not None:
            directory.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
            if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):  # root's records, as seen by a user
                raise PermissionError(errno.EACCES, "not readable and writable by this user", str(directory))
            self._remove_leftovers()

    @classmethod
    def open(cls, state_dir: Path) -> StateStore:
        """The store under *state_dir*, or an in-memory one (with a log line) when it cannot be used."""
        try:
            return cls(state_dir / "reports")
        except OSError as error:
            log.info("state directory %s is not usable (%s): delivery state is kept for this run only",
                     state_dir, error.strerror or error)  # fmt: skip
            return cls(None)

    @classmethod
    def reader(cls, state_dir: Path) -> StateStore:
        """The store under *state_dir* for reading only: nothing is created; unreadable means empty."""
        store = cls(None)
        directory = state_dir / "reports"
        if os.access(directory, os.R_OK | os.X_OK):
            store.directory = directory
            store._has_legacy = True  # not looked at: both names are read
        return store

    def load(self, name: str, fingerprint: Fingerprint, now: float) -> Record:
        """The record for *name*; a fresh one if there is none, it is unreadable, or the report changed."""
        record = self._memory.get(name) if self.directory is None else self._read(name)
        if record is not None and record.fingerprint == fingerprint:
            return record
        if record is not None:
            log.info("%s changed since crashd last saw it: its delivery starts afresh", name)
        return Record(name=name, fingerprint=fingerprint, first_seen=now)

    def peek(self, name: str) -> Record | None:
        """The stored record, whatever the report's state on disk (for ``crashd status``)."""
        return self._memory.get(name) if self.directory is None else self._read(name)

    def save(self, record: Record, now: float, *, sync: bool = True) -> Record:
        """Write the record (in place, or atomically as a new file); with *sync*, durably.

        Without *sync* the record survives a killed process (it is in the page
        cache) but not a power cut; :meth:`sync` or :meth:`flush` makes it durable
        later. Delivery uses that to keep fsyncs out of its exchanges on the wire
        (:mod:`crashd.wire`), and ``upload-all`` to make them once per run.
        """
        record = replace(record, updated=now)
        if self.directory is None:
            self._memory[record.name] = record
            return record
        data = _with_check(json.dumps(record.as_json(), sort_keys=True).encode())
        created = not fs.rewrite_file(self._record_file(record.name), data, mode=0o600)
        if record.name in self._legacy:
            self._drop_legacy(record.name)
            self._legacy.discard(record.name)
        with self._lock:
            self._unsynced[record.name] = self._unsynced.get(record.name, False) or created
        if sync:
            self.sync(record.name)
        return record

    def sync(self, name: str) -> None:
        """Make the record for *name* (saved without *sync*) durable: fsync it, and the directory when
        its file is new. Nothing to do for a record that is durable already."""
        with self._lock:
            created = self._unsynced.pop(name, None)
        if self.directory is None or created is None:
            return
        try:
            fs.fsync_path(self._record_file(name))
            if created:
                fs.fsync_path(self.directory, is_dir=True)
        except BaseException:
            with self._lock:  # still to do: the next flush tries again
                self._unsynced[name] = self._unsynced.get(name, False) or created
            raise

    def flush(self) -> int:
        """Make every record saved without *sync* durable: one fsync per record file, then one of the
        directory if any file is new; how many records that was. A record removed meanwhile is skipped."""
        with self._lock:
            pending, self._unsynced = self._unsynced, {}
        if self.directory is None or not pending:
            return 0
        try:
            for name in pending:
                with contextlib.suppress(FileNotFoundError):
                    fs.fsync_path(self._record_file(name))
            if any(pending.values()):
                fs.fsync_path(self.directory, is_dir=True)
        except BaseException:
            with self._lock:
                for name, created in pending.items():
                    self._unsynced[name] = self._unsynced.get(name, False) or created
            raise
        return len(pending)

    def collect(self, exists: Callable[[str], bool]) -> int:
        """Remove the records of reports that are gone (``exists(name)`` is False); how many went.

        Streamed (one record in memory at a time) and safe against a report that appears meanwhile:
        its record, if removed, is only started afresh. Files that are not records are left alone.
        """
        if self.directory is None:
            gone = [name for name in self._memory if not exists(name)]
            for name in gone:
                del self._memory[name]
            return len(gone)
        removed = 0
        try:
            entries = os.scandir(self.directory)
        except PermissionError:  # root's records, as a user flushes their own reports: not theirs to collect
            return 0
        with entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.endswith(".json"):
                    continue
                record = self._read_path(entry.path)
                if record is not None and exists(record.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            log.info("removed %d delivery record(s) of reports that are gone", removed)
        return removed

    def record_path(self, name: str) -> Path:
        """The record file of report *name*: bounded whatever the name's length or bytes."""
        return Path(self._record_file(name))

    def _record_file(self, name: str) -> str:
        """:meth:`record_path` as a string, as delivery uses it several times a report (a ``Path`` and its
        conversions back cost more than the digest)."""
        assert self.directory is not None
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]
        return os.path.join(self.directory, f"{digest}.json")

    def _legacy_path(self, name: str) -> Path | None:
        """Where versions before hashed names kept the record (None where that name cannot exist)."""
        assert self.directory is not None
        if len(f"{name}.json".encode("utf-8", "surrogateescape")) > 255 or name.startswith("."):
            return None
        return self.directory / f"{name}.json"

    def _drop_legacy(self, name: str) -> None:
        legacy = self._legacy_path(name)
        if legacy is not None and legacy != self.record_path(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(legacy)

    def _read(self, name: str) -> Record | None:
        """The stored record, or None; anything that is not a sound record of ours is started afresh."""
        record = self._read_path(self._record_file(name), name)
        if record is None and self._has_legacy and (legacy := self._legacy_path(name)) is not None:
            record = self._read_path(legacy, name)  # written before record names were hashed
            if record is not None and record.name == name:
                self._legacy.add(name)  # moved to the hashed name by its next save
        return record if record is None or record.name == name else None

    def _read_path(self, path: str | Path, name: str | None = None) -> Record | None:
        """The record in *path* (of report *name*, for the log), or None if absent or unsound."""
        try:
            document = json.loads(fs.read_bounded(path, MAX_RECORD, locked=True))
            if not isinstance(document, dict):
                raise TypeError("not a JSON object")
            _verify(document)
            return Record.from_json(document)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ENAMETOOLONG:
                return None
            log.warning("state record %s is unreadable (%s): starting it afresh", _shown(path, name), error)
            return None
        except (ValueError, KeyError, TypeError, RecursionError) as error:
            log.warning("state record %s is unreadable (%s): starting it afresh", _shown(path, name), error)
            return None

    def _remove_leftovers(self) -> None:
        """Temporary files of writes that a kill interrupted: never complete, never needed; and, in the
        same look at the directory, whether any record still has its pre-hash name.

        Only old ones: another crashd process may be writing a fresh one right now.
        """
        assert self.directory is not None
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < time.time() - 3600:
                            os.unlink(entry.path)
                elif entry.name.endswith(".json") and not _HASHED_NAME.fullmatch(entry.name):
                    self._has_legacy = True


def _shown(path: str | Path, name: str | None) -> str:
    """A record file as the log names it: with its report's name, when known."""
    return f"{path} ({name})" if name else str(path)


def _with_check(data: bytes) -> bytes:
    """The JSON object *data* with its CRC-32 as a last key: a record torn by a power cut is told."""
    return data[:-1] + b', "check": %d}' % zlib.crc32(data)


def _verify(document: dict[str, object]) -> None:
    """ValueError unless the record's ``check`` matches it (records of earlier versions have none)."""
    check = document.pop("check", None)
    if check is not None and check != zlib.crc32(json.dumps(document, sort_keys=True).encode()):
        raise ValueError("torn: its check does not match its content")
