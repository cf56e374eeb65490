"""Settings: command-line flag > environment > ``/etc/crashd/crashd.conf`` > default.

The file is INI with a ``[crashd]`` section (and ``[consent]``, read by the
consent module). An unknown key or a bad value is a :class:`ConfigError` that
names the file, the key and the value, so a typo never silently falls back to a
default (DESIGN.md §9).
"""

from __future__ import annotations

import configparser
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crashd import budget, fs
from crashd.errors import CrashdError
from crashd.network import Metered

DEFAULT_CONFIG = Path("/etc/crashd/crashd.conf")
MAX_CONFIG = 64 * 1024  # a configuration file is a few lines; it is read whole, so bounded

# Environment variables apport, whoopsie and daisy's own tests already use.
ENVIRONMENT = {"url": "CRASH_DB_URL", "crash_dir": "APPORT_REPORT_DIR"}


class ConfigError(CrashdError, ValueError):
    """A configuration value crashd cannot use; the message says where it came from."""


@dataclass(frozen=True)
class Settings:
    """Every setting of DESIGN.md §9; durations are seconds."""

    url: str = "https://daisy.ubuntu.com"
    crash_dir: Path = Path("/var/crash")
    state_dir: Path = Path("/var/lib/crashd")
    hook_dirs: tuple[Path, ...] = ()
    hook_timeout: float = 30
    hook_python: str = "/usr/bin/python3"
    idle_timeout: float = 30
    backoff_base: float = 60
    backoff_server_base: float = 7200
    backoff_cap: float = 21600
    expire_after: float = 1209600
    connect_timeout: float = 10
    read_timeout: float = 60
    unprivileged_user: str = "crashd"
    hook_user: str = "crashd-hook"
    metered: Metered = Metered.REPORTS_ONLY
    duplicate_window: float = 86400
    max_use: str = "auto"  # bytes the reports may take; auto: 10 % of the file system, 1 MiB to 1 GiB


_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}


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
    return Settings(**{name: _convert(name, value, where) for name, (value, where) in raw.items()})


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
            if key not in _FIELDS:
                raise ConfigError(f"{path}: unknown key {key!r} in [crashd] (known: {', '.join(_FIELDS)})")
            values[key] = (value, f"{path} [crashd] {key}")
    return values


def _convert(name: str, value: str, where: str) -> Any:
    try:
        return _CONVERTERS.get(name, parse_seconds)(value)
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


def parse_seconds(value: str) -> float:
    """A positive, finite number of seconds (a duration setting, or ``--timeout`` on the command line)."""
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError("must be a positive number of seconds")
    return seconds


_CONVERTERS = {
    "url": _url,
    "crash_dir": _path,
    "state_dir": _path,
    "hook_dirs": _paths,
    "hook_python": _program,
    "unprivileged_user": _user,
    "hook_user": _user,
    "metered": _metered,
    "max_use": _max_use,
}
