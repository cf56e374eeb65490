"""Consent: may crashd send anything, and may it send without asking (DESIGN.md §5).

The effective consent is built in three layers, each later one winning:

1. the stored preferences in ``STATE_DIR/consent.json`` — what a settings UI
   (through D-Bus) or ``crashd prefs set`` chose; missing means the defaults
   (ReportCrashes on, AutomaticallyReportCrashes off, ReportMetrics on);
2. the administrator lock, ``[consent]`` in ``/etc/crashd/crashd.conf``:
   with ``locked = true`` its ``report_crashes`` / ``automatically_report_crashes``
   replace the stored values and the setters refuse to change them;
3. the legacy switches admins and scripts already use: ``/etc/default/whoopsie``
   ``report_crashes=false`` and ``/etc/default/apport`` ``enabled=0`` force
   ReportCrashes off, even over a lock that says on — off means nothing leaves.

A legacy switch does not stop anyone from changing the stored preference (it
is still what the user wants once the admin removes the switch); the
effective value simply stays off and :attr:`Consent.reason` says why.

When the stored file exists but cannot be read (e.g. a user without access to
the root-only state directory), reporting counts as off: sending on a guess
would break the one promise consent makes. A *corrupt* file is crashd's own
damage and reads as the defaults, with a warning.
"""

from __future__ import annotations

import configparser
import errno
import json
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from crashd import fs
from crashd.config import DEFAULT_CONFIG, ConfigError
from crashd.errors import CrashdError

__all__ = [
    "PREFERENCES", "Consent", "ConsentLocked", "ConsentReader", "load_consent", "may_collect_automatically",
    "may_send", "parse_bool", "set_preference", "store_consent",
]  # fmt: skip

log = logging.getLogger(__name__)

FILE_NAME = "consent.json"
WHOOPSIE_DEFAULT = Path("/etc/default/whoopsie")
APPORT_DEFAULT = Path("/etc/default/apport")
MAX_FILE = 64 * 1024  # every file read here is a few lines; more is not one of them
# D-Bus property names (whoopsie-preferences, DESIGN.md §5) -> Consent fields.
PREFERENCES = {
    "ReportCrashes": "report_crashes",
    "AutomaticallyReportCrashes": "automatic",
    "ReportMetrics": "report_metrics",
}
_LOCKABLE = {"report_crashes": "report_crashes", "automatically_report_crashes": "automatic"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=(?P<value>.*)")


class ConsentLocked(CrashdError, PermissionError):
    """The administrator locked the preferences; the message names the file that does it."""


@dataclass(frozen=True)
class Consent:
    """The effective preferences. ``automatic`` is never true while ``report_crashes`` is off, so a UI
    that reads AutomaticallyReportCrashes first (GNOME Settings) does not show "Automatic" for "Never".
    ``reason`` says why an outside switch forces reporting off, or why the preferences are locked."""

    report_crashes: bool = True
    automatic: bool = False
    report_metrics: bool = True
    locked: bool = False
    reason: str | None = None

    def as_properties(self) -> dict[str, bool]:
        """The values by D-Bus property name, as the preference services and ``crashd prefs`` show them."""
        return {name: getattr(self, field) for name, field in PREFERENCES.items()}


def may_send(consent: Consent, *, marked_for_upload: bool) -> bool:
    """Whether one report may leave the machine. Off wins over everything, even a ``.upload`` stamp a UI
    wrote earlier (the user may have switched off since); automatic sends all; otherwise only what a UI or
    ``upload-all`` marked."""
    if not consent.report_crashes:
        return False
    return consent.automatic or marked_for_upload


def may_collect_automatically(consent: Consent) -> bool:
    """Whether the daemon may pick up and send new reports nobody marked (the "send without asking" mode)."""
    return consent.report_crashes and consent.automatic


def parse_bool(value: str) -> bool:
    """The booleans crashd's configuration accepts, in any case; ValueError for anything else."""
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise ValueError("must be true or false (yes/no, on/off, 1/0)")


def load_consent(
    state_dir: Path,
    *,
    config: Path | None = DEFAULT_CONFIG,
    whoopsie_default: Path = WHOOPSIE_DEFAULT,
    apport_default: Path = APPORT_DEFAULT,
) -> Consent:
    """The effective consent: stored preferences, then the admin lock, then the legacy switches.

    *config* None means no configuration file; a missing one means no lock. Raises :class:`ConfigError`
    for a bad ``[consent]`` section.
    """
    consent, unreadable = _read_stored(state_dir / FILE_NAME)
    lock = _read_lock(config) if config is not None else None
    if lock is not None:
        consent = replace(consent, locked=True, **lock)
    forced_off = (
        unreadable
        or _legacy_off(whoopsie_default, "report_crashes", _whoopsie_off)
        or _legacy_off(apport_default, "enabled", lambda value: value.strip() == "0")
    )
    if forced_off:
        consent = replace(consent, report_crashes=False, reason=forced_off)
    elif consent.locked:
        how = "locked" if consent.report_crashes else "switched off"
        consent = replace(consent, reason=f"{how} by the administrator in {config} ([consent] locked = true)")
    return replace(consent, automatic=consent.automatic and consent.report_crashes)


class ConsentReader:
    """:func:`load_consent` for a reader that asks per report (the daemon's gate): the files are read
    again only when one of them changed, judged by a ``stat`` of each — device, inode, size, mtime and
    ctime in nanoseconds, or the error that stat met (a missing file, a directory made unreadable).

    A replaced file has another inode; a file rewritten in place to the same size and mtime still has
    a new ctime, which nobody can set back. The one blind spot of every stat cache — a change within
    the file system's clock tick of the read that cached it — is closed the way git closes it: a file
    changed less than :attr:`RACY_NS` before it was read is not trusted, and read again next time.
    Thread-safe: the daemon's workers ask at once. A :class:`ConfigError` is raised each time, never cached.
    """

    RACY_NS = 50_000_000  # well above a kernel tick (1 to 10 ms) and any clock skew between the two reads

    def __init__(
        self,
        state_dir: Path,
        *,
        config: Path | None = DEFAULT_CONFIG,
        whoopsie_default: Path = WHOOPSIE_DEFAULT,
        apport_default: Path = APPORT_DEFAULT,
    ) -> None:
        self._load = lambda: load_consent(
            state_dir, config=config, whoopsie_default=whoopsie_default, apport_default=apport_default
        )
        # (path, follow): the stored file is never followed (a symlink there is refused); the others are
        self._files = [(state_dir / FILE_NAME, False), (whoopsie_default, True), (apport_default, True)]
        if config is not None:
            self._files.append((config, True))
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._consent = Consent()

    def __call__(self) -> Consent:
        with self._lock:
            key, newest = self._stat()
            if key == self._key:
                return self._consent
            started = time.time_ns()
            consent = self._load()
            racy = started - newest < self.RACY_NS
            self._key, self._consent = (None if racy else key), consent
            return consent

    def _stat(self) -> tuple[tuple[object, ...], int]:
        """The files' stat key, and the newest ctime/mtime among them (ns; 0 for none)."""
        key: list[object] = []
        newest = 0
        for path, follow in self._files:
            try:
                st = os.stat(path, follow_symlinks=follow)
            except OSError as error:
                key.append(error.errno)
                continue
            key.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode))
            newest = max(newest, st.st_ctime_ns, st.st_mtime_ns)
        return tuple(key), newest


def store_consent(
    state_dir: Path,
    *,
    report_crashes: bool | None = None,
    automatic: bool | None = None,
    report_metrics: bool | None = None,
    config: Path | None = DEFAULT_CONFIG,
    whoopsie_default: Path = WHOOPSIE_DEFAULT,
    apport_default: Path = APPORT_DEFAULT,
) -> Consent:
    """Change the given stored preferences (None leaves one as it is); return the effective consent.

    Under an admin lock, changing ReportCrashes or AutomaticallyReportCrashes raises :class:`ConsentLocked`;
    setting one to the value it already has succeeds and writes nothing, because KDE and GNOME re-apply
    every switch when they save. ReportMetrics is not part of the lock.
    """
    where = {"config": config, "whoopsie_default": whoopsie_default, "apport_default": apport_default}
    changes = {"report_crashes": report_crashes, "automatic": automatic, "report_metrics": report_metrics}
    changes = {name: value for name, value in changes.items() if value is not None}
    stored, _ = _read_stored(state_dir / FILE_NAME)
    lock = _read_lock(config) if config is not None else None
    if lock is not None:
        held = replace(stored, **lock)  # what the lock shows, before any legacy switch
        held = replace(held, automatic=held.automatic and held.report_crashes)
        if any(getattr(held, name) != value for name, value in changes.items() if name != "report_metrics"):
            raise ConsentLocked(f"crash-reporting preferences are locked by the administrator in {config}")
        changes.pop("report_crashes", None)
        changes.pop("automatic", None)
        if not changes:
            return load_consent(state_dir, **where)  # only the values the lock holds: nothing to write
    preferences = {name: changes.get(name, getattr(stored, name)) for name in PREFERENCES.values()}
    _write(state_dir, json.dumps(preferences, sort_keys=True).encode())
    return load_consent(state_dir, **where)


def set_preference(
    state_dir: Path,
    name: str,
    value: bool,
    *,
    config: Path | None = DEFAULT_CONFIG,
    whoopsie_default: Path = WHOOPSIE_DEFAULT,
    apport_default: Path = APPORT_DEFAULT,
) -> Consent:
    """Set one preference by its D-Bus name (what the D-Bus setters and ``crashd prefs set`` call)."""
    if name not in PREFERENCES:
        raise ValueError(f"unknown preference {name!r} (known: {', '.join(PREFERENCES)})")
    change = {PREFERENCES[name]: bool(value)}
    return store_consent(
        state_dir, config=config, whoopsie_default=whoopsie_default, apport_default=apport_default, **change
    )


def _read_stored(path: Path) -> tuple[Consent, str | None]:
    """The stored preferences, and a reason to force reporting off when the file exists but is unreadable."""
    try:
        data = fs.read_bounded(path, MAX_FILE)
    except FileNotFoundError:
        return Consent(), None
    except fs.UnsafeFileError as error:
        log.warning("%s is unusable (%s): using the default preferences", path, error.reason)
        return Consent(), None
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM):
            log.warning("%s is unusable (%s): using the default preferences", path, error.strerror or error)
            return Consent(), None
        return Consent(), f"cannot read {path} ({error.strerror}): reporting stays off"
    try:
        document = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        values = {field: document.get(field, getattr(Consent(), field)) for field in PREFERENCES.values()}
        if not all(isinstance(value, bool) for value in values.values()):
            raise ValueError("a preference is not true or false")
    except (ValueError, RecursionError) as error:  # bad JSON or UTF-8 are ValueErrors; "[[[…" recurses
        log.warning("%s is corrupt (%s): using the default preferences", path, error)
        return Consent(), None
    return Consent(**values), None


def _read_lock(config: Path) -> dict[str, bool] | None:
    """The values ``[consent]`` forces (possibly none) when ``locked = true``; None when not locked."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(fs.read_bounded(config, MAX_FILE, follow=True).decode(), source=str(config))
    except FileNotFoundError:
        return None
    except fs.UnsafeFileError as error:
        raise ConfigError(f"{config}: cannot read: {error.reason}") from None
    except OSError as error:
        raise ConfigError(f"{config}: cannot read: {error.strerror or error}") from None
    except (configparser.Error, UnicodeDecodeError) as error:
        raise ConfigError(f"{config}: not a valid INI file: {error}") from None
    if not parser.has_section("consent"):
        return None
    values: dict[str, bool] = {}
    for key, value in parser.items("consent"):
        if key != "locked" and key not in _LOCKABLE:
            known = ", ".join(["locked", *_LOCKABLE])
            raise ConfigError(f"{config}: unknown key {key!r} in [consent] (known: {known})")
        try:
            values[key] = parse_bool(value)
        except ValueError as error:
            raise ConfigError(f"{config} [consent] {key}: bad value {value!r}: {error}") from None
    if not values.pop("locked", False):
        return None
    return {_LOCKABLE[key]: value for key, value in values.items()}


def _whoopsie_off(value: str) -> bool:
    """whoopsie's own start check accepted only ``report_crashes=true``; anything but a true value is off."""
    try:
        return not parse_bool(value)
    except ValueError:
        return True


def _legacy_off(path: Path, key: str, is_off: Callable[[str], bool]) -> str | None:
    """Why the shell-style ``KEY=VALUE`` file *path* switches reporting off, or None when it does not.

    The last assignment wins, as when the file is sourced; quotes and ``# comments`` are read the shell's
    way, spaces around ``=`` and a ``[General]`` line the GKeyFile way (whoopsie-preferences wrote it as
    one). Keys match in any case, as whoopsie's upstart job grepped with ``-i``. A file that exists but
    cannot be read counts as off: the admin's choice is unknown.
    """
    try:
        text = fs.read_bounded(path, MAX_FILE, follow=True).decode(errors="replace")
    except FileNotFoundError:
        return None
    except fs.UnsafeFileError as error:
        return f"cannot read {path} ({error.reason}): reporting stays off"
    except OSError as error:
        return f"cannot read {path} ({error.strerror or error}): reporting stays off"
    found = None
    for line in text.splitlines():
        match = _ASSIGNMENT.match(line)
        if match is None or match["key"].lower() != key:
            continue
        try:
            words = shlex.split(match["value"], comments=True)
        except ValueError:  # an unbalanced quote: take the value as it is, without quotes
            words = [match["value"].strip().strip("\"'")]
        found = words[0] if words else ""
    if found is not None and is_off(found):
        return f"switched off in {path} ({key}={found})"
    return None


def _write(state_dir: Path, data: bytes) -> None:
    """Replace ``consent.json`` atomically and durably (:func:`crashd.fs.replace_file`: a symlink there is
    replaced, never followed). Readable by all (the state directory is 0711, its records 0700): a user
    flushing their own reports must be able to see whether reporting is on. Consent is no secret."""
    state_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    fs.replace_file(state_dir / FILE_NAME, data, mode=0o644, sync_dir=True)
