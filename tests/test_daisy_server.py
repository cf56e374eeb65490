"""Tests of the loopback daisy server itself, over real HTTP on 127.0.0.1.

Why: every upload test of crashd trusts this server to answer like daisy and to misbehave
exactly as scripted, so its own behaviour is pinned down here first.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
import requests

from tests.daisy import DaisyServer, Delay, Exchange, Hang, Reset, Respond, zstd

TOKEN = hashlib.sha512(b"00000000-0000-0000-0000-000000000001").hexdigest()
REPO = Path(__file__).resolve().parent.parent
HEADERS = {"Content-Type": "application/octet-stream", "X-Whoopsie-Version": "0.2.77-test"}


@pytest.fixture
def daisy() -> Iterator[DaisyServer]:
    with DaisyServer() as server:
        yield server
    assert server.errors == []


def crash(**fields: str | None) -> dict[str, str]:
    """An unretraced binary crash as apport writes it on a client (Signal, no signature)."""
    doc = {
        "ProblemType": "Crash",
        "Package": "coreutils 9.4-3ubuntu6",
        "ExecutablePath": "/usr/bin/cat",
        "Signal": "11",
        "Date": "Mon Nov 10 10:00:00 2025",
        "ProcStatus": "Name:?cat\nState:?R (running)",
        "Architecture": "amd64",
        "DistroRelease": "Ubuntu 24.04",
    }
    doc.update(fields)  # type: ignore[arg-type]
    return {k: v for k, v in doc.items() if v is not None}


def post(
    daisy: DaisyServer, body: dict[str, Any] | bytes, token: str = TOKEN, **kw: Any
) -> requests.Response:
    data = body if isinstance(body, bytes) else bson.encode(body)
    kw.setdefault("timeout", 10)
    http = kw.pop("session", requests)
    return http.post(f"{daisy.url}/{token}", data=data, headers=HEADERS, **kw)


def b64lines(pieces: list[bytes]) -> bytes:
    """Each piece base64-encoded on its own (own padding), joined with \\n, no final newline."""
    return b"\n".join(base64.b64encode(p) for p in pieces)


def apport_gzip(payload: bytes, block: int = 8192) -> list[bytes]:
    """The pieces apport writes for CoreDump: gzip header, one deflate output per block, trailer."""
    pieces = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"]
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    for i in range(0, len(payload), block):
        if out := deflate.compress(payload[i : i + block]):
            pieces.append(out)
    pieces.append(deflate.flush() + struct.pack("<II", zlib.crc32(payload), len(payload) & 0xFFFFFFFF))
    return pieces


def split(data: bytes, size: int = 5000) -> list[bytes]:
    """A 2-byte first piece (the magic spans lines), then fixed-size pieces."""
    return [data[:2]] + [data[i : i + size] for i in range(2, len(data), size)]


PAYLOAD = b"\x7fELF\x02\x01\x01" + os.urandom(400_000) + bytes(100000) + b"tail" * 1000


def ask_core(daisy: DaisyServer) -> str:
    r = post(daisy, crash(Date=str(uuid.uuid4()), ExecutablePath=f"/usr/bin/{uuid.uuid4()}"))
    oops_id, word = r.text.split(" ")
    assert (r.status_code, word) == (200, "CORE")
    return oops_id


def upload_core(
    daisy: DaisyServer, oops_id: str, body: Any, arch: str = "amd64", **kw: Any
) -> requests.Response:
    url = f"{daisy.url}/{oops_id}/submit-core/{arch}/{TOKEN}"
    return requests.post(url, data=body, headers=HEADERS, timeout=kw.pop("timeout", 30), **kw)


def raw_exchange(port: int, head: str, body: bytes = b"") -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(head.encode() + body)
    return sock, sock.makefile("rb")


def read_response(f: Any) -> tuple[int, dict[str, str], bytes]:
    status = int(f.readline().split()[1])
    headers = {}
    while (line := f.readline().decode()) not in ("\r\n", ""):
        name, value = line.split(":", 1)
        headers[name.lower()] = value.strip()
    return status, headers, f.read(int(headers.get("content-length", 0)))


# --- reports ---------------------------------------------------------------------------------


def test_binary_crash_gets_core_once_per_signature(daisy: DaisyServer) -> None:
    first = post(daisy, crash())
    oops_id, word = first.text.split(" ")
    assert (first.status_code, word) == (200, "CORE")
    assert uuid.UUID(oops_id).version == 1
    second = post(daisy, crash(Date="Tue Nov 11 10:00:00 2025"))
    assert second.status_code == 200 and second.text.endswith(" OOPSID")
    report = daisy.reports[0]
    assert (report.token, report.document, report.status, report.answer) == (TOKEN, crash(), 200, first.text)
    assert report.oops_id == oops_id and report.headers["X-Whoopsie-Version"] == "0.2.77-test"
    assert report.body == bson.encode(crash())


def test_retraced_signature_and_other_kinds(daisy: DaisyServer) -> None:
    assert post(daisy, crash(StacktraceAddressSignature="sig-a", Signal=None)).text.endswith(" CORE")
    assert post(daisy, crash(StacktraceAddressSignature="sig-a", Date="2")).text.endswith(" OOPSID")
    python = crash(Traceback="Traceback (most recent call last): ...", ExecutablePath="/usr/bin/py", Date="3")
    assert post(daisy, python).text.endswith(" OOPSID")
    assert post(daisy, {"ProblemType": "Package", "Package": "x 1"}).text.endswith(" OOPSID")


@pytest.mark.parametrize(("policy", "word"), [("always", "CORE"), ("never", "OOPSID")])
def test_core_policy(policy: str, word: str) -> None:
    with DaisyServer(core_policy=policy) as daisy:
        python = {"ProblemType": "Crash", "Package": "p 1", "Traceback": "t"}
        for doc in (crash(), crash(Date="again"), python):
            assert post(daisy, doc).text.endswith(" " + word)


def test_duplicate_is_409_per_token(daisy: DaisyServer) -> None:
    assert post(daisy, crash()).status_code == 200
    again = post(daisy, crash(Signal="6"))  # same Date, ExecutablePath and ProcStatus
    assert (again.status_code, again.text) == (409, "Crash already reported.")
    assert post(daisy, crash(), token="deadbeef" + "0" * 120).status_code == 200


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (b"not bson at all", "Invalid BSON."),
        (bson.encode({"a": "b"})[:-1], "Invalid BSON."),
        (bson.encode({"Package": "p"}).replace(b"p", b"\xff"), "Invalid BSON."),
        ({}, "Empty report."),
        (crash(KernelCrash="1"), "Kernel crashes are not handled yet."),
        (crash(VmCore="1"), "Kernel crashes are not handled yet."),
        (crash(Package=None), "Incomplete crash report."),
        ({"Package": "p 1", "CrashCounter": 3}, "Non-string value for CrashCounter."),
        (crash(Architecture="armel"), "armel architecture is obsoleted."),
    ],
)
def test_rejected_reports(daisy: DaisyServer, body: dict[str, Any] | bytes, answer: str) -> None:
    r = post(daisy, body)
    assert (r.status_code, r.text) == (400, answer)
    assert daisy.reports[-1].status == 400


def test_snap_is_accepted_without_oops_id(daisy: DaisyServer) -> None:
    r = post(daisy, crash(ProblemType="Snap"))
    assert (r.status_code, r.text) == (200, "Crash report successfully submitted.")
    assert post(daisy, crash()).status_code == 200  # a Snap report is not stored, so no duplicate


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/"), ("GET", f"/{TOKEN}"), ("POST", "/a/b"), ("POST", "/x/submit-core/amd64"),
     ("POST", "/x/submit-core/amd64/"), ("PUT", f"/{TOKEN}")],
)  # fmt: skip
def test_other_routes_are_404(daisy: DaisyServer, method: str, path: str) -> None:
    r = requests.request(method, daisy.url + path, data=b"x", timeout=10)
    assert r.status_code == 404
    assert daisy.exchanges[-1].status == 404 and daisy.reports == []


def test_missing_content_length_is_411_and_closes(daisy: DaisyServer) -> None:
    for framing in ("", "Transfer-Encoding: chunked\r\n"):
        sock, f = raw_exchange(daisy.port, f"POST /{TOKEN} HTTP/1.1\r\nHost: x\r\n{framing}\r\n")
        with sock, f:
            status, headers, _ = read_response(f)
            assert (status, headers["connection"]) == (411, "close")
            assert f.read() == b""  # closed: the body's framing is unknown


def test_too_large_is_413_and_connection_stays_usable() -> None:
    with DaisyServer(max_body=1000) as daisy, requests.Session() as session:
        r = post(daisy, crash(Stacktrace="x" * 2000), session=session)
        assert (r.status_code, r.text) == (413, "Report too large.")
        assert post(daisy, crash(), session=session).status_code == 200
        assert daisy.connections == 1


def test_expect_100_continue(daisy: DaisyServer) -> None:
    body = bson.encode(crash())
    head = f"POST /{TOKEN} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    sock, f = raw_exchange(daisy.port, head)
    with sock, f:
        assert f.readline().startswith(b"HTTP/1.1 100")
        assert f.readline() == b"\r\n"
        sock.sendall(body)
        status, _, text = read_response(f)
        assert status == 200 and text.endswith(b" CORE")


def test_keep_alive_one_connection(daisy: DaisyServer) -> None:
    with requests.Session() as session:
        for i in range(300):
            assert post(daisy, crash(Date=str(i)), session=session).status_code == 200
    assert daisy.connections == 1 and len(daisy.reports) == 300


def test_concurrent_clients(daisy: DaisyServer) -> None:
    answers: list[str] = []

    def client(n: int) -> None:
        with requests.Session() as session:
            for i in range(25):
                answers.append(post(daisy, crash(Date=f"{n}-{i}"), session=session).text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len({a.split()[0] for a in answers}) == 200 == len(daisy.reports)
    assert daisy.connections == 8


def test_restart_on_same_port_keeps_state(daisy: DaisyServer) -> None:
    url = daisy.url
    assert post(daisy, crash()).status_code == 200
    daisy.stop()
    with pytest.raises(requests.ConnectionError):
        post(daisy, crash(Date="x"))
    daisy.start()
    assert daisy.url == url
    assert post(daisy, crash()).status_code == 409


# --- cores -----------------------------------------------------------------------------------


def test_core_apport_gzip_verifies(daisy: DaisyServer) -> None:
    oops_id = ask_core(daisy)
    pieces = apport_gzip(PAYLOAD)
    body = b64lines(pieces)
    r = upload_core(daisy, oops_id, body)
    assert (r.status_code, r.text) == (200, oops_id)
    core = daisy.cores[0]
    assert (core.oops_id, core.arch, core.token, core.verdict, core.compression) == (
        oops_id, "amd64", TOKEN, "ok", "gzip",
    )  # fmt: skip
    assert core.lines == len(pieces) > 3 and core.body == body and core.body_size == len(body)
    assert core.body_sha256 == hashlib.sha256(body).hexdigest()
    assert core.decoded_size == len(PAYLOAD)
    assert core.decoded_sha256 == hashlib.sha256(PAYLOAD).hexdigest()
    assert core.compressed_size == sum(map(len, pieces))


@pytest.mark.parametrize(
    ("kind", "compress"),
    [("zstd", lambda d: zstd.compress(d)), ("zlib", zlib.compress)],
)
def test_core_other_compressions(daisy: DaisyServer, kind: str, compress: Any) -> None:
    oops_id = ask_core(daisy)
    r = upload_core(daisy, oops_id, b64lines(split(compress(PAYLOAD))), arch="riscv64")
    assert (r.status_code, r.text) == (200, oops_id)
    core = daisy.cores[0]
    assert (core.compression, core.verdict, core.decoded_size) == (kind, "ok", len(PAYLOAD))
    assert core.decoded_sha256 == hashlib.sha256(PAYLOAD).hexdigest()


def _flip(pieces: list[bytes]) -> list[bytes]:
    middle = bytearray(pieces[2])
    middle[len(middle) // 2] ^= 0xFF
    return [*pieces[:2], bytes(middle), *pieces[3:]]


@pytest.mark.parametrize(
    ("body", "verdict"),
    [
        (b64lines(apport_gzip(PAYLOAD)[:-1]), "truncated gzip stream"),
        (b64lines(split(zstd.compress(PAYLOAD))[:-1]), "truncated zstd stream"),
        (b64lines(apport_gzip(PAYLOAD)) + b"\n", "is empty"),
        (b64lines(apport_gzip(PAYLOAD)[:2]) + b"\nQUJ\n" + b64lines(apport_gzip(PAYLOAD)[2:]), "not base64"),
        (b64lines([*apport_gzip(PAYLOAD), b"junk"]), "data after the end of the gzip stream"),
        (b64lines(_flip(apport_gzip(PAYLOAD))), ""),
        (b64lines([b"not compressed at all"]), ""),
        (b"", "empty core dump"),
    ],
    ids=["truncated", "truncated-zstd", "trailing-newline", "bad-base64", "trailing-data", "corrupt",
         "garbage", "empty"],
)  # fmt: skip
def test_core_that_does_not_verify(daisy: DaisyServer, body: bytes, verdict: str) -> None:
    oops_id = ask_core(daisy)
    r = upload_core(daisy, oops_id, body)
    assert r.status_code == 400 and r.text.startswith("Invalid core dump: ")
    core = daisy.cores[0]
    assert core.verdict != "ok" and verdict in core.verdict and core.status == 400
    assert core.body_size == len(body)


def test_core_for_unknown_oops_or_architecture(daisy: DaisyServer) -> None:
    body = b64lines(apport_gzip(PAYLOAD))
    r = upload_core(daisy, str(uuid.uuid1()), body)
    assert (r.status_code, r.text) == (400, "No OOPS found for this core dump.")
    r = upload_core(daisy, ask_core(daisy), body, arch="armel")
    assert (r.status_code, r.text) == (400, "Unsupported architecture")
    assert [c.verdict for c in daisy.cores] == ["ok", "ok"]


class StoredGzip:
    """A large valid gzip core made of identical stored deflate blocks: free to generate.

    Each line is the base64 of one stored block, so the client repeats one bytes object and the
    server does all the real work (base64, inflate, two sha256 over every byte).
    """

    def __init__(self, total: int) -> None:
        data = bytes(range(256)) * 192  # 49152 bytes, stored as-is
        self.head = base64.b64encode(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff") + b"\n"
        self.block = (
            base64.b64encode(b"\x00" + struct.pack("<HH", len(data), len(data) ^ 0xFFFF) + data) + b"\n"
        )
        self.count = total // len(self.block)
        crc, digest = 0, hashlib.sha256()
        for _ in range(self.count):
            crc = zlib.crc32(data, crc)
            digest.update(data)
        self.decoded_size, self.decoded_sha256 = self.count * len(data), digest.hexdigest()
        final = b"\x01\x00\x00\xff\xff" + struct.pack("<II", crc, self.decoded_size & 0xFFFFFFFF)
        self.tail = base64.b64encode(final)

    def __len__(self) -> int:  # requests sends this as Content-Length
        return len(self.head) + self.count * len(self.block) + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for _ in range(self.count):
            yield self.block
        yield self.tail


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_large_core_is_streamed(daisy: DaisyServer) -> None:
    core = StoredGzip(200 * 1024 * 1024)
    oops_id = ask_core(daisy)
    with contextlib.suppress(OSError):  # reset the peak so only this upload counts (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    r = upload_core(daisy, oops_id, core, timeout=60)
    peak = _status_kib("VmHWM")
    assert (r.status_code, r.text) == (200, oops_id)
    record = daisy.cores[0]
    assert (record.verdict, record.body, record.body_size) == ("ok", None, len(core))
    assert (record.decoded_size, record.decoded_sha256) == (core.decoded_size, core.decoded_sha256)
    assert (peak - before) * 1024 < 48 * 1024 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"


def test_zstd_bomb_output_is_bounded(daisy: DaisyServer) -> None:
    size = 512 * 1024 * 1024  # of zeros: about 16 KiB of zstd, 8 MiB of output per call at most
    body = b64lines(split(zstd.compress(bytes(size))))
    oops_id = ask_core(daisy)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    assert upload_core(daisy, oops_id, body).status_code == 200
    peak = _status_kib("VmHWM")
    assert (daisy.cores[0].decoded_size, daisy.cores[0].compression) == (size, "zstd")
    assert (peak - before) * 1024 < 48 * 1024 * 1024, f"RSS grew by {(peak - before) // 1024} MiB"


# --- scripted faults -------------------------------------------------------------------------


def test_respond_is_recorded_and_not_processed(daisy: DaisyServer) -> None:
    daisy.script(Respond(503, "busy", {"Retry-After": "7"}), Respond(401, "Device blocked."))
    r = post(daisy, crash())
    assert (r.status_code, r.text, r.headers["Retry-After"]) == (503, "busy", "7")
    assert post(daisy, crash()).status_code == 401
    assert post(daisy, crash()).status_code == 200  # the scripted ones were not stored: no 409
    assert [(x.status, x.document) for x in daisy.reports] == [(503, crash()), (401, crash()), (200, crash())]
    assert [x.action for x in daisy.exchanges] == ["Respond", "Respond", None]
    assert daisy.pending_actions() == 0


def test_script_for_one_endpoint(daisy: DaisyServer) -> None:
    daisy.script(Respond(500, "swift is down"), endpoint="core")
    oops_id = ask_core(daisy)  # not consumed by the report
    body = b64lines(apport_gzip(PAYLOAD))
    assert upload_core(daisy, oops_id, body).status_code == 500
    assert upload_core(daisy, oops_id, body).status_code == 200
    assert [(c.status, c.verdict) for c in daisy.cores] == [(500, "ok"), (200, "ok")]


def test_reset(daisy: DaisyServer) -> None:
    daisy.script(Reset())
    with pytest.raises(requests.ConnectionError, match="reset"):
        post(daisy, crash())
    assert daisy.reports[0].status is None and daisy.reports[0].document == crash()
    assert post(daisy, crash()).status_code == 200  # next connection is served normally


def test_delay_then_normal(daisy: DaisyServer) -> None:
    daisy.script(Delay(0.2))
    start = time.monotonic()
    assert post(daisy, crash()).status_code == 200
    assert time.monotonic() - start >= 0.2


def test_delay_gives_read_timeout_and_does_not_block_stop(daisy: DaisyServer) -> None:
    daisy.script(Delay(60))
    with pytest.raises(requests.ReadTimeout):
        post(daisy, crash(), timeout=(5, 0.2))
    start = time.monotonic()
    daisy.stop()
    assert time.monotonic() - start < 30  # cut short, not after the 60 s (a bound that catches only that)
    assert daisy.reports == []  # cut short before the body was read


def test_hang_until_stop(daisy: DaisyServer) -> None:
    daisy.script(Hang())
    failures: list[Exception] = []

    def client() -> None:
        try:
            post(daisy, crash(), timeout=30)
        except requests.ConnectionError as e:
            failures.append(e)

    thread = threading.Thread(target=client)
    thread.start()
    assert daisy.wait_for(lambda: len(daisy.exchanges) == 1, timeout=5)
    assert thread.is_alive() and daisy.exchanges == [Exchange("POST", f"/{TOKEN}", None, "Hang")]
    daisy.stop()
    thread.join(20)  # stop() cut the connection: the client did not wait out its 30 s read timeout
    assert not thread.is_alive() and len(failures) == 1


def test_wait_for_times_out(daisy: DaisyServer) -> None:
    start = time.monotonic()
    assert not daisy.wait_for(lambda: False, timeout=0.05)
    assert time.monotonic() - start < 30  # it returned: a bound that catches only a wait that never ends


# --- standalone ------------------------------------------------------------------------------


def test_standalone(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.daisy", "--port", "0", "--record-dir", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 10)[0], "no banner within 10 s"
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        r = requests.post(f"{url}/{TOKEN}", data=bson.encode(crash()), headers=HEADERS, timeout=10)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out == ""
    assert [x for x in err.splitlines() if x.startswith("POST ")] == [f"POST /{TOKEN[:12]}... 200 {r.text!r}"]
    record = json.loads((tmp_path / "00001-report.json").read_text())
    assert record["document"] == crash() and record["answer"] == r.text and record["status"] == 200
