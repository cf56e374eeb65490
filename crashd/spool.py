"""The crash directory, handled as hostile ground.

``/var/crash`` is mode 3777: any local user can put a symlink to ``/etc/shadow``
there, a hard link, a FIFO that blocks readers, a directory named ``x.crash`` or
a file named for another uid — the root of a decade of apport and whoopsie CVEs
(research/apport.md §7).  So (DESIGN.md §7): every file is opened once,
relative to the directory's descriptor, ``O_NOFOLLOW|O_NONBLOCK``, and judged
by ``fstat`` of that descriptor (refusals raise :class:`UnsafeFileError`); new
files are created ``O_EXCL`` under a random hidden name, given owner and mode
through the descriptor and renamed into place.  Nothing is chown'd by path.

Names follow apport: ``NAME.crash`` is the report, ``NAME.upload`` asks for it
to be sent, ``NAME.uploaded`` says it was sent and holds the OOPS id.  Each
stamp is judged on its own (:meth:`Spool.stamps`): one planted by another user,
or that is not a regular file, is ignored and named, and never hides the
other; whoopsie's own ``.uploaded`` (owned by its system user) counts as sent.

A report whose allocated size is far below its length (:func:`sparse_refusal`)
is refused on ``fstat``, before a byte is read: root must never copy a user's
holes as data.  Every reader or rewriter of a user's file applies that one test.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import pwd
import re
import secrets
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from stat import S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFMT, S_IFSOCK, S_ISLNK, S_ISREG
from stat import S_IMODE as stat_mode
from typing import TYPE_CHECKING, BinaryIO, Self

from crashd.errors import CrashdError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "MAX_REPORT_SIZE",
    "STAMP_MODE",
    "OpenFile",
    "OpenReport",
    "ReportName",
    "Spool",
    "Stamps",
    "UnsafeFileError",
    "open_file",
    "sparse_refusal",
]

MAX_REPORT_SIZE = 2 * 1024**3
"""Default bound on a report file (DESIGN.md §7 rule 3)."""

LEGACY_UPLOADER = "whoopsie"
"""The system user of the uploader crashd replaces: its ``.uploaded`` stamps count as sent (see
:meth:`Spool.stamps`). Only root and that user can create a file it owns, so a stamp it owns is its own.
A module constant and a :class:`Spool` argument, so tests can let a throwaway user play it."""

STAMP_MODE = 0o640
"""Mode of the stamps crashd writes: the owner and the report's group may read."""

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# Stamps are only looked at, never read: an O_PATH descriptor needs no read
# permission and has no side effect even on a FIFO or a device node.
_LOOK_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# ASCII digits only: str.isdecimal() would also accept Arabic-Indic and other digits.
_UID_RE = re.compile(r"[0-9]+")
# What crashd accepts as an OOPS id: printable ASCII without spaces, bounded.
_OOPS_ID_RE = re.compile(r"[!-~]{0,256}")
_UNITS = ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))
_KINDS = {
    S_IFDIR: "a directory",
    S_IFIFO: "a FIFO",
    S_IFSOCK: "a socket",
    S_IFCHR: "a character device",
    S_IFBLK: "a block device",
}


class UnsafeFileError(CrashdError, ValueError):
    """A file in the crash directory that breaks a safety rule; refused, never acted on.

    ``reason`` is in plain words ("is a symbolic link"); ``str(e)`` is
    ``"path: reason"``, ready for a log line or a report's ``invalid`` state.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[UnsafeFileError], tuple[str, str]]:
        # Keep the two attributes when the error crosses a process boundary.
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True, order=True, slots=True)  # slots: a rescan may hold 100,000 of them
class ReportName:
    """The name of a report, ``STEM.crash``, and the uid it claims.

    apport writes ``<ExecutablePath with / → _>.<uid>.crash``; the uid is only a
    *claim* until :meth:`Spool.open_report` has checked it against the owner.
    It is None when the stem's last dot-separated part is not decimal
    (kernel_oops puts a hex checksum there); such reports must be root's.
    """

    stem: str
    uid: int | None = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.stem or "/" in self.stem or "\0" in self.stem or self.stem[0] == ".":
            raise ValueError(f"{self.stem + '.crash'!r}: not a plain, visible report name")
        object.__setattr__(self, "uid", _uid_of(self.stem))

    @classmethod
    def parse(cls, filename: str) -> ReportName:
        """``"_usr_bin_gedit.1000.crash"`` → ``ReportName("_usr_bin_gedit.1000")``.

        ValueError unless it is a plain ``<stem>.crash``: no ``/`` (it would
        leave the directory), no leading ``.`` (hidden names are temp files).
        """
        if not filename.endswith(".crash"):
            raise ValueError(f"{filename!r}: not a .crash file name")
        return cls(filename[: -len(".crash")])

    @property
    def crash(self) -> str:
        """File name of the report itself."""
        return self.stem + ".crash"

    @property
    def upload(self) -> str:
        """File name of the "send this" stamp."""
        return self.stem + ".upload"

    @property
    def uploaded(self) -> str:
        """File name of the "sent" stamp, which holds the OOPS id."""
        return self.stem + ".uploaded"

    def __str__(self) -> str:
        return self.crash


def _uid_of(stem: str) -> int | None:
    """The uid claimed by a stem: its last dot-separated part if it is decimal."""
    head, dot, tail = stem.rpartition(".")
    if not dot or not head or not _UID_RE.fullmatch(tail):
        return None
    return int(tail)


@dataclass(frozen=True, eq=False)
class OpenFile:
    """An open, validated regular file; the caller owns ``fd`` (``close()`` or ``with``).

    ``stat`` is the ``fstat`` that validation judged.  ``fd`` is read-only,
    blocking and close-on-exec, ready for a reader thread or ``SCM_RIGHTS``.
    """

    fd: int
    stat: os.stat_result

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self.fd < 0

    def file(self) -> BinaryIO:
        """A new buffered reader of the report from offset 0 (close it when done).

        It ``pread``s a ``dup`` of ``fd`` at its own position, so readers, and
        other holders of the descriptor, never move each other's offset; it
        stays usable after :meth:`close`.
        """
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        raw = _PositionalReader(os.dup(self.fd))
        return io.BufferedReader(raw, buffer_size=64 * 1024)

    def close(self) -> None:
        """Close ``fd``; safe to call twice (the second call does nothing)."""
        fd = self.fd
        if fd >= 0:
            # Frozen for callers, but the fd must be forgotten so that a second
            # close() cannot hit a descriptor number reused by someone else.
            object.__setattr__(self, "fd", -1)
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, eq=False)
class OpenReport(OpenFile):
    """A report opened by :meth:`Spool.open_report`: its name has been checked
    against its owner (``stat.st_uid``/``st_gid``, which the stamps get)."""

    name: ReportName


def open_file(path: str | os.PathLike[str], max_size: int = MAX_REPORT_SIZE) -> OpenFile:
    """Open a report file named on the command line (``crashd show``, ``hook-test``).

    Not a crash-directory file, so no name, owner or link rules. But the last
    component must not be a symbolic link: ``crashd show /var/crash/x.crash``
    is often run as root on a file any user could have planted there, and a
    link to ``/etc/shadow`` must not be printed. It must be a regular file of
    at most ``max_size`` bytes (else UnsafeFileError), and a FIFO cannot make
    the open block.
    """
    fd, st = _open_checked(
        os.fspath(path), _READ_FLAGS, lambda st: _kind_refusal(st) or _size_refusal(st.st_size, max_size)
    )
    try:
        _set_blocking(fd)
    except BaseException:
        os.close(fd)
        raise
    return OpenFile(fd, st)


def _open_checked(
    path: str,
    flags: int,
    refusal: Callable[[os.stat_result], str | None],
    *,
    dir_fd: int | None = None,
    shown: str | None = None,
) -> tuple[int, os.stat_result]:
    """Open once, then decide on ``fstat`` of that descriptor: (fd, stat), or UnsafeFileError."""
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as err:
        reason = _open_refusal(err)
        if reason is None:
            raise
        raise UnsafeFileError(shown or path, reason) from None
    try:
        st = os.fstat(fd)
        reason = refusal(st)
        if reason:
            raise UnsafeFileError(shown or path, reason)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


class _PositionalReader(io.RawIOBase):
    """Unbuffered reader on an owned descriptor that reads with ``preadv`` at
    its own offset, so it never disturbs the descriptor's shared file offset."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        self._checkClosed()
        return self._fd

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._checkClosed()
        n = os.preadv(self._fd, [buffer], self._pos)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._checkClosed()
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence == os.SEEK_END:
            offset += os.fstat(self._fd).st_size
        elif whence != os.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._pos = offset
        return offset

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


@dataclass(frozen=True)
class Stamps:
    """The modification times of a report's stamps, in nanoseconds (None: absent)."""

    upload_ns: int | None
    uploaded_ns: int | None
    ignored: tuple[str, ...] = ()  # "path: reason" of each stamp that was not trusted

    @property
    def pending(self) -> bool:
        """Whether the report waits to be sent: ``.upload`` exists and
        ``.uploaded`` is missing or strictly older.

        Nanoseconds, not seconds: whoopsie compared whole seconds and resent a
        report re-marked within the second it was sent.  Equal times count as
        sent: file times tick with the kernel clock (a few ms), and a loopback
        upload can finish within one tick of its ``.upload`` — treating that as
        pending would send it twice.
        """
        if self.upload_ns is None:
            return False
        return self.uploaded_ns is None or self.uploaded_ns < self.upload_ns


class Spool:
    """The crash directory, opened once (``O_NOFOLLOW``: a symlink is refused) and
    then used only through that descriptor until :meth:`close`, so swapping the
    path later changes nothing.  A missing directory: FileNotFoundError.

    Root handles everyone's reports with it; a normal user its own (somebody
    else's unreadable report raises PermissionError, not a safety refusal).
    *legacy_uploader* names the system user of the uploader crashd replaces
    (default :data:`LEGACY_UPLOADER`); a missing user trusts nobody more.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_report_size: int = MAX_REPORT_SIZE,
        legacy_uploader: str | None = None,
    ):
        self.path = os.fspath(directory)
        self.max_report_size = max_report_size
        self.legacy_uid = _uid_of_user(LEGACY_UPLOADER if legacy_uploader is None else legacy_uploader)
        try:
            self._fd = os.open(self.path, _DIR_FLAGS)
        except NotADirectoryError:
            if os.path.islink(self.path):  # only to word the refusal
                raise UnsafeFileError(self.path, "is a symbolic link") from None
            raise

    def __repr__(self) -> str:
        return f"Spool({self.path!r}{', closed' if self._fd < 0 else ''})"

    def close(self) -> None:
        """Close the directory descriptor; safe to call twice."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dirfd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"{self.path}: spool is closed")
        return self._fd

    def _path(self, filename: str) -> str:
        return os.path.join(self.path, filename)

    def report_names(self) -> list[ReportName]:
        """Every ``*.crash`` name that :meth:`ReportName.parse` accepts, sorted (see :meth:`scan`)."""
        return sorted(self.scan())

    def scan(self) -> Generator[ReportName, None, None]:
        """Every ``*.crash`` name that :meth:`ReportName.parse` accepts, in directory order, streamed.

        Names only — nothing is opened, so an entry may still be a FIFO that
        :meth:`open_report` refuses.  Streamed with ``scandir`` on a fresh
        directory descriptor (concurrent scans share no offset): memory stays
        flat however many files the directory holds, so callers that can work
        name by name should prefer this to :meth:`report_names`.
        """
        fd = os.open(".", _DIR_FLAGS, dir_fd=self._dirfd())
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.name.endswith(".crash"):
                        with contextlib.suppress(ValueError):
                            yield ReportName.parse(entry.name)
        finally:
            os.close(fd)

    def exists(self, filename: str) -> bool:
        """Whether the crash directory has an entry *filename* (of any kind; links not followed)."""
        return self._lstat(filename) is not None

    def owner(self, filename: str) -> int | None:
        """The uid owning the entry *filename* (links not followed), or None when there is none."""
        st = self._lstat(filename)
        return None if st is None else st.st_uid

    def _lstat(self, filename: str) -> os.stat_result | None:
        try:
            return os.stat(filename, dir_fd=self._dirfd(), follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ENAMETOOLONG:
                return None
            raise

    def open_report(self, name: ReportName | str) -> OpenReport:
        """Open ``NAME.crash``, or raise UnsafeFileError saying why not.

        Required: a regular file with one link, owned by the uid in its name or
        by root (a name without a uid: by root), at most ``max_report_size``,
        and not sparse (:func:`sparse_refusal`): all decided on ``fstat``,
        before a byte is read.
        FileNotFoundError if it vanished; PermissionError if we may not read it.
        """
        name = _as_name(name)
        fd, st = self._open_regular(name.crash)
        try:
            reason = (
                _owner_refusal(name.uid, st.st_uid)
                or _size_refusal(st.st_size, self.max_report_size)
                or sparse_refusal(st)
            )
            if reason:
                raise UnsafeFileError(self._path(name.crash), reason)
            _set_blocking(fd)
        except BaseException:
            os.close(fd)
            raise
        return OpenReport(fd=fd, stat=st, name=name)

    def stamps(self, name: ReportName | str, owner_uid: int) -> Stamps:
        """The report's ``.upload``/``.uploaded`` times, each opened safely and judged on its own.

        A stamp counts only if it is a regular file with one link owned by
        ``owner_uid`` (the report's owner) or root — and, for ``.uploaded``,
        by the legacy uploader's user (whoopsie stamps what it sent as
        itself).  Nobody else can create a file with such an owner in the
        sticky crash directory, so one user cannot make another's report
        "pending" or "sent".  Any other stamp (another user's file, a
        directory, a symlink, a FIFO) is treated as absent and its reason put
        in ``ignored``; it never hides the other, trusted stamp.
        """
        name = _as_name(name)
        ignored: list[str] = []
        upload = self._stamp_mtime(name.upload, (owner_uid, 0), ignored)
        uploaded = self._stamp_mtime(name.uploaded, self._senders(owner_uid), ignored)
        return Stamps(upload, uploaded, tuple(ignored))

    def mark_upload(self, report: OpenReport) -> None:
        """Make the report pending with ``NAME.upload`` (report's owner and group, 0640).

        A safe ``.upload`` that already makes it pending is left alone (no
        needless inotify event; it keeps the time the user asked).  Otherwise a
        fresh stamp atomically replaces whatever has the name, a planted
        symlink included (replaced, never followed).  OSError when it cannot
        (a full disk, another user's directory under the name): the caller
        says so and delivers the report all the same.
        """
        if self.stamps(report.name, report.stat.st_uid).pending:
            return
        self._write_stamp(report.name.upload, b"", report.stat)

    def mark_uploaded(self, report: OpenReport, oops_id: str) -> bool:
        """Record the server's acceptance: ``NAME.uploaded`` holds ``oops_id``
        with no trailing newline (``cat`` shows exactly the id, as whoopsie 0.2
        wrote it), report's owner and group, 0640, atomically replacing any old
        one.  ``""`` (a 409 "already reported" comes without an id) writes an
        empty stamp, as whoopsie 0.1 did.  ValueError unless the id is at most
        256 printable ASCII characters without spaces.

        False, and no stamp, when ``NAME.crash`` no longer is the file that was
        sent: apport replaced it with a newer crash meanwhile, which a fresh
        ``.uploaded`` would wrongly mark as sent.
        """
        if not _OOPS_ID_RE.fullmatch(oops_id):
            raise ValueError(f"not a usable OOPS id: {oops_id!r}")
        try:
            now = os.stat(report.name.crash, dir_fd=self._dirfd(), follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (report.stat.st_dev, report.stat.st_ino):
            return False
        self._write_stamp(report.name.uploaded, oops_id.encode("ascii"), report.stat)
        return True

    def replace_report(self, report: OpenReport, write: Callable[[BinaryIO], None]) -> OpenReport | None:
        """Rewrite a report atomically: *write* fills a new file that takes the old one's place.

        The new file is created exclusively under a temporary name in the crash
        directory, given the old one's owner, group and mode on its descriptor,
        and renamed over ``NAME.crash`` only if that name still is the file that
        was read — apport may have replaced it with a newer crash meanwhile
        (then the rewrite is dropped and None returned). The caller keeps
        *report*; the result is the new file, opened and checked like any report.
        Refused (UnsafeFileError, nothing written) when the old file is sparse — rewriting
        it would turn its holes into real data (issue 11, vulnerability 7) — and (nothing
        renamed) when the new file would pass ``max_report_size``.
        """
        shown = self._path(report.name.crash)
        reason = sparse_refusal(report.stat)
        if reason:
            raise UnsafeFileError(shown, reason)
        limit = self.max_report_size

        def bounded(out: BinaryIO) -> None:
            write(out)
            out.flush()
            reason = _size_refusal(os.fstat(out.fileno()).st_size, limit)
            if reason:
                raise UnsafeFileError(shown, f"rewritten, it {reason}")

        owner, mode = (report.stat.st_uid, report.stat.st_gid), stat_mode(report.stat.st_mode)
        if not place_file(self._dirfd(), report.name.crash, bounded, owner, mode, expect=report.stat):
            return None
        return self.open_report(report.name)

    def remove(self, report: OpenReport) -> bool:
        """Remove a report that was opened and judged, and its stamps (crashd.tidy: duplicates, the
        disk budget). ``unlinkat`` on the directory's descriptor, and only while ``NAME.crash`` still
        is the inode that was judged (else False, nothing removed: a newer crash took the name). A
        stamp is removed only if it passes the rules of :meth:`stamps`; an unsafe one is left alone.
        """
        dirfd = self._dirfd()
        try:
            now = os.stat(report.name.crash, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (report.stat.st_dev, report.stat.st_ino):
            return False
        os.unlink(report.name.crash, dir_fd=dirfd)
        owner = report.stat.st_uid
        for stamp, owners in ((report.name.upload, (owner, 0)), (report.name.uploaded, self._senders(owner))):
            with contextlib.suppress(FileNotFoundError):
                if self._stamp_mtime(stamp, owners, []) is not None:  # an untrusted stamp is left alone
                    os.unlink(stamp, dir_fd=dirfd)
        return True

    def oops_id(self, name: ReportName | str, owner_uid: int | None = None) -> str | None:
        """The OOPS id in ``NAME.uploaded``; None if the stamp is absent, empty or
        does not hold an id.  Opened like every stamp (UnsafeFileError for a
        symlink, FIFO, hard link, …; with ``owner_uid``, the owner rule of
        :meth:`stamps` too).  A trailing newline is tolerated."""
        filename = _as_name(name).uploaded
        try:
            fd, st = self._open_regular(filename)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            return None
        try:
            if owner_uid is not None and st.st_uid not in self._senders(owner_uid):
                raise UnsafeFileError(self._path(filename), _stamp_owner_refusal(st.st_uid, owner_uid))
            data = os.read(fd, 1024)
        finally:
            os.close(fd)
        text = data.rstrip(b"\n").decode("ascii", "replace")
        return text if text and _OOPS_ID_RE.fullmatch(text) else None

    def _open_regular(self, filename: str, flags: int = _READ_FLAGS) -> tuple[int, os.stat_result]:
        """Open ``filename`` (read-only and non-blocking, or ``_LOOK_FLAGS``) and
        require a regular file with exactly one link.  Returns fd and fstat."""
        shown = self._path(filename)
        return _open_checked(filename, flags, _shape_refusal, dir_fd=self._dirfd(), shown=shown)

    def _senders(self, owner_uid: int) -> tuple[int, ...]:
        """Who may own a report's ``.uploaded``: its owner, root, and the legacy uploader."""
        return (owner_uid, 0) if self.legacy_uid is None else (owner_uid, 0, self.legacy_uid)

    def _stamp_mtime(self, filename: str, owners: tuple[int, ...], ignored: list[str]) -> int | None:
        """mtime_ns of a stamp; None if it does not exist or is not trusted (the reason goes to *ignored*)."""
        try:
            fd, st = self._open_regular(filename, _LOOK_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno != errno.ENAMETOOLONG:
                raise
            return None  # a report name of 250+ bytes leaves no room for a stamp: it can have none
        except UnsafeFileError as error:
            ignored.append(str(error))
            return None
        os.close(fd)
        if st.st_uid not in owners:
            ignored.append(f"{self._path(filename)}: {_stamp_owner_refusal(st.st_uid, owners[0])}")
            return None
        return st.st_mtime_ns

    def _write_stamp(self, final: str, content: bytes, owner: os.stat_result) -> None:
        """Create ``final`` with ``content``, owned like ``owner``, mode 0640, atomically.

        Not fsync'ed, on purpose: a stamp lost to a power cut only means the
        report is sent again, which daisy answers 409 "already reported" and
        crashd counts as sent — while an fsync per stamp would cost milliseconds
        each when upload-all stamps hundreds of reports a second.
        """
        dirfd = self._dirfd()
        tmp, fd = _create_temp(dirfd)
        try:
            try:
                _write_all(fd, content)
                # As a normal user stamping my own report, fchown to myself is a
                # no-op (and fchown to a group I am not in would fail): skip it.
                if os.geteuid() == 0 or owner.st_uid != os.geteuid():
                    os.fchown(fd, owner.st_uid, owner.st_gid)
                os.fchmod(fd, STAMP_MODE)
            finally:
                os.close(fd)
            os.rename(tmp, final, src_dir_fd=dirfd, dst_dir_fd=dirfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dirfd)
            raise


def place_file(
    dirfd: int,
    name: str,
    write: Callable[[BinaryIO], None],
    owner: tuple[int, int],
    mode: int,
    *,
    times: tuple[int, int] | None = None,
    expect: os.stat_result | None = None,
) -> bool:
    """Put a new file at *name* in the directory *dirfd*, atomically: rule 2 of DESIGN.md §7.

    *write* fills a file created exclusively under a hidden temporary name; it is
    fsynced, given *owner* (uid, gid; -1 leaves one as it is), *mode* and, with
    *times*, (atime_ns, mtime_ns) — all on its descriptor — and renamed to
    *name*. With *expect*, only if *name* still is that inode: else the new file
    is dropped and False returned (a newer crash replaced the report meanwhile).
    """
    tmp, fd = _create_temp(dirfd)
    try:
        with os.fdopen(os.dup(fd), "wb", buffering=128 * 1024) as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        if os.geteuid() == 0 or owner[0] != os.geteuid():  # to myself, fchown is a no-op
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        if times is not None:
            os.utime(fd, ns=times)
        os.close(fd)
        fd = -1
        if expect is not None:
            current = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if (current.st_dev, current.st_ino) != (expect.st_dev, expect.st_ino):
                os.unlink(tmp, dir_fd=dirfd)
                return False
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dirfd)
        raise
    return True


def _uid_of_user(user: str) -> int | None:
    """The uid of *user*, or None when there is no such user."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _as_name(name: ReportName | str) -> ReportName:
    return name if isinstance(name, ReportName) else ReportName.parse(name)


def _create_temp(dirfd: int) -> tuple[str, int]:
    """Create an empty mode-0 file under a fresh hidden name in ``dirfd``.

    The name starts with ``.`` and ends in ``.tmp`` so that neither crashd nor
    apport nor whoopsie ever takes it for a report or a stamp.
    """
    for _ in range(16):
        tmp = f".crashd-{secrets.token_hex(8)}.tmp"
        try:
            return tmp, os.open(tmp, _CREATE_FLAGS, 0, dir_fd=dirfd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not find a free temporary name")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _open_refusal(err: OSError) -> str | None:
    """The refusal an open() error stands for, or None for an ordinary error."""
    if err.errno == errno.ELOOP:  # O_NOFOLLOW on a symlink
        return "is a symbolic link"
    if err.errno == errno.ENXIO:  # sockets, and devices without a driver
        return "is a socket or a device, not a regular file"
    return None


def _shape_refusal(st: os.stat_result) -> str | None:
    """Refusal for anything but a regular file with exactly one link.

    A second link means the same inode has another name, possibly outside the
    crash directory (another user's file, ``/etc/shadow`` on the same file
    system), and crashd must not read or stamp it under this name.
    """
    reason = _kind_refusal(st)
    if reason:
        return reason
    if st.st_nlink == 0:
        return "was deleted while being opened"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    return None


def _kind_refusal(st: os.stat_result) -> str | None:
    if S_ISLNK(st.st_mode):  # only reachable through O_PATH|O_NOFOLLOW
        return "is a symbolic link"
    if not S_ISREG(st.st_mode):
        return f"is {_KINDS.get(S_IFMT(st.st_mode), 'of an unknown type')}, not a regular file"
    return None


def _set_blocking(fd: int) -> None:
    """Clear O_NONBLOCK once the file is known to be regular: readers expect plain reads."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def _owner_refusal(name_uid: int | None, st_uid: int) -> str | None:
    """Refusal when the owner does not match the uid claimed by the name.

    Root may own any report (apport writes root-owned reports for setuid and
    unreadable programs); a name without a uid must be root's.
    """
    if st_uid == 0 or st_uid == name_uid:
        return None
    if name_uid is None:
        return f"is owned by uid {st_uid} but its name carries no uid, so root must own it"
    return f"is owned by uid {st_uid} but named for uid {name_uid}"


def _stamp_owner_refusal(st_uid: int, owner_uid: int) -> str:
    return f"is owned by uid {st_uid} but the report belongs to uid {owner_uid}"


SPARSE_MIN_SIZE = 1 << 20
"""Files up to this length are never judged sparse: small files may live in the inode (no blocks)."""


def sparse_refusal(st: os.stat_result) -> str | None:
    """Refusal for a file whose allocated size is far below its length (a sparse file).

    Copying one writes its holes as real data: a 2 GiB report with 4 KiB allocated would
    become 2 GiB on disk, in a directory any user can write to (issue 11, vulnerability 7).
    The one test for it: :meth:`Spool.open_report` refuses such a report on ``fstat``, before
    a byte is read, and every rewrite of a user's file applies it too.
    "Far": under an eighth of the length, which no report of text and base64 reaches even on a
    compressing file system (base64 of a compressed core does not compress below ~3/4).
    """
    allocated = st.st_blocks * 512
    if st.st_size <= SPARSE_MIN_SIZE or allocated * 8 >= st.st_size:
        return None
    return f"is sparse: {_human_size(st.st_size)} long but only {_human_size(allocated)} allocated"


def _size_refusal(size: int, limit: int) -> str | None:
    if size <= limit:
        return None
    unit, _ = _unit_for(limit)
    if f"{size / unit:.1f}" == f"{limit / unit:.1f}":
        # "is 2.0 GiB, over the 2 GiB limit" would read as nonsense: be exact.
        return f"is {size} bytes, over the {limit} bytes limit"
    return f"is {_human_size(size)}, over the {_human_size(limit)} limit"


def _unit_for(n: int) -> tuple[int, str]:
    for unit, suffix in _UNITS:
        if n >= unit:
            return unit, suffix
    return 1, "bytes"


def _human_size(n: int) -> str:
    """``3 GiB``, ``1.5 MiB``, ``100 bytes``: sizes as people read them."""
    unit, suffix = _unit_for(n)
    return f"{n // unit} {suffix}" if n % unit == 0 else f"{n / unit:.1f} {suffix}"
