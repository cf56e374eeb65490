"""Settings: command-line flag > environment > ``/etc/crashd/crashd.conf`` > default.

The file is INI with a ``[crashd]`` section (and ``[consent]``, read by the
consent module). An unknown key or a bad value is a :class:`ConfigError` that
names the file, the key and the value, so a typo never silently falls back to a
default (DESIGN.md §9).

:class:`Settings` owns every bound and default crashd runs with (DESIGN.md §7 rule 3: "all
configurable"). It is composed of the value objects the code takes — the report's
:class:`~crashd.report.Limits`, the retry :class:`~crashd.policy.Backoff`, the
:class:`~crashd.hooks.HookOptions` — and each default is written once, in its own dataclass. The
configuration file stays flat: :data:`KEYS` maps each key onto its place in the composition.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crashd import budget, fs
from crashd.errors import CrashdError
from crashd.hooks.options import HookOptions
from crashd.network import Metered
from crashd.policy import Backoff
from crashd.report import Limits
from crashd.uploader import CONNECT_TIMEOUT, READ_TIMEOUT

DEFAULT_CONFIG = Path("/etc/crashd/crashd.conf")
MAX_CONFIG = 64 * 1024  # a configuration file is a few lines; it is read whole, so bounded

# Environment variables apport, whoopsie and daisy's own tests already use.
ENVIRONMENT = {"url": "CRASH_DB_URL", "crash_dir": "APPORT_REPORT_DIR"}


class ConfigError(CrashdError, ValueError):
    """A configuration value crashd cannot use; the message says where it came from."""


@dataclass(frozen=True)
class Settings:
    """Every setting of DESIGN.md §9; durations are seconds, sizes bytes.

    ``hooks.worker_user`` follows ``unprivileged_user`` (:func:`load_settings` sets both): the hooks
    of root's reports never run as the upload worker's user.
    """

    url: str = "https://daisy.ubuntu.com"
    crash_dir: Path = Path("/var/crash")
    state_dir: Path = Path("/var/lib/crashd")
    idle_timeout: float = 30
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT
    unprivileged_user: str = HookOptions.worker_user
    metered: Metered = Metered.REPORTS_ONLY
    duplicate_window: float = 86400
    max_use: str = "auto"  # bytes the reports may take; auto: 10 % of the file system, 1 MiB to 1 GiB
    limits: Limits = field(default_factory=Limits)
    backoff: Backoff = field(default_factory=Backoff)
    hooks: HookOptions = field(default_factory=HookOptions)


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    overrides: Mapping[str, str | None] | None = None,
) -> Settings:
    """Read *path* (the default file only if it exists), then the environment, then *overrides*.

    *overrides* are command-line values by setting name; None means "not given".
    """
    raw: dict[str, tuple[str, str]] = {}  # name -> (value, where it came from)
    file = path if path is not None else DEFAULT_CONFIG
    if path is not None or DEFAULT_CONFIG.exists():
        raw.update(_read_file(file))
    for name, variable in ENVIRONMENT.items():
        if environ.get(variable):
            raw[name] = (environ[variable], f"environment variable {variable}")
    for name, given in (overrides or {}).items():
        if given is not None:
            raw[name] = (given, f"--{name.replace('_', '-')}")
    settings = Settings()
    for key, (value, where) in raw.items():
        settings = _with(settings, KEYS[key].path, _convert(key, value, where))
    return _with(settings, ("hooks", "worker_user"), settings.unprivileged_user)


def value(settings: Settings, key: str) -> Any:
    """The value of the configuration key *key* in *settings* (``hook_timeout``: ``hooks.timeout``)."""
    found: Any = settings
    for name in KEYS[key].path:
        found = getattr(found, name)
    return found


def _with(part: Any, path: tuple[str, ...], new: Any) -> Any:
    """*part* with the value at *path* replaced: the frozen parts are rebuilt, never changed."""
    head, *rest = path
    return dataclasses.replace(part, **{head: _with(getattr(part, head), tuple(rest), new) if rest else new})


def _read_file(path: Path) -> dict[str, tuple[str, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(fs.read_bounded(path, MAX_CONFIG, follow=True).decode("utf-8"), source=str(path))
    except fs.UnsafeFileError as error:
        raise ConfigError(f"{path}: cannot read: {error.reason}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    except (configparser.Error, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a valid INI file: {error}") from None
    unknown_sections = set(parser.sections()) - {"crashd", "consent"}
    if unknown_sections:
        raise ConfigError(f"{path}: unknown section [{sorted(unknown_sections)[0]}]")
    values: dict[str, tuple[str, str]] = {}
    if parser.has_section("crashd"):
        for key, value in parser.items("crashd"):
            if key not in KEYS:
                raise ConfigError(f"{path}: unknown key {key!r} in [crashd] (known: {', '.join(KEYS)})")
            values[key] = (value, f"{path} [crashd] {key}")
    return values


def _convert(name: str, value: str, where: str) -> Any:
    try:
        return KEYS[name].convert(value)
    except ValueError as error:
        raise ConfigError(f"{where}: bad value {value!r}: {error}") from None


def _url(value: str) -> str:
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


def _path(value: str) -> Path:
    if not value.strip():
        raise ValueError("must not be empty")
    return Path(value)


def _program(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


def _user(value: str) -> str:
    if not value.strip():
        raise ValueError("must name a user")
    return value.strip()


def _metered(value: str) -> Metered:
    try:
        return Metered(value.strip())
    except ValueError:
        raise ValueError(f"must be one of {', '.join(choice.value for choice in Metered)}") from None


def _max_use(value: str) -> str:
    text = value.strip()
    if text.lower() == "auto":
        return "auto"
    if budget.parse_size(text) <= 0:
        raise ValueError("must be more than 0 bytes")
    return text


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(part) for part in value.split())


def _size(value: str) -> int:
    """A bound in bytes, written as ``max_use`` is (``2G``, ``512K``, ``4096``)."""
    size = budget.parse_size(value.strip())
    if size <= 0:
        raise ValueError("must be more than 0 bytes")
    return size


def _count(value: str) -> int:
    try:
        count = int(value.strip())
    except ValueError:
        raise ValueError("must be a whole number") from None
    if count <= 0:
        raise ValueError("must be more than 0")
    return count


def parse_seconds(value: str) -> float:
    """A positive, finite number of seconds (a duration setting, or ``--timeout`` on the command line)."""
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return seconds


@dataclass(frozen=True)
class Key:
    """A configuration key: where its value goes in :class:`Settings`, and how its text is read."""

    path: tuple[str, ...]
    convert: Callable[[str], Any] = parse_seconds


# Every [crashd] key, in the order crashd.conf(5) lists them; the defaults are the dataclasses'.
KEYS = {
    "url": Key(("url",), _url),
    "crash_dir": Key(("crash_dir",), _path),
    "state_dir": Key(("state_dir",), _path),
    "hook_dirs": Key(("hooks", "extra_dirs"), _paths),
    "hook_timeout": Key(("hooks", "timeout")),
    "hook_python": Key(("hooks", "python"), _program),
    "idle_timeout": Key(("idle_timeout",)),
    "backoff_base": Key(("backoff", "base")),
    "backoff_server_base": Key(("backoff", "server_base")),
    "backoff_cap": Key(("backoff", "cap")),
    "expire_after": Key(("backoff", "expire_after")),
    "connect_timeout": Key(("connect_timeout",)),
    "read_timeout": Key(("read_timeout",)),
    "unprivileged_user": Key(("unprivileged_user",), _user),
    "hook_user": Key(("hooks", "fallback_user"), _user),
    "metered": Key(("metered",), _metered),
    "duplicate_window": Key(("duplicate_window",)),
    "max_use": Key(("max_use",), _max_use),
    "max_report_size": Key(("limits", "file_size"), _size),
    "max_keys": Key(("limits", "keys"), _count),
    "max_key_length": Key(("limits", "key_length"), _count),
    "max_text_value": Key(("limits", "text_value"), _size),
    "max_binary_value": Key(("limits", "binary_value"), _size),
    "max_upload_text": Key(("limits", "upload_text"), _size),
    "hook_output_cap": Key(("hooks", "output_cap"), _size),
    "hook_address_space": Key(("hooks", "limits", "address_space"), _size),
    "hook_file_size": Key(("hooks", "limits", "file_size"), _size),
    "hook_open_files": Key(("hooks", "limits", "open_files"), _count),
    "hook_processes": Key(("hooks", "limits", "processes"), _count),
}
