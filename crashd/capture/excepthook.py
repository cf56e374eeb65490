"""Uncaught Python exceptions → apport-format reports, and the crash-directory writer both capturers share.

:func:`report_exception` is what ``crashd.capture.install_excepthook`` calls (lazily,
only once an exception reaches the top): it writes ``<argv[0] path, / → _>.<uid>.crash``
into ``APPORT_REPORT_DIR`` (or the configured crash dir, /var/crash) *as the crashing
user*, with the fields apport's Python hook writes.

Why standard library only (plus ``crashd.config``, ``crashd.consent`` and ``crashd.spool``, which are
too): this runs inside an arbitrary user's program, possibly under an interpreter
that lacks crashd's third-party dependencies (zstd), and must not fail there.
That is also why it has its own tiny text-only report writer, and why the shared
helpers — :func:`filter_environ`, :func:`report_stem`, :func:`place_report` (the
flood rule and the atomic write) — live here: ``coredump.py`` imports them.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal

from crashd.spool import place_file  # standard library only, like this module

__all__ = [
    "FLOOD_WINDOW",
    "Placed",
    "encode_text_report",
    "filter_environ",
    "place_report",
    "python_crash_fields",
    "report_exception",
    "report_stem",
]

FLOOD_WINDOW = 24 * 3600
"""An unsent report younger than this is counted (CrashCounter) instead of replaced (apport §2.4)."""

REPORT_MODE = 0o640
STATE_DIR_ENV = "CRASHD_STATE_DIR"  # tests point consent at a scratch state dir
CONFIG_ENV = "CRASHD_CONFIG"
MAX_TRACEBACK = 1 << 20  # a traceback of a deep recursion is cut here, not the report's size limit
MAX_PROC_FILE = 1 << 20  # /proc/self/status and cmdline are a few KiB; bound them anyway
_PIECE = 1 << 20

# apport's add_proc_environ (research/apport.md §5): only these, verbatim...
_SAFE_ENV = frozenset({"SHELL", "TERM", "LANGUAGE", "LANG", "LOCPATH"})
# ...these only as "<set>" (they change what runs, and may name private paths)...
_SET_ONLY_ENV = frozenset({"LD_PRELOAD", "LD_LIBRARY_PATH", "XDG_RUNTIME_DIR", "PYTHONPATH"})
# ...and PATH only as "(custom, user)" / "(custom, no user)", dropped when it is the default.
_STANDARD_PATH = frozenset(
    {
        "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
        "/usr/games", "/usr/local/games", "/snap/bin",
    }
)  # fmt: skip
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x09), *range(0x0E, 0x1C)]}
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- shared helpers ------------------------------------------------------------------------


def filter_environ(lines: Iterable[str]) -> str:
    """``KEY=VALUE`` lines → apport's ProcEnviron: the allow-list only, never a secret.

    Why an allow-list: the environment holds tokens and passwords, and the report
    leaves the machine.
    """
    out: list[str] = []
    for line in lines:
        key, eq, value = line.partition("=")
        if not eq:
            continue
        if key in _SAFE_ENV or key.startswith("LC_"):
            out.append(line)
        elif key in _SET_ONLY_ENV:
            out.append(f"{key}=<set>")
        elif key == "PATH":
            parts = value.split(":")
            if any(p.startswith(("/home/", "/tmp/", "/root/")) or p in ("/tmp", "/root") for p in parts):
                out.append("PATH=(custom, user)")
            elif not set(parts) <= _STANDARD_PATH:
                out.append("PATH=(custom, no user)")
    return "\n".join(out)


def report_stem(executable: str, uid: int) -> str:
    """``/usr/bin/gedit``, 1000 → ``_usr_bin_gedit.1000`` (apport's naming, research §2.1).

    ValueError unless *executable* is an absolute path that makes a plain file name.
    """
    if not executable.startswith("/") or "\0" in executable or "\n" in executable:
        raise ValueError(f"{executable!r}: not an absolute executable path")
    stem = f"{executable.replace('/', '_')}.{uid}"
    if len(stem) + len(".uploaded") > 255:
        raise ValueError(f"{executable!r}: too long for a report name")
    return stem


def encode_text_report(fields: Iterable[tuple[str, str]]) -> bytes:
    """A report of text fields in apport's format; control characters are escaped so
    every value stays text (the writer must not need compression modules)."""
    out = bytearray()
    for key, value in fields:
        value = value.translate(_CONTROL)
        if "\n" in value:
            out += f"{key}:\n {value.replace(chr(10), chr(10) + ' ')}\n".encode("utf-8", "surrogateescape")
        else:
            out += f"{key}: {value}\n".encode("utf-8", "surrogateescape")
    return bytes(out)


@dataclass(frozen=True)
class Placed:
    """What :func:`place_report` did: ``written`` a report, ``counted`` a repeat, or ``skipped``."""

    action: Literal["written", "counted", "skipped"]
    path: str
    detail: str = ""
    crash_counter: int | None = None


def place_report(
    crash_dir: str | os.PathLike[str],
    stem: str,
    write: Callable[[BinaryIO], None],
    *,
    owner_uid: int,
    now: float | None = None,
) -> Placed:
    """Write ``STEM.crash`` atomically, or count it as a repeat (apport's flood rule).

    The rule: an existing report for the same executable and uid that is unsent
    (no ``.uploaded`` at least as new as it and its ``.upload``) and younger than
    :data:`FLOOD_WINDOW` gets ``CrashCounter`` incremented (atomic rewrite, same
    owner, mode and mtime — so the day counts from the first crash) and no new
    report is written: a crash loop cannot fill the disk. A sent or older report
    is replaced. A name held by anything but a regular, singly linked file owned
    by *owner_uid* or root is left alone (skipped): never follow, never clobber.

    New files: ``O_CREAT|O_EXCL|O_NOFOLLOW`` mode 0 under a hidden name, owner
    (as root: *owner_uid*, group whoopsie when it exists) and mode 0640 set on the
    descriptor, fsync, rename into place — readers never see half a report.
    """
    now = time.time() if now is None else now
    path = os.path.join(os.fspath(crash_dir), stem + ".crash")
    dirfd = os.open(os.fspath(crash_dir), _DIR)
    try:
        try:
            fd = os.open(stem + ".crash", _READ, dir_fd=dirfd)
        except FileNotFoundError:
            fd = -1
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES, errno.EPERM):
                return Placed("skipped", path, f"an unusable file holds the name ({error.strerror})")
            raise
        if fd < 0:
            _create(dirfd, stem + ".crash", write, owner_uid)
            return Placed("written", path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid not in (owner_uid, 0):
                why = "an unsafe file (not a plain report of this user) holds the name"
                return Placed("skipped", path, why)
            if _sent(dirfd, stem, st) or now - st.st_mtime >= FLOOD_WINDOW:
                _create(dirfd, stem + ".crash", write, owner_uid)
                return Placed("written", path, "replaced an older or already sent report")
            counter = _rewrite_counter(dirfd, stem + ".crash", fd, st)
        finally:
            os.close(fd)
        if counter is None:
            return Placed("skipped", path, "the report changed while it was counted")
        return Placed("counted", path, "an unsent report less than a day old exists", counter)
    finally:
        os.close(dirfd)


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
        upload_ns = upload.st_mtime_ns if stat.S_ISREG(upload.st_mode) else 0
    except FileNotFoundError:
        upload_ns = 0
    return uploaded.st_mtime_ns >= max(report.st_mtime_ns, upload_ns)


def _whoopsie_gid() -> int:
    """The group apport gives reports (so whoopsie/crashd may read them); -1: leave it."""
    try:
        return grp.getgrnam("whoopsie").gr_gid
    except KeyError:
        return -1


def _create(dirfd: int, name: str, write: Callable[[BinaryIO], None], owner_uid: int) -> None:
    place_file(dirfd, name, write, (owner_uid, _whoopsie_gid()), REPORT_MODE)


def _rewrite_counter(dirfd: int, name: str, fd: int, st: os.stat_result) -> int | None:
    """Copy the report line by line (bounded pieces: a CoreDump line may be GiBs) with
    ``CrashCounter`` replaced by old + 1 (a report without one counts as 1)."""
    os.set_blocking(fd, True)
    result = [1]

    def write(out: BinaryIO) -> None:
        old = 1
        with os.fdopen(os.dup(fd), "rb") as src:
            src.seek(0)
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

    ok = place_file(
        dirfd, name, write, (st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode) or REPORT_MODE,
        times=(st.st_atime_ns, st.st_mtime_ns), expect=st,
    )  # fmt: skip
    return result[0] if ok else None


def _read_bounded(path: str, limit: int = MAX_PROC_FILE) -> bytes | None:
    try:
        fd = os.open(path, _READ)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


# -- the Python exception hook -------------------------------------------------------------


def python_crash_fields(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> tuple[str, list[tuple[str, str]]] | None:
    """(ExecutablePath, fields) for the current process, or None when it is no script crash.

    None for ``python -c``, stdin and other argv[0]s that are not a regular file:
    apport's hook reports programs, not one-liners.
    """
    import traceback

    if not sys.argv or not sys.argv[0] or sys.argv[0] in ("-c", "-"):
        return None
    executable = os.path.realpath(sys.argv[0])
    try:
        st = os.stat(executable)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    text = "".join(traceback.format_exception(exc_type, exc, tb))
    if len(text) > MAX_TRACEBACK:
        text = text[: MAX_TRACEBACK // 2] + "\n[... cut ...]\n" + text[-MAX_TRACEBACK // 2 :]
    fields = [
        ("ProblemType", "Crash"),
        ("Date", time.asctime()),
        ("ExecutablePath", executable),
        ("ExecutableTimestamp", str(int(st.st_mtime))),
        ("InterpreterPath", os.path.realpath(sys.executable)),
        ("PythonArgs", repr(sys.argv)),
        ("Traceback", text.rstrip("\n")),
        ("ProcEnviron", filter_environ(f"{k}={v}" for k, v in os.environ.items())),
    ]
    with contextlib.suppress(OSError):
        fields.append(("ProcCwd", os.getcwd()))
    cmdline = _read_bounded("/proc/self/cmdline")
    if cmdline is not None:
        fields.append(("ProcCmdline", cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")))
    status = _read_bounded("/proc/self/status")
    if status is not None:
        fields.append(("ProcStatus", status.decode("utf-8", "replace").rstrip("\n")))
    return executable, fields


def report_exception(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> Placed | None:
    """Write (or count) the report for an uncaught exception; None when nothing is due.

    Nothing is written for KeyboardInterrupt, BrokenPipeError, interactive
    sessions, ``-c`` one-liners, or when consent (``ReportCrashes``) is off. The
    state dir (consent) is ``$CRASHD_STATE_DIR`` or the configured one.
    """
    if issubclass(exc_type, (KeyboardInterrupt, BrokenPipeError)):
        return None
    if hasattr(sys, "ps1") or sys.flags.interactive or sys.flags.inspect:
        return None
    from crashd.config import DEFAULT_CONFIG, ConfigError, load_settings
    from crashd.consent import load_consent

    config = Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None
    try:
        settings = load_settings(config)
        state_dir = Path(os.environ.get(STATE_DIR_ENV) or settings.state_dir)
        if not load_consent(state_dir, config=config or DEFAULT_CONFIG).report_crashes:
            return None
    except (ConfigError, OSError):
        return None  # cannot tell whether the user agreed: do not write
    found = python_crash_fields(exc_type, exc, tb)
    if found is None:
        return None
    executable, fields = found
    uid = os.getuid()
    data = encode_text_report(fields)
    stem = report_stem(executable, uid)
    return place_report(settings.crash_dir, stem, lambda f: f.write(data), owner_uid=uid)
