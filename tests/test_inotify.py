"""crashd._inotify: the daemon's own decoding of inotify records, against the kernel's layout."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from asyncinotify import Inotify, Mask

from crashd import _inotify

SUFFIXES = (b".crash", b".upload")


def record(name: bytes, mask: int = 0x8, pad: int = 16) -> bytes:
    """One struct inotify_event as the kernel writes it: the name NUL-terminated, padded with NULs."""
    field = name + b"\0" * (pad - len(name) % pad) if name else b""
    return struct.pack("iIII", 1, mask, 0, len(field)) + field


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (record(b"a.crash"), ["a.crash"]),
        (record(b"a.upload"), ["a.upload"]),
        (record(b"a.uploaded"), []),  # crashd's stamp of a sent report: not acted on
        (record(b".a.crash.Xy12.tmp"), []),  # crashd's temporaries: most of a busy directory's events
        (record(b""), []),  # an event on the directory itself (IN_IGNORED, IN_DELETE_SELF)
        (record(b"", mask=_inotify.Q_OVERFLOW), [None]),
        (record(b"x" * 10 + b".crash", pad=16), ["x" * 10 + ".crash"]),  # exactly a multiple of the pad
        (record(b"\xff.crash"), ["\udcff.crash"]),  # not UTF-8: as os.fsdecode, never an error
        (record(b"a.crash") + record(b".t.tmp") + record(b"b.upload"), ["a.crash", "b.upload"]),
        (record(b"a.crash")[:-3], []),  # cut short: what is there is skipped, nothing raised
    ],
)
def test_decode(data: bytes, expected: list[str | None]) -> None:
    assert list(_inotify.decode(data, SUFFIXES)) == expected


def test_decode_reads_what_the_kernel_writes(tmp_path: Path) -> None:
    """A real watch: a report written in place, a stamp renamed in, a temporary; only the report and the
    stamp come out, in order."""
    with Inotify() as inotify:
        inotify.add_watch(tmp_path, Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.ONLYDIR)
        os.set_blocking(inotify.fd, False)  # as the daemon does
        (tmp_path / "_bin_x.0.crash").write_bytes(b"ProblemType: Crash\n")
        (tmp_path / ".tmp1").write_bytes(b"")
        os.rename(tmp_path / ".tmp1", tmp_path / "_bin_x.0.upload")
        (tmp_path / "_bin_x.0.uploaded").write_bytes(b"")
        data = _inotify.read(inotify.fd)
        assert _inotify.read(inotify.fd) == b""  # all of it in one read; then nothing, not an error
    assert list(_inotify.decode(data, SUFFIXES)) == ["_bin_x.0.crash", "_bin_x.0.upload"]
