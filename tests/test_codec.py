"""The optional zlib-ng inflater (crashd/_codec.py) against the standard library's zlib.

crashd inflates gzip and zlib values with ``zlib_ng.zlib_ng`` when the ``fast`` extra is installed,
else with ``zlib``. It may only be used if nothing but the speed changes: the same bytes out in the
same bounded steps, the same refusals with the same messages, the same bound on the decoded size.
Each test here runs with both inflaters (the zlib-ng one is skipped, and says so, where zlib-ng is
not installed; ``make deps`` installs it with the ``test`` extra).
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import random
import sys
import zlib
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crashd import _codec
from crashd._codec import OUTPUT_CHUNK, CodecError, decompressor_for, inflate_module
from crashd.report import Limits, MalformedReportError, ReportLimitError, read_report

HAS_ZLIB_NG = importlib.util.find_spec("zlib_ng") is not None


def _zlib_ng() -> ModuleType:
    from zlib_ng import zlib_ng

    return zlib_ng


INFLATERS = [
    pytest.param("zlib", id="stdlib-zlib"),
    pytest.param(
        "zlib_ng", id="zlib-ng", marks=pytest.mark.skipif(not HAS_ZLIB_NG, reason="zlib-ng is not installed")
    ),
]


@pytest.fixture(params=INFLATERS)
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """crashd with one inflater for the test's duration."""
    module = zlib if request.param == "zlib" else _zlib_ng()
    monkeypatch.setattr(_codec, "_INFLATE", module)
    return module


def _inflate_with(module: ModuleType, data: bytes, piece: int) -> tuple[list[bytes], str | None]:
    """Feed *data* to crashd's inflater in pieces of *piece* bytes: its chunks and its refusal."""
    saved, _codec._INFLATE = _codec._INFLATE, module
    chunks: list[bytes] = []
    try:
        decompressor = decompressor_for(data)
        for at in range(0, len(data), piece):
            chunks.extend(decompressor.feed(data[at : at + piece]))
        return chunks, None if decompressor.eof else "truncated"
    except CodecError as error:
        return chunks, str(error)
    finally:
        _codec._INFLATE = saved


def _payload(seed: int) -> bytes:
    """Zero pages, random pages and repeated text, roughly like a core."""
    rng = random.Random(seed)
    pages = [bytes(4096), rng.randbytes(4096), b"g_main_loop_run\0" * 256]
    return b"".join(rng.choice(pages) for _ in range(rng.randrange(1, 80)))


@pytest.mark.skipif(not HAS_ZLIB_NG, reason="zlib-ng is not installed")
@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    kind=st.sampled_from(["gzip", "zlib"]),
    damage=st.sampled_from(["none", "flip", "cut", "append", "delete"]),
    where=st.floats(0, 1, exclude_max=True),
    piece=st.sampled_from([1 << 20, 4096, 77]),
)
def test_zlib_ng_inflates_and_refuses_exactly_as_zlib(seed, kind, damage, where, piece):
    """The same chunks (OUTPUT_CHUNK at most each) and the same message for every kind of damage."""
    payload = _payload(seed)
    data = bytearray(gzip.compress(payload) if kind == "gzip" else zlib.compress(payload))
    at = int(where * len(data))
    if damage == "flip":
        data[at] ^= 1 + seed % 255
    elif damage == "cut":
        del data[at:]
    elif damage == "append":
        data += random.Random(seed).randbytes(1 + seed % 40)
    elif damage == "delete":
        del data[at : at + 1 + seed % 50]
    expected = _inflate_with(zlib, bytes(data), piece)
    assert _inflate_with(_zlib_ng(), bytes(data), piece) == expected
    assert all(len(chunk) <= OUTPUT_CHUNK for chunk in expected[0])
    if damage == "none":
        assert expected[1] is None and b"".join(expected[0]) == payload


def _report(compressed: bytes) -> bytes:
    """A report whose CoreDump stores *compressed*, in base64 lines of 76 characters."""
    encoded = base64.b64encode(compressed)
    lines = b"".join(b" " + encoded[at : at + 76] + b"\n" for at in range(0, len(encoded), 76))
    return b"ProblemType: Crash\nCoreDump: base64\n" + lines + b"Title: t\n"


def _decoded(data: bytes, **limits: int) -> bytes:
    report = read_report(io.BytesIO(data), limits=Limits(**limits), name="t.crash")
    return b"".join(report.chunks("CoreDump"))


def test_a_report_decodes_to_the_same_bytes(inflater):
    payload = _payload(1)
    assert _decoded(_report(gzip.compress(payload))) == payload
    assert _decoded(_report(zlib.compress(payload))) == payload


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-30], "the compressed data of CoreDump is truncated"),
        (lambda data: data[:10] + b"\xff" * 50, "CoreDump: corrupt compressed data (Error -3 while decompressing data:"),
        (lambda data: data[:-8] + bytes([data[-8] ^ 1]) + data[-7:], "incorrect data check"),
    ],
)
def test_a_corrupt_value_is_refused_with_the_same_message(inflater, damage, message):
    data = _report(damage(gzip.compress(_payload(2))))
    with pytest.raises(MalformedReportError) as caught:
        _decoded(data)
    assert message in str(caught.value) and "t.crash: line 2" in str(caught.value)


def test_the_decoded_size_bound_holds_in_bounded_steps(inflater):
    """A decompression bomb in miniature: 64 MiB of zeros in ~64 KiB, refused at the binary_value
    bound after at most one step of OUTPUT_CHUNK past it, as with zlib."""
    data = _report(gzip.compress(bytes(64 << 20)))
    report = read_report(io.BytesIO(data), limits=Limits(binary_value=3 * OUTPUT_CHUNK + 5), name="t.crash")
    seen = []
    with pytest.raises(ReportLimitError, match="CoreDump decompresses to more than"):
        for chunk in report.chunks("CoreDump"):
            seen.append(len(chunk))
    assert max(seen) <= OUTPUT_CHUNK and sum(seen) <= 3 * OUTPUT_CHUNK + 5


def test_zlib_ng_is_used_when_installed_and_zlib_otherwise(monkeypatch):
    monkeypatch.setattr(_codec, "_INFLATE", None)
    assert inflate_module() is (_zlib_ng() if HAS_ZLIB_NG else zlib)
    monkeypatch.setattr(_codec, "_INFLATE", None)
    monkeypatch.setitem(sys.modules, "zlib_ng", None)  # import zlib_ng now raises ImportError
    assert inflate_module() is zlib
