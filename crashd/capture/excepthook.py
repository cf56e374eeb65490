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
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    "is_crashd_process",
    "place_report",
    "privileged",
    "python_crash_fields",
    "report_exception",
    "report_names",
    "report_stem",
]

FLOOD_WINDOW = 24 * 3600
"""An unsent report younger than this is counted (CrashCounter) instead of replaced (apport §2.4)."""

MAX_NAMES = 8
"""How many names one report may take when others hold the first ones (:func:`report_names`)."""

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
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # .../crashd


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


def report_names(stem: str) -> list[str]:
    """The names a report for *stem* may take, in order: ``STEM.crash``, then ``EXE~2.UID.crash`` …

    Why more than one: ``/var/crash`` is world-writable, so another user can hold a report's name
    (a FIFO, a file, a directory) before the crash. A writer that can neither count into nor replace
    what holds a name takes the next one; the uid stays the name's last part, as the spool requires.
    """
    exe, _, uid = stem.rpartition(".")
    return [stem + ".crash"] + [f"{exe}~{n}.{uid}.crash" for n in range(2, MAX_NAMES + 1)]


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
    dirfd = os.open(os.fspath(crash_dir), _DIR)
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
            fd = os.open(name, _READ, dir_fd=dirfd)
        except OSError as error:
            return f"cannot be opened ({error.strerror})"
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (seen.st_dev, seen.st_ino):
            return fd, st
        os.close(fd)
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
        place_file(dirfd, name, write, (owner_uid, _whoopsie_gid()), REPORT_MODE)
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


def privileged() -> bool:
    """Whether this process must trust nothing in its environment (DESIGN.md §7 rule 7).

    True when the real and effective uid or gid differ (setuid/setgid) or the
    effective uid is 0: whoever set the environment may not be whoever the
    process runs as, so ``APPORT_REPORT_DIR``, ``CRASHD_*`` and an env-named
    config are ignored and the report is root's.
    """
    return os.getuid() != os.geteuid() or os.getgid() != os.getegid() or os.geteuid() == 0


def is_crashd_process(argv0: str, frame_files: Iterable[str], package_dir: str = _PACKAGE_DIR) -> bool:
    """Whether the crashing program is crashd itself, which never reports its own exceptions.

    Why (issue 13): crashd's failures went through its own hook into the crash
    directory and were uploaded by crashd — a loop waiting for a bug that
    crashes on its own report. crashd's processes are recognised by what runs
    them: ``python -m crashd`` and ``/usr/bin/crashd`` (argv[0] is crashd's
    ``__main__.py``), the hook child (``crashd/hooks/child.py``), anything
    started from crashd's package directory, and a pip console script (the
    traceback runs through ``crashd/cli.py``). The upload worker is
    ``python -I -c`` and, as every one-liner, is never reported anyway.
    """
    package = package_dir.rstrip(os.sep) + os.sep
    if argv0 and os.path.realpath(argv0).startswith(package):
        return True
    cli = package + "cli.py"
    return any(os.path.realpath(name) == cli for name in frame_files)


def _frame_files(tb: TracebackType | None) -> Iterator[str]:
    while tb is not None:
        yield tb.tb_frame.f_code.co_filename
        tb = tb.tb_next


def report_exception(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> Placed | None:
    """Write (or count) the report for an uncaught exception; None when nothing is due.

    Nothing is written for KeyboardInterrupt, BrokenPipeError, interactive
    sessions, ``-c`` one-liners, crashd's own processes (:func:`is_crashd_process`),
    or when consent (``ReportCrashes``) is off. The state dir (consent) is
    ``$CRASHD_STATE_DIR`` or the configured one.

    A :func:`privileged` process reads only the system configuration, writes
    only into its crash directory, and the report is root's: named for the real
    uid (whose invocation crashed), owned by root. One that is not effectively
    root (a setuid/setgid program of another user) cannot make a root-owned
    file, so it writes nothing.
    """
    if issubclass(exc_type, (KeyboardInterrupt, BrokenPipeError)):
        return None
    if hasattr(sys, "ps1") or sys.flags.interactive or sys.flags.inspect:
        return None
    if is_crashd_process(sys.argv[0] if sys.argv else "", _frame_files(tb)):
        return None
    from crashd.config import DEFAULT_CONFIG, ConfigError, load_settings
    from crashd.consent import load_consent

    trusted = privileged()
    if trusted and os.geteuid() != 0:
        return None
    environ: Mapping[str, str] = {} if trusted else os.environ
    config = Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None
    try:
        settings = load_settings(config, environ=environ)
        state_dir = Path(environ.get(STATE_DIR_ENV) or settings.state_dir)
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
    owner = 0 if trusted else uid
    return place_report(settings.crash_dir, stem, lambda f: f.write(data), owner_uid=owner)
