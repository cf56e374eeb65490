"""The daisy protocol: the BSON body, the core upload, the error map, and real HTTP."""

from __future__ import annotations

import base64
import errno
import http.client
import io
import os
import select
import socket
import ssl
import threading

import bson
import pytest

from crashd.report import MalformedReportError, ReportLimitError, read_report, write_report
from crashd.uploader import (
    ConnectError,
    CoreUnavailable,
    ExchangeError,
    HttpTransport,
    OfflineError,
    UploadError,
    UploadTimeout,
    _route,
    encode_report,
    post_core,
    post_report,
    translate,
)
from tests.daisy import DaisyServer, Delay, Reset, Respond


@pytest.mark.parametrize(
    ("error", "connected", "expected"),
    [
        (TimeoutError("timed out"), False, UploadTimeout),
        (TimeoutError("timed out"), True, UploadTimeout),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False, OfflineError),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), False, OfflineError),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), False, ConnectError),
        (ssl.SSLCertVerificationError(1, "CERTIFICATE_VERIFY_FAILED"), False, ConnectError),
        (OSError("Tunnel connection failed: 407 Proxy Authentication Required"), False, ConnectError),
        (http.client.InvalidURL("no host"), False, ConnectError),
        (UnicodeError("label too long"), False, ConnectError),
        (ConnectionResetError(errno.ECONNRESET, "reset"), True, ExchangeError),
        (http.client.RemoteDisconnected("closed"), True, ExchangeError),
        (http.client.BadStatusLine("junk"), True, ExchangeError),
        (http.client.IncompleteRead(b"x", 5), True, ExchangeError),
        (ssl.SSLError(1, "bad record mac"), True, ExchangeError),
    ],
)
def test_every_failure_maps_to_the_crashd_error_a_caller_handles(error, connected, expected):
    translated = translate(error, connected=connected)
    assert type(translated) is expected and str(translated)


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


def test_report_and_core_round_trip(daisy):
    core = b"\x7fELF" + os.urandom(50_000) + b"\0" * 200_000
    report = make_report({**CRASH, "StacktraceAddressSignature": "sig", "CoreDump": core})
    transport = HttpTransport()
    answer = post_report(encode_report(report), transport, daisy.url, "a" * 128)
    oops_id, _, command = answer.body.decode().partition(" ")
    assert (answer.status, command) == (200, "CORE")
    received = daisy.reports[0]
    assert received.document == CRASH | {"StacktraceAddressSignature": "sig"}
    assert received.headers["Content-Type"] == "application/octet-stream"
    assert "crashd" in received.headers["X-Whoopsie-Version"]
    assert post_core(report, transport, daisy.url, "a" * 128, oops_id).status == 200
    (stored,) = daisy.cores
    assert stored.verdict == "ok" and stored.decoded_size == len(core) and stored.arch == "amd64"
    assert stored.body == b"".join(report.base64_body("CoreDump"))
    assert int(stored.headers["Content-Length"]) == report.entries["CoreDump"].size


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (CRASH, "has no core"),
        ({**CRASH, "Architecture": "../x", "CoreDump": b"\0\1"}, "cannot name a core upload"),
        ({k: v for k, v in CRASH.items() if k != "Architecture"} | {"CoreDump": b"\0\1"}, "no Architecture"),
    ],
)
def test_core_that_cannot_be_sent(daisy, fields, reason):
    with pytest.raises(CoreUnavailable, match=reason):
        post_core(make_report(fields), HttpTransport(), daisy.url, "b" * 128, "3a1e5c2e-97d4")
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


# -- the administrator's proxy (README: http_proxy, https_proxy, no_proxy) --------------------------


@pytest.fixture
def proxy_env(monkeypatch):
    for name in (
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "REQUEST_METHOD",
    ):
        monkeypatch.delenv(name, raising=False)
    _route.cache_clear()
    yield monkeypatch
    _route.cache_clear()


def test_without_proxy_settings_the_server_is_reached_straight(proxy_env):
    route = _route("https", "daisy.ubuntu.com")
    assert (route.host, route.port, route.tls, route.forward, route.tunnel) == (
        "daisy.ubuntu.com",
        443,
        True,
        False,
        None,
    )


def test_https_goes_through_a_connect_tunnel_whose_credentials_only_the_proxy_sees(proxy_env):
    proxy_env.setenv("https_proxy", "http://us%40er:p%3Ass@proxy.example:3128")
    route = _route("https", "daisy.ubuntu.com")
    assert (route.host, route.port, route.tunnel) == ("proxy.example", 3128, ("daisy.ubuntu.com", 443))
    token = base64.b64encode(b"us@er:p:ss").decode()
    assert route.proxy_auth == (("Proxy-Authorization", f"Basic {token}"),)
    assert route.forward_headers == ()  # never sent to the crash database itself


def test_http_is_forwarded_by_the_proxy_named_without_a_scheme(proxy_env):
    proxy_env.setenv("HTTP_PROXY", "proxy.example:8080")
    route = _route("http", "127.0.0.1:9000")
    assert (route.host, route.port, route.forward, route.tls) == ("proxy.example", 8080, True, False)


@pytest.mark.parametrize(
    ("no_proxy", "netloc", "bypassed"),
    [
        ("*", "daisy.ubuntu.com", True),
        ("ubuntu.com", "daisy.ubuntu.com", True),
        (".ubuntu.com", "daisy.ubuntu.com", True),
        ("daisy.ubuntu.com:443", "daisy.ubuntu.com", True),
        ("daisy.ubuntu.com:8443", "daisy.ubuntu.com", False),
        ("buntu.com", "daisy.ubuntu.com", False),
        ("10.0.0.0/8, localhost", "10.1.2.3", True),
        ("127.0.0.1", "127.0.0.1:9000", True),
        ("10.0.0.0/8", "192.168.1.1", False),
    ],
)
def test_no_proxy_as_requests_reads_it(proxy_env, no_proxy, netloc, bypassed):
    proxy_env.setenv("https_proxy", "http://proxy.example:3128")
    proxy_env.setenv("no_proxy", no_proxy)
    assert (_route("https", netloc).tunnel is None) is bypassed


def test_an_https_proxy_or_a_bad_url_is_a_connect_error(proxy_env):
    proxy_env.setenv("https_proxy", "https://proxy.example:3128")
    with pytest.raises(ConnectError, match="http:// proxies"):
        HttpTransport(connect_timeout=1).post("https://daisy.ubuntu.com/x", b"")
    with pytest.raises(ConnectError, match="not ftp"):
        HttpTransport(connect_timeout=1).post("ftp://daisy.ubuntu.com/x", b"")


def test_a_request_reaches_the_server_in_one_piece():
    """Headers and body are written together (TCP_CORK): the server, woken by the request's first bytes,
    finds all of it in its first read — it is woken once a report, not once for each half."""
    body = b"x" * 3000
    seen: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                select.select([conn], [], [], 10)  # returns with the first bytes that arrive
                seen.append(conn.recv(65536))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.getsockname()[1]}/x"
            answer = HttpTransport(connect_timeout=5, read_timeout=5).post(url, body)
        finally:
            thread.join(10)
    assert answer.status == 200
    assert seen[0].startswith(b"POST /x HTTP/1.1\r\n") and seen[0].endswith(b"\r\n\r\n" + body)


def test_one_kept_alive_connection_per_server_and_a_fresh_one_after_connection_close(daisy):
    transport = HttpTransport()
    try:
        for _ in range(3):
            assert transport.post(daisy.url + "/x", bson.encode({"Package": "p"})).status == 200
        assert daisy.connections == 1
        daisy.script(Respond(200, b"ok", {"Connection": "close"}))
        assert transport.post(daisy.url + "/x", bson.encode({"Package": "q"})).status == 200
        assert transport.post(daisy.url + "/x", bson.encode({"Package": "r"})).status == 200
        assert daisy.connections == 2
    finally:
        transport.close()


def test_a_kept_alive_connection_the_server_closed_while_idle_is_replaced_not_failed():
    """The server closes an idle connection without saying so first: the next POST opens a new one."""
    listener = socket.create_server(("127.0.0.1", 0))
    closed, accepted = threading.Event(), []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            with conn:
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"body"):
                    data += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            closed.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    transport = HttpTransport(connect_timeout=5, read_timeout=5)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"
    try:
        assert transport.post(url, b"body").body == b"ok"
        assert closed.wait(10)
        assert transport.post(url, b"body").body == b"ok"
    finally:
        transport.close()
        listener.close()
        server.join(10)
    assert len(accepted) == 2
