"""The crash directory's writer, shared by both capturers: a new report placed atomically, a repeat counted.

:func:`place_report` is the one way capture puts a report into ``/var/crash``
(through :func:`crashd.fs.place_file`): apport's flood rule, and the rules
for names another user holds beforehand (issue 11). Standard library only,
like :mod:`crashd.capture.excepthook`, which runs inside arbitrary programs.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Literal

from crashd import fs  # standard library only, like this module
from crashd.lifecycle import sent_before  # standard library only, like this module

__all__ = ["FLOOD_WINDOW", "MAX_NAMES", "REPORT_MODE", "Placed", "place_report", "report_names"]

FLOOD_WINDOW = 24 * 3600
"""An unsent report younger than this is counted (CrashCounter) instead of replaced (apport §2.4)."""

MAX_NAMES = 8
"""How many names one report may take when others hold the first ones (:func:`report_names`)."""

REPORT_MODE = 0o640
_PIECE = 1 << 20


@dataclass(frozen=True)
class Placed:
    """What :func:`place_report` did: ``written`` a report, ``counted`` a repeat, or ``skipped``."""

    action: Literal["written", "counted", "skipped"]
    path: str
    detail: str = ""
    crash_counter: int | None = None


def report_names(stem: str) -> list[str]:
    """The names a report for *stem* may take, in order: ``STEM.crash``, then ``EXE~2.UID.crash`` …

    Why more than one: ``/var/crash`` is world-writable, so another user can hold a report's name
    (a FIFO, a file, a directory) before the crash. A writer that can neither count into nor replace
    what holds a name takes the next one; the uid stays the name's last part, as the spool requires.
    """
    exe, _, uid = stem.rpartition(".")
    names = [stem + ".crash"] + [f"{exe}~{n}.{uid}.crash" for n in range(2, MAX_NAMES + 1)]
    return [name for name in names if len(name) - len(".crash") + len(".uploaded") <= 255]  # NAME_MAX


def place_report(
    crash_dir: str | os.PathLike[str],
    stem: str,
    write: Callable[[BinaryIO], None],
    *,
    owner_uid: int,
    now: float | None = None,
) -> Placed:
    """Write ``STEM.crash`` atomically, or count it as a repeat (apport's flood rule).

    The flood rule: an existing report for the same executable and uid that is
    unsent (no ``.uploaded`` at least as new as it and its ``.upload``) and
    younger than :data:`FLOOD_WINDOW` gets ``CrashCounter`` incremented (atomic
    rewrite, same owner, mode and mtime — so the day counts from the first crash)
    and no new report is written: a crash loop cannot fill the disk. A sent or
    older report is replaced.

    Squatted names (issue 11): anything else holding the name — a FIFO, a
    symlink, a hard link, another user's file — is never opened. A writer
    running as root replaces it (``rename`` over the entry: the squatter's inode
    is not touched); a user's writer replaces only its own entries and otherwise
    takes the next of :func:`report_names`, applying the same rules there. Only
    when every name is held (or a rename is refused in a race) is the crash
    skipped, with the reason.

    New files: ``O_CREAT|O_EXCL|O_NOFOLLOW`` mode 0 under a hidden name, owner
    (as root: *owner_uid*, group whoopsie when it exists) and mode 0640 set on the
    descriptor, fsync, rename into place — readers never see half a report.
    """
    now = time.time() if now is None else now
    held: list[str] = []
    dirfd = os.open(os.fspath(crash_dir), fs.DIR_FLAGS)
    try:
        for name in report_names(stem):
            path = os.path.join(os.fspath(crash_dir), name)
            verdict = _judge_name(dirfd, name, owner_uid)
            if isinstance(verdict, str):
                held.append(f"{name}: {verdict}")
                continue
            if verdict is None:  # free, or held by something this writer replaces
                return _create_or_skip(dirfd, name, path, write, owner_uid)
            fd, st = verdict
            try:
                if _sent(dirfd, name.removesuffix(".crash"), st) or now - st.st_mtime >= FLOOD_WINDOW:
                    outcome = _create_or_skip(dirfd, name, path, write, owner_uid)
                    if outcome.action == "written":
                        return Placed("written", path, "replaced an older or already sent report")
                    return outcome
                counter = _rewrite_counter(dirfd, name, fd, st)
            finally:
                os.close(fd)
            if counter is None:
                return Placed("skipped", path, "the report changed while it was counted")
            return Placed("counted", path, "an unsent report less than a day old exists", counter)
    finally:
        os.close(dirfd)
    first = os.path.join(os.fspath(crash_dir), stem + ".crash")
    return Placed("skipped", first, "every name this report may take is held: " + "; ".join(held))


def _judge_name(dirfd: int, name: str, owner_uid: int) -> str | tuple[int, os.stat_result] | None:
    """What holds *name*: None (free, or replaceable by this writer), an open report of *owner_uid*
    to count into ``(fd, stat)``, or why this writer must take another name."""
    try:
        seen = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    me = os.geteuid()
    plain = stat.S_ISREG(seen.st_mode) and seen.st_nlink == 1
    ours = seen.st_uid == owner_uid or (me == 0 and seen.st_uid == 0)  # root owns setuid crashes' reports
    if plain and ours and (me == 0 or seen.st_uid == me):
        try:
            opened = fs.open_regular(name, dir_fd=dirfd, one_link=True)
        except fs.UnsafeFileError:
            return "changed while it was looked at"
        except OSError as error:
            return f"cannot be opened ({error.strerror})"
        if (opened.stat.st_dev, opened.stat.st_ino) == (seen.st_dev, seen.st_ino):
            return opened.fd, opened.stat
        opened.close()
        return "changed while it was looked at"
    if stat.S_ISDIR(seen.st_mode):
        return "a directory holds it"
    if me == 0 or seen.st_uid == me:
        return None  # root replaces a squatter; a user replaces only what it owns
    return f"held by uid {seen.st_uid} ({_kind(seen)})"


def _kind(st: os.stat_result) -> str:
    if stat.S_ISREG(st.st_mode):
        return "a file" if st.st_nlink == 1 else "a hard-linked file"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISFIFO(st.st_mode):
        return "a FIFO"
    return "not a regular file"


def _create_or_skip(
    dirfd: int, name: str, path: str, write: Callable[[BinaryIO], None], owner_uid: int
) -> Placed:
    """Create the report at *name*; a rename refused in a race (a directory or another user's entry
    appeared) skips the crash rather than retrying with a *write* that may have consumed its input."""
    try:
        fs.place_file(dirfd, name, write, mode=REPORT_MODE, owner=(owner_uid, _whoopsie_gid()))
    except OSError as error:
        if error.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.EPERM, errno.EACCES):
            why = f"the name was taken while the report was written ({error.strerror})"
            return Placed("skipped", path, why)
        raise
    return Placed("written", path)


def _sent(dirfd: int, stem: str, report: os.stat_result) -> bool:
    """Whether a current ``.uploaded`` says this report went out (then a new crash replaces it)."""
    try:
        uploaded = os.stat(stem + ".uploaded", dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(uploaded.st_mode) or uploaded.st_uid not in (report.st_uid, 0):
        return False
    try:
        upload = os.stat(stem + ".upload", dir_fd=dirfd, follow_symlinks=False)
        upload_ns = upload.st_mtime_ns if stat.S_ISREG(upload.st_mode) else None
    except FileNotFoundError:
        upload_ns = None
    return sent_before(upload_ns, uploaded.st_mtime_ns, report.st_mtime_ns)


def _whoopsie_gid() -> int:
    """The group apport gives reports (so whoopsie/crashd may read them); -1: leave it."""
    try:
        return grp.getgrnam("whoopsie").gr_gid
    except KeyError:
        return -1


def _rewrite_counter(dirfd: int, name: str, fd: int, st: os.stat_result) -> int | None:
    """Copy the report line by line (bounded pieces: a CoreDump line may be GiBs) with
    ``CrashCounter`` replaced by old + 1 (a report without one counts as 1)."""
    result = [1]

    def write(out: BinaryIO) -> None:
        old = 1
        with fs.reader(os.dup(fd)) as src:
            line_start = True
            while piece := src.readline(_PIECE):
                if line_start and piece.startswith(b"CrashCounter:"):
                    with contextlib.suppress(ValueError):
                        old = max(old, int(piece[13:].strip()))
                else:
                    out.write(piece)
                line_start = piece.endswith(b"\n")
            if not line_start:
                out.write(b"\n")
        result[0] = old + 1
        out.write(b"CrashCounter: %d\n" % result[0])

    ok = fs.place_file(
        dirfd, name, write, mode=stat.S_IMODE(st.st_mode) or REPORT_MODE, owner=(st.st_uid, st.st_gid),
        times=(st.st_atime_ns, st.st_mtime_ns), expect=st,
    )  # fmt: skip
    return result[0] if ok else None
