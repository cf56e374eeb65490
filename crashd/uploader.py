"""The daisy protocol (DESIGN.md §4): the BSON report, the core upload, the HTTP transport.

The protocol is a pure function of an indexed report and a :class:`Transport`
(one ``post(url, body) -> Answer`` call), so it runs unchanged in the unprivileged
upload worker, and tests can drive it against a real loopback server. What an
answer *means* is :mod:`crashd.policy`'s business. One seam leads to it:
:class:`Uploader` ``.send(Job) -> Answer``, here (:class:`DirectUploader`) or in the
worker (:class:`crashd.worker.WorkerUploader`).

Past ~400 lines on purpose: the transport (``http.client`` with the proxy route,
TLS and the error translation, about 250 lines) is the protocol's only way to the
server and is read with it; splitting it off would put the upload errors in one
module and their only producer in another.
Only this module imports ``bson`` and talks HTTP — with ``http.client`` and ``ssl``, imported on
first use in the process that actually talks HTTP: as root that is the upload worker, and the daemon
never loads them.

Exceptions — talking to the server::

    UploadError            the server could not be reached or the exchange broke; try later
    ├── ConnectError       refused, TLS, proxy, bad URL
    │   └── OfflineError   this device has no network: no DNS answer, no route
    ├── UploadTimeout      no connection or no answer within the timeout
    ├── ExchangeError      the connection broke mid-exchange, or the answer was unusable
    └── WorkerError        the upload worker (crashd.worker) died, hung or said something malformed

A report crashd refuses to send (not UTF-8, too much text) raises
:class:`crashd.report.ReportError` instead: that is the report's fault, not the
network's, and retrying cannot help.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import ipaddress
import os
import re
import select
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

if TYPE_CHECKING:
    import http.client
    import ssl

from crashd import __version__
from crashd.errors import CrashdError
from crashd.fs import OpenFile
from crashd.report import (
    DEFAULT_LIMITS,
    Limits,
    MalformedReportError,
    Report,
    ReportLimitError,
    read_report,
    size_text,
)

CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0  # seconds; settings connect_timeout and read_timeout
MAX_ANSWER = 64 * 1024  # daisy answers a line; anything longer is cut
VERSION_HEADER = f"crashd {__version__}"
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # OOPS ids, architectures in URLs


class UploadError(CrashdError):
    """The report could not be delivered this time; it stays pending."""


class ConnectError(UploadError):
    """No connection: refused, unreachable, name resolution, TLS or proxy failure."""


class OfflineError(ConnectError):
    """This device cannot reach the network at all; the server and the rest of the fleet are fine."""


class UploadTimeout(UploadError):
    """The server did not accept the connection or did not answer in time."""


class ExchangeError(UploadError):
    """The connection broke during the exchange, or the answer could not be read."""


class WorkerError(UploadError):
    """The upload worker died, hung or said something malformed: this attempt failed on this side.

    Nothing may have reached the server, so delivery retries it as soon as it
    retries :class:`OfflineError`, with exponential backoff.
    """


class CoreUnavailable(CrashdError):
    """The report cannot send a core: no CoreDump, no usable Architecture, or an OOPS id that cannot
    name the upload. Raised when the server asks for it, and shown by ``show --what-is-sent``."""


@dataclass(frozen=True)
class Answer:
    """What the server said: status, the start of the body, headers."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


def sent_fields(report: Report, max_text: int | None = None) -> Iterator[tuple[str, str]]:
    """The first POST's fields, in the order of its BSON document: every text field, in file order.

    Binary fields (the core, attachments) never go in the first upload; daisy asks
    for the core separately (:func:`core_offer`). This is the one place that decides
    what a report's first upload carries: :func:`encode_report` encodes exactly these
    pairs and ``crashd show --what-is-sent`` (:mod:`crashd.preview`) shows exactly
    them, so the preview cannot drift from the upload. The text they carry is bounded by
    *max_text*, by default the report's ``Limits.upload_text``.
    """
    total, limit = 0, report.limits.upload_text if max_text is None else max_text
    for key, entry in report.entries.items():
        if entry.binary:
            continue
        total += entry.size
        if total > limit:
            reason = f"the report has more than {size_text(limit)} of text to send (the upload_text limit)"
            raise ReportLimitError(reason, line=entry.line, name=report.name)
        yield key, report.string(key)  # raises for text that is not UTF-8


def encode_report(report: Report, max_text: int | None = None) -> bytes:
    """The first POST's body: :func:`sent_fields` as one BSON document of strings."""
    import bson  # only where a body is made (delivery, on the root side): not in the idle daemon

    return bson.encode(dict(sent_fields(report, max_text)))


def max_body(limits: Limits) -> int:
    """The most bytes :func:`encode_report` can make of a report read with *limits*: the text, and per
    key its type byte, name, NUL, length and NUL, plus the document's length and final NUL."""
    return limits.upload_text + limits.keys * (limits.key_length + 7) + 5


@dataclass(frozen=True)
class CoreOffer:
    """What :func:`post_core` sends when the server asks for the core: the architecture named in the
    URL, and the body's length (the CoreDump's stored base64 lines joined with newlines)."""

    architecture: str
    size: int


def core_offer(report: Report) -> CoreOffer:
    """The core this report can send if daisy asks for it; :class:`CoreUnavailable` saying why not."""
    entry = report.entries.get("CoreDump")
    if entry is None or not entry.binary:
        raise CoreUnavailable("the report has no core (no CoreDump)")
    if "Architecture" not in report:
        raise CoreUnavailable("the report has no Architecture to name the core upload with")
    architecture = report.string("Architecture")
    if not _TOKEN.fullmatch(architecture):
        raise CoreUnavailable(f"the report's Architecture {architecture!r} cannot name a core upload")
    return CoreOffer(architecture, entry.size)


class StreamBody:
    """A request body streamed from an iterator, with its length known up front.

    :class:`HttpTransport` sends its ``len()`` as ``Content-Length`` and iterates
    it for the bytes, so a gigabyte core never sits in memory.
    """

    def __init__(self, chunks: Iterable[bytes], length: int) -> None:
        self._chunks, self._length = chunks, length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self._chunks:
            sent += len(chunk)
            yield chunk
        if sent != self._length:  # the file changed under us: never send a short body
            raise MalformedReportError(f"the stored core was {sent} bytes, not {self._length}")


class Transport(Protocol):
    def post(self, url: str, body: bytes | StreamBody) -> Answer: ...


def post_report(body: bytes, transport: Transport, url: str, system_id: str) -> Answer:
    """POST a report's body (:func:`encode_report`) to ``{url}/{system_id}``; raises :class:`UploadError`."""
    return transport.post(f"{url}/{system_id}", body)


def post_core(report: Report, transport: Transport, url: str, system_id: str, oops_id: str) -> Answer:
    """Stream the CoreDump's stored base64 lines to ``{url}/{oops_id}/submit-core/{arch}/{system_id}``.

    Raises :class:`CoreUnavailable` when the report cannot supply what daisy asked
    for, :class:`UploadError` when the exchange fails.
    """
    offer = core_offer(report)
    if not _TOKEN.fullmatch(oops_id):
        raise CoreUnavailable(f"the OOPS id {oops_id!r} cannot name a core upload")
    body = StreamBody(report.base64_body("CoreDump"), offer.size)
    return transport.post(f"{url}/{oops_id}/submit-core/{offer.architecture}/{system_id}", body)


Kind = Literal["report", "core"]


@dataclass(frozen=True)
class Job:
    """One POST to the crash database: everything an :class:`Uploader` needs, nothing it ignores.

    A ``report`` job carries its *body*, encoded once by the caller (:func:`encode_report`: a report
    crashd refuses fails there, before any state is written), so no uploader encodes it again. A
    ``core`` job carries the report's open descriptor *fd* and the *limits* it was read with: the
    uploader indexes the report from it and streams the CoreDump as stored (:func:`post_core`),
    in whichever process does the HTTP. Make them with :meth:`of_report` and :meth:`of_core`.
    """

    kind: Kind
    url: str
    system_id: str
    body: bytes = b""  # report: the BSON document
    fd: int = -1  # core: the report's descriptor; read positionally, never closed by the uploader
    limits: Limits = DEFAULT_LIMITS  # the bounds the report was read with (a report job's body follows)
    oops_id: str = ""  # core: the id daisy gave the report, naming the upload

    @classmethod
    def of_report(cls, body: bytes, url: str, system_id: str, limits: Limits = DEFAULT_LIMITS) -> Job:
        return cls("report", url, system_id, body=body, limits=limits)

    @classmethod
    def of_core(cls, fd: int, limits: Limits, url: str, system_id: str, oops_id: str) -> Job:
        return cls("core", url, system_id, fd=fd, limits=limits, oops_id=oops_id)


class Uploader(Protocol):
    """Sends one POST: here (:class:`DirectUploader`) or in the unprivileged upload worker
    (:class:`crashd.worker.WorkerUploader`). Raises :class:`UploadError` (the network's or the
    worker's fault: try later), :class:`CoreUnavailable` or :class:`~crashd.report.ReportError`."""

    def prepare(self) -> None:
        """Get ready for a POST that is coming (start the worker) without waiting: delivery asks as soon
        as one is due, so that the start overlaps reading and enriching the report."""

    def send(self, job: Job) -> Answer: ...

    def start(self, job: Job) -> Callable[[], Answer]:
        """Send *job* and return without its answer: the call returned waits for the answer (or raises as
        :meth:`send` does), and must be made before the next job. Lets the caller prepare the next report
        while this one is on the wire (:meth:`crashd.delivery.Courier.pipeline`)."""
        ...

    def close(self) -> None: ...


class DirectUploader:
    """:class:`Uploader` in this very process: for a user flushing their own reports, and for tests."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def prepare(self) -> None:
        """Nothing to start: the transport connects on the first POST."""

    def send(self, job: Job) -> Answer:
        if job.kind == "report":
            return post_report(job.body, self.transport, job.url, job.system_id)
        with open_core_source(job.fd) as file:
            report = read_report(file, limits=job.limits)
            return post_core(report, self.transport, job.url, job.system_id, job.oops_id)

    def start(self, job: Job) -> Callable[[], Answer]:
        """The whole exchange now, in this thread: here the answer is in hand before anything else."""
        try:
            answer = self.send(job)
        except UploadError as error:
            return functools.partial(_reraise, error)
        return lambda: answer

    def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()


def _reraise(error: UploadError) -> Answer:
    raise error


def open_core_source(fd: int) -> BinaryIO:
    """A reader of the report on *fd* from offset 0 that never moves the descriptor's shared offset."""
    return OpenFile(fd, os.fstat(fd)).file()  # a positional reader on a dup: *fd* stays the caller's


class HttpTransport:
    """:class:`Transport` over the standard library's ``http.client``: per thread one kept-alive
    connection per server, connect and read timeouts on every call, the administrator's proxy, TLS
    verified against the system's CA certificates.

    ``http.client`` rather than ``requests`` or ``urllib3``: it costs the least per POST (on the
    loopback daisy, ``bench/upload_client.py``, requests take ~2.4 times its time, urllib3 ~1.4
    times), and what crashd needs of the others — proxies from the environment, verification, a
    bounded answer, errors that say what failed — is the rest of this class.
    """

    def __init__(
        self,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        deadline: float | None = None,
        *,
        tls: bool = True,
    ) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.deadline = deadline  # a time.monotonic() value no call may outlast
        # False: http:// only (the upload worker of an http:// crash database, which skips reading the
        # CA certificates at its start); an https:// URL is then refused, never verified half-ready.
        self.tls = tls
        self._local = threading.local()  # .connections: {(scheme, netloc): HTTPConnection}
        self._lock = threading.Lock()
        self._every: list[dict[tuple[str, str], http.client.HTTPConnection]] = []
        # Closed when the transport is, or when it is dropped unclosed: no socket outlives it.
        self._finalizer = weakref.finalize(self, _close_all, self._every, self._lock)

    def post(self, url: str, body: bytes | StreamBody) -> Answer:
        connect_timeout, read_timeout = self.connect_timeout, self.read_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise UploadTimeout("the deadline passed before the upload could start")
            connect_timeout, read_timeout = min(connect_timeout, left), min(read_timeout, left)
        import http.client  # here, not at the top: the root daemon never talks HTTP (module notes)

        parts = urllib.parse.urlsplit(url)
        connected = False
        try:
            route = _route(parts.scheme, parts.netloc)
            conn = self._connection(route, connect_timeout)
            if conn.sock is None:
                conn.connect()
            connected = True
            conn.sock.settimeout(read_timeout)
            path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            target = url if route.forward else path  # a forwarding proxy is given the whole URL
            conn.putrequest("POST", target, skip_accept_encoding=True)
            for name, value in (*_HEADERS, *route.forward_headers, ("Content-Length", str(len(body)))):
                conn.putheader(name, value)
            if isinstance(body, bytes):
                with _corked(conn.sock):  # http.client writes the headers and the body apart
                    conn.endheaders(body)
            else:
                conn.endheaders()
                for chunk in body:
                    conn.send(chunk)
            response = conn.getresponse()
            text = response.read(MAX_ANSWER)
            if not response.isclosed():  # a longer answer than crashd reads: the connection is spent
                conn.close()
            return Answer(response.status, text, dict(response.headers))
        except BaseException as error:
            self._drop(parts)
            failure = isinstance(error, (OSError, http.client.HTTPException, UnicodeError))
            if failure and not isinstance(error, CrashdError):  # crashd's own (a short core) stay as they are
                raise translate(error, connected=connected) from error
            raise

    def close(self) -> None:
        _close_all(self._every, self._lock)

    def _connections(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        connections = getattr(self._local, "connections", None)
        if connections is None:
            connections = self._local.connections = {}
            with self._lock:
                self._every.append(connections)
        return connections

    def _connection(self, route: _Route, connect_timeout: float) -> http.client.HTTPConnection:
        connections = self._connections()
        conn = connections.get(route.key)
        if conn is not None and conn.sock is not None and _dropped(conn.sock):
            conn.close()  # the server closed it while it was idle: a new one, never a failed POST
        if conn is None:
            if route.tls and not self.tls:
                raise UploadError(f"{route.key[0]}:// is not enabled here: the upload worker was started "
                                  "for an http:// crash database")  # fmt: skip
            conn = connections[route.key] = route.connection()
        conn.timeout = connect_timeout
        return conn

    def _drop(self, parts: urllib.parse.SplitResult) -> None:
        """Close the connection a call failed on: whatever state it is in, it is not reused."""
        conn = self._connections().get((parts.scheme, parts.netloc))
        if conn is not None:
            conn.close()


def _close_all(every: list[dict[tuple[str, str], http.client.HTTPConnection]], lock: threading.Lock) -> None:
    with lock:
        for connections in every:
            for conn in connections.values():
                conn.close()


_HEADERS = (
    ("Content-Type", "application/octet-stream"),
    ("X-Whoopsie-Version", VERSION_HEADER),
    ("User-Agent", VERSION_HEADER),
)


@contextlib.contextmanager
def _corked(sock: socket.socket) -> Iterator[None]:
    """Writes held back and sent together when the block ends (``TCP_CORK``): a report's request goes
    out as one segment, and the server is woken once for it, not once for its headers and again for
    its body (on a virtual machine a wake-up of another CPU costs tens of µs)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # a write's own error is the one to report; corked data
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # leaves within 200 ms anyway


def _dropped(sock: socket.socket) -> bool:
    """An idle kept-alive connection with something to read has been closed (or spoken on) by the server."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True)
class _Route:
    """How to reach one server: straight, through an HTTP proxy (``forward``), or tunnelled through one."""

    key: tuple[str, str]  # (scheme, netloc) of the server
    host: str  # what to connect to: the server, or the proxy
    port: int
    tls: bool  # TLS to the server (through a tunnel when there is a proxy)
    forward: bool = False  # plain HTTP through a proxy: the request line holds the whole URL
    tunnel: tuple[str, int] | None = None  # HTTPS through a proxy: CONNECT host:port
    proxy_auth: tuple[tuple[str, str], ...] = ()  # Proxy-Authorization, for the proxy's eyes only

    @property
    def forward_headers(self) -> tuple[tuple[str, str], ...]:
        """Headers every request carries: a forwarding proxy's credentials (a tunnel's go in CONNECT)."""
        return self.proxy_auth if self.forward else ()

    def connection(self) -> http.client.HTTPConnection:
        import http.client

        if self.tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, context=tls_context()
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port)
        if self.tunnel is not None:
            conn.set_tunnel(*self.tunnel, headers=dict(self.proxy_auth))
        return conn


@functools.cache
def _route(scheme: str, netloc: str) -> _Route:
    """The route to ``scheme://netloc``, with the administrator's proxy settings (``https_proxy``,
    ``http_proxy``, ``no_proxy`` and their upper-case forms), looked up once per server."""
    import http.client

    if scheme not in ("http", "https"):
        raise http.client.InvalidURL(f"crashd sends over http:// or https://, not {scheme or 'no scheme'}://")
    parts = urllib.parse.urlsplit(f"{scheme}://{netloc}")
    if not parts.hostname:
        raise http.client.InvalidURL(f"no host in {scheme}://{netloc}")
    host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
    key, tls = (scheme, netloc), scheme == "https"
    proxy = _proxy(scheme, host, port)
    if proxy is None:
        return _Route(key, host, port, tls)
    if proxy.scheme != "http" or not proxy.hostname:
        raise http.client.InvalidURL(f"crashd uses http:// proxies only, not {proxy.geturl()!r}")
    auth = _basic(proxy)
    if tls:
        return _Route(key, proxy.hostname, proxy.port or 80, True, tunnel=(host, port), proxy_auth=auth)
    return _Route(key, proxy.hostname, proxy.port or 80, False, forward=True, proxy_auth=auth)


def proxies_set() -> bool:
    """Whether the environment names any proxy (``*_proxy``, as ``urllib.request`` reads them): only then
    is that module, and its ~8 ms of imports, needed at all (a worker's start waits for them)."""
    return any(name.lower().endswith("_proxy") for name in os.environ)


def _proxy(scheme: str, host: str, port: int) -> urllib.parse.SplitResult | None:
    if not proxies_set():
        return None
    import urllib.request  # only to read the proxy variables, once per server

    proxies = urllib.request.getproxies_environment()
    if scheme not in proxies or _bypass(host, port, proxies.get("no", "")):
        return None
    value = proxies[scheme]
    return urllib.parse.urlsplit(value if "://" in value else f"http://{value}")


def _bypass(host: str, port: int, no_proxy: str) -> bool:
    """``no_proxy`` as requests reads it: ``*``, host names and domain suffixes, ``host:port``, and
    for an address, addresses and networks (``10.0.0.0/8``)."""
    host = host.lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in (entry.strip().lower() for entry in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        if address is not None:
            with contextlib.suppress(ValueError):
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            continue
        name, _, entry_port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


def _basic(proxy: urllib.parse.SplitResult) -> tuple[tuple[str, str], ...]:
    if proxy.username is None:
        return ()
    user = urllib.parse.unquote(proxy.username)
    password = urllib.parse.unquote(proxy.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return (("Proxy-Authorization", f"Basic {token}"),)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Certificates verified and host names checked, against the system's CA certificates (OpenSSL's
    defaults, which ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` override) or, as with requests, the bundle
    ``REQUESTS_CA_BUNDLE`` names instead. Made once: the upload worker makes it before it drops
    privileges, so the CA file is read while it still can be."""
    import ssl

    return ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE") or None)


def translate(error: BaseException, *, connected: bool) -> UploadError:
    """The crashd error for what a failed exchange raised, with a message naming the cause.

    What can be raised: the network's errors (``OSError``: refused, reset, TLS, timeouts, a proxy
    refusing the tunnel), HTTP's (``http.client.HTTPException``: a bad URL, a bad status line, a cut
    answer) and a host name that cannot be encoded (``UnicodeError``). *connected* says whether the
    connection was up: before, a failure is the connection's (or, with no network at all, the
    device's: :class:`OfflineError`); after, the exchange broke.
    """
    message = (str(error) or type(error).__name__)[:300]
    if isinstance(error, TimeoutError):
        stage = "the answer" if connected else "a connection"
        return UploadTimeout(f"timed out waiting for {stage}: {message}")
    if not connected:
        return OfflineError(message) if _offline(error) else ConnectError(message)
    return ExchangeError(message)


_OFFLINE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})


def _offline(cause: BaseException) -> bool:
    """No DNS answer or no route: the trouble is on this side."""
    if isinstance(cause, socket.gaierror):
        return True
    return isinstance(cause, OSError) and cause.errno in _OFFLINE_ERRNOS
