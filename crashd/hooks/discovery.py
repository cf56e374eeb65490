"""Which hooks run for a report, and in which order (DESIGN.md §6).

Everything here is a pure function of the report's fields and of ``stat`` answers
about candidate files; nothing is opened or executed. The order, apport's
(``research/apport.md`` §4.1) with crashd's own directories put in front:

1. general hooks: ``general/*.py`` of each extra directory (config ``hook_dirs``),
   then ``/usr/share/crashd/hooks/general/*.py``, then apport's
   ``/usr/share/apport/general-hooks/*.py``;
2. ``<package>.py`` in each extra directory, ``/usr/share/crashd/hooks/``,
   ``/usr/share/apport/package-hooks/``, then the ``/opt`` directories;
3. ``source_<srcpackage>.py`` in the same directories.

Within one category a file name found earlier shadows the same name later, so an
administrator's or crashd's hook replaces apport's of the same name instead of
running twice. ``<package>`` is the first word of ``Package``; anything but a
plain Debian-style name there (``../../x`` above all: CVE-2016-9950) is an
:class:`InvalidPackageError`, raised before any hook runs. ``/opt`` directories
come from the *resolved* ``ExecutablePath`` (CVE-2017-10708: ``/opt/../../x``
chose attacker-controlled hook directories); a value no kernel would resolve (longer
than ``PATH_MAX``, or holding a control character) is an :class:`InvalidFieldError`
raised before anything resolves it, since resolving is quadratic in the path's
length (issue 11: 128 KiB took root 4.5 s). A hook file must be a regular file
owned by root and writable by nobody else, in a directory nobody else can write
to either (or a link there could point at any root-owned Python file); any other
candidate is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from crashd.errors import CrashdError

__all__ = [
    "PATH_MAX",
    "HookRoots",
    "InvalidFieldError",
    "InvalidPackageError",
    "Plan",
    "hook_refusal",
    "opt_hook_dirs",
    "package_names",
    "package_plan",
]

# Debian policy names, plus upper case (other distributions' names); never "/" or "..".
_PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]{0,199}")
PATH_MAX = 4096  # Linux's limit on a path, its terminating NUL included
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidFieldError(CrashdError, ValueError):
    """A field that chooses hooks holds a value that could choose none: the report is invalid.

    ``str(e)`` is the reason, ready for the report's ``invalid`` state.
    """

    def __init__(self, key: str, value: str, reason: str) -> None:
        super().__init__(f"invalid {key} {value[:80]!r}: {reason}")
        self.key = key
        self.value = value


class InvalidPackageError(InvalidFieldError):
    """``Package`` or ``SourcePackage`` names no plain package."""

    def __init__(self, key: str, value: str) -> None:
        reason = (
            "a package name is letters, digits and . + - (never / or ..), so no hook file can be chosen by it"
        )
        super().__init__(key, value, reason)


@dataclass(frozen=True)
class HookRoots:
    """Every directory hooks are looked up in; tests point them at their own trees."""

    general: tuple[Path, ...] = (
        Path("/usr/share/crashd/hooks/general"),
        Path("/usr/share/apport/general-hooks"),
    )
    package: tuple[Path, ...] = (Path("/usr/share/crashd/hooks"), Path("/usr/share/apport/package-hooks"))
    opt: Path | None = Path("/opt")


@dataclass
class Plan:
    """Hooks to run, in order, and the candidates refused (path → reason)."""

    hooks: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    _directories: dict[Path, str | None] = field(default_factory=dict, repr=False)

    def directory_refusal(self, directory: Path) -> str | None:
        """Why hooks in *directory* must not run (others could swap them), or None; stat'ed once."""
        if directory not in self._directories:
            try:
                st = os.stat(directory)
            except OSError as error:
                self._directories[directory] = f"its directory cannot be examined: {error.strerror}"
            else:
                reason = hook_refusal(st, directory=True)
                self._directories[directory] = reason and f"in a directory {reason}"
        return self._directories[directory]


def package_names(fields: Mapping[str, str | bytes]) -> tuple[str | None, str | None]:
    """``(package, source package)``: the first word of each field, or None when absent or empty.

    Raises :class:`InvalidPackageError` for a name that could leave a hook directory.
    """
    names: list[str | None] = []
    for key in ("Package", "SourcePackage"):
        value = fields.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        words = value.split() if value else []
        if words and (not _PACKAGE_NAME.fullmatch(words[0]) or ".." in words[0]):
            raise InvalidPackageError(key, words[0])
        names.append(words[0] if words else None)
    return names[0], names[1]


def executable_path(fields: Mapping[str, str | bytes]) -> str | None:
    """``ExecutablePath`` as text, or None when absent or binary; checked before anything resolves it.

    Raises :class:`InvalidFieldError` for a path longer than ``PATH_MAX`` or holding a control
    character: no program has such a path, and resolving one costs root time quadratic in its length.
    Linear in the value's length.
    """
    value = fields.get("ExecutablePath")
    if not isinstance(value, str):
        return None
    if (size := len(value.encode("utf-8", "surrogatepass"))) >= PATH_MAX:
        reason = f"{size} bytes, longer than any path (PATH_MAX {PATH_MAX})"
        raise InvalidFieldError("ExecutablePath", value, reason)
    if (control := _CONTROL.search(value)) is not None:
        where = f"control character {control.group()!r} at offset {control.start()}"
        reason = f"{where}: no program has such a path"
        raise InvalidFieldError("ExecutablePath", value, reason)
    return value


def opt_hook_dirs(executable: str, opt: Path) -> list[Path]:
    """apport's ``/opt`` hook directories for an already *resolved* executable path.

    For ``/opt/vendor/app/bin/prog``: ``<dir>/share/crashd/hooks`` and
    ``<dir>/share/apport/package-hooks`` for every ``<dir>`` from ``bin`` up to
    ``/opt``, deepest first. Nothing for a path outside ``opt`` (by whole
    components: ``/optical`` is not under ``/opt``). apport also searches when the
    package ships any file under ``/opt``; crashd does not, to keep discovery free
    of package-database queries.
    """
    if not os.path.normpath(executable).startswith(os.path.join(opt, "")):
        return []  # the common case, told without making a Path of every parent (~45 µs a report)
    path = Path(executable)
    if not path.is_absolute() or ".." in path.parts or opt not in path.parents:
        return []
    dirs: list[Path] = []
    directory = path.parent
    while True:
        dirs += [directory / "share" / "crashd" / "hooks", directory / "share" / "apport" / "package-hooks"]
        if directory == opt:
            return dirs
        directory = directory.parent


def hook_refusal(
    st: os.stat_result, trusted_uids: Sequence[int] = (0,), *, directory: bool = False
) -> str | None:
    """Why a file (or a *directory* of hooks) with this ``stat`` must not be trusted, or None.

    Anyone who can change a hook file chooses code that crashd runs for other
    users' reports, so it must be root's (or a trusted uid's) and writable by
    nobody else.
    """
    if directory and not stat.S_ISDIR(st.st_mode):
        return "that is not a directory"
    if not directory and not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid not in trusted_uids:
        return f"owned by uid {st.st_uid}, not by root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def package_plan(
    fields: Mapping[str, str | bytes],
    roots: HookRoots,
    extra_dirs: Sequence[Path] = (),
    *,
    realpath: Callable[[str], str] = os.path.realpath,
) -> Plan:
    """General, package and source-package hooks for a report with these fields.

    Raises :class:`InvalidPackageError` (before looking at any file) for a bad
    package name, :class:`InvalidFieldError` for an ``ExecutablePath`` no kernel would resolve
    (see :func:`executable_path`). *realpath* resolves ``ExecutablePath`` for the ``/opt`` rule.
    """
    package, source = package_names(fields)
    executable = executable_path(fields)
    plan = Plan()
    seen: set[str] = set()
    for directory in [*(d / "general" for d in extra_dirs), *roots.general]:
        _add_glob(plan, directory, seen)
    package_dirs = [*extra_dirs, *roots.package]
    if roots.opt is not None and executable is not None and executable.startswith("/"):
        package_dirs += opt_hook_dirs(realpath(executable), roots.opt)
    for name in (package and f"{package}.py", source and f"source_{source}.py"):
        if name:
            seen = set()
            for directory in package_dirs:
                _add(plan, directory / name, seen)
    return plan


def _add_glob(plan: Plan, directory: Path, seen: set[str]) -> None:
    try:
        names = sorted(entry.name for entry in os.scandir(directory) if entry.name.endswith(".py"))
    except OSError:
        return  # a missing directory is the common case: nothing to run
    for name in names:
        if not name.startswith(("_", ".")):
            _add(plan, directory / name, seen)


def _add(plan: Plan, path: Path, seen: set[str]) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as error:
        plan.skipped[str(path)] = f"cannot be examined: {error.strerror}"
        return
    if path.name in seen:
        plan.skipped[str(path)] = f"shadowed by an earlier {path.name}"
        return
    seen.add(path.name)
    reason = plan.directory_refusal(path.parent) or hook_refusal(st)
    if reason:
        plan.skipped[str(path)] = reason
    else:
        plan.hooks.append(path)
