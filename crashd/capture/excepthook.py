"""Uncaught Python exceptions → apport-format reports, and the text helpers both capturers share.

:func:`report_exception` is what ``crashd.capture.install_excepthook`` calls (lazily,
only once an exception reaches the top): it writes ``<argv[0] path, / → _>.<uid>.crash``
into ``APPORT_REPORT_DIR`` (or the configured crash dir, /var/crash) *as the crashing
user*, with the fields apport's Python hook writes — except in a privileged process
(:func:`privileged`) and in crashd's own (:func:`is_crashd_process`).

Why standard library only (plus ``crashd.config``, ``crashd.consent``, ``crashd.fs``,
:mod:`crashd.capture.crashdir` and, at crash time, :func:`crashd.report.write_report`, which
are too — the report module imports zstd only to read a zstd block): this runs inside an
arbitrary user's program, possibly under an interpreter that lacks crashd's third-party
dependencies, and must not fail there. The shared helpers — :func:`filter_environ`,
:func:`report_stem` — live here: ``coredump.py`` imports them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

from crashd import fs  # standard library only, like this module
from crashd.capture.crashdir import Placed, place_report  # standard library only, like this module

__all__ = [
    "filter_environ",
    "is_crashd_process",
    "privileged",
    "python_crash_fields",
    "report_exception",
    "report_stem",
]

STATE_DIR_ENV = "CRASHD_STATE_DIR"  # tests point consent at a scratch state dir
CONFIG_ENV = "CRASHD_CONFIG"
MAX_TRACEBACK = 1 << 20  # a traceback of a deep recursion is cut here, not the report's size limit
MAX_PROC_FILE = 1 << 20  # /proc/self/status and cmdline are a few KiB; bound them anyway

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


def _read_proc(path: str) -> bytes | None:
    """The first :data:`MAX_PROC_FILE` bytes of a ``/proc`` file, or None when it cannot be read."""
    try:
        return fs.read_bounded(path, MAX_PROC_FILE, head=True)
    except (OSError, fs.UnsafeFileError):
        return None


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
    cmdline = _read_proc("/proc/self/cmdline")
    if cmdline is not None:
        fields.append(("ProcCmdline", cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")))
    status = _read_proc("/proc/self/status")
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
    traceback runs through ``crashd/cli/__init__.py``). The upload worker is
    ``python -I -c`` and, as every one-liner, is never reported anyway.
    """
    package = package_dir.rstrip(os.sep) + os.sep
    if argv0 and os.path.realpath(argv0).startswith(package):
        return True
    cli = package + os.path.join("cli", "__init__.py")
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
    stem = report_stem(executable, uid)
    owner = 0 if trusted else uid
    from crashd.report import write_report  # the one writer: a value with control bytes reads back exact

    return place_report(settings.crash_dir, stem, lambda f: write_report(f, fields), owner_uid=owner)
