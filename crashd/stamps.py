"""A report's stamps, the rules of :class:`crashd.spool.Spool`'s stamp methods.

Names follow apport: ``NAME.upload`` asks for ``NAME.crash`` to be sent, ``NAME.uploaded`` says it was
sent and holds the OOPS id. Each stamp is judged on its own: one planted by another user, or that is
not a regular file with one link, is ignored and named, and never hides the other; whoopsie's own
``.uploaded`` (owned by its system user) counts as sent. Stamps are looked at through ``O_PATH`` (no
read, no side effect even on a FIFO) and written atomically with the report's owner (:mod:`crashd.fs`).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from crashd import fs
from crashd.lifecycle import pending  # standard library only, like this module

__all__ = [
    "STAMP_MODE", "Stamps", "check_oops_id", "read_oops_id", "stamp_mtime", "write_stamp",
]  # fmt: skip

STAMP_MODE = 0o640
"""Mode of the stamps crashd writes: the owner and the report's group may read."""

# What crashd accepts as an OOPS id: printable ASCII without spaces, bounded.
_OOPS_ID_RE = re.compile(r"[!-~]{0,256}")
_MAX_STAMP = 1024  # an OOPS id is at most 256 bytes; a longer stamp holds none


@dataclass(frozen=True)
class Stamps:
    """The modification times of a report's stamps, in nanoseconds (None: absent)."""

    upload_ns: int | None
    uploaded_ns: int | None
    ignored: tuple[str, ...] = ()  # "path: reason" of each stamp that was not trusted

    @property
    def pending(self) -> bool:
        """Whether the report waits to be sent (:func:`crashd.lifecycle.pending`)."""
        return pending(self.upload_ns, self.uploaded_ns)


def stamp_mtime(
    dir_fd: int, filename: str, owners: tuple[int, ...], ignored: list[str], shown: str
) -> int | None:
    """mtime_ns of a stamp owned by one of *owners* (the first is the report's owner); None if it does
    not exist or is not trusted (then ``"shown: reason"`` goes to *ignored*)."""
    try:
        opened = fs.open_regular(filename, dir_fd=dir_fd, one_link=True, look=True, shown=shown)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        return None  # a report name of 250+ bytes leaves no room for a stamp: it can have none
    except fs.UnsafeFileError as error:
        ignored.append(str(error))
        return None
    opened.close()
    if opened.stat.st_uid not in owners:
        ignored.append(f"{shown}: {_owner_refusal(opened.stat.st_uid, owners[0])}")
        return None
    return opened.stat.st_mtime_ns


def read_oops_id(dir_fd: int, filename: str, owners: tuple[int, ...] | None, shown: str) -> str | None:
    """The OOPS id in the ``.uploaded`` stamp *filename*; None if it is absent, empty or does not hold an
    id. UnsafeFileError for a symlink, FIFO, hard link, … and, with *owners* (the report's owner first),
    for a stamp none of them owns. A trailing newline is tolerated."""

    def foreign(st: os.stat_result) -> str | None:
        return None if owners is None or st.st_uid in owners else _owner_refusal(st.st_uid, owners[0])

    try:
        data = fs.read_bounded(
            filename, _MAX_STAMP, dir_fd=dir_fd, one_link=True, refusal=foreign, head=True, shown=shown
        )
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            raise
        return None
    text = data.rstrip(b"\n").decode("ascii", "replace")
    return text if text and _OOPS_ID_RE.fullmatch(text) else None


def check_oops_id(oops_id: str) -> bytes:
    """*oops_id* as a stamp's content; ValueError unless it is at most 256 printable ASCII characters
    without spaces (``""``, the answer to a 409 "already reported", is an empty stamp)."""
    if not _OOPS_ID_RE.fullmatch(oops_id):
        raise ValueError(f"not a usable OOPS id: {oops_id!r}")
    return oops_id.encode("ascii")


def write_stamp(
    dir_fd: int, filename: str, content: bytes, report: os.stat_result, *, at_ns: int | None = None
) -> None:
    """Create *filename* with *content*, owned like *report*, mode :data:`STAMP_MODE`, atomically;
    with *at_ns*, that is its mtime (and atime) instead of now.

    Not fsync'ed, on purpose: a stamp lost to a power cut only means the
    report is sent again, which daisy answers 409 "already reported" and
    crashd counts as sent — while an fsync per stamp would cost milliseconds
    each when upload-all stamps hundreds of reports a second.
    """
    owner = (report.st_uid, report.st_gid)
    times = None if at_ns is None else (at_ns, at_ns)
    fs.place_file(dir_fd, filename, content, mode=STAMP_MODE, owner=owner, times=times, sync=False)


def _owner_refusal(st_uid: int, owner_uid: int) -> str:
    return f"is owned by uid {st_uid} but the report belongs to uid {owner_uid}"
