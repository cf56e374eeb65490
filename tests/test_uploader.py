"""The daisy protocol: classification tables, the BSON body, the error map, and real HTTP."""

from __future__ import annotations

import inspect
import io
import os

import bson
import pytest
import requests

from crashd.report import MalformedReportError, ReportLimitError, read_report, write_report
from crashd.uploader import (
    _ERRORS,
    Answer,
    ConnectError,
    CoreState,
    ExchangeError,
    HttpTransport,
    UploadError,
    UploadTimeout,
    Verdict,
    classify,
    encode_report,
    translate,
    upload,
)
from tests.daisy import DaisyServer, Delay, Reset, Respond

OOPS = "3a1e5c2e-97d4-11ef-8d5b-0242ac120002"

CLASSIFY = [
    (200, f"{OOPS} OOPSID", Verdict.SENT, OOPS, False),
    (200, f"{OOPS} CORE", Verdict.SENT, OOPS, True),
    (200, f"{OOPS} CORE\n", Verdict.SENT, OOPS, True),
    (200, "Crash report successfully submitted.", Verdict.SENT, None, False),  # Snap
    (200, "", Verdict.SENT, None, False),
    (200, f"{OOPS} BUG 123", Verdict.SENT, None, False),  # a command we do not know
    (200, "../../etc CORE", Verdict.SENT, None, False),  # an id that cannot go in a URL
    (201, f"{OOPS} OOPSID", Verdict.SENT, OOPS, False),
    (409, "Crash already reported.", Verdict.SENT, None, False),
    (400, "Invalid BSON.", Verdict.REJECTED, None, False),
    (401, "Device blocked from sending crash reports.", Verdict.REJECTED, None, False),
    (403, "", Verdict.REJECTED, None, False),
    (413, "", Verdict.REJECTED, None, False),
    (422, "", Verdict.REJECTED, None, False),
    (404, "Not Found", Verdict.MISCONFIGURED, None, False),
    (301, "", Verdict.MISCONFIGURED, None, False),
    (408, "", Verdict.RETRY, None, False),
    (425, "", Verdict.RETRY, None, False),
    (429, "", Verdict.RETRY, None, False),
    (500, "", Verdict.RETRY, None, False),
    (503, "busy", Verdict.RETRY, None, False),
    (418, "teapot", Verdict.REJECTED, None, False),
]


@pytest.mark.parametrize(("status", "body", "verdict", "oops_id", "core"), CLASSIFY)
def test_classify(status, body, verdict, oops_id, core):
    outcome = classify(Answer(status, body.encode()))
    assert (outcome.verdict, outcome.oops_id, outcome.core_requested) == (verdict, oops_id, core)


def test_classify_keeps_the_servers_words():
    assert "Incomplete crash report." in classify(Answer(400, b"Incomplete crash report.")).detail
    assert "404" in classify(Answer(404, b"")).detail


def test_every_requests_exception_maps_to_a_crashd_error():
    mapped = {source for source, _ in _ERRORS}
    for name, cls in inspect.getmembers(requests.exceptions, inspect.isclass):
        if issubclass(cls, requests.RequestException):
            assert cls in mapped, f"requests.exceptions.{name} has no explicit entry"
            error = cls("boom", "doc", 0) if cls is requests.exceptions.JSONDecodeError else cls("boom")
            assert isinstance(translate(error), UploadError)
    assert isinstance(translate(requests.exceptions.ReadTimeout()), UploadTimeout)
    assert isinstance(translate(requests.exceptions.SSLError()), ConnectError)
    assert isinstance(translate(requests.exceptions.ChunkedEncodingError()), ExchangeError)


def make_report(fields):
    out = io.BytesIO()
    write_report(out, fields)
    return read_report(io.BytesIO(out.getvalue()), name="t.crash")


CRASH = {
    "ProblemType": "Crash",
    "Architecture": "amd64",
    "Date": "Thu Jan  1 00:00:00 1970",
    "ExecutablePath": "/usr/bin/true",
    "Package": "coreutils 9.4",
    "ProcStatus": "Name:\ttrue\nState:\tR",
    "Signal": "11",
    "dmi.bios.version": "1.2",
}


def test_bson_body_holds_every_text_field_as_a_string_and_no_binary():
    report = make_report({**CRASH, "CoreDump": b"\x7fELF" + os.urandom(1000), "Attachment": b"\x00\x01"})
    document = bson.decode(encode_report(report))
    assert list(document) == list(CRASH)
    assert document == CRASH  # byte-exact text, tabs and all


def test_text_that_is_not_utf8_makes_the_report_invalid():
    report = make_report({**CRASH, "Extra": b"caf\xe9"})
    with pytest.raises(MalformedReportError, match="Extra is not valid UTF-8"):
        encode_report(report)


def test_text_over_the_upload_bound_is_refused():
    report = make_report({**CRASH, "Big": "x" * 5000})
    with pytest.raises(ReportLimitError, match="more than"):
        encode_report(report, max_text=4096)


# -- against the loopback daisy ---------------------------------------------------------


@pytest.fixture
def daisy():
    with DaisyServer() as server:
        yield server


def test_upload_and_core_round_trip(daisy):
    core = b"\x7fELF" + os.urandom(50_000) + b"\0" * 200_000
    report = make_report({**CRASH, "StacktraceAddressSignature": "sig", "CoreDump": core})
    outcome = upload(report, HttpTransport(), daisy.url, "a" * 128)
    assert outcome.verdict is Verdict.SENT and outcome.core_requested
    assert outcome.core is CoreState.SENT, outcome.core_detail
    received = daisy.reports[0]
    assert received.document == CRASH | {"StacktraceAddressSignature": "sig"}
    assert received.headers["Content-Type"] == "application/octet-stream"
    assert "crashd" in received.headers["X-Whoopsie-Version"]
    (stored,) = daisy.cores
    assert stored.verdict == "ok" and stored.decoded_size == len(core) and stored.arch == "amd64"
    assert stored.body == b"".join(report.base64_body("CoreDump"))


def test_core_requested_but_absent(daisy):
    report = make_report({**CRASH, "StacktraceAddressSignature": "sig2"})
    outcome = upload(report, HttpTransport(), daisy.url, "b" * 128)
    assert outcome.core is CoreState.UNAVAILABLE
    assert not daisy.cores


def test_connection_refused_is_a_connect_error():
    with DaisyServer() as server:
        url = server.url
    with pytest.raises(ConnectError):
        HttpTransport(connect_timeout=2).post(url + "/x", b"")


def test_reset_mid_exchange_is_an_upload_error(daisy):
    daisy.script(Reset())
    with pytest.raises(UploadError):
        HttpTransport().post(daisy.url + "/x", bson.encode({"Package": "p"}))


def test_slow_answer_hits_the_read_timeout(daisy):
    daisy.script(Delay(5))
    with pytest.raises(UploadTimeout):
        HttpTransport(read_timeout=0.3).post(daisy.url + "/x", bson.encode({"Package": "p"}))


def test_answer_body_is_bounded(daisy):
    daisy.script(Respond(200, b"x" * (1 << 20)))
    answer = HttpTransport().post(daisy.url + "/x", b"")
    assert answer.status == 200 and len(answer.body) == 64 * 1024
