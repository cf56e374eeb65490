"""Files on hostile ground: the one filesystem layer every crashd module reads and writes through.

``/var/crash`` is mode 3777 and the state directory is only as safe as the code that writes it, so the
rules of DESIGN.md §7 live here, once:

- **open and check** (:func:`open_regular`): a file is opened once, ``O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC``
  (a planted symlink is refused, a FIFO cannot block the open), and judged on ``fstat`` of that
  descriptor — a regular file, with one link when asked, within a size bound, and whatever owner rule
  the caller adds — never on a path that may change meanwhile. Refusals raise :class:`UnsafeFileError`,
  which names the file and says why in plain words.
- **bounded read** (:func:`read_bounded`): the whole file up to a bound, or refused; never read whole.
- **positional reader** (:func:`reader`): ``pread`` at its own offset, so readers that share a
  descriptor — the root side and the worker it passed the descriptor to — never move each other.
- **atomic write** (:func:`place_file`, :func:`replace_file`): a new file is created ``O_EXCL|O_NOFOLLOW``
  with mode 0 under a hidden name in the same directory, written in full (a short write is continued,
  never renamed in torn), optionally fsynced with its directory, given owner, mode and times on its
  descriptor (nothing is chown'd by path) and renamed into place — only if the name still is the file
  the caller judged, when it asks. On any failure the temporary is removed.
- **rewrite in place** (:func:`rewrite_file`): crashd's own small records, overwritten by one ``pwrite``
  at offset 0 under an exclusive ``flock`` (readers take a shared one: :func:`read_bounded` with
  *locked*), padded with spaces to the file's length; anything else at the name — absent, too short,
  a symlink, another owner, a second link — gets the atomic write instead. No inode churn per state.

Standard library only: the exception hook imports this inside arbitrary programs, and the hook child in a
bare interpreter. Past ~400 lines on purpose: the six primitives share their refusals and flags, and a
second module would only split one rule set in two.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from stat import S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFMT, S_IFSOCK, S_ISLNK, S_ISREG
from typing import TYPE_CHECKING, BinaryIO, Self

from crashd.errors import CrashdError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DIR_FLAGS",
    "LOOK_FLAGS",
    "READ_FLAGS",
    "OpenFile",
    "PositionalReader",
    "Refusal",
    "UnsafeFileError",
    "directory",
    "file_clock_ns",
    "fsync_path",
    "human_size",
    "kind_refusal",
    "link_refusal",
    "open_regular",
    "place_file",
    "read_bounded",
    "read_fd",
    "reader",
    "replace_file",
    "rewrite_file",
    "size_refusal",
    "sparse_refusal",
]

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# Looking without reading: an O_PATH descriptor needs no read permission and has no side effect even on a
# FIFO or a device node (crashd.spool's stamps are only looked at).
LOOK_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_BUFFER = 64 * 1024
IN_PLACE_MAX = 4096
"""The largest file :func:`rewrite_file` overwrites in place: one page, which a killed process cannot tear
(the kernel checks for a fatal signal between pages, never inside one)."""
_UNITS = ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB"))
_KINDS = {
    S_IFDIR: "a directory",
    S_IFIFO: "a FIFO",
    S_IFSOCK: "a socket",
    S_IFCHR: "a character device",
    S_IFBLK: "a block device",
}

Refusal = Callable[[os.stat_result], str | None]
"""A caller's own rule on ``fstat`` of the open descriptor: why the file is refused, or None."""


class UnsafeFileError(CrashdError, ValueError):
    """A file that breaks a safety rule; refused, never acted on.

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


@dataclass(frozen=True, eq=False)
class OpenFile:
    """An open, validated file; the caller owns ``fd`` (``close()`` or ``with``).

    ``stat`` is the ``fstat`` that validation judged.  ``fd`` is read-only,
    blocking and close-on-exec, ready for a reader thread or ``SCM_RIGHTS``
    (an ``O_PATH`` descriptor when opened with ``look=True``).
    """

    fd: int
    stat: os.stat_result

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self.fd < 0

    def file(self) -> io.BufferedReader:
        """A new buffered reader of the file from offset 0 (close it when done).

        It ``pread``s a ``dup`` of ``fd`` at its own position, so readers, and
        other holders of the descriptor, never move each other's offset; it
        stays usable after :meth:`close`.
        """
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        return reader(os.dup(self.fd))

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


def open_regular(
    path: str | os.PathLike[str],
    *,
    dir_fd: int | None = None,
    follow: bool = False,
    one_link: bool = False,
    max_size: int | None = None,
    refusal: Refusal | None = None,
    look: bool = False,
    keep_atime: bool = False,
    shown: str | None = None,
) -> OpenFile:
    """Open *path* once and judge ``fstat`` of that descriptor: an :class:`OpenFile`, or UnsafeFileError.

    Required: a regular file (a final symlink is refused unless *follow*; a FIFO or device cannot block
    the open), with exactly one link when *one_link* — a second name may lie outside the directory, on
    another user's file or ``/etc/shadow`` — of at most *max_size* bytes, and passing the caller's
    *refusal* (an owner rule). *look* opens ``O_PATH``: judged, never read. With *keep_atime*, reading
    leaves the access time alone where this process may ask that (``O_NOATIME``: the file's owner, or
    root): a crash report's atime is apport's "seen" mark, which crashd reading it must not set. *shown*
    names the file in the refusal (default *path*). Other errors (FileNotFoundError, PermissionError) are
    raised as they are.
    """
    name = os.fspath(path)
    flags = LOOK_FLAGS if look else READ_FLAGS
    if follow:
        flags &= ~os.O_NOFOLLOW
    try:
        try:
            fd = os.open(name, flags | (os.O_NOATIME if keep_atime and not look else 0), dir_fd=dir_fd)
        except PermissionError:
            if not keep_atime or look:
                raise
            fd = os.open(name, flags, dir_fd=dir_fd)  # not ours to keep: a plain read
    except OSError as error:
        reason = _open_refusal(error)
        if reason is None:
            raise
        raise UnsafeFileError(shown or name, reason) from None
    try:
        st = os.fstat(fd)
        reason = (
            kind_refusal(st)
            or (link_refusal(st) if one_link else None)
            or (size_refusal(st.st_size, max_size) if max_size is not None else None)
            or (refusal(st) if refusal is not None else None)
        )
        if reason:
            raise UnsafeFileError(shown or name, reason)
        if not look:  # regular, so plain blocking reads from here on
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return OpenFile(fd, st)


def read_bounded(
    path: str | os.PathLike[str],
    limit: int,
    *,
    dir_fd: int | None = None,
    follow: bool = False,
    one_link: bool = False,
    refusal: Refusal | None = None,
    head: bool = False,
    locked: bool = False,
    shown: str | None = None,
) -> bytes:
    """The contents of the regular file *path* (opened and judged as :func:`open_regular` does), at most
    *limit* bytes: a longer file is refused (UnsafeFileError) after reading *limit* + 1, never whole.

    With *head*, its first *limit* bytes and the rest ignored (``/sys`` and ``/proc`` files, whose
    ``st_size`` says nothing of their length). Sizes are counted as read, not taken from ``fstat``.
    With *locked*, read under a shared ``flock``: never half of a :func:`rewrite_file` (crashd's own
    files only — a hostile file's lock could hold the reader up).
    """
    shown = shown or os.fspath(path)
    with open_regular(
        path, dir_fd=dir_fd, follow=follow, one_link=one_link, refusal=refusal, shown=shown
    ) as f:
        if locked:
            fcntl.flock(f.fd, fcntl.LOCK_SH)  # released when the descriptor closes
        data = read_fd(f.fd, limit if head else limit + 1)
    if len(data) > limit:
        raise UnsafeFileError(shown, f"is too large: over the {human_size(limit)} limit")
    return data


def read_fd(fd: int, limit: int) -> bytes:
    """Up to *limit* bytes from *fd*'s offset: reads on (one may be short) until end of file or *limit*."""
    chunks: list[bytes] = []
    left = limit
    while left > 0 and (chunk := os.read(fd, min(left, _BUFFER))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def reader(fd: int, *, shown: str | None = None) -> io.BufferedReader:
    """A buffered :class:`PositionalReader` over *fd*, which it owns from here on (closed with it).

    The descriptor must be a regular file (else it is closed and UnsafeFileError raised): one received
    from another process (``SCM_RIGHTS``) is judged again, never trusted.
    """
    try:
        st = os.fstat(fd)
        reason = kind_refusal(st)
        if reason:
            raise UnsafeFileError(shown or f"descriptor {fd}", reason)
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(PositionalReader(fd), buffer_size=_BUFFER)


class PositionalReader(io.RawIOBase):
    """Unbuffered reader on an owned descriptor that reads with ``preadv`` at its own offset.

    A descriptor passed with ``SCM_RIGHTS`` or ``dup``'ed shares one file offset with every other copy;
    positional reads never use nor move it, so the holders stay independent.
    """

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


def place_file(
    dir_fd: int,
    name: str,
    content: bytes | Callable[[BinaryIO], None],
    *,
    mode: int,
    owner: tuple[int, int] = (-1, -1),
    times: tuple[int, int] | None = None,
    expect: os.stat_result | None = None,
    sync: bool = True,
    sync_dir: bool = False,
) -> bool:
    """Put a new file at *name* in the directory *dir_fd*, atomically: rule 2 of DESIGN.md §7.

    *content* is the bytes, or a function that writes them to a buffered file. They go to a file created
    exclusively under a hidden temporary name, in full; with *sync* it is fsynced (without, it survives
    a killed process but not a power cut). It gets *owner* (uid, gid; -1 leaves one as it is), *mode*
    and, with *times*, (atime_ns, mtime_ns) — all on its descriptor — and is renamed to *name*, replacing
    whatever has the name (a planted symlink is replaced, never followed). With *expect*, only if *name*
    still is that inode: else the new file is dropped and False returned (a newer crash replaced the
    report meanwhile). With *sync_dir* the directory is fsynced after the rename, so the name is durable.
    On any failure the temporary is removed and the error raised.
    """
    tmp, fd = _create_temp(dir_fd)
    try:
        if isinstance(content, bytes):
            _write_all(fd, content)
        else:
            with os.fdopen(os.dup(fd), "wb", buffering=2 * _BUFFER) as out:
                content(out)  # a BufferedWriter continues short writes itself
        if sync:
            os.fsync(fd)
        if _needs_chown(fd, owner):
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        if times is not None:
            os.utime(fd, ns=times)
        os.close(fd)
        fd = -1
        if expect is not None:
            current = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (current.st_dev, current.st_ino) != (expect.st_dev, expect.st_ino):
                os.unlink(tmp, dir_fd=dir_fd)
                return False
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    if sync_dir:
        os.fsync(dir_fd)
    return True


def replace_file(
    path: str | os.PathLike[str], content: bytes, *, mode: int, sync: bool = True, sync_dir: bool = False
) -> None:
    """:func:`place_file` by path, for crashd's own files (records, consent, the identifier cache).

    The directory is the one configured, so it may be a symlink an administrator made; the file's own
    name is what is guarded (replaced, never followed).
    """
    parent, name = os.path.split(os.fspath(path))
    with directory(parent or ".", follow=True) as dir_fd:
        place_file(dir_fd, name, content, mode=mode, sync=sync, sync_dir=sync_dir)


def rewrite_file(path: str | os.PathLike[str], content: bytes, *, mode: int, slack: int = 256) -> bool:
    """Overwrite crashd's own small file *path* in place; True if it was, False if it was placed anew.

    In place: the file is opened ``O_NOFOLLOW`` (never created), judged on ``fstat`` — a regular file
    with one link, owned by this user, with *mode*, of at least ``len(content)`` and at most
    :data:`IN_PLACE_MAX` bytes — and written with one ``pwrite`` at offset 0 under an exclusive
    ``flock``, *content* padded with spaces to the file's length (so the file never needs a
    truncate: its format must ignore trailing spaces, as JSON does). No new inode, no rename, no
    directory change: what a record changes several times per report costs one write.

    Otherwise — no file yet, a longer *content*, anything that is not exactly such a file (a planted
    symlink is replaced, never followed) — :func:`replace_file`, *content* padded with at least
    *slack* spaces up to a multiple of 256 bytes, so later, longer versions still fit in place.
    Neither way fsyncs: the caller does (:func:`fsync_path`), grouped. A short in-place write (only
    ``RLIMIT_FSIZE`` or an I/O error makes one) is followed by the atomic write.
    """
    name = os.fspath(path)
    try:
        fd = os.open(name, _WRITE_FLAGS)
    except OSError as error:
        if error.errno not in (errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EACCES):
            raise
        fd = -1
    if fd >= 0:
        try:
            st = os.fstat(fd)
            if (
                S_ISREG(st.st_mode)
                and st.st_nlink == 1
                and st.st_uid == os.geteuid()
                and st.st_mode & 0o7777 == mode
                and len(content) <= st.st_size <= IN_PLACE_MAX
            ):
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.pwrite(fd, content.ljust(st.st_size), 0) == st.st_size:
                    return True
        finally:
            os.close(fd)  # and with it the lock
    size = len(content) + slack
    replace_file(name, content.ljust(size + -size % 256), mode=mode, sync=False)
    return False


_CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's number; not in `time`


def file_clock_ns() -> int:
    """Now, as file times tell it: the kernel's coarse real-time clock, which a file written or changed
    later never has an mtime or ctime older than (file times come from it, or — multigrain timestamps —
    from a finer clock that is never behind it). ``time.time_ns()`` can be a few milliseconds ahead of
    the times of a file written after it: a ``.upload`` given that time would look newer than the
    ``.uploaded`` written after it, and a report made after a sweep began could pass for one it saw."""
    return time.clock_gettime_ns(_CLOCK_REALTIME_COARSE)


@contextlib.contextmanager
def directory(path: str | os.PathLike[str], *, follow: bool = False) -> Iterator[int]:
    """A descriptor of the directory *path* for a ``with`` block (a final symlink refused unless *follow*)."""
    fd = os.open(path, DIR_FLAGS & ~os.O_NOFOLLOW if follow else DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def fsync_path(path: str | os.PathLike[str], *, is_dir: bool = False) -> None:
    """Make a file written without fsync durable (a final symlink is not followed), or a directory's names."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if is_dir else os.O_NOFOLLOW | os.O_NONBLOCK)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(dir_fd: int) -> tuple[str, int]:
    """Create an empty mode-0 file under a fresh hidden name in *dir_fd*.

    The name starts with ``.`` and ends in ``.tmp`` so that neither crashd nor
    apport nor whoopsie ever takes it for a report, a stamp or a record.
    """
    for _ in range(16):
        tmp = f".crashd-{os.urandom(8).hex()}.tmp"  # secrets.token_hex, without its imports
        try:
            return tmp, os.open(tmp, _CREATE_FLAGS, 0, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not find a free temporary name")


def _needs_chown(fd: int, owner: tuple[int, int]) -> bool:
    """Whether the new file *fd* must be given *owner* (uid, gid; -1 leaves one as it is). Not when nothing
    is asked, when a user gives it to themselves (a no-op), or when it has that owner already (root's own
    stamps and records): an ``fchown`` would change only its ctime, and send the daemon's inotify watch
    an event for nothing (issue 15: two of a report's events)."""
    uid, gid = owner
    if owner == (-1, -1) or (os.geteuid() != 0 and uid == os.geteuid()):
        return False
    st = os.fstat(fd)
    return uid not in (-1, st.st_uid) or gid not in (-1, st.st_gid)


def _write_all(fd: int, data: bytes) -> None:
    """Write all of *data*: a short write (disk full, RLIMIT_FSIZE) is continued, or its error raised."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _open_refusal(error: OSError) -> str | None:
    """The refusal an open() error stands for, or None for an ordinary error."""
    if error.errno == errno.ELOOP:  # O_NOFOLLOW on a symlink
        return "is a symbolic link"
    if error.errno == errno.ENXIO:  # sockets, and devices without a driver
        return "is a socket or a device, not a regular file"
    return None


def kind_refusal(st: os.stat_result) -> str | None:
    """Refusal for anything but a regular file."""
    if S_ISLNK(st.st_mode):  # only reachable through O_PATH|O_NOFOLLOW
        return "is a symbolic link"
    if not S_ISREG(st.st_mode):
        return f"is {_KINDS.get(S_IFMT(st.st_mode), 'of an unknown type')}, not a regular file"
    return None


def link_refusal(st: os.stat_result) -> str | None:
    """Refusal for a file with other names than this one (or none left)."""
    if st.st_nlink == 0:
        return "was deleted while being opened"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    return None


def size_refusal(size: int, limit: int) -> str | None:
    """Refusal for *size* bytes over *limit*, in sizes people read."""
    if size <= limit:
        return None
    unit, _ = _unit_for(limit)
    if f"{size / unit:.1f}" == f"{limit / unit:.1f}":
        # "is 2.0 GiB, over the 2 GiB limit" would read as nonsense: be exact.
        return f"is {size} bytes, over the {limit} bytes limit"
    return f"is {human_size(size)}, over the {human_size(limit)} limit"


SPARSE_MIN_SIZE = 1 << 20
"""Files up to this length are never judged sparse: small files may live in the inode (no blocks)."""


def sparse_refusal(st: os.stat_result) -> str | None:
    """Refusal for a file whose allocated size is far below its length (a sparse file).

    Copying one writes its holes as real data: a 2 GiB report with 4 KiB allocated would
    become 2 GiB on disk, in a directory any user can write to (issue 11, vulnerability 7).
    The one test for it: :meth:`crashd.spool.Spool.open_report` refuses such a report on
    ``fstat``, before a byte is read, and every rewrite of a user's file applies it too.
    "Far": under an eighth of the length, which no report of text and base64 reaches even on a
    compressing file system (base64 of a compressed core does not compress below ~3/4).
    """
    allocated = st.st_blocks * 512
    if st.st_size <= SPARSE_MIN_SIZE or allocated * 8 >= st.st_size:
        return None
    return f"is sparse: {human_size(st.st_size)} long but only {human_size(allocated)} allocated"


def human_size(n: int) -> str:
    """``3 GiB``, ``1.5 MiB``, ``100 bytes``: sizes as people read them."""
    unit, suffix = _unit_for(n)
    return f"{n // unit} {suffix}" if n % unit == 0 else f"{n / unit:.1f} {suffix}"


def _unit_for(n: int) -> tuple[int, str]:
    for unit, suffix in _UNITS:
        if n >= unit:
            return unit, suffix
    return 1, "bytes"
