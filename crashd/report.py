"""The problem-report format: a streaming reader and writer, with no I/O policy.

A report is apport's RFC 822-like file (``research/apport.md`` §1). Reading is
two-stage so that memory never depends on the size of a value:

1. :func:`read_report` makes one bounded pass over the file and builds an
   *index* — every key with the byte range of its entry, its line number and its
   decoded size — checking the syntax and the :class:`Limits` as it goes.
2. Values are decoded on demand from that index: text values whole (each is
   bounded), binary values as a stream of decompressed chunks
   (:meth:`Report.chunks`) or as their stored base64 lines
   (:meth:`Report.base64_body`, which is what daisy wants for a core).

Everything follows apport 2.36's loader: file order of keys, a duplicated key
keeps its first position and takes its last value, single-line values are
stripped, leading empty continuation lines vanish, every base64 line is its own
base64 string, and a binary block is gzip, bare zlib or zstd by its first bytes.

Exceptions — every refusal of input is a :class:`ReportError`, a ``ValueError``::

    ReportError                 names the file (when known), the line and the reason
    ├── MalformedReportError    the bytes break the format, or a compressed value is corrupt
    └── ReportLimitError        a bound in Limits was exceeded (found while streaming)

``OSError`` from the file itself passes through unchanged.

Past ~400 lines on purpose: the format's one reader API and its one writer (the scanning itself is
in :mod:`crashd._scan`, the codecs in :mod:`crashd._codec`); most of the length is the docstrings
that say what apport's loader does at each step.

Usage::

    with open(path, "rb") as f:
        report = read_report(f, name=path)
        report.problem_type, report.text_bytes("ExecutablePath")
        for chunk in report.chunks("CoreDump"): ...
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import io
import re
import zlib
from binascii import a2b_base64
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from crashd._codec import Base64Line, CodecError, decompressor_for
from crashd._scan import (
    DEFAULT_LIMITS,
    KEY,
    PIECE,
    Entry,
    Limits,
    MalformedReportError,
    ReportError,
    ReportLimitError,
    _joined,
    index_entries,
    size_text,
)

__all__ = [
    "DEFAULT_LIMITS",
    "STRING_KEYS",
    "Digest",
    "Entry",
    "Limits",
    "MalformedReportError",
    "Report",
    "ReportError",
    "ReportLimitError",
    "StoredBinary",
    "is_text",
    "read_report",
    "valid_key",
    "write_report",
]

KiB = 1 << 10

# Keys apport decodes strictly as UTF-8 (2.35+): invalid UTF-8 in one of them is a
# load error, not a bytes value. Every one is written by apport itself as text.
STRING_KEYS = frozenset(
    {
        "ApportVersion",
        "Architecture",
        "AssertionMessage",
        "CrashCounter",
        "CrashDB",
        "Date",
        "Dependencies",
        "Disassembly",
        "DistroRelease",
        "DuplicateSignature",
        "ExecutablePath",
        "ExecutableTimestamp",
        "InterpreterPath",
        "Package",
        "PackageArchitecture",
        "ProblemType",
        "ProcAttrCurrent",
        "ProcCmdline",
        "ProcCwd",
        "ProcEnviron",
        "ProcMaps",
        "ProcStatus",
        "PythonArgs",
        "Registers",
        "Signal",
        "SignalName",
        "SourcePackage",
        "Stacktrace",
        "StacktraceAddressSignature",
        "StacktraceTop",
        "Tags",
        "ThreadStacktrace",
        "Title",
        "Traceback",
        "Uname",
        "UnreportableReason",
        "UserGroups",
    }
)

# Bytes below 0x20 that Python does not count as white space: a value holding one
# is binary to apport (``ProblemReport.is_binary``).
_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1b]")


@dataclass(frozen=True, slots=True)
class Digest:
    """Size, sha256 and (for text up to ``head_limit``) the text of a decoded value."""

    size: int
    sha256: str
    text: str | None  # None when the value is not text or is longer than the limit
    is_text: bool


def valid_key(key: str) -> bool:
    """Whether *key* may name a field: ASCII letters, digits and ``. - _``, with one alphanumeric."""
    return key.isascii() and KEY.fullmatch(key.encode("ascii")) is not None


def is_text(value: bytes) -> bool:
    """True when apport's loader would return *value* as ``str`` rather than ``bytes``."""
    if _CONTROL.search(value):
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Report:
    """An indexed report file: keys in loader order, values decoded on demand.

    The report reads from the file object it was given, so that file must stay
    open and must not be read by anyone else while the report is in use. A small
    file's text values (*values*, from a file of at most :data:`crashd._scan.KEEP_WHOLE`
    bytes) are decoded by the index pass and kept, so they are not read again.
    """

    def __init__(
        self,
        file: BinaryIO,
        entries: dict[str, Entry],
        limits: Limits,
        name: str | None,
        values: dict[str, bytes] | None = None,
    ):
        self._file, self.entries, self.limits, self.name = file, entries, limits, name
        self._values = values or {}

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    @property
    def problem_type(self) -> str | None:
        """The ``ProblemType`` value, or None when the report has none (or stores it as binary)."""
        entry = self.entries.get("ProblemType")
        return self.string("ProblemType") if entry and not entry.binary else None

    def text_bytes(self, key: str) -> bytes:
        """The decoded bytes of a text entry (``KeyError`` if absent, ``TypeError`` if binary);
        :meth:`string` gives it as ``str``."""
        value = self._values.get(key)  # a small file's text values are decoded already
        if value is not None:
            return value
        entry = self.entries[key]
        if entry.binary:
            raise TypeError(f"{key} is a binary value; use chunks() or base64_body()")
        self._file.seek(entry.start)
        raw = self._file.read(entry.end - entry.start)
        header_end = raw.find(b"\n")
        if header_end < 0:
            header_end = len(raw)  # the file's last line, with no newline
        first = raw[len(key) + 1 : header_end].strip()
        if header_end + 1 >= len(raw):
            return first
        return _joined(first, raw[header_end + 2 : len(raw) - (raw[-1] == 0x0A)])

    def string(self, key: str) -> str:
        """A text entry as ``str``; ``MalformedReportError`` when it is not valid UTF-8."""
        value = self.text_bytes(key)
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as error:
            reason = f"{key} is not valid UTF-8 ({error.reason} at byte {error.start})"
            raise self._error(reason, key) from None

    def chunks(self, key: str) -> Iterator[bytes]:
        """The decoded value as a stream of chunks: decompressed for a binary entry."""
        entry = self.entries[key]
        if not entry.binary:
            yield self.text_bytes(key)
            return
        decompressor, total = None, 0
        try:
            for block in self._base64_blocks(entry):
                decompressor = decompressor or decompressor_for(block)  # apport decides on line one
                for chunk in decompressor.feed(block):
                    total += len(chunk)
                    if total > self.limits.binary_value:
                        limit = size_text(self.limits.binary_value)
                        reason = f"{key} decompresses to more than {limit} (the binary_value limit)"
                        raise ReportLimitError(reason, line=entry.line, name=self.name)
                    yield chunk
        except CodecError as error:
            raise self._error(f"{key}: {error}", key) from None
        if decompressor is not None and not decompressor.eof:
            raise self._error(f"the compressed data of {key} is truncated", key)

    def base64_body(self, key: str) -> Iterator[bytes]:
        """The stored base64 lines of a binary entry joined with ``\\n``, streamed.

        This is the exact body daisy's submit-core expects; its length is
        ``entries[key].size``.
        """
        entry = self.entries[key]
        if not entry.binary:
            raise TypeError(f"{key} is a text value")
        first = True
        for piece, line_start, _ in self._lines(entry):
            if line_start:
                if not first:
                    yield b"\n"
                first, piece = False, piece[1:]
            piece = piece.removesuffix(b"\n")
            if piece:
                yield piece

    def digest(self, key: str, head_limit: int = 64 * KiB) -> Digest:
        """Stream a value once: its size, its sha256, and its text if apport would load it as text.

        apport returns ``str`` for valid UTF-8 without control bytes, and for any
        valid UTF-8 in a :data:`STRING_KEYS` key; invalid UTF-8 there is an error.
        """
        if not self.entries[key].binary:  # bounded by the text_value limit: in memory, all at once
            return self._digest_text(key, self.text_bytes(key), head_limit)
        sha, size, head = hashlib.sha256(), 0, bytearray()
        utf8, valid_utf8, controls = codecs.getincrementaldecoder("utf-8")(), True, False
        for chunk in self.chunks(key):
            sha.update(chunk)
            size += len(chunk)
            if len(head) <= head_limit:
                head += chunk[: head_limit + 1 - len(head)]
            controls = controls or _CONTROL.search(chunk) is not None
            if valid_utf8 and (key in STRING_KEYS or not controls):  # else the answer is known
                valid_utf8 = _decodes(utf8, chunk)
        valid_utf8 = valid_utf8 and _decodes(utf8, b"", final=True)
        if key in STRING_KEYS and not valid_utf8:
            raise self._error(f"{key} is not valid UTF-8", key)
        text_value = valid_utf8 and (key in STRING_KEYS or not controls)
        text = head.decode("utf-8") if text_value and size <= head_limit else None
        return Digest(size=size, sha256=sha.hexdigest(), text=text, is_text=text_value)

    def _digest_text(self, key: str, value: bytes, head_limit: int) -> Digest:
        try:
            text: str | None = value.decode("utf-8")
        except UnicodeDecodeError:
            if key in STRING_KEYS:
                raise self._error(f"{key} is not valid UTF-8", key) from None
            text = None
        text_value = text is not None and (key in STRING_KEYS or not _CONTROL.search(value))
        shown = text if text_value and len(value) <= head_limit else None
        digest = hashlib.sha256(value).hexdigest()
        return Digest(size=len(value), sha256=digest, text=shown, is_text=text_value)

    # -- internals ----------------------------------------------------------------------

    def _lines(self, entry: Entry) -> Iterator[tuple[bytes, bool, bool]]:
        """(piece, starts a line, ends a line) over the continuation lines of *entry*.

        Read in blocks of PIECE (``readline`` would fill its 8 KiB buffer many times over for a
        core's long line); a line is handed over whole when it fits in two blocks, else in
        pieces of at least PIECE bytes, so at most 2 PIECE are held.
        """
        file = self._file
        file.seek(entry.start)
        file.readline(PIECE)  # the header line: "Key: base64"
        position, line_start, data, at = file.tell(), True, b"", 0
        while True:
            newline = data.find(b"\n", at)
            if newline >= 0:
                yield data[at : newline + 1], line_start, True
                at, line_start = newline + 1, True
                continue
            rest = data[at:]
            if position >= entry.end:
                if rest:
                    yield rest, line_start, False  # the file's last line, without its newline
                return
            if len(rest) >= PIECE:  # a long line: hand this much of it over, read on
                yield rest, line_start, False
                rest, line_start = b"", False
            more = file.read(min(PIECE, entry.end - position))
            if not more:
                raise MalformedReportError("the file changed while it was read", name=self.name)
            position += len(more)
            data, at = rest + more, 0

    def _base64_blocks(self, entry: Entry) -> Iterator[bytes]:
        """Each stored line decoded as its own base64 string, in pieces."""
        decoder, line = Base64Line(), entry.line
        try:
            for piece, line_start, ends in self._lines(entry):
                line += line_start
                if line_start and ends:  # a whole line in hand: what b64decode(line) does, in C
                    try:
                        block = a2b_base64(piece)
                    except binascii.Error:  # decoded piecewise below: the quanta before the bad
                        block = None  # padding still reach the decompressor first, as they always did
                    if block is not None:
                        yield block
                        continue
                yield decoder.feed(piece)
                if ends:
                    decoder.finish()
            decoder.finish()  # a last line without a newline at the end of the file
        except CodecError as error:
            raise MalformedReportError(f"{entry.key}: {error}", line=line, name=self.name) from None

    def _error(self, reason: str, key: str) -> MalformedReportError:
        return MalformedReportError(reason, line=self.entries[key].line, name=self.name)


def _decodes(decoder: codecs.IncrementalDecoder, data: bytes, final: bool = False) -> bool:
    try:
        decoder.decode(data, final)
    except UnicodeDecodeError:
        return False
    return True


# -- reading --------------------------------------------------------------------------


def read_report(file: BinaryIO, *, limits: Limits = DEFAULT_LIMITS, name: str | None = None) -> Report:
    """Index the report in *file* (binary, seekable, at offset 0) in one bounded pass.

    Raises :class:`ReportError` for input apport's loader would refuse and for
    anything over *limits*; *name* (usually the path) prefixes every message.
    The pass itself is :func:`crashd._scan.index_entries`.
    """
    entries, values = index_entries(file, limits, name)
    return Report(file, entries, limits, name, values)


# -- writing --------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBinary:
    """A binary value re-emitted exactly as another report stores it, never decompressed.

    ``StoredBinary.of(report, key)`` carries a multi-gigabyte core from one file
    to its rewritten copy with flat memory and no recompression.
    """

    body: Iterable[bytes]  # the stored base64 lines joined with "\n", as Report.base64_body yields them
    empty: bool = False  # a block with no lines at all

    @classmethod
    def of(cls, report: Report, key: str) -> StoredBinary:
        return cls(report.base64_body(key), empty=report.entries[key].size == 0)


FieldValue = str | bytes | BinaryIO | StoredBinary
_WRITE_BLOCK = 128 * KiB


def write_report(file: BinaryIO, fields: Mapping[str, FieldValue] | Iterable[tuple[str, FieldValue]]) -> None:
    """Write *fields*, in the given order, so that apport's loader reads back the same bytes.

    ``str`` and ``bytes`` values are written as text when the text form reads back
    unchanged; otherwise — control bytes, leading or trailing white space on one
    line, leading empty lines, a lone ``base64`` — as a gzip base64 block, which
    apport decodes to the same bytes. (apport's own writer loses such values.) A
    readable binary file object is streamed into a block without being held in
    memory; a :class:`StoredBinary` is copied as stored.
    """
    for key, value in fields.items() if isinstance(fields, Mapping) else fields:
        if not valid_key(key):
            raise ValueError(f"invalid report key {key!r} (allowed: letters, digits, . - _)")
        raw_key = key.encode("ascii")
        if isinstance(value, StoredBinary):
            file.write(raw_key + b": base64\n")
            if not value.empty:
                file.write(b" ")
                for piece in value.body:
                    file.write(piece.replace(b"\n", b"\n "))
                file.write(b"\n")
            continue
        if isinstance(value, str):
            value = value.encode("utf-8")
        if isinstance(value, bytes) and _text_round_trips(value):
            if b"\n" in value:
                file.write(raw_key + b":\n " + value.replace(b"\n", b"\n ") + b"\n")
            else:
                file.write(raw_key + b": " + value + b"\n")
        else:
            _write_binary(file, raw_key, io.BytesIO(value) if isinstance(value, bytes) else value)


def _text_round_trips(value: bytes) -> bool:
    if _CONTROL.search(value):
        return False  # binary to apport: keep it in a block, as apport does
    if b"\n" in value:
        return not value.startswith(b"\n")  # the loader drops leading empty lines
    return value == value.strip() and value != b"base64"


def _write_binary(file: BinaryIO, raw_key: bytes, source: BinaryIO) -> None:
    file.write(raw_key + b": base64\n")
    gzip = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    while block := source.read(_WRITE_BLOCK):
        if out := gzip.compress(block):
            file.write(b" " + base64.b64encode(out) + b"\n")
    file.write(b" " + base64.b64encode(gzip.flush()) + b"\n")
