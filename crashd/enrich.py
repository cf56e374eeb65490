"""What crashd adds to a report itself, in-process: the system and package facts daisy keys reports by.

apport's ``add_os_info`` and ``add_package_info`` for dpkg systems, as daisy needs them
(``research/whoopsie.md`` §8.3), computed in the daemon rather than in a hook process: a report
that no package hook applies to then costs no process at all (issue 15). Nothing here runs or
opens anything a report names: the dpkg database and ``os-release`` are read (each once, and again
only when its file changes), and ``ExecutablePath`` is looked at only through :func:`_public_stat`,
which refuses a path any user could not reach — so what root sees is never more than what the
crashing user could have seen (the built-in hooks, which this replaces, ran as that user).

Only missing fields are filled, with apport's names and formats:

* ``Architecture`` (dpkg's native architecture), ``DistroRelease`` (``Debian 12``), ``Uname``;
* ``ExecutableTimestamp``: the executable's mtime now (the crash-time value unless it was upgraded);
* ``Package`` (``name version``), ``SourcePackage``, ``PackageArchitecture`` and ``Dependencies``:
  every installed package it depends on (Pre-Depends, Depends, Recommends; first alternative;
  transitively), one ``name version`` per line, as apport writes them;
* ``CrashdVersion``: which crashd collected it.

apport's ``[modified: …]`` and ``[origin: …]`` suffixes are not computed: they need every file's
checksum.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PackageInfo", "Packages", "SystemFacts", "added_fields", "system_facts"]

DPKG_STATUS = Path("/var/lib/dpkg/status")
OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))
MAX_STATUS = 256 * 1024 * 1024  # a desktop's status file is a few MiB; a bigger one is not dpkg's
MAX_OS_RELEASE = 64 * 1024
QUERY_TIMEOUT = 10.0  # seconds for the one dpkg-query -S a report without Package costs
_GLOB = frozenset("*?[\\")
_DEPENDS = ("Pre-Depends", "Depends", "Recommends")  # the relations apport's closure follows
_FIELD = re.compile(
    rb"^(Package|Status|Version|Source|Architecture|(?:Pre-)?Depends|Recommends):[ \t]*(.*)$", re.M
)
_INSTALLED = (("install", "installed"), ("hold", "installed"))  # (want, status) of a usable package
_PACKAGE = re.compile(rb"\nPackage:[ \t]*(\S+)")  # where each stanza's package is named


@dataclass(frozen=True)
class PackageInfo:
    version: str
    source: str
    architecture: str
    depends: tuple[str, ...]  # names, first alternative of each group, architecture qualifiers dropped


def _parse_status(data: bytes) -> Mapping[str, PackageInfo]:
    """Installed packages of a dpkg ``status`` file; the first stanza of a name wins (as dpkg-query -W)."""
    return _Status(data)


class _Status(Mapping[str, PackageInfo]):
    """A dpkg ``status`` file's installed packages, each stanza parsed when its package is first asked
    for. A report needs its package and that package's dependency closure — tens of stanzas, not the
    ~3,000 of a desktop's database, whose whole parse (~11 ms a 1,000) came before the first enriched
    report of every start (issue 15: the first POST)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at: dict[str, list[int]] = {}  # name -> where its Package: lines are, in file order
        # Searched for after a newline, which the file's start gets too: the literal prefix lets the regex
        # engine skip ahead (^ with re.M tried at every line: ~7 times slower). A match's start, one
        # byte into the copy, is where its Package: line starts in *data*.
        for match in _PACKAGE.finditer(b"\n" + data):
            self._at.setdefault(match.group(1).decode("utf-8", "replace"), []).append(match.start())
        self._known: dict[str, PackageInfo | None] = {}  # parsed: None, no installed stanza

    def __getitem__(self, name: str) -> PackageInfo:
        try:
            info = self._known[name]
        except KeyError:
            info = self._known[name] = self._first_installed(name)
        if info is None:
            raise KeyError(name)
        return info

    def _first_installed(self, name: str) -> PackageInfo | None:
        for at in self._at.get(name, ()):
            start = self._data.rfind(b"\n\n", 0, at) + 1  # the blank line before the stanza, or 0
            end = self._data.find(b"\n\n", at)
            parsed = _stanza(self._data[start : end if end >= 0 else len(self._data)])
            if parsed is not None and parsed[0] == name:  # (a stanza's last Package: line names it)
                return parsed[1]
        return None

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._at if name in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _stanza(stanza: bytes) -> tuple[str, PackageInfo] | None:
    """One stanza's package, if it is installed (or held); None otherwise."""
    fields = {key.decode(): value.decode("utf-8", "replace").strip() for key, value in _FIELD.findall(stanza)}
    name, state = fields.get("Package"), fields.get("Status", "").split()
    if not name or not state or (state[0], state[-1]) not in _INSTALLED:
        return None
    source = fields.get("Source", "").split()
    version, architecture = fields.get("Version", ""), fields.get("Architecture", "")
    return name, PackageInfo(version, source[0] if source else name, architecture, _depends(fields))


def _depends(fields: Mapping[str, str]) -> tuple[str, ...]:
    """Names of the first alternative of every relation in :data:`_DEPENDS`, qualifiers dropped."""
    names = []
    for group in ",".join(fields.get(key, "") for key in _DEPENDS).split(","):
        words = group.split("|")[0].split()
        if words:
            names.append(words[0].split(":")[0])
    return tuple(names)


class _Cached:
    """A value computed from one file, recomputed only when the file's identity or mtime changes."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit
        self._key: tuple[int, int, int, int] | None = None
        self._data: bytes | None = None
        self._lock = threading.Lock()

    def read(self) -> tuple[bool, bytes | None]:
        """(changed since the last call, the file's bytes or None when it is absent or unusable)."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                changed, self._key, self._data = self._key is not None, None, None
                return changed, None
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key == self._key:
                return False, self._data
            self._key = key
            self._data = _read_regular(self.path, self.limit)
            return True, self._data


def _read_regular(path: Path, limit: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        with os.fdopen(os.dup(fd), "rb") as file:
            data = file.read(limit + 1)
        return data if len(data) <= limit else None
    finally:
        os.close(fd)


class Packages:
    """The dpkg database, parsed once and again only when ``status`` changes (an upgrade)."""

    def __init__(self, status: Path = DPKG_STATUS) -> None:
        self._file = _Cached(status, MAX_STATUS)
        self._installed: Mapping[str, PackageInfo] = {}
        self._lock = threading.Lock()  # collecting threads share one: none may see the table half-built

    def installed(self) -> Mapping[str, PackageInfo]:
        with self._lock:
            changed, data = self._file.read()
            if changed:
                self._installed = _parse_status(data) if data is not None else {}
            return self._installed

    def native_architecture(self) -> str | None:
        """dpkg's own architecture is the system's (``dpkg --print-architecture``)."""
        dpkg = self.installed().get("dpkg")
        return dpkg.architecture if dpkg is not None and dpkg.architecture not in ("", "all") else None

    def closure(self, package: str) -> list[str]:
        """Installed packages *package* depends on, transitively, sorted (itself excluded)."""
        installed = self.installed()
        seen: set[str] = set()
        stack = [package]
        while stack:
            info = installed.get(stack.pop())
            for dep in info.depends if info is not None else ():
                if dep in installed and dep not in seen:
                    seen.add(dep)
                    stack.append(dep)
        seen.discard(package)
        return sorted(seen)

    def owner(self, executable: str) -> str | None:
        """The package owning *executable*, under its given, resolved and /usr-merged names."""
        candidates: list[str] = []
        resolved = _public_realpath(executable)
        for path in (executable, resolved):
            if path is None:
                continue
            if path.startswith("/usr/"):
                other: str | None = path[4:]
            elif path.startswith(("/bin/", "/sbin/", "/lib")):
                other = "/usr" + path
            else:
                other = None
            fresh = [p for p in (path, other) if p and p not in candidates]
            candidates += [p for p in fresh if not _GLOB.intersection(p)]
        if not candidates:
            return None
        for line in _dpkg_query_owner(candidates).splitlines():
            owners, sep, path = line.partition(": ")
            if sep and not line.startswith("diversion by") and path in candidates:
                return owners.split(",")[0].strip().split(":")[0]
        return None


def _dpkg_query_owner(paths: list[str]) -> str:
    """``dpkg-query -S`` matches the names as strings in dpkg's file lists: it opens none of them."""
    try:
        done = subprocess.run(
            ["dpkg-query", "-S", "--", *paths], stdin=subprocess.DEVNULL, capture_output=True,
            timeout=QUERY_TIMEOUT, check=False, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.decode("utf-8", "replace")


def _public_stat(path: str) -> os.stat_result | None:
    """*path*'s status if every directory on the way is searchable by everyone, else None.

    The daemon is root; the crashing user may not be. Looking only where anyone may look keeps a
    report from learning, through what crashd adds, about a file its writer could not reach.
    """
    if not path.startswith("/") or "\0" in path or len(path.encode("utf-8", "surrogateescape")) >= 4096:
        return None
    directory = "/"
    for part in path.split("/")[1:-1]:
        if not part:
            continue
        directory = os.path.join(directory, part)
        try:
            st = os.stat(directory)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode) or not st.st_mode & stat.S_IXOTH:
            return None
    try:
        return os.stat(path)
    except OSError:
        return None


def _public_realpath(path: str) -> str | None:
    if _public_stat(path) is None:
        return None
    resolved = os.path.realpath(path)
    return resolved if _public_stat(resolved) is not None else None


class SystemFacts:
    """The machine's side of a report: architecture, release, kernel; each read once and cached."""

    def __init__(self, packages: Packages | None = None, os_release: tuple[Path, ...] = OS_RELEASE) -> None:
        self.packages = packages or Packages()
        self._os_release = [_Cached(path, MAX_OS_RELEASE) for path in os_release]
        self._release: str | None = None

    def distro_release(self) -> str | None:
        """``Ubuntu 24.04``, ``Debian 12``: os-release's NAME (without " GNU/Linux") and VERSION_ID."""
        for cached in self._os_release:
            changed, data = cached.read()
            if data is None:
                continue
            if changed or self._release is None:
                self._release = _release(data)
            return self._release
        return None

    @staticmethod
    def uname() -> str:
        uname = os.uname()
        return f"{uname.sysname} {uname.release} {uname.machine}"


_facts: SystemFacts | None = None
_facts_lock = threading.Lock()


def system_facts() -> SystemFacts:
    """The process's one :class:`SystemFacts`: the dpkg database is parsed on first use and again only
    when it changes, however many reports the process collects."""
    global _facts
    with _facts_lock:
        if _facts is None:
            _facts = SystemFacts()
        return _facts


def _release(data: bytes) -> str | None:
    values: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip("\"'")
    name = values.get("NAME", "").replace(" GNU/Linux", "").strip()
    return f"{name} {values.get('VERSION_ID', '')}".strip() or None


def added_fields(fields: Mapping[str, str | bytes], facts: SystemFacts, version: str) -> dict[str, str]:
    """The fields crashd adds to a report with these *fields*: only those it lacks."""
    added: dict[str, str] = {}
    packages = facts.packages
    if "Architecture" not in fields and (architecture := packages.native_architecture()):
        added["Architecture"] = architecture
    if "DistroRelease" not in fields and (release := facts.distro_release()):
        added["DistroRelease"] = release
    if "Uname" not in fields:
        added["Uname"] = facts.uname()
    executable = fields.get("ExecutablePath")
    executable = executable if isinstance(executable, str) else None
    if "ExecutableTimestamp" not in fields and executable and (st := _public_stat(executable)):
        added["ExecutableTimestamp"] = str(int(st.st_mtime))
    added["CrashdVersion"] = version
    package = _first_word(fields.get("Package"))
    if package is None and executable:
        package = packages.owner(executable)
    if package is None:
        return added
    info = packages.installed().get(package)
    if "Package" not in fields:
        added["Package"] = f"{package} {info.version if info else '(not installed)'}"
    if info is None:
        return added
    if "SourcePackage" not in fields:
        added["SourcePackage"] = info.source or package
    if "PackageArchitecture" not in fields:
        added["PackageArchitecture"] = info.architecture
    if "Dependencies" not in fields:
        installed = packages.installed()
        closure = packages.closure(package)
        added["Dependencies"] = "\n".join(f"{dep} {installed[dep].version}" for dep in closure)
    return added


def _first_word(value: object) -> str | None:
    words = value.split() if isinstance(value, str) else []
    return words[0] if words else None
