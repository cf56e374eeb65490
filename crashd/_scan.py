"""The index pass over a problem report: entry boundaries found in blocks, bounds checked as it goes.

Its own module because it is the one performance-critical loop of the format (issue 15): the
file is read in 1 MiB blocks and entry boundaries, line counts and value sizes are found with
C-speed primitives (``re`` over a block, ``bytes.find``/``count``), so Python runs once per
entry or per MiB, not once per physical line. Whenever a bound in :class:`Limits` could be
crossed inside a run of lines, that run is walked again line by line, so every refusal names
the same line, with the same reason, as a line-at-a-time reader would. The error classes and
:class:`Limits` live here (and are re-exported by :mod:`crashd.report`) so that this module
needs nothing of the report module.

Why ~530 lines: three paths that must agree to the byte — a small file by one ``findall``, a
large file entry by entry (a core's long lines stepped over with ``find``), and the
line-at-a-time fallback that names the line of a refusal — are one concept and are kept side by
side so that a change to one is seen against the others.

Exceptions::

    ReportError                 names the file (when known), the line and the reason
    ├── MalformedReportError    the bytes break the format, or a compressed value is corrupt
    └── ReportLimitError        a bound in Limits was exceeded (found while streaming)
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from crashd.errors import CrashdError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# The most of one physical line looked at in one step, and the least a full buffer holds:
# lines have no length limit (a bytes CoreDump is one line of its whole compressed size).
PIECE = 1 * MiB
_FIRST_READ = 64 * KiB  # most reports are a few KiB: don't ask for a whole block at first
KEEP_WHOLE = 64 * KiB  # a file this small is indexed at once and its text values decoded with the index

KEY = re.compile(rb"[A-Za-z0-9._-]*[A-Za-z0-9][A-Za-z0-9._-]*")
_NEXT_HEADER = re.compile(rb"\n[^ ]")  # a line that does not continue the entry before it
# Keys already found valid: a few hundred in practice; at most 4096 of at most 256 bytes each.
_VALID_KEYS: dict[bytes, str] = {}
_EMPTY_LINES = re.compile(rb"(?: \n)*")  # continuation lines with nothing on them
# A line break inside a text value's stored lines: every continuation line starts with one space.
# Splitting on it with ``re`` beats ``bytes.replace(b"\n ", b"\n")`` about threefold (the
# stdlib's two-byte search stops at every space) and counts the lines on the way.
_LINE_BREAK = re.compile(rb"\n ")
# The reader types whose read(n) returns fewer than n bytes only at the end of the file (for a
# seekable file, which read_report requires), so a short first read needs no second one.
_SHORT_READ_IS_EOF = (io.BufferedReader, io.BytesIO)


class ReportError(CrashdError, ValueError):
    """A report that crashd refuses; the message names the file, the line and the reason."""

    def __init__(self, reason: str, *, line: int | None = None, name: str | None = None) -> None:
        self.reason, self.line, self.name = reason, line, name
        super().__init__(f"{name}: {self.detail}" if name else self.detail)

    @property
    def detail(self) -> str:
        """The message without the file name: ``"line 3: no colon …"``."""
        return f"line {self.line}: {self.reason}" if self.line else self.reason


class MalformedReportError(ReportError):
    """The bytes break the report format, or a binary value does not decode."""


class ReportLimitError(ReportError):
    """A value, a key or the file is larger than a configured bound allows."""


@dataclass(frozen=True)
class Limits:
    """Bounds on a report (DESIGN.md §7 rule 3); every one is checked while streaming, except
    ``upload_text``, which the uploader checks as it builds the first upload's body."""

    file_size: int = 2 * GiB
    keys: int = 10_000
    key_length: int = 256
    text_value: int = 16 * MiB
    binary_value: int = 4 * GiB
    upload_text: int = 32 * MiB  # text sent in one upload


DEFAULT_LIMITS = Limits()


class Entry(NamedTuple):
    """Where one key's (last) entry lies in the file, and what it holds (a tuple: one is made per key)."""

    key: str
    line: int  # line number of the header line
    binary: bool  # stored as a ``base64`` block
    start: int  # offset of the header line
    end: int  # offset just past the entry's last line
    size: int  # text: decoded length; binary: length of base64_body()


def size_text(n: int) -> str:
    """*n* bytes for a message: "16 MiB" when it is a whole number of units."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


def _too_large(key: str, limits: Limits) -> str:
    return f"the value of {key} is larger than {size_text(limits.text_value)} (the text_value limit)"


def _show(data: bytes, limit: int = 40) -> str:
    """A short, printable rendering of untrusted bytes for an error message."""
    text = repr(data[:limit])[2:-1]
    return text + ("..." if len(data) > limit else "")


_Fail = Callable[[type[ReportError], str], ReportError]


class _Cursor:
    """The line being read, for the errors that name it."""

    __slots__ = ("line", "name")

    def __init__(self, name: str | None) -> None:
        self.line, self.name = 0, name

    def fail(self, kind: type[ReportError], reason: str) -> ReportError:
        return kind(reason, line=self.line, name=self.name)


class _Buffer:
    """A window on the file: ``data[pos:]`` is unread, ``base`` is the file offset of ``data[0]``."""

    __slots__ = ("base", "data", "eof", "file", "pos")

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.data, self.pos, self.base, self.eof = file, b"", 0, 0, False

    def start(self) -> None:
        """The first read: _FIRST_READ bytes, then more as :meth:`fill` needs, unless the reader's
        type says that a short read was the rest of the file (most reports are one short read)."""
        self.data = self.file.read(_FIRST_READ)
        self.eof = len(self.data) < _FIRST_READ and (not self.data or type(self.file) in _SHORT_READ_IS_EOF)
        self.fill()

    def fill(self) -> None:
        """Hold at least PIECE unread bytes, unless the file ends first (then ``eof``)."""
        while not self.eof and len(self.data) - self.pos < PIECE:
            more = self.file.read(PIECE)
            self.eof = len(more) < PIECE and (not more or type(self.file) in _SHORT_READ_IS_EOF)
            if more:
                self.data, self.base, self.pos = self.data[self.pos :] + more, self.base + self.pos, 0

    def line_end(self) -> int:
        """The offset in ``data`` just past the line at ``pos`` if it is at most PIECE bytes, else -1."""
        data, pos = self.data, self.pos
        window = min(len(data), pos + PIECE)
        newline = data.find(b"\n", pos, window)
        if newline >= 0:
            return newline + 1
        return len(data) if self.eof and window == len(data) else -1

    def long_line(self, text_line: bool, limits: Limits, fail: _Fail, key: str) -> tuple[int, bytes, bool]:
        """Consume a line longer than PIECE in PIECE steps; (length, its last step, ends with "\\n").

        A text line is refused as soon as it is longer than any allowed value could be,
        without reading the rest of it.
        """
        length, last, ends = 0, b"", False
        while not ends:
            self.fill()
            data, pos = self.data, self.pos
            if pos >= len(data):
                break
            newline = data.find(b"\n", pos, pos + PIECE)
            step = newline + 1 - pos if newline >= 0 else min(PIECE, len(data) - pos)
            last, ends = data[pos : pos + step], newline >= 0
            self.pos += step
            length += step
            if text_line and length > PIECE and length > limits.key_length + 2 * limits.text_value + 2:
                raise fail(ReportLimitError, _too_large(key, limits))
        return length, last, ends


def index_entries(
    file: BinaryIO, limits: Limits, name: str | None
) -> tuple[dict[str, Entry], dict[str, bytes] | None]:
    """Index every entry of the report in *file* (binary, at offset 0) in one bounded pass;
    return the entries and, for a well-formed file of at most KEEP_WHOLE bytes, its text values
    decoded (they come almost for free while the file is in hand).

    Raises :class:`ReportError` for input apport's loader would refuse and for anything
    over *limits*, naming the line, as soon as the offending line has been read.
    """
    entries: dict[str, Entry] = {}
    builder: _EntryBuilder | None = None
    buffer = _Buffer(file)
    buffer.start()
    data = buffer.data
    if buffer.eof and len(data) <= min(KEEP_WHOLE, PIECE, limits.file_size) and limits.text_value >= PIECE:
        small = _small_file(data, limits)
        if small is not None:
            return small
    cursor = _Cursor(name)
    fail = cursor.fail
    while True:
        if not buffer.eof and len(buffer.data) - buffer.pos < PIECE:
            buffer.fill()
        data, pos = buffer.data, buffer.pos
        if pos >= len(data):
            break
        if data[pos] != 0x20:
            if builder is not None:
                entries[builder.key] = builder.finish(buffer.base + pos)
                builder = None
            if _whole_entry(entries, buffer, cursor, limits):
                continue
        end = buffer.line_end()
        if builder is not None and data[pos] == 0x20:  # continuation lines: a run of them at once
            if end < 0:
                start = buffer.base + pos
                cursor.line += 1
                length, _, ends = buffer.long_line(not builder.binary, limits, fail, builder.key)
                if start + length > limits.file_size:
                    raise fail(ReportLimitError, f"the file is larger than {size_text(limits.file_size)}")
                builder.add_line(length - 1 - ends, fail)
                continue
            window = min(len(data), pos + PIECE)
            if builder.binary and (stepped := _long_lines(data, pos, window))[1]:
                _continuations(builder, buffer, stepped[0], cursor, limits, newlines=stepped[1])
                continue
            following = _NEXT_HEADER.search(data, pos, window)
            if following is not None:
                end = following.start() + 1
            elif not (buffer.eof and window == len(data)):
                end = data.rfind(b"\n", pos, window) + 1  # >= the first line's end
            else:
                end = len(data)
            _continuations(builder, buffer, end, cursor, limits)
            continue
        start = buffer.base + pos
        cursor.line += 1
        if end >= 0:  # the whole header line is in hand
            first = last = data[pos:end]
            length, ends = end - pos, data[end - 1] == 0x0A
            buffer.pos = end
        else:
            first = data[pos : pos + PIECE]
            length, last, ends = buffer.long_line(True, limits, fail, _show(first.partition(b":")[0]))
        if start + length > limits.file_size:
            raise fail(ReportLimitError, f"the file is larger than {size_text(limits.file_size)}")
        if builder is not None:
            entries[builder.key] = builder.finish(start)
        builder = _header(first, last, length - ends, cursor.line, start, limits, fail)
        if builder.key not in entries and len(entries) >= limits.keys:
            raise fail(ReportLimitError, f"more than {limits.keys} keys")
    if builder is not None:
        entries[builder.key] = builder.finish(buffer.base + buffer.pos)
    return entries, None


def _small_file(data: bytes, limits: Limits) -> tuple[dict[str, Entry], dict[str, bytes]] | None:
    """Index a small, well-formed file (all of it in hand, at most KEEP_WHOLE and PIECE bytes) and
    decode its text values on the way; None when anything is unusual, for the general path.

    One ``findall`` cuts every entry into its key, the rest of its header line and its block of
    continuation lines, in C; Python then runs a few steps per entry. The matches cover the file
    without a gap exactly when their lengths add up to its size, so anything the regex does not
    take — an empty line, a bad or too long key, a last line without its newline — sends the whole
    file to the general path, which names the line of any refusal. No line can be longer than PIECE
    and no text value can reach the text_value bound here (the caller checks both).
    """
    if limits.key_length < 1:
        return None
    entries: dict[str, Entry] = {}
    values: dict[str, bytes] = {}  # text values, decoded as Report.text_bytes would decode them
    pos = line = 0
    known, split = _VALID_KEYS.get, _LINE_BREAK.split
    make = tuple.__new__  # Entry(...) through its Python-level __new__ costs more than the rest of the loop
    for raw_key, raw_value, block in _small_entry(limits.key_length).findall(data):
        key = known(raw_key) or _new_key(raw_key)
        if key is None:
            return None
        start = pos
        line += 1
        value = raw_value.strip()
        if not block:
            pos += len(raw_key) + len(raw_value) + 2
            if value != b"base64":
                values[key] = value
                entries[key] = make(Entry, (key, line, False, start, pos, len(value)))
                continue
            values.pop(key, None)  # a duplicated key takes its last value
            entries[key] = make(Entry, (key, line, True, start, pos, 0))
            continue
        pos += len(raw_key) + len(raw_value) + len(block) + 2
        if value == b"base64":  # base64 lines joined with "\n"
            count = block.count(b"\n")
            values.pop(key, None)  # a duplicated key takes its last value
            entries[key] = make(Entry, (key, line, True, start, pos, len(block) - count - 1))
            line += count
            continue
        lines = split(block[1:-1])  # one item a line, without its leading space
        count = len(lines)
        value = _join(value, lines)
        values[key] = value
        entries[key] = make(Entry, (key, line, False, start, pos, len(value)))
        line += count
    if pos != len(data) or len(entries) > limits.keys:
        return None  # a gap the regex skipped, or too many keys: the general path names the line
    return entries, values


@functools.lru_cache(maxsize=16)
def _small_entry(key_length: int) -> re.Pattern[bytes]:
    """The regex of one whole entry of a small file: key (at most *key_length* and 256 bytes, so
    a longer key leaves a gap and the file goes the general way), the rest of the header line,
    the continuation lines. Tried at line starts only, so it stays linear."""
    length = min(key_length, 256)
    return re.compile(rb"(?m)^([A-Za-z0-9._-]{1,%d}):([^\n]*)\n((?: [^\n]*+\n)*+)" % length)


def _new_key(raw_key: bytes) -> str | None:
    """*raw_key* as ``str`` if it is a valid key, else None; remembered (at most 4096 keys of at
    most 256 bytes), so that a key seen before costs one dict look-up."""
    if not KEY.fullmatch(raw_key):
        return None
    key = raw_key.decode("ascii")
    if len(_VALID_KEYS) < 4096 and len(raw_key) <= 256:
        _VALID_KEYS[raw_key] = key
    return key


def _joined(first: bytes, lines: bytes) -> bytes:
    """A text value from its stripped first line and its continuation lines as stored, less the
    first line's leading space and the last line's newline (Report.text_bytes's general way)."""
    return _join(first, _LINE_BREAK.split(lines))


def _join(first: bytes, lines: list[bytes]) -> bytes:
    """A text value from its stripped first line and its continuation lines without their leading
    space (one home for both paths; *lines* is used up).

    apport adds "\n" only once the value is non-empty, so leading empty lines vanish.
    """
    if first:
        lines.insert(0, first)
        return b"\n".join(lines)
    return b"\n".join(lines).lstrip(b"\n")


def _whole_entry(entries: dict[str, Entry], buffer: _Buffer, cursor: _Cursor, limits: Limits) -> bool:
    """Index the entry at ``pos`` at once when it is whole in the buffer, at most PIECE bytes,
    and within every bound; else leave everything as it was and return False, for the
    line-by-line path to read it (and name the line of any refusal)."""
    data, pos = buffer.data, buffer.pos
    window = min(len(data), pos + PIECE)
    header_end = data.find(b"\n", pos, window)
    colon = data.find(b":", pos, header_end) if header_end >= 0 else -1
    if colon < 0:
        return False
    value = data[colon + 1 : header_end].strip()
    binary = value == b"base64"
    end, count = _entry_end(data, header_end, window, long_lines=binary)
    if end < 0 and buffer.eof and window == len(data):
        end = len(data)
    if end < 0 or data[end - 1] != 0x0A or buffer.base + end > limits.file_size:
        return False  # the entry may go on past the buffer or past PIECE bytes, or ends the file oddly
    raw_key = data[pos:colon]
    key = _VALID_KEYS.get(raw_key) or _new_key(raw_key)
    if key is None:
        return False
    if colon - pos > limits.key_length or (key not in entries and len(entries) >= limits.keys):
        return False
    if count < 0:
        count = data.count(b"\n", header_end + 1, end)  # C, but byte by byte: not over a core's lines
    body = end - header_end - 1 - 2 * count
    if binary:
        size = body + count - 1 if count else 0  # base64 lines joined with "\n"
    else:
        size = len(value)
        if size:
            size += body + count
        elif body:  # leading empty lines vanish; "\n" joins every line after the first non-empty one
            empty = _EMPTY_LINES.match(data, header_end + 1, end).end() - header_end - 1  # type: ignore[union-attr]
            size = body + count - empty // 2 - 1
        if size > limits.text_value or body + 2 * count > 2 * limits.text_value:
            return False
    line = cursor.line + 1
    entries[key] = Entry(key, line, binary, buffer.base + pos, buffer.base + end, size)
    cursor.line, buffer.pos = line + count, end
    return True


def _entry_end(data: bytes, header_end: int, window: int, long_lines: bool) -> tuple[int, int]:
    """Where the entry whose header line ends at *header_end* ends, if before *window* (else -1),
    and how many continuation lines it has when they were stepped over (else -1; when the end is
    -1, how many whole lines lie before *window*, for an entry that ends the file).

    A base64 block written by apport has one line per compressor block, so its few long
    lines are stepped over with ``find`` (memchr), and counted on the way; text, or a block
    of many short lines, is searched for its end with the regex, which looks at every byte.
    """
    if long_lines:
        at, lines = _long_lines(data, header_end + 1, window)
        if at >= window:
            return -1, lines  # the lines up to window, which ends the entry if it ends the file
        if data[at] != 0x20:
            return at, lines  # the next line starts another entry
        header_end = data.find(b"\n", at, window)
        if header_end < 0:
            return -1, -1  # a line not whole in the window
        # many short lines: let the regex take the rest
    following = _NEXT_HEADER.search(data, header_end, window)
    return (following.start() + 1 if following is not None else -1), -1


def _long_lines(data: bytes, pos: int, window: int) -> tuple[int, int]:
    """The end of the run of whole lines that start with a space at *pos*, and their number
    (maybe 0), stepped over with ``find`` (memchr): a base64 block's lines, which are long but for
    a few (apport's gzip header line, the last line). The run stops before the ninth line shorter
    than 1 KiB, so a block of many short lines is left to the regex, not walked in Python."""
    at, lines, short = pos, 0, 0
    while at < window and data[at] == 0x20:
        newline = data.find(b"\n", at, window)
        if newline < 0:  # not whole before window
            break
        if newline - at < 1024:
            short += 1
            if short > 8:
                break
        at, lines = newline + 1, lines + 1
    return at, lines


def _continuations(
    builder: _EntryBuilder, buffer: _Buffer, end: int, cursor: _Cursor, limits: Limits, newlines: int = -1
) -> None:
    """Add the continuation lines ``data[pos:end]`` (each at most PIECE bytes) to *builder*;
    *newlines*, when known, is how many of them end with a newline.

    The sums are taken in C; only when a bound would be crossed somewhere in the run are the
    lines walked one by one, to name the exact line.
    """
    data, pos = buffer.data, buffer.pos
    if newlines < 0:
        newlines = data.count(b"\n", pos, end)
    count = newlines + (data[end - 1] != 0x0A)  # the file's last line may lack its newline
    body = end - pos - count - newlines  # without the leading spaces and the newlines
    stored = builder.stored + body + 2 * count
    if builder.binary:
        size = builder.size + body + count - (builder.lines == 0)  # base64 lines joined with "\n"
    elif builder.size or not body:
        size = builder.size + body + (count if builder.size else 0)
    else:  # leading empty lines vanish; "\n" joins every line after the first non-empty one
        empty = (_EMPTY_LINES.match(data, pos, end).end() - pos) // 2  # type: ignore[union-attr]
        size = body + count - empty - 1
    over_text = not builder.binary and (size > limits.text_value or stored > 2 * limits.text_value)
    if not over_text and buffer.base + end <= limits.file_size:
        builder.size, builder.stored, builder.lines = size, stored, builder.lines + count
        buffer.pos, cursor.line = end, cursor.line + count
        return
    while buffer.pos < end:  # a bound is crossed in this run: find its line, one at a time
        newline = data.find(b"\n", buffer.pos, end)
        stop = newline + 1 if newline >= 0 else end
        cursor.line += 1
        if buffer.base + stop > limits.file_size:
            raise cursor.fail(ReportLimitError, f"the file is larger than {size_text(limits.file_size)}")
        builder.add_line(stop - buffer.pos - 1 - (newline >= 0), cursor.fail)
        buffer.pos = stop


class _EntryBuilder:
    """Accumulates one entry's decoded size while its lines stream past."""

    def __init__(self, key: str, line: int, binary: bool, start: int, size: int, limits: Limits):
        self.key, self.line, self.binary, self.start, self.size = key, line, binary, start, size
        self.stored, self.lines, self.limits = 0, 0, limits

    def add_line(self, body: int, fail: _Fail) -> None:
        self.lines += 1
        self.stored += body + 2
        if self.binary:
            self.size += body + (self.lines > 1)  # base64 lines joined with "\n"
            return
        self.size += body + (self.size > 0)  # apport adds "\n" once the value is non-empty
        # The stored form is bounded too: a value of empty lines takes two bytes a line.
        if self.size > self.limits.text_value or self.stored > 2 * self.limits.text_value:
            raise fail(ReportLimitError, _too_large(self.key, self.limits))

    def finish(self, end: int) -> Entry:
        return Entry(self.key, self.line, self.binary, self.start, end, self.size)


def _header(
    first: bytes, last: bytes, length: int, line: int, start: int, limits: Limits, fail: _Fail
) -> _EntryBuilder:
    """Parse a header line ("Key: value") from its first and last pieces; *length* excludes the newline."""
    colon = first.find(b":")
    if colon < 0:
        if first in (b"\n", b""):
            raise fail(MalformedReportError, "an empty line (a value's lines must start with a space)")
        if len(first) >= PIECE:
            raise fail(ReportLimitError, f"a key longer than {limits.key_length} characters")
        raise fail(MalformedReportError, f"no colon between key and value in '{_show(first)}'")
    raw_key = first[:colon]
    if colon > limits.key_length:
        raise fail(ReportLimitError, f"a key of {colon} characters (the limit is {limits.key_length})")
    if not raw_key.isascii():
        raise fail(MalformedReportError, f"the key '{_show(raw_key)}' is not ASCII")
    if not KEY.fullmatch(raw_key):
        raise fail(MalformedReportError, f"invalid key '{_show(raw_key)}' (allowed: letters, digits, . - _)")
    key = raw_key.decode("ascii")
    if length <= len(first):  # the whole line is in hand: strip exactly as apport does
        value = first[colon + 1 :].strip()
        size, binary = len(value), value == b"base64"
    else:  # a line longer than one piece: count it, don't hold it
        value, tail = first[colon + 1 :], last.removesuffix(b"\n")
        blank = len(value) - len(value.lstrip()) + len(tail) - len(tail.rstrip())
        size, binary = length - colon - 1 - blank, False
    if binary:
        size = 0
    elif size > limits.text_value:
        raise fail(ReportLimitError, _too_large(key, limits))
    return _EntryBuilder(key, line, binary, start, size, limits)
