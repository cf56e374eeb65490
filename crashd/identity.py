"""The system identifier: the last path segment of every upload URL.

daisy files each report under this token, and ``errors.ubuntu.com/user/<id>``
lists a machine's reports by it, so it must be stable and must match what
whoopsie sent from the same machine (DESIGN.md §4, research/whoopsie.md §1.2).
In order of preference:

1. ``CRASH_DB_IDENTIFIER`` from the environment (tests, CI, fleets that want
   their own ids; whoopsie 0.2 honours the same variable);
2. the value cached in ``<state_dir>/identifier`` by an earlier run;
3. whoopsie's algorithm: SHA-512 hex of the 36 bytes of the DMI product UUID;
4. without DMI (some VMs, most ARM machines): an application-specific
   hash of ``/etc/machine-id``, as systemd's ``sd_id128_get_machine_app_specific``
   does, so the raw machine id never leaves the machine.

A computed value (3 or 4) is cached, so later runs agree even if the firmware
or machine id is later unreadable; the override is never cached.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Callable, Mapping

from crashd import fs

__all__ = [
    "CACHE_NAME",
    "CRASHD_APP_ID",
    "DMI_PRODUCT_UUID",
    "ENV_VAR",
    "MACHINE_ID",
    "check_override",
    "hash_machine_id",
    "hash_product_uuid",
    "system_identifier",
]

log = logging.getLogger(__name__)

ENV_VAR = "CRASH_DB_IDENTIFIER"
CACHE_NAME = "identifier"
DMI_PRODUCT_UUID = "/sys/class/dmi/id/product_uuid"
MACHINE_ID = "/etc/machine-id"

CRASHD_APP_ID = bytes.fromhex("6cd7086c99b8916a3ca02dd89e41abc2")
"""crashd's fixed 16-byte application id, the HMAC message for the machine-id
hash.  Never change it: every machine without DMI would get a new identifier."""

_UUID_RE = re.compile(rb"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# The nil and max UUIDs (RFC 9562) are what firmware writes when it has none;
# hashing them would give thousands of machines the same identifier.
_PLACEHOLDER_UUIDS = {b"00000000-0000-0000-0000-000000000000", b"ffffffff-ffff-ffff-ffff-ffffffffffff"}
_MACHINE_ID_RE = re.compile(rb"([0-9a-f]{32})\n?")
_IDENTIFIER_RE = re.compile(rb"([0-9a-f]{128})\n?")
# The override becomes a URL path segment verbatim: RFC 3986 "pchar" without
# percent-escapes, so it cannot add a segment, a query, a fragment or a space.
_OVERRIDE_RE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:@-]{1,256}")
_Digest = Callable[[bytes], str | None]
# Errors that mean "this source does not exist here", as opposed to "is broken".
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENODEV, errno.ENXIO})


def check_override(value: str) -> str:
    """Return ``value`` if it can serve as the identifier, else ValueError naming
    the variable: 1 to 256 printable ASCII characters, none of ``/ ? # %`` or a
    space (it is put into the URL as is), and not ``.`` or ``..``."""
    if value in (".", "..") or not _OVERRIDE_RE.fullmatch(value):
        raise ValueError(
            f"{ENV_VAR}={value[:40]!r}: must be 1 to 256 printable ASCII characters without "
            "spaces or any of / ? # % and not '.' or '..'"
        )
    return value


def hash_product_uuid(data: bytes) -> str | None:
    """whoopsie's identifier from the contents of ``product_uuid``, or None.

    The file holds 36 characters and a newline; whoopsie hashed exactly the
    first 36 bytes as they are (no newline, no case folding), so we do too.
    None if they are not a UUID in text form or are a placeholder UUID.
    """
    head = data[:36]
    if not _UUID_RE.fullmatch(head) or head.lower() in _PLACEHOLDER_UUIDS:
        return None
    return hashlib.sha512(head).hexdigest()


def hash_machine_id(data: bytes) -> str | None:
    """crashd's identifier from the contents of ``/etc/machine-id``, or None.

    HMAC-SHA-512 keyed with the 16 machine-id bytes over :data:`CRASHD_APP_ID`:
    stable per machine, 128 hex characters like whoopsie's, and not reversible
    to the machine id, which other services use as a secret-ish handle.  None
    for anything but 32 lowercase hex digits (e.g. ``uninitialized``, all zeros).
    """
    match = _MACHINE_ID_RE.fullmatch(data)
    if not match or match[1] == b"0" * 32:
        return None
    return hmac.new(bytes.fromhex(match[1].decode()), CRASHD_APP_ID, hashlib.sha512).hexdigest()


def system_identifier(
    state_dir: str | os.PathLike[str] | None,
    *,
    environ: Mapping[str, str] = os.environ,
    dmi_path: str | os.PathLike[str] = DMI_PRODUCT_UUID,
    machine_id_path: str | os.PathLike[str] = MACHINE_ID,
) -> str:
    """The system identifier (see the module docstring for the order of sources).

    ValueError for a malformed ``CRASH_DB_IDENTIFIER``.  LookupError when no
    source works, naming what was tried — including when ``product_uuid``
    exists but cannot be read (it is root-only): falling back to the machine id
    then would give the same machine two identifiers depending on who asks.
    """
    override = environ.get(ENV_VAR)
    if override:
        return check_override(override)
    if state_dir is not None:
        cached = _read_cache(state_dir)
        if cached:
            return cached
    tried = [f"{ENV_VAR} is not set"]
    value = _from_source(dmi_path, hash_product_uuid, "a usable UUID", tried)
    if value is None:
        value = _from_source(machine_id_path, hash_machine_id, "a usable machine id", tried)
    if value is None:
        raise LookupError("no system identifier: " + "; ".join(tried))
    if state_dir is not None:
        _write_cache(state_dir, value)
    return value


def _from_source(path: str | os.PathLike[str], digest: _Digest, wanted: str, tried: list[str]) -> str | None:
    """Hash the first bytes of ``path`` with ``digest``; None (and a note in
    ``tried``) when the file is absent or unusable.  LookupError when it exists
    but cannot be read: that is a setup problem, not a reason to fall back."""
    try:
        data = fs.read_bounded(path, 64, follow=True, head=True)
    except fs.UnsafeFileError as err:
        raise LookupError(f"no system identifier: {err}; set {ENV_VAR}") from err
    except OSError as err:
        if err.errno not in _ABSENT:
            raise LookupError(
                f"no system identifier: cannot read {os.fspath(path)} ({err.strerror}); "
                f"run as root or set {ENV_VAR}"
            ) from err
        tried.append(f"{os.fspath(path)} does not exist")
        return None
    value = digest(data)
    if value is None:
        tried.append(f"{os.fspath(path)} does not hold {wanted}")
    return value


def _read_cache(state_dir: str | os.PathLike[str]) -> str | None:
    """The cached identifier, or None if it is missing, unreadable or malformed."""
    try:
        with fs.directory(state_dir, follow=True) as dir_fd:
            data = fs.read_bounded(CACHE_NAME, 256, dir_fd=dir_fd, head=True)
    except (OSError, fs.UnsafeFileError) as err:
        if getattr(err, "errno", None) not in _ABSENT:
            log.debug("cannot read the cached identifier in %s: %s", os.fspath(state_dir), err)
        return None
    match = _IDENTIFIER_RE.fullmatch(data)
    if not match:
        log.debug("ignoring a malformed cached identifier in %s", os.fspath(state_dir))
        return None
    return match[1].decode()


def _write_cache(state_dir: str | os.PathLike[str], value: str) -> None:
    """Atomically store ``value`` in ``<state_dir>/identifier``; failure is only logged.

    fsync'ed so a power cut cannot leave an empty file behind the new name (it would only be
    recomputed, but once per machine the fsync is free); a symlink in its place is replaced, never
    followed (:func:`crashd.fs.replace_file`).
    """
    try:
        fs.replace_file(os.path.join(state_dir, CACHE_NAME), value.encode() + b"\n", mode=0o644)
    except OSError as err:
        log.debug("not caching the identifier in %s: %s", os.fspath(state_dir), err)
