"""The crash directory, handled as hostile ground.

``/var/crash`` is mode 3777: any local user can put a symlink to ``/etc/shadow``
there, a hard link, a FIFO that blocks readers, a directory named ``x.crash`` or
a file named for another uid — the root of a decade of apport and whoopsie CVEs
(research/apport.md §7).  So (DESIGN.md §7): every file is opened once,
relative to the directory's descriptor, and judged by ``fstat`` of that
descriptor (:func:`crashd.fs.open_regular`; refusals raise :class:`UnsafeFileError`);
new files are created ``O_EXCL`` under a random hidden name, given owner and mode
through the descriptor and renamed into place (:func:`crashd.fs.place_file`).
Nothing is chown'd by path.

Names follow apport: ``NAME.crash`` is the report, ``NAME.upload`` asks for it
to be sent, ``NAME.uploaded`` says it was sent and holds the OOPS id.  Each
stamp is judged on its own (:meth:`Spool.stamps`, by the rules of
:mod:`crashd.stamps`): one planted by another user, or that is not a regular
file, is ignored and named, and never hides the other; whoopsie's own
``.uploaded`` (owned by its system user) counts as sent.

A report whose allocated size is far below its length (:func:`crashd.fs.sparse_refusal`)
is refused on ``fstat``, before a byte is read: root must never copy a user's
holes as data.  Every reader or rewriter of a user's file applies that one test.

Past ~400 lines on purpose: every rule about names, owners, links and stamps in the crash
directory is here once, and a second module would split one rule set in two.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from stat import S_IMODE as stat_mode
from stat import S_ISREG
from typing import BinaryIO

from crashd import fs
from crashd.fs import OpenFile, UnsafeFileError
from crashd.lifecycle import pending
from crashd.stamps import STAMP_MODE, Stamps, check_oops_id, read_oops_id, stamp_mtime, write_stamp

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
]

MAX_REPORT_SIZE = 2 * 1024**3
"""Default bound on a report file (DESIGN.md §7 rule 3)."""

LEGACY_UPLOADER = "whoopsie"
"""The system user of the uploader crashd replaces: its ``.uploaded`` stamps count as sent (see
:meth:`Spool.stamps`). Only root and that user can create a file it owns, so a stamp it owns is its own.
A module constant and a :class:`Spool` argument, so tests can let a throwaway user play it."""

# ASCII digits only: str.isdecimal() would also accept Arabic-Indic and other digits.
_UID_RE = re.compile(r"[0-9]+")


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
    return fs.open_regular(path, max_size=max_size)


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
        # The daemon writes the .upload stamps of what automatic consent sends after the POST, not
        # before it (crashd.collector.collect says why); upload-all, whose stamp records a request, first.
        self.defer_upload_stamp = False
        self.legacy_uploader = LEGACY_UPLOADER if legacy_uploader is None else legacy_uploader
        try:
            self._fd = os.open(self.path, fs.DIR_FLAGS)
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
        fd = os.open(".", fs.DIR_FLAGS, dir_fd=self._dirfd())
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
        and not sparse (:func:`crashd.fs.sparse_refusal`): all decided on ``fstat``,
        before a byte is read.
        FileNotFoundError if it vanished; PermissionError if we may not read it.
        """
        name = _as_name(name)
        limit = self.max_report_size

        def refusal(st: os.stat_result) -> str | None:
            return (
                _owner_refusal(name.uid, st.st_uid)
                or fs.size_refusal(st.st_size, limit)
                or fs.sparse_refusal(st)
            )

        shown = self._path(name.crash)
        opened = fs.open_regular(
            name.crash, dir_fd=self._dirfd(), one_link=True, refusal=refusal, keep_atime=True, shown=shown
        )
        return OpenReport(fd=opened.fd, stat=opened.stat, name=name)

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

    def mark_upload(self, report: OpenReport, *, at_ns: int | None = None) -> None:
        """Make the report pending with ``NAME.upload`` (report's owner and group, 0640), as of *at_ns*
        (:func:`crashd.fs.file_clock_ns` when it was asked for; default: now).

        A safe ``.upload`` that already makes it pending is left alone (no
        needless inotify event; it keeps the time the user asked).  Otherwise a
        fresh stamp atomically replaces whatever has the name, a planted
        symlink included (replaced, never followed).  OSError when it cannot
        (a full disk, another user's directory under the name): the caller
        says so and delivers the report all the same.
        """
        if self.stamps(report.name, report.stat.st_uid).pending:
            return
        write_stamp(self._dirfd(), report.name.upload, b"", report.stat, at_ns=at_ns)

    def answered(self, name: ReportName) -> bool:
        """Whether ``NAME.upload`` is answered by a ``NAME.uploaded`` at least as new — both regular files
        with one link, owned by root or the uid the name claims (whom no other user can make own a
        file) — judged on ``lstat`` alone, for the daemon's event loop. True means the event of that
        ``.upload`` asks nothing: crashd's own stamp, written after the POST, or a request already
        answered. Anything else, a stat that fails included, is False: look at the report."""
        owners = (0,) if name.uid is None else (0, name.uid)
        try:
            upload, uploaded = self._lstat(name.upload), self._lstat(name.uploaded)
        except OSError:
            return False
        if upload is None or uploaded is None:
            return False
        safe = (S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid in owners for st in (upload, uploaded))
        return all(safe) and not pending(upload.st_mtime_ns, uploaded.st_mtime_ns)

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
        content = check_oops_id(oops_id)
        try:
            now = os.stat(report.name.crash, dir_fd=self._dirfd(), follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (now.st_dev, now.st_ino) != (report.stat.st_dev, report.stat.st_ino):
            return False
        write_stamp(self._dirfd(), report.name.uploaded, content, report.stat)
        return True

    def replace_report(
        self, report: OpenReport, write: Callable[[BinaryIO], None], *, keep_times: bool = False
    ) -> OpenReport | None:
        """Rewrite a report atomically: *write* fills a new file that takes the old one's place.

        The new file is created exclusively under a temporary name in the crash
        directory, given the old one's owner, group and mode on its descriptor,
        and renamed over ``NAME.crash`` only if that name still is the file that
        was read — apport may have replaced it with a newer crash meanwhile
        (then the rewrite is dropped and None returned). The caller keeps
        *report*; the result is the new file, opened and checked like any report
        (None too when the name is another file by then: a crash renamed in just after).
        Refused (UnsafeFileError, nothing written) when the old file is sparse — rewriting
        it would turn its holes into real data (issue 11, vulnerability 7) — and (nothing
        renamed) when the new file would pass ``max_report_size``.

        With *keep_times* the new file gets the old one's access and modification times: a report
        rewritten after it was sent still reads as sent by its ``.uploaded`` (which must be as new as
        the report), and as seen or unseen as it was to apport's UI (which compares the two times).
        """
        shown = self._path(report.name.crash)
        reason = fs.sparse_refusal(report.stat)
        if reason:
            raise UnsafeFileError(shown, reason)
        limit = self.max_report_size

        written: list[os.stat_result] = []

        def bounded(out: BinaryIO) -> None:
            write(out)
            out.flush()
            written.append(os.fstat(out.fileno()))
            reason = fs.size_refusal(written[-1].st_size, limit)
            if reason:
                raise UnsafeFileError(shown, f"rewritten, it {reason}")

        st = report.stat
        owner, mode = (st.st_uid, st.st_gid), stat_mode(st.st_mode)
        times = (st.st_atime_ns, st.st_mtime_ns) if keep_times else None
        if not fs.place_file(
            self._dirfd(), report.name.crash, bounded, mode=mode, owner=owner, times=times, expect=st
        ):
            return None
        new = self.open_report(report.name)
        if (new.stat.st_dev, new.stat.st_ino) != (written[-1].st_dev, written[-1].st_ino):
            new.close()  # not ours: a crash apport renamed in after ours is its own report
            return None
        return new

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
        owners = None if owner_uid is None else self._senders(owner_uid)
        return read_oops_id(self._dirfd(), filename, owners, self._path(filename))

    @functools.cached_property
    def legacy_uid(self) -> int | None:
        """The legacy uploader's uid, looked up when a stamp is first judged, not at start: where that user
        does not exist (whoopsie never installed), NSS goes past /etc/passwd and loads its other modules
        (libnss_systemd, ~0.35 MiB) for good; an idle daemon with nothing to judge need not pay that."""
        return _uid_of_user(self.legacy_uploader)

    def _senders(self, owner_uid: int) -> tuple[int, ...]:
        """Who may own a report's ``.uploaded``: its owner, root, and the legacy uploader."""
        return (owner_uid, 0) if self.legacy_uid is None else (owner_uid, 0, self.legacy_uid)

    def _stamp_mtime(self, filename: str, owners: tuple[int, ...], ignored: list[str]) -> int | None:
        return stamp_mtime(self._dirfd(), filename, owners, ignored, self._path(filename))


def _uid_of_user(user: str) -> int | None:
    """The uid of *user*, or None when there is no such user."""
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def _as_name(name: ReportName | str) -> ReportName:
    return name if isinstance(name, ReportName) else ReportName.parse(name)


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
