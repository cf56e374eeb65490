"""The report format against apport's own files, whoopsie's parser fixtures, tables and properties."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crashd import _scan
from crashd._codec import zstd_module
from crashd.report import (
    STRING_KEYS,
    Limits,
    MalformedReportError,
    ReportError,
    ReportLimitError,
    is_text,
    read_report,
    write_report,
)
from tests.fixtures import APPORT, WHOOPSIE, apport_manifest, apport_records, require

zstd = zstd_module()


def parse(data: bytes, **limits: int):
    return read_report(io.BytesIO(data), limits=Limits(**limits), name="t.crash")


def value(data: bytes, key: str) -> bytes:
    return b"".join(parse(data).chunks(key))


def block(payload: bytes, *, line: int = 76) -> bytes:
    """A binary entry body as apport writes it: each line its own base64 string."""
    return b"".join(
        b" " + base64.b64encode(payload[i : i + line]) + b"\n" for i in range(0, len(payload), line)
    )


# -- apport's corpus: every key's decoded size and sha256, key order, type -------------


def manifest_cases():
    return [pytest.param(path, record, id=record["file"]) for path, record in apport_records()]


@pytest.mark.parametrize(("path", "record"), manifest_cases())
def test_apport_fixture_decodes_as_apport_loader(path, record):
    with open(path, "rb") as f:
        report = read_report(f, name=record["file"])
        assert list(report) == record["key_order"]
        assert report.problem_type == record["ProblemType"]
        for key, expected in record["keys"].items():
            digest = report.digest(key)
            assert (digest.size, digest.sha256) == (expected["len"], expected["sha256"]), key
            assert report.entries[key].binary == expected["binary"], key
            assert digest.is_text == (expected["type"] == "str"), key


def test_vendored_corpus_is_apports_bytes_and_covers_every_format_feature():
    """The trimmed copy in tests/corpus is what apport wrote (the manifest's sha256 of each file)
    and still holds every feature the corpus tests rely on."""
    records = apport_manifest()["files"]
    assert sorted(p.name for p in APPORT.glob("*.crash")) == sorted(r["file"] for r in records)
    for record in records:
        data = (APPORT / record["file"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (record["file_size"], record["file_sha256"])
    keys = [key for record in records for key in record["keys"].values()]
    assert {r["ProblemType"] for r in records} >= {
        "Crash", "Bug", "Package", "KernelOops", "KernelCrash", "Hang", "RecoverableProblem"
    }  # fmt: skip
    assert {key.get("compression") for key in keys if key["binary"]} >= {"gzip", "zlib", "zstd"}
    assert any(key["binary"] and key["type"] == "str" for key in keys)  # text stored as a compressed block
    assert any(not key["binary"] and key["type"] == "bytes" for key in keys)  # raw non-UTF-8 text
    assert any(record["on_disk_entries"][-1] != "CoreDump" and "CoreDump" in record["keys"] for record in records)


# -- whoopsie's parser fixtures, judged by apport's loader -----------------------------

WHOOPSIE_ACCEPTED = {
    "valid": 5, "valid_empty_value": 3, "unicode": 13, "invalid_trailing2": 4,
    "invalid_key_no_value2": 5, "invalid_key_special_chars": 5, "invalid_value2": 5,
    "invalid_value_embedded_nul": 5,
}  # fmt: skip
WHOOPSIE_REFUSED = {
    "invalid_key_embedded_nul": (1, "invalid key"),
    "invalid_key_leading_spaces": (1, "invalid key"),
    "invalid_key_leading_spaces2": (1, "invalid key"),
    "invalid_key_no_value": (1, "no colon"),
    "invalid_no_spaces": (5, "invalid key"),
    "invalid_value": (2, "an empty line"),
}


@pytest.mark.parametrize("name", sorted(WHOOPSIE_ACCEPTED))
def test_whoopsie_fixture_accepted(name):
    path = require(WHOOPSIE / "crash" / name)
    with open(path, "rb") as f:
        report = read_report(f, name=str(path))
        assert len(report) == WHOOPSIE_ACCEPTED[name]
        for key in report:
            report.digest(key)


@pytest.mark.parametrize("name", sorted(WHOOPSIE_REFUSED))
def test_whoopsie_fixture_refused_naming_file_line_and_reason(name):
    path = require(WHOOPSIE / "crash" / name)
    line, reason = WHOOPSIE_REFUSED[name]
    with open(path, "rb") as f, pytest.raises(MalformedReportError) as caught:
        read_report(f, name=str(path))
    assert caught.value.line == line
    assert str(caught.value).startswith(f"{path}: line {line}: ")
    assert reason in str(caught.value)


def test_whoopsie_exact_values():
    with open(require(WHOOPSIE / "crash" / "valid"), "rb") as f:
        report = read_report(f)
        assert report.text_bytes("Date") == b"Thu Feb  2 17:09:31 2012"
        assert report.text_bytes("ProcEnviron").count(b"\n") == 6
        assert not report.text_bytes("ProcEnviron").startswith(b"\n")
    with open(require(WHOOPSIE / "crash" / "invalid_value_embedded_nul"), "rb") as f:
        assert read_report(f).text_bytes("ProblemType") == b"Cr\x00ash"
    with open(require(WHOOPSIE / "crash" / "unicode"), "rb") as f:
        assert read_report(f).string("ProcCmdline") == "gedit ♥"


def test_whoopsie_gedit_core_decodes_to_an_elf_core():
    with open(require(WHOOPSIE / "_usr_bin_gedit.1000.crash"), "rb") as f:
        core = b"".join(read_report(f).chunks("CoreDump"))
    assert core.startswith(b"\x7fELF") and len(core) == 233472


# -- the grammar, as tables -------------------------------------------------------------

TEXT_CASES = [
    (b"A: v\n", b"v"),
    (b"A:v", b"v"),  # no space needed, no final newline needed
    (b"A:   v  \n", b"v"),  # single-line values are stripped
    (b"A: \n", b""),
    (b"A:\n a\n b\n", b"a\nb"),
    (b"A: a\n b\n", b"a\nb"),  # a value may start on the header line
    (b"A:\n \n \n x\n", b"x"),  # leading empty lines vanish
    (b"A:\n x\n \n", b"x\n"),  # a trailing one stays
    (b"A:\n a\n \n b\n", b"a\n\nb"),
    (b"A:\n  indented\n", b" indented"),
    (b"A: Cr\rash\n", b"Cr\rash"),  # CR is data
    (b"A: x\nA: y\n", b"y"),  # last value wins
]


@pytest.mark.parametrize(("data", "expected"), TEXT_CASES)
def test_text_decoding(data, expected):
    assert parse(data).text_bytes("A") == expected


def test_duplicate_key_keeps_first_position_and_last_value():
    report = parse(b"A: 1\nB: 2\nA: 3\n")
    assert list(report) == ["A", "B"]
    assert report.text_bytes("A") == b"3"


def test_empty_file_is_an_empty_report():
    assert len(parse(b"")) == 0


ERROR_CASES = [
    (b"A: 1\n\nB: 2\n", 2, "an empty line"),
    (b"A: 1\n", None, None),
    (b"A: 1\nB 2\n", 2, "no colon"),
    (b"A: 1\n\tB: 2\n", 2, "invalid key"),
    (b" A: 1\n", 1, "invalid key"),
    (b"a b: 1\n", 1, "invalid key"),
    (b"-: 1\n", 1, "invalid key"),
    ("Ké: 1\n".encode(), 1, "not ASCII"),
    (b"A: 1\n\n", 2, "an empty line"),  # a trailing empty line too
]


@pytest.mark.parametrize(("data", "line", "reason"), ERROR_CASES)
def test_syntax_errors_name_the_line(data, line, reason):
    if line is None:
        parse(data)
        return
    with pytest.raises(MalformedReportError) as caught:
        parse(data)
    assert caught.value.line == line and reason in caught.value.reason
    assert str(caught.value).startswith(f"t.crash: line {line}: ")


@pytest.mark.parametrize("key", [".x", "_9", "a-", "123", "-a", "dmi.bios.version"])
def test_unusual_but_valid_keys(key):
    assert list(parse(key.encode() + b": v\n")) == [key]


# -- binary blocks ----------------------------------------------------------------------

PAYLOAD = os.urandom(3000) + b"\0" * 100_000


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, zlib.compress, zstd.compress],
    ids=["gzip", "zlib", "zstd"],
)
def test_binary_block_formats(compress):
    assert value(b"B: base64\n" + block(compress(PAYLOAD)), "B") == PAYLOAD


def test_each_base64_line_has_its_own_padding():
    compressed = gzip.compress(b"hello world, hello crashd")
    lines = b"".join(
        b" " + base64.b64encode(compressed[i : i + 5]) + b"\n" for i in range(0, len(compressed), 5)
    )
    assert b"=\n" in lines
    assert value(b"B: base64\n" + lines, "B") == b"hello world, hello crashd"


def test_non_alphabet_characters_in_base64_are_skipped_as_apport_does():
    encoded = base64.b64encode(gzip.compress(b"data"))
    assert value(b"B: base64\n " + encoded[:8] + b"!!!" + encoded[8:] + b"\n", "B") == b"data"


def test_data_after_padding_on_a_line_is_ignored_as_b64decode_does():
    data = gzip.compress(b"x")
    line = base64.b64encode(data[:4]) + b"QUJD"  # "AAAA==" ends the line's data
    assert base64.b64decode(line) == data[:4]
    assert value(b"B: base64\n " + line + b"\n" + block(data[4:]), "B") == b"x"


def test_empty_block_is_an_empty_value():
    report = parse(b"B: base64\nC: after\n")
    assert value(b"B: base64\nC: after\n", "B") == b""
    assert report.text_bytes("C") == b"after"


BINARY_ERRORS = [
    (b"B: base64\n QUJD\n", "corrupt"),  # "ABC" is no zlib header
    (b"B: base64\n" + block(zlib.compress(PAYLOAD)[:-30]), "truncated"),
    (b"B: base64\n " + base64.b64encode(gzip.compress(b"abc"))[:-5] + b"\n", "padding"),
    (b"B: base64\n" + block(gzip.compress(PAYLOAD)[:-20]), "truncated"),
    (b"B: base64\n" + block(zstd.compress(PAYLOAD)[:-20]), "truncated"),
    (b"B: base64\n" + block(b"\x1f\x8b\x08\0\0\0\0\0\0\3" + b"\xff" * 50), "corrupt"),
]


@pytest.mark.parametrize(("data", "reason"), BINARY_ERRORS)
def test_corrupt_binary_values_are_refused(data, reason):
    with pytest.raises(MalformedReportError) as caught:
        value(data, "B")
    assert reason in str(caught.value) and "B" in str(caught.value)


def test_gzip_crc_is_checked():
    data = bytearray(gzip.compress(b"payload"))
    data[-8] ^= 0xFF
    with pytest.raises(MalformedReportError, match="corrupt"):
        value(b"B: base64\n" + block(bytes(data)), "B")


def test_base64_body_is_the_stored_lines_joined():
    stored = block(gzip.compress(PAYLOAD), line=999)
    report = parse(b"A: 1\nCoreDump: base64\n" + stored + b"Z: 2\n")
    body = b"".join(report.base64_body("CoreDump"))
    assert body == b"\n".join(line[1:] for line in stored.splitlines())
    assert len(body) == report.entries["CoreDump"].size
    assert report.text_bytes("Z") == b"2"


def test_long_lines_are_read_in_pieces(tmp_path):
    big = os.urandom(3 << 20)
    data = (
        b"CoreDump: base64\n "
        + base64.b64encode(gzip.compress(big))
        + b"\nTitle: "
        + b"t" * (3 << 20)
        + b"\n"
    )
    report = parse(data)
    assert b"".join(report.chunks("CoreDump")) == big
    assert report.entries["Title"].size == 3 << 20


# -- the index pass reads 1 MiB blocks: entries, errors and bounds across block edges ----

MiB = 1 << 20


def _many_entries(total: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Multi-line and single-line entries of odd sizes until *total* bytes, so that entries,
    lines and "\n " pairs fall on every side of the 1 MiB block edges."""
    fields, out, size, i = [], [], 0, 0
    while size < total:
        key = f"K{i}"
        value = b"\n".join(b"line %d.%d " % (i, n) + b"x" * (i % 97) for n in range(i % 13 + 1))
        entry = f"{key}:\n ".encode() + value.replace(b"\n", b"\n ") + b"\n" if i % 3 else f"{key}: {i}\n".encode()
        fields.append((key, value if i % 3 else str(i).encode()))
        out.append(entry)
        size += len(entry)
        i += 1
    return b"".join(out), fields


def test_entries_across_block_edges_index_and_decode_exactly():
    data, fields = _many_entries(3 * MiB + 12345)
    report = parse(data, keys=len(fields))
    assert list(report) == [key for key, _ in fields]
    line = 1
    for key, expected in fields:
        assert report.text_bytes(key) == expected, key
        assert report.entries[key].size == len(expected)
        assert report.entries[key].line == line
        multi_line = int(key[1:]) % 3 != 0  # as _many_entries writes them
        line += 2 + expected.count(b"\n") if multi_line else 1


@pytest.mark.parametrize("offset", [MiB - 1, MiB, MiB + 1, 2 * MiB + 7])
def test_an_error_after_a_block_edge_names_its_line(offset):
    head, _ = _many_entries(offset)
    bad = head + b"\nZ: after the empty line\n"
    with pytest.raises(MalformedReportError) as caught:
        parse(bad, keys=100_000)
    assert caught.value.line == head.count(b"\n") + 1
    assert "an empty line" in str(caught.value)


def test_a_text_bound_crossed_inside_a_run_names_the_line_that_crosses_it():
    data = b"A:\n" + b" 0123456789\n" * 200_000  # 2.4 MB of one value, across blocks
    with pytest.raises(ReportLimitError) as caught:
        parse(data, text_value=1_000_000)
    # after n lines the value holds 11n - 1 bytes: line 1 + 90,910 is the first over the bound
    assert caught.value.line == 90_911


def test_a_file_bound_crossed_inside_a_binary_block_names_its_line():
    data = b"CoreDump: base64\n" + (b" " + b"QUJD" * 19 + b"\n") * 40_000
    limit = 17 + 78 * 20_000 + 5  # 17 bytes of header, 78 a line: the bound falls inside line 20,002
    with pytest.raises(ReportLimitError) as caught:
        parse(data, file_size=limit)
    assert caught.value.line == 20_002


# -- limits -----------------------------------------------------------------------------

LIMIT_CASES = [
    (dict(file_size=100), b"A: " + b"x" * 200 + b"\n", "larger than 100 bytes"),
    (dict(keys=2), b"A: 1\nB: 2\nC: 3\n", "more than 2 keys"),
    (dict(key_length=4), b"Abcde: 1\n", "key of 5 characters"),
    (dict(text_value=10), b"A: " + b"x" * 11 + b"\n", "larger than 10 bytes"),
    (dict(text_value=10), b"A:\n" + b" xx\n" * 4, "larger than 10 bytes"),
    (dict(text_value=10), b"A:\n" + b" \n" * 11, "larger than 10 bytes"),
]


@pytest.mark.parametrize(("limits", "data", "reason"), LIMIT_CASES)
def test_limits_refuse_while_indexing(limits, data, reason):
    with pytest.raises(ReportLimitError, match=reason):
        parse(data, **limits)


def test_duplicates_do_not_count_against_the_key_limit():
    assert len(parse(b"A: 1\nA: 2\nB: 3\n", keys=2)) == 2


def test_decompression_bomb_is_refused_while_streaming():
    bomb = zstd.compress(b"\0" * (64 << 20))  # a few KiB that would become 64 MiB
    report = parse(b"B: base64\n" + block(bomb), binary_value=8 << 20)
    seen = 0
    with pytest.raises(ReportLimitError, match="decompresses to more than 8 MiB"):
        for chunk in report.chunks("B"):
            assert len(chunk) <= 1 << 20  # never more than one bounded step in memory
            seen += len(chunk)
    assert seen <= 8 << 20


def test_string_keys_must_be_utf8():
    report = parse(b"Stacktrace: \xff\xfe\nOther: \xff\xfe\n")
    with pytest.raises(MalformedReportError, match="Stacktrace is not valid UTF-8"):
        report.digest("Stacktrace")
    assert report.digest("Other").is_text is False


# -- writer -----------------------------------------------------------------------------

WRITER_CASES = [
    "plain", "", "  lead", "trail  ", "a\r", "\nfoo", "x\n", "a\n\nb", "base64", " base64 ",
    "before\x00after", "\t", "unicode ♥", "multi\nline\n value",
]  # fmt: skip


@pytest.mark.parametrize("text", WRITER_CASES)
def test_writer_is_lossless_where_apport_is_lossy(text):
    out = io.BytesIO()
    write_report(out, {"ProblemType": "Crash", "Value": text})
    report = read_report(io.BytesIO(out.getvalue()))
    assert b"".join(report.chunks("Value")) == text.encode()


def test_writer_streams_a_file_into_a_block(tmp_path):
    core = tmp_path / "core"
    core.write_bytes(PAYLOAD)
    out = io.BytesIO()
    with core.open("rb") as source:
        write_report(out, [("ProblemType", "Crash"), ("CoreDump", source)])
    report = read_report(io.BytesIO(out.getvalue()))
    assert report.entries["CoreDump"].binary
    assert hashlib.sha256(b"".join(report.chunks("CoreDump"))).digest() == hashlib.sha256(PAYLOAD).digest()


def test_writer_refuses_invalid_keys():
    for key in ("a b", "", "-", "Ké", "a:b"):
        with pytest.raises(ValueError, match="invalid report key"):
            write_report(io.BytesIO(), {key: "x"})


keys = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}", fullmatch=True).filter(
    lambda k: k not in STRING_KEYS
)
values = st.one_of(st.text(max_size=200), st.binary(max_size=200))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=12))
def test_write_then_read_round_trips(fields):
    out = io.BytesIO()
    write_report(out, fields)
    report = read_report(io.BytesIO(out.getvalue()))
    assert list(report) == list(fields)
    for key, original in fields.items():
        raw = original.encode() if isinstance(original, str) else original
        assert b"".join(report.chunks(key)) == raw
        assert report.digest(key).is_text == is_text(raw)


def exercise(data: bytes) -> None:
    """Index *data* and decode every value every way; only ReportError may escape."""
    try:
        report = parse(data, text_value=64, keys=8, key_length=12, binary_value=1024)
        for key in report:
            report.digest(key)
            if report.entries[key].binary:
                b"".join(report.base64_body(key))
    except ReportError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_reader_raises_only_its_documented_errors(data):
    exercise(data)


LINE_SOUP = [
    b"A: x\n",
    b" y\n",
    b"B: base64\n",
    b" H4sI\n",
    b" QUJD==\n",
    b" KLUv/Q==\n",
    b"\n",
    b" \n",
    b"C:",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LINE_SOUP), max_size=20))
def test_reader_on_plausible_line_soup(lines):
    exercise(b"".join(lines))


def _indexed(data: bytes, **limits: int) -> object:
    """Everything the index pass and the text values say about *data*, or the refusal."""
    try:
        report = parse(data, **limits)
        entries = report.entries.values()
        return [(entry, None if entry.binary else report.text_bytes(entry.key)) for entry in entries]
    except ReportError as error:
        return type(error), str(error)


SMALL_SOUP = [*LINE_SOUP, b"A: base64\n", b"D:\n", b"  \n", b"E: base64 \n", b"bad key: x\n", b" z", b"A: t \n"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(SMALL_SOUP), max_size=24), st.sampled_from([(10_000, 256), (3, 256), (9, 1)]))
def test_a_small_file_indexes_as_the_general_path_does(lines, bounds):
    """A file of at most 64 KiB is cut by one findall (crashd._scan._small_file); anything it
    does not take goes the general way. Both must say the same, to the byte and the line."""
    data, (keys, key_length) = b"".join(lines), bounds
    fast = _indexed(data, keys=keys, key_length=key_length)
    whole, _scan.KEEP_WHOLE = _scan.KEEP_WHOLE, 0  # the general path only
    try:
        assert _indexed(data, keys=keys, key_length=key_length) == fast
    finally:
        _scan.KEEP_WHOLE = whole


def test_reading_text_and_gzip_values_imports_no_zstd(tmp_path: Path) -> None:
    """crashd.report is a library (issue 14): zstd is imported on the first zstd value only."""
    path = tmp_path / "r.crash"
    path.write_bytes(b"ProblemType: Crash\nTitle: t\nB: base64\n " + base64.b64encode(gzip.compress(b"x")) + b"\n")
    code = ("import sys\nfrom crashd.report import read_report\n"
            "with open(sys.argv[1], 'rb') as f:\n"
            "    r = read_report(f)\n    r.string('Title'); b''.join(r.chunks('B'))\n"
            "print(sorted(m for m in sys.modules if m.endswith('zstd')))")  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                          timeout=60, check=False)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
