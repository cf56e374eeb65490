"""Incremental decoders for binary report values: per-line base64, then gzip/zlib/zstd.

apport writes a binary value as lines that are each an independent base64 string
(with its own ``=`` padding), whose decoded bytes concatenated form one gzip,
legacy bare-zlib or zstd stream. Both stages here take input in pieces of any
size and bound their output, so a multi-gigabyte core — or a decompression bomb —
never has to fit in memory.

gzip and zlib are inflated by zlib-ng (``zlib_ng.zlib_ng``, the optional ``fast`` extra) when it
is installed, else by the standard library's ``zlib``: zlib-ng inflates a core about 2.5 times as
fast, with the same API, the same bytes out and the same error messages on corrupt data
(tests/test_codec.py runs every check with each of the two). This module is its one home.
"""

from __future__ import annotations

import binascii
import sys
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Protocol

from crashd.errors import CrashdError

OUTPUT_CHUNK = 1 << 20  # the most a decompressor returns per step

GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Everything that is neither alphabet nor padding: base64.b64decode() skips it silently.
_NOT_BASE64 = bytes(sorted(set(range(256)) - set(_ALPHABET + b"=")))


class CodecError(CrashdError, ValueError):
    """Stored binary data that does not decode: bad base64 padding, corrupt compressed data."""


class Base64Line:
    """Decode one base64 line fed in pieces, exactly as ``base64.b64decode(line)`` would.

    Non-alphabet bytes are skipped; a complete padding sequence ends the line's
    data (the rest is ignored); an incomplete final quantum is an error. Call
    :meth:`finish` at the end of each line: it checks the padding and resets.
    """

    def __init__(self) -> None:
        self._carry = b""  # data characters of the quantum in progress (0 to 3)
        self._pads = 0  # consecutive effective "=" seen
        self._done = False  # a padding sequence ended this line's data

    def feed(self, piece: bytes) -> bytes:
        if self._done:
            return b""
        data = piece.translate(None, _NOT_BASE64)
        out = []
        while data:
            pad = data.find(b"=")
            head = data if pad < 0 else data[:pad]
            if head:
                self._pads = 0
                buf = self._carry + head
                whole = len(buf) - len(buf) % 4
                out.append(binascii.a2b_base64(buf[:whole]))
                self._carry = buf[whole:]
            if pad < 0:
                break
            # "=" counts only once two data characters of the quantum are in.
            quantum = len(self._carry)
            if quantum >= 2:
                self._pads += 1
                if quantum + self._pads >= 4:
                    out.append(binascii.a2b_base64(self._carry + b"=" * (4 - quantum)))
                    self._carry, self._done = b"", True
                    break
            data = data[pad + 1 :]
        return b"".join(out)

    def finish(self) -> None:
        """End the line: raise :class:`CodecError` for an incomplete quantum, then reset."""
        carry, done = self._carry, self._done
        self._carry, self._pads, self._done = b"", 0, False
        if carry and not done:
            raise CodecError("incorrect base64 padding")


class Decompressor(Protocol):
    eof: bool

    def feed(self, data: bytes) -> Iterator[bytes]: ...


_INFLATE: ModuleType | None = None  # set by inflate_module()


def inflate_module() -> ModuleType:
    """zlib-ng's ``zlib_ng`` when it is installed, else ``zlib``; imported on the first compressed
    value (reading a report's text needs neither), then kept."""
    global _INFLATE
    if _INFLATE is None:
        try:
            from zlib_ng import zlib_ng as module
        except ImportError:
            module = zlib
        _INFLATE = module
    return _INFLATE


class _Inflate:
    """gzip (header and CRC checked) or legacy bare zlib, in bounded steps."""

    def __init__(self, wbits: int) -> None:
        module = inflate_module()
        self._inflater, self._error = module.decompressobj(wbits), module.error

    @property
    def eof(self) -> bool:
        return self._inflater.eof

    def feed(self, data: bytes) -> Iterator[bytes]:
        while not self._inflater.eof:
            try:
                out = self._inflater.decompress(data, OUTPUT_CHUNK)
            except self._error as error:
                raise CodecError(f"corrupt compressed data ({error})") from None
            if out:
                yield out
            data = self._inflater.unconsumed_tail
            if not data and len(out) < OUTPUT_CHUNK:
                return


def zstd_module() -> ModuleType:
    """The zstd module — the standard library's from Python 3.14, ``backports.zstd`` before — imported
    on the first zstd value: reading a report's text, or a gzip value, needs no zstd at all."""
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


class _Zstd:
    """A zstd frame, as systemd-coredump stores cores, in bounded steps."""

    def __init__(self) -> None:
        zstd = zstd_module()
        self._decompressor, self._error = zstd.ZstdDecompressor(), zstd.ZstdError

    @property
    def eof(self) -> bool:
        return self._decompressor.eof

    def feed(self, data: bytes) -> Iterator[bytes]:
        while not self._decompressor.eof:
            try:
                out = self._decompressor.decompress(data, OUTPUT_CHUNK)
            except self._error as error:
                raise CodecError(f"corrupt zstd data ({error})") from None
            if out:
                yield out
            data = b""
            if self._decompressor.needs_input:
                return


def decompressor_for(first_block: bytes) -> Decompressor:
    """Pick the decompressor from a binary value's first decoded line, as apport does."""
    if first_block.startswith(ZSTD_MAGIC):
        return _Zstd()
    if first_block.startswith(GZIP_MAGIC):
        return _Inflate(16 + zlib.MAX_WBITS)
    return _Inflate(zlib.MAX_WBITS)
