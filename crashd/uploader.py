"""The daisy protocol (DESIGN.md §4): the BSON report, the core upload, the HTTP transport.

The protocol is a pure function of an indexed report and a :class:`Transport`
(one ``post(url, body) -> Answer`` call), so it can later move into the
unprivileged upload worker unchanged, and tests can drive it against a real
loopback server. What an answer *means* is :mod:`crashd.policy`'s business.
Only this module imports ``requests`` and ``bson`` — ``requests`` lazily, in the process that
actually talks HTTP: as root that is the upload worker, and the daemon never loads its ~8 MiB.

Exceptions — talking to the server::

    UploadError            the server could not be reached or the exchange broke; try later
    ├── ConnectError       refused, TLS, proxy, bad URL
    │   └── OfflineError   this device has no network: no DNS answer, no route
    ├── UploadTimeout      no connection or no answer within the timeout
    └── ExchangeError      the connection broke mid-exchange, or the answer was unusable

A report crashd refuses to send (not UTF-8, too much text) raises
:class:`crashd.report.ReportError` instead: that is the report's fault, not the
network's, and retrying cannot help.
"""

from __future__ import annotations

import errno
import functools
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import requests

from crashd import __version__
from crashd.report import MalformedReportError, Report, ReportLimitError, size_text

CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0  # seconds; settings connect_timeout and read_timeout
MAX_ANSWER = 64 * 1024  # daisy answers a line; anything longer is cut
VERSION_HEADER = f"crashd {__version__}"
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")  # OOPS ids, architectures in URLs


class UploadError(Exception):
    """The report could not be delivered this time; it stays pending."""


class ConnectError(UploadError):
    """No connection: refused, unreachable, name resolution, TLS or proxy failure."""


class OfflineError(ConnectError):
    """This device cannot reach the network at all; the server and the rest of the fleet are fine."""


class UploadTimeout(UploadError):
    """The server did not accept the connection or did not answer in time."""


class ExchangeError(UploadError):
    """The connection broke during the exchange, or the answer could not be read."""


class CoreUnavailable(Exception):
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
    import bson  # only where a body is made (the upload worker): not in the idle daemon

    return bson.encode(dict(sent_fields(report, max_text)))


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

    ``requests`` sends ``Content-Length`` for an object with ``__len__`` and
    iterates it for the bytes, so a gigabyte core never sits in memory.
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


class Uploader(Protocol):
    """Sends one report's POSTs: here (:class:`DirectUploader`) or in the unprivileged upload worker.

    The worker gets the report's open descriptor and reads the report itself, so both the descriptor
    and the indexed report are passed; each implementation uses what it needs.
    """

    def send_report(self, fd: int, report: Report, body: bytes, url: str, system_id: str) -> Answer: ...

    def send_core(self, fd: int, report: Report, url: str, system_id: str, oops_id: str) -> Answer: ...

    def close(self) -> None: ...


class DirectUploader:
    """:class:`Uploader` in this very process: for a user flushing their own reports, and for tests."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def send_report(self, fd: int, report: Report, body: bytes, url: str, system_id: str) -> Answer:
        return post_report(body, self.transport, url, system_id)

    def send_core(self, fd: int, report: Report, url: str, system_id: str, oops_id: str) -> Answer:
        return post_core(report, self.transport, url, system_id, oops_id)

    def close(self) -> None:
        close = getattr(self.transport, "close", None)
        if close is not None:
            close()


class HttpTransport:
    """:class:`Transport` over ``requests``: keep-alive per thread, timeouts on every call."""

    def __init__(
        self,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        deadline: float | None = None,
    ) -> None:
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.deadline = deadline  # a time.monotonic() value no call may outlast
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def post(self, url: str, body: bytes | StreamBody) -> Answer:
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Whoopsie-Version": VERSION_HEADER,
            "User-Agent": VERSION_HEADER,
        }
        timeout = (self.connect_timeout, self.read_timeout)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise UploadTimeout("the deadline passed before the upload could start")
            timeout = (min(self.connect_timeout, left), min(self.read_timeout, left))
        try:
            with self._session().post(
                url,
                data=body,
                headers=headers,
                timeout=timeout,
                stream=True,
                allow_redirects=False,
                proxies=_proxies(url),
            ) as response:
                text = b""
                for chunk in response.iter_content(8192):
                    text += chunk
                    if len(text) >= MAX_ANSWER:
                        break
                return Answer(response.status_code, text[:MAX_ANSWER], dict(response.headers))
        except _requests().RequestException as error:
            raise translate(error) from error

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = _requests().Session()
            # Proxies come from _proxies(), looked up once per server: with trust_env, requests
            # would scan the environment and read ~/.netrc again on every single request.
            session.trust_env = False
            self._sessions.append(session)
        return session


@functools.cache
def _server_proxies(scheme: str, host: str) -> dict[str, str]:
    return _requests().utils.get_environ_proxies(f"{scheme}://{host}/")


def _proxies(url: str) -> dict[str, str]:
    """The administrator's proxy settings (``https_proxy``, ``no_proxy``, …) for *url*'s server."""
    parts = urllib.parse.urlsplit(url)
    return _server_proxies(parts.scheme, parts.netloc)


# requests' exceptions, most specific first: each maps to the crashd error a caller handles.
@functools.cache
def _errors() -> tuple[tuple[type[Exception], type[UploadError]], ...]:
    exceptions = _requests().exceptions
    return (
        (exceptions.ConnectTimeout, UploadTimeout),
        (exceptions.ReadTimeout, UploadTimeout),
        (exceptions.Timeout, UploadTimeout),
        (exceptions.SSLError, ConnectError),
        (exceptions.ProxyError, ConnectError),
        (exceptions.ConnectionError, ConnectError),
        (exceptions.ChunkedEncodingError, ExchangeError),
        (exceptions.ContentDecodingError, ExchangeError),
        (exceptions.StreamConsumedError, ExchangeError),
        (exceptions.RetryError, ExchangeError),
        (exceptions.TooManyRedirects, ExchangeError),
        (exceptions.JSONDecodeError, ExchangeError),
        (exceptions.InvalidJSONError, ExchangeError),
        (exceptions.URLRequired, ConnectError),
        (exceptions.MissingSchema, ConnectError),
        (exceptions.InvalidSchema, ConnectError),
        (exceptions.InvalidProxyURL, ConnectError),
        (exceptions.InvalidURL, ConnectError),
        (exceptions.InvalidHeader, ExchangeError),
        (exceptions.UnrewindableBodyError, ExchangeError),
        (exceptions.HTTPError, ExchangeError),
        (exceptions.RequestException, ExchangeError),
    )


def _requests() -> ModuleType:
    """``requests``, imported on first use (see the module notes)."""
    import requests

    return requests


def translate(error: requests.RequestException) -> UploadError:
    """The crashd error for a ``requests`` exception, with a message naming the cause."""
    cause = _innermost(error)
    if isinstance(error, _requests().exceptions.ConnectionError) and _offline(cause):
        return OfflineError(str(cause)[:300])
    for source, target in _errors():
        if isinstance(error, source):
            return target(str(cause)[:300])
    raise AssertionError("unreachable: RequestException is the last entry")


_OFFLINE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})


def _offline(cause: BaseException) -> bool:
    """No DNS answer or no route: the trouble is on this side."""
    if isinstance(cause, socket.gaierror):
        return True
    if isinstance(cause, OSError) and cause.errno in _OFFLINE_ERRNOS:
        return True
    return "Name or service not known" in str(cause) or "Temporary failure in name resolution" in str(cause)


def _innermost(error: BaseException) -> BaseException:
    """requests nests urllib3's errors several deep; the innermost one says what happened."""
    while True:
        inner = getattr(error, "reason", None)
        if not isinstance(inner, BaseException) and error.args and isinstance(error.args[0], BaseException):
            inner = error.args[0]
        if not isinstance(inner, BaseException) or inner is error:
            return error
        error = inner
