"""A loopback stand-in for the Ubuntu Error Tracker ("daisy"), for tests and the demo.

Why it exists: crashd's uploader has to be tested against something that answers
the way daisy.ubuntu.com does (research/whoopsie.md §8) and that can also misbehave
on demand (odd statuses, resets, hangs, slow answers), so the retry rules of
DESIGN.md §4 are exercised over real sockets instead of mocks.

    with DaisyServer() as daisy:
        daisy.script(Respond(503, "busy", {"Retry-After": "5"}))
        ...  # point the client at daisy.url
        assert daisy.wait_for(lambda: len(daisy.reports) == 2, timeout=5)

Run standalone: ``python -m tests.daisy --port 0 [--record-dir DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import json
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any, TextIO

import bson

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

MiB = 1 << 20
ARCHITECTURES = frozenset({"amd64", "arm64", "armhf", "i386", "ppc64el", "s390x", "riscv64"})
CORE_POLICIES = ("auto", "always", "never")
READ_CHUNK = MiB  # socket reads: big enough to be cheap, small enough to keep RSS flat
OUT_CHUNK = 256 * 1024  # most gzip/zlib output held at once
MAX_LINE = 16 * MiB  # a longer base64 line is an error, not a reason to buffer without end


# --- scripted actions: each one is consumed by one incoming request ---------------------------


@dataclass(frozen=True)
class Respond:
    """Answer this instead of processing; the body is still read in full and recorded."""

    status: int
    body: str | bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delay:
    """Wait, then process normally; cut short (connection dropped) by stop()."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Read the request, then close with SO_LINGER 0 so the client sees a TCP reset."""


@dataclass(frozen=True)
class Hang:
    """Read the request and never answer; the connection is dropped by stop()."""


Action = Respond | Delay | Reset | Hang


# --- what was received ---------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One POST /<token>; status None means no answer was sent (Reset, Hang)."""

    token: str
    headers: dict[str, str]
    document: dict[str, Any] | None  # None when the body was not valid BSON (or too large)
    body: bytes
    status: int | None
    answer: str
    oops_id: str | None = None


@dataclass(frozen=True)
class Core:
    """One POST /<oops_id>/submit-core/<arch>/<token>, verified as it streamed in."""

    oops_id: str
    arch: str
    token: str
    headers: dict[str, str]
    body_size: int
    body_sha256: str
    lines: int
    compression: str  # "gzip", "zstd", "zlib" or "" when nothing was decoded
    compressed_size: int  # bytes after base64 decoding
    decoded_size: int  # bytes after decompression: the core file itself
    decoded_sha256: str
    verdict: str  # "ok" or why the upload is not a well-formed compressed core
    body: bytes | None  # kept only up to keep_core_body bytes
    status: int | None
    answer: str


@dataclass(frozen=True)
class Exchange:
    """Any request at all, in arrival order of completion; action names the scripted one."""

    method: str
    path: str
    status: int | None
    action: str | None
    # time.time() once the request was read, before it was answered: a retry's delay measured from here
    # is never overstated by the load on the machine (a client cannot retry before its answer).
    received: float = field(default_factory=time.time, compare=False)


class _BadCore(Exception):
    """The core body is not base64 lines of one complete compressed stream."""


class _Inflater:
    """gzip, zstd or bare zlib behind one interface whose output comes in bounded chunks."""

    def __init__(self, head: bytes) -> None:
        self._zstd: Any = None
        self._zlib: Any = None
        if head.startswith(b"\x28\xb5\x2f\xfd"):
            self.kind = "zstd"
            self._zstd = zstd.ZstdDecompressor()
        else:
            self.kind = "gzip" if head.startswith(b"\x1f\x8b\x08") else "zlib"
            self._zlib = zlib.decompressobj(31 if self.kind == "gzip" else 15)
        self._stream: Any = self._zstd or self._zlib

    def feed(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        while view and not self._stream.eof:
            if self._zstd is not None:
                yield self._zstd.decompress(view, OUT_CHUNK)
                while not self._zstd.eof and not self._zstd.needs_input:
                    yield self._zstd.decompress(b"", OUT_CHUNK)
                view = memoryview(b"")
            else:
                yield self._zlib.decompress(view, OUT_CHUNK)
                view = memoryview(self._zlib.unconsumed_tail)
        if view or self._stream.unused_data:
            raise _BadCore(f"data after the end of the {self.kind} stream")

    def finish(self) -> Iterator[bytes]:
        if self._zlib is not None:
            yield self._zlib.flush()
        if not self._stream.eof:
            raise _BadCore(f"truncated {self.kind} stream")


class _CoreCheck:
    """Streams a core body through base64-per-line decoding and decompression, hashing both.

    apport stores CoreDump as one base64 string per compressed block, each with its own
    padding, so lines must be decoded one at a time (research/whoopsie.md §1.6).
    """

    def __init__(self, keep: bool) -> None:
        self.body_hash, self.decoded_hash = hashlib.sha256(), hashlib.sha256()
        self.body_size = self.lines = self.compressed_size = self.decoded_size = 0
        self.kept: bytearray | None = bytearray() if keep else None
        self.error: str | None = None
        self._line = bytearray()
        self._head = b""
        self._inflater: _Inflater | None = None

    def feed(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        self.body_hash.update(chunk)
        if self.kept is not None:
            self.kept += chunk
        if self.error is None:
            self._guard(self._split, chunk)

    def finish(self) -> None:
        if self.error is None:
            self._guard(self._finish)

    @property
    def compression(self) -> str:
        return self._inflater.kind if self._inflater else ""

    def _guard(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except (_BadCore, zlib.error, zstd.ZstdError) as e:
            self.error = str(e)

    def _split(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._line += chunk[start:end]
            self._decode_line()
            start = end + 1
        self._line += chunk[start:]
        if len(self._line) > MAX_LINE:
            raise _BadCore(f"line {self.lines + 1} is longer than {MAX_LINE} bytes")

    def _decode_line(self) -> None:
        self.lines += 1
        if not self._line:
            raise _BadCore(f"line {self.lines} is empty")
        try:
            data = base64.b64decode(self._line)
        except binascii.Error as e:
            raise _BadCore(f"line {self.lines} is not base64: {e}") from None
        self._line.clear()
        self.compressed_size += len(data)
        if self._inflater is None:  # the magic may span lines; wait for 4 bytes
            self._head += data
            if len(self._head) < 4:
                return
            data, self._head = self._head, b""
            self._inflater = _Inflater(data)
        self._count(self._inflater.feed(data))

    def _finish(self) -> None:
        if self._line or self.lines:  # the last line has no newline after it
            self._decode_line()
        if self._inflater is None and self._head:
            self._inflater = _Inflater(self._head)
            self._count(self._inflater.feed(self._head))
        if self._inflater is None:
            raise _BadCore("empty core dump")
        self._count(self._inflater.finish())

    def _count(self, chunks: Iterator[bytes]) -> None:
        for out in chunks:
            self.decoded_size += len(out)
            self.decoded_hash.update(out)


# What a request gets: status, body, headers, and how: "send", "reset", "hang" or "drop".
_Plan = tuple[int | None, str | bytes, dict[str, str], str]


class _Handler(BaseHTTPRequestHandler):
    """Routes like daisy's Flask app: two POST routes, everything else 404."""

    protocol_version = "HTTP/1.1"  # keep-alive and Expect: 100-continue
    disable_nagle_algorithm = True  # headers and body are two writes; no 40 ms stalls
    server: _Server

    def do_POST(self) -> None:
        daisy = self.server.daisy
        parts = self.path.split("?", 1)[0].split("/")[1:]
        if self.command == "POST" and len(parts) == 1 and parts[0]:
            kind = "submit"
        elif self.command == "POST" and len(parts) == 4 and parts[1] == "submit-core" and all(parts):
            kind = "core"
        else:
            kind = "other"
        action = daisy._next_action(kind)
        plan: _Plan = (None, "failed", {}, "drop")
        try:
            plan = self._handle(kind, parts, action)
        finally:  # recorded before answering, so a client that got its answer finds the record
            status, text, headers, how = plan
            status = status if how == "send" else None
            daisy._exchanged(
                Exchange(self.command, self.path, status, type(action).__name__ if action else None)
            )
            daisy._log(f"{self.command} {_short(self.path)} {status or how} {_text(text)[:200]!r}")
        if how == "send":
            assert status is not None
            self._send(status, text, headers)
        elif how == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # the fd really closes once http.server drops its file objects
        elif how == "hang":
            daisy._stopping.wait()
        self.close_connection = self.close_connection or how != "send"

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def _handle(self, kind: str, parts: list[str], action: Action | None) -> _Plan:
        """Read the body (always, so the connection stays usable) and decide the answer."""
        daisy = self.server.daisy
        if isinstance(action, Delay) and daisy._stopping.wait(action.seconds):
            return None, "stopped during delay", {}, "drop"
        length = self._content_length(required=kind != "other")
        if length is None:
            return 411, "Length Required.", {"Connection": "close"}, "send"
        headers = dict(self.headers.items())
        scripted: tuple[int | None, str] | None = None  # recorded instead of daisy's answer
        if isinstance(action, Respond):
            scripted = action.status, _text(action.body)
        elif isinstance(action, Reset | Hang):
            scripted = None, ""
        if kind == "core":
            check = _CoreCheck(keep=length <= daisy.keep_core_body)
            if not self._pump(length, check.feed):
                return None, "client went away", {}, "drop"
            check.finish()
            status, text = daisy._core(parts, headers, check, scripted)
        else:
            body = bytearray()
            keep = length <= daisy.max_body
            if not self._pump(length, body.extend if keep else None):
                return None, "client went away", {}, "drop"
            status, text = 404, "Not Found"
            if kind == "submit":
                status, text = daisy._submit(parts[0], headers, bytes(body) if keep else None, scripted)
        if isinstance(action, Reset | Hang):
            return None, "", {}, type(action).__name__.lower()
        if isinstance(action, Respond):  # sent as given: bytes stay bytes
            return action.status, action.body, action.headers, "send"
        return status, text, {}, "send"

    def _content_length(self, required: bool) -> int | None:
        """Content-Length, or None when the framing is missing (411, like daisy's WSGI host)."""
        value = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding") or (value is None and required):
            return None
        try:
            length = int(value or 0)
        except ValueError:
            return None
        return length if length >= 0 else None

    def _pump(self, length: int, sink: Callable[[bytes], object] | None) -> bool:
        """Read exactly length bytes in chunks; False when the client stops short."""
        while length > 0:
            chunk = self.rfile.read(min(length, READ_CHUNK))
            if not chunk:
                return False
            length -= len(chunk)
            if sink is not None:
                sink(chunk)
        return True

    def _send(self, status: int, text: str | bytes, headers: dict[str, str]) -> None:
        body = text.encode() if isinstance(text, str) else text
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: do_POST logs one line per request with the answer given."""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.daisy._log(format % args)


class _Server(ThreadingHTTPServer):
    """Counts and tracks connections so tests can check keep-alive and stop() can cut them."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, daisy: DaisyServer, port: int) -> None:
        self.daisy = daisy
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # skip HTTPServer's getfqdn(), a DNS lookup
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.daisy._connection(request, opened=True)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.daisy._connection(request, opened=False)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # resets and timeouts are the tests' business
            self.daisy._error(traceback.format_exc())


class DaisyServer:
    """The daisy protocol on 127.0.0.1, with recording and scripted faults. Thread-safe."""

    def __init__(
        self,
        port: int = 0,
        *,
        core_policy: str = "auto",
        max_body: int = 64 * MiB,
        keep_core_body: int = 16 * MiB,
        record_dir: Path | str | None = None,
        log: TextIO | None = None,
    ) -> None:
        if core_policy not in CORE_POLICIES:
            raise ValueError(f"core_policy must be one of {CORE_POLICIES}")
        self.core_policy, self.max_body, self.keep_core_body = core_policy, max_body, keep_core_body
        self.record_dir = Path(record_dir) if record_dir is not None else None
        self.log = log
        self._port = port
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._live: set[socket.socket] = set()
        self._queues: dict[str | None, deque[Action]] = {k: deque() for k in (None, "submit", "core")}
        self._seen: dict[str, set[str]] = {}  # token -> md5s of Date:ExecutablePath:ProcStatus
        self._oopses: dict[str, str] = {}  # oops id -> token
        self._core_signatures: set[str] = set()
        self._reports: list[Report] = []
        self._cores: list[Core] = []
        self._exchanges: list[Exchange] = []
        self._errors: list[str] = []
        self._connections = 0
        self._log_lock = threading.Lock()

    # --- lifecycle

    def start(self) -> DaisyServer:
        """Listen and serve; accepting starts before this returns. May follow stop() (same port)."""
        if self._httpd is None:
            self._stopping = threading.Event()
            self._httpd = _Server(self, self._port)
            self._port = self._httpd.server_address[1]
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="daisy", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection (also Delay and Hang ones) and wait for them."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._cond:
            for sock in self._live:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._cond.wait_for(lambda: not self._live, timeout=5)
        assert self._thread is not None
        self._thread.join(timeout=5)

    def __enter__(self) -> DaisyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- test helpers

    def script(self, *actions: Action, endpoint: str | None = None) -> None:
        """Queue actions, one per request, FIFO; endpoint "submit" or "core" limits them to it."""
        with self._cond:
            self._queues[endpoint].extend(actions)

    def pending_actions(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate() holds, re-checked after every request and connection."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    @property
    def reports(self) -> list[Report]:
        with self._cond:
            return list(self._reports)

    @property
    def cores(self) -> list[Core]:
        with self._cond:
            return list(self._cores)

    @property
    def exchanges(self) -> list[Exchange]:
        with self._cond:
            return list(self._exchanges)

    @property
    def errors(self) -> list[str]:
        """Tracebacks of server bugs (not client resets); tests should expect none."""
        with self._cond:
            return list(self._errors)

    @property
    def connections(self) -> int:
        """Connections accepted so far: one per client connection, however many requests."""
        with self._cond:
            return self._connections

    # --- called from handler threads

    def _next_action(self, kind: str) -> Action | None:
        with self._cond:
            for queue in (self._queues.get(kind), self._queues[None]):
                if queue:
                    return queue.popleft()
        return None

    def _submit(
        self, token: str, headers: dict[str, str], body: bytes | None, scripted: tuple[int | None, str] | None
    ) -> tuple[int | None, str]:
        try:
            doc = bson.decode(body) if body is not None else None
        except Exception:  # bson raises several kinds on garbage; all mean "Invalid BSON."
            doc = None
        with self._cond:
            oops_id = None
            if scripted:
                status, text = scripted
            elif body is None:
                status, text = 413, "Report too large."
            else:
                status, text, oops_id = self._judge(token, doc)
            report = Report(token, headers, doc, body or b"", status, text, oops_id)
            self._reports.append(report)
            seq = len(self._reports) + len(self._cores)
        self._record(seq, "report", report)
        return status, text

    def _judge(self, token: str, doc: dict[str, Any] | None) -> tuple[int, str, str | None]:
        """daisy's checks, in daisy's order (research/whoopsie.md §8.2, §8.4). Lock held."""
        if doc is None:
            return 400, "Invalid BSON.", None
        if "KernelCrash" in doc or "VmCore" in doc:
            return 400, "Kernel crashes are not handled yet.", None
        if not doc:
            return 400, "Empty report.", None
        for key, value in doc.items():
            if not isinstance(value, str):
                return 400, f"Non-string value for {key}.", None
        if doc.get("Architecture") == "armel":
            return 400, "armel architecture is obsoleted.", None
        crash_hash = None
        if all(k in doc for k in ("Date", "ExecutablePath", "ProcStatus")):
            key = f"{doc['Date']}:{doc['ExecutablePath']}:{doc['ProcStatus']}"
            crash_hash = hashlib.md5(key.encode()).hexdigest()
            if crash_hash in self._seen.get(token, ()):
                return 409, "Crash already reported.", None
        if "Package" not in doc:
            return 400, "Incomplete crash report.", None
        if doc.get("ProblemType") == "Snap":
            return 200, "Crash report successfully submitted.", None
        oops_id = str(uuid.uuid1())
        self._oopses[oops_id] = token
        if crash_hash:
            self._seen.setdefault(token, set()).add(crash_hash)
        return 200, f"{oops_id} {'CORE' if self._wants_core(doc) else 'OOPSID'}", oops_id

    def _wants_core(self, doc: dict[str, str]) -> bool:
        """Ask once per signature for binary crashes; unretraced ones have Signal, no signature."""
        if self.core_policy != "auto":
            return self.core_policy == "always"
        if "DuplicateSignature" in doc or "Traceback" in doc:
            return False
        signature = doc.get("StacktraceAddressSignature")
        if signature is None and "Signal" in doc and "ExecutablePath" in doc:
            signature = f"{doc['ExecutablePath']}:{doc['Signal']}"
        if signature is None or signature in self._core_signatures:
            return False
        self._core_signatures.add(signature)
        return True

    def _core(
        self,
        parts: list[str],
        headers: dict[str, str],
        check: _CoreCheck,
        scripted: tuple[int | None, str] | None,
    ) -> tuple[int | None, str]:
        oops_id, _, arch, token = parts
        with self._cond:
            if scripted:
                status, text = scripted
            elif oops_id not in self._oopses:
                status, text = 400, "No OOPS found for this core dump."
            elif arch not in ARCHITECTURES:
                status, text = 400, "Unsupported architecture"
            elif check.error:
                status, text = 400, f"Invalid core dump: {check.error}"
            else:
                status, text = 200, oops_id
            core = Core(
                oops_id, arch, token, headers, check.body_size, check.body_hash.hexdigest(), check.lines,
                check.compression, check.compressed_size, check.decoded_size, check.decoded_hash.hexdigest(),
                check.error or "ok", bytes(check.kept) if check.kept is not None else None, status, text,
            )  # fmt: skip
            self._cores.append(core)
            seq = len(self._reports) + len(self._cores)
        self._record(seq, "core", core)
        return status, text

    def _exchanged(self, exchange: Exchange) -> None:
        with self._cond:
            self._exchanges.append(exchange)
            self._cond.notify_all()

    def _connection(self, sock: socket.socket, opened: bool) -> None:
        with self._cond:
            if opened:
                self._connections += 1
                self._live.add(sock)
            else:
                self._live.discard(sock)
            self._cond.notify_all()

    def _error(self, text: str) -> None:
        with self._cond:
            self._errors.append(text)
        print(text, file=self.log or sys.stderr, flush=True)

    def _log(self, line: str) -> None:
        if self.log is not None:
            with self._log_lock:
                print(line, file=self.log, flush=True)

    def _record(self, seq: int, kind: str, record: Report | Core) -> None:
        """Write what was received as JSON for the demo to show (atomically: tmp + rename)."""
        if self.record_dir is None:
            return
        data = {k: v for k, v in asdict(record).items() if k != "body"}
        data["body_size"] = len(record.body or b"")
        self.record_dir.mkdir(parents=True, exist_ok=True)
        path = self.record_dir / f"{seq:05d}-{kind}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=repr) + "\n")
        tmp.rename(path)


def _text(body: str | bytes) -> str:
    return body if isinstance(body, str) else body.decode(errors="replace")


def _short(path: str) -> str:
    """Shorten 128-hex-digit system tokens in log lines; keep OOPS ids whole."""
    return "/".join(p if len(p) <= 40 else p[:12] + "..." for p in path.split("/"))


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.daisy", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--record-dir", type=Path, help="write each report and core record here as JSON")
    parser.add_argument("--core-policy", choices=CORE_POLICIES, default="auto")
    parser.add_argument("--max-body", type=int, default=64 * MiB, help="largest report accepted, bytes")
    args = parser.parse_args(argv)
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # before any thread starts: only sigwait sees them
    with DaisyServer(
        args.port,
        core_policy=args.core_policy,
        max_body=args.max_body,
        record_dir=args.record_dir,
        log=sys.stderr,
    ) as daisy:
        print(f"listening on {daisy.url}", flush=True)
        signum = signal.sigwait(signals)
        daisy._log(f"stopping on {signal.Signals(signum).name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
