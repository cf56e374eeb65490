"""inotify records as the kernel writes them (inotify(7)), decoded in bulk for the daemon's watch.

asyncinotify sets the watch up; the daemon reads its descriptor itself because nearly every event
in a busy crash directory is crashd's own: each report sent makes two to three files (stamps, the
write-back), each a temporary written, closed and renamed — six to nine events a report. Made into
asyncinotify's ``Event`` objects (a ``Path``, a ``Mask`` flag, a watch reference each, and a reader
added and removed on the loop per batch), they were ~30 µs apiece: a fifth of the loop's time for a
queue of reports. Here a name the daemon does not act on costs a slice and an ``endswith``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name
Q_OVERFLOW = 0x4000  # IN_Q_OVERFLOW: events were lost (the queue was full); it names nothing
BUFFER = 64 * 1024  # one read: ~1,000 events of crashd's names; the kernel returns only whole events


def decode(data: bytes, suffixes: tuple[bytes, ...]) -> Iterator[str | None]:
    """The name of every event in *data* that ends with one of *suffixes*, and None for an overflow.
    An event without a name (on the watched directory itself) or with another name is skipped before
    anything is made of it. Names are decoded as ``os.fsdecode`` does."""
    offset, end = 0, len(data)
    while offset + _HEADER.size <= end:
        _wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        offset = start + length
        if offset > end:
            return  # cut short: the kernel returns only whole events, so nothing of it is trusted
        if mask & Q_OVERFLOW:
            yield None
            continue
        name = data[start:offset].split(b"\0", 1)[0]  # NUL-terminated, then padded with NULs
        if name and name.endswith(suffixes):
            yield os.fsdecode(name)


def read(fd: int) -> bytes:
    """What the inotify descriptor *fd* (non-blocking) holds now: whole events, or b"" when none."""
    try:
        return os.read(fd, BUFFER)
    except BlockingIOError:
        return b""
