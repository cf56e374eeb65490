"""The upload worker: all HTTP and BSON work, as an unprivileged user (DESIGN.md §2, §7 rule 5).

The daemon stays root because it reads every user's reports and writes stamps as
their owners, so it splits: the root side (:class:`WorkerUploader`) keeps all
file-system authority and never opens a network socket; the worker
(:func:`main`) holds no privilege at all and talks to the crash database on
descriptors the root side hands it. An exploit in the HTTP/TLS stack or in the
handling of an answer then gains only the ``crashd`` user, with no groups, no
capabilities and ``no_new_privs``.

Past ~400 lines on purpose: both ends of one protocol (the message shapes, their bounds and
their validation) live in one file so that neither side can change without the other.

**The trust boundary.** Everything that crosses the socket pair is untrusted in
the direction it travels towards root: the worker's answers are size-bounded,
parsed as JSON and validated field by field, and must name the job they answer.
A worker that dies, hangs past its budget or says anything else is killed with
its process group, the job raises :class:`WorkerError`, and the next start waits
out a backoff of its own (1 s doubling to 60 s), so a report that breaks the
worker costs one failed attempt per backoff step, never a crash loop. The worker
trusts nothing either: it reads only from the descriptor it was given (never a
path), a core's report with the same :class:`~crashd.report.Limits` root used.

**The body is encoded once, on the root side.** Delivery encodes a report's BSON
body before it records the attempt, so that a report crashd refuses (text that is
not UTF-8, too much of it) is refused before any state is written; the worker gets
that very body — inside the job's own datagram when it is small (up to :data:`MAX_INLINE`,
as nearly every report's is: no memory file to make, pass and read), else in a memory
file (``memfd``) — and sends it as it is, bounded by :func:`crashd.uploader.max_body`.
Encoding is not parsing: root reads no byte the network wrote, and the report's text
is what root has already indexed. A core is streamed as stored, so for a core job the
worker gets the report's own descriptor and indexes the report itself.

**The messages** (one ``AF_UNIX``/``SOCK_SEQPACKET`` datagram each, boundaries kept):

* worker → root, once after the privilege drop: ``{"ready": true}``;
* root → worker, one per job (≤ 64 KiB): ``{id, kind: "report"|"core", url,
  system_id, oops_id, seconds, limits, body}`` — *seconds* is the job's whole budget.
  A report's body of at most :data:`MAX_INLINE` bytes follows the JSON in the same
  datagram after one ``\n`` (which JSON as sent never contains), *body* giving its exact
  length, and no descriptor is attached; otherwise *body* is null and exactly one
  descriptor is attached (``SCM_RIGHTS``: the body's memfd for a report, the report's
  own for a core). Anything else — a length that does not match, bytes after the JSON
  with a descriptor, a core job with a body — is refused as a bad job;
* worker → root, one per job (≤ 256 KiB): ``{id, status, body_b64, headers}``
  (the body cut at 64 KiB, only the headers in :data:`ANSWER_HEADERS`),
  ``{id, error: {class, message}}``, ``{id, invalid: detail}`` (a
  :class:`~crashd.report.ReportError`) or ``{id, unavailable: reason}``
  (:class:`~crashd.uploader.CoreUnavailable`).

**Import discipline.** The worker is a fresh interpreter (``python -I -m
crashd.worker``: crashd must be importable by it — installed, or a source tree's
``crashd-source.pth`` that ``make`` writes into the venv — and nothing is put
ahead of the standard library), exec'd — never forked from the threaded daemon
and never set up in a ``preexec_fn``. It starts as root because the interpreter
and its library may live where only root can read (a pyenv or venv under
``/root``, mode 0700), so it imports and warms up everything a job will touch
(``http.client``, ``ssl`` and the CA certificates, the IDNA codec, the proxy
variables' module when one is set; not ``bson``: root encodes) *before* it
drops privileges; after the drop nothing new may be imported. The
root side uses :mod:`crashd.uploader` only for the job, its error classes and
:class:`~crashd.uploader.Answer` (the HTTP modules are imported only where HTTP
is spoken) and never opens an ``AF_INET``/``AF_INET6`` socket.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import json
import logging
import os
import pwd
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from crashd import fs, uploader
from crashd import process as processes
from crashd.report import Limits, MalformedReportError, ReportError, read_report
from crashd.uploader import Answer, CoreUnavailable, Job, UploadError, WorkerError

if TYPE_CHECKING:
    import mmap  # the root side's, made with its first worker: an idle daemon has none
    import subprocess  # the root side's (imported by crashd.process when it starts one); not the worker's

__all__ = ["WorkerUploader", "main"]

log = logging.getLogger(__name__)

KiB = 1024
MAX_JOB = 64 * KiB  # root → worker, an inline body included
MAX_INLINE = 32 * KiB  # a report body up to this travels in the job's datagram, not in a memfd
MAX_ANSWER = 256 * KiB  # worker → root: 64 KiB of body as base64, and a little JSON
MAX_TEXT = 4 * KiB  # an error message, a reason or a header value, as the root side keeps it
ANSWER_HEADERS = ("Retry-After", "Content-Type")  # all that crashd.policy reads, and a little context
GRACE = 10.0  # seconds the root side waits beyond the worker's own budget before it kills it
MIN_RATE = 64 * KiB  # bytes/s: an upload's budget grows with what it sends, so a big core fits
SCAN_RATE = 16 * KiB * KiB  # bytes/s the worker indexes a report at, at the very least
START_TIMEOUT = 60.0  # interpreter start, imports and warm-up on a slow machine
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0
# The worker's whole environment besides PATH and LANG: the administrator's proxy settings (the
# transport reads them) and CA bundle overrides, passed on explicitly.
PASSED_ENVIRONMENT = (
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
)  # fmt: skip
_ERRORS: dict[str, type[UploadError]] = {
    cls.__name__: cls
    for cls in (
        UploadError,
        uploader.ConnectError,
        uploader.OfflineError,
        uploader.UploadTimeout,
        uploader.ExchangeError,
    )  # never WorkerError: a worker cannot make its own failure pass for this side's
}
_LIMITS = {field.name for field in dataclasses.fields(Limits)}


class WorkerUploader:
    """:class:`~crashd.uploader.Uploader` that hands each job to the unprivileged upload worker.

    Usage::

        uploader = WorkerUploader(pwd.getpwnam("crashd"))
        try:
            answer = uploader.send(Job.of_report(body, url, system_id))
        finally:
            uploader.close()

    The worker is started on the first job (or :meth:`prepare`), not here, so a run with nothing to
    send never starts one. Calls are serialised: one job is in flight at a time
    (delivery sends one POST at a time anyway). *deadline* (``time.monotonic()``)
    bounds every job, as :class:`~crashd.uploader.HttpTransport`'s does.
    """

    def __init__(
        self,
        user: pwd.struct_passwd,
        connect_timeout: float = uploader.CONNECT_TIMEOUT,
        read_timeout: float = uploader.READ_TIMEOUT,
        deadline: float | None = None,
        *,
        tls: bool = True,
    ) -> None:
        if user.pw_uid == 0 or user.pw_gid == 0:
            raise ValueError(f"the upload worker never runs as root; user {user.pw_name} has uid or gid 0")
        self.user = user
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.deadline = deadline
        # False (an http:// crash database): the worker reads no CA certificates at its start (~20 ms of
        # the ~100 ms the first POST waits for) and refuses https:// jobs.
        self.tls = tls
        self.clock = time.monotonic  # the restart backoff's clock; tests replace it
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._inbox: mmap.mmap | None = None  # where answers are received: made with the first worker
        self._next_id = 0
        self._backoff = BACKOFF_FIRST
        self._not_before = 0.0  # self.clock() value before which no new worker is started
        self._closed = False  # close() was called: a start prepare() asked for must not happen after it

    @property
    def pid(self) -> int | None:
        """The running worker's pid (and process group), or None: for logs and tests."""
        return self._process.pid if self._process is not None else None

    def send(self, job: Job) -> Answer:
        """Run *job* in the worker and wait for its answer."""
        return self.start(job)()

    def start(self, job: Job) -> Callable[[], Answer]:
        """Hand *job* to the worker: a report's body inline (small) or in a memfd, a core's report as its
        descriptor; the call returned waits for the answer. The worker is this job's until that call (it
        must be made): its socket carries one job at a time."""
        if job.kind == "core":
            return self._job(job, job.fd, _size(job.fd))
        if len(job.body) <= MAX_INLINE:
            return self._job(job, -1, len(job.body))
        fd = _memfd(job.body)
        try:
            return self._job(job, fd, len(job.body))
        finally:
            os.close(fd)  # the worker has its own copy once it is sent

    def prepare(self) -> None:
        """Have the worker running for the job about to come: started now, in a thread, so that its
        ~100 ms start (interpreter, imports, the drop of privileges) overlaps the caller's preparing the
        job instead of following it. Returns at once; a no-op while a worker runs, is being started, or
        may not be restarted yet. A start that fails is what the next :meth:`send` reports (it waits for
        the start under way, then raises WorkerError during the restart backoff, as for a failed start).
        Call it only when a job is due: a process with nothing to send starts no worker.
        """
        if self._socket is not None or self._lock.locked() or self._closed:
            return
        threading.Thread(target=self._start_quietly, name="crashd-worker-start", daemon=True).start()

    def _start_quietly(self) -> None:
        with self._lock:
            if self._closed or self._socket is not None or self.clock() < self._not_before:
                return
            with contextlib.suppress(WorkerError):  # logged by _fail; the next send says it
                self._ensure_worker()

    def close(self) -> None:
        """End the worker: EOF on its socket makes it exit; it is killed if it has not, promptly."""
        with self._lock:
            self._closed = True
            process, sock = self._process, self._socket
            self._process = self._socket = None
            if sock is not None:
                sock.close()
            if self._inbox is not None:
                self._inbox.close()
                self._inbox = None
            if process is not None:
                import subprocess  # loaded already: crashd.process started the worker with it

                try:
                    process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    _kill(process)

    # -- one job

    def _job(self, job: Job, fd: int, sent: int) -> Callable[[], Answer]:
        """*fd* -1: the report's body goes inline, after the JSON. The lock is held from here until the
        answer is received (or the send fails)."""
        self._lock.acquire()
        try:
            # The HTTP timeouts bound each stall, the budget the whole exchange: a server trickling a
            # byte a second never trips a read timeout. Sending *sent* bytes steadily fits in it.
            seconds = self.connect_timeout + self.read_timeout + sent / MIN_RATE
            if self.deadline is not None:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    raise uploader.UploadTimeout("the deadline passed before the upload could start")
                seconds = min(seconds, left)
            sock, inbox = self._ensure_worker(), self._inbox
            assert inbox is not None  # made with the worker
            self._next_id += 1
            job_id = self._next_id
            fields = {"kind": job.kind, "url": job.url, "system_id": job.system_id}
            fields |= {"oops_id": job.oops_id if job.kind == "core" else None, "seconds": seconds}
            fields |= {"body": len(job.body) if fd < 0 else None, "limits": _limits_fields(job.limits)}
            message = json.dumps({"id": job_id, **fields}).encode()
            if fd < 0:
                message += b"\n" + job.body
            if len(message) > MAX_JOB:  # only a giant URL or OOPS id gets here: a local fault
                raise WorkerError(f"the upload job is larger than {MAX_JOB} bytes")
            try:
                if fd < 0:
                    sock.sendall(message)  # one datagram: SOCK_SEQPACKET never splits it
                else:
                    socket.send_fds(sock, [message], [fd])
            except OSError as error:
                self._gone(error)
        except BaseException:
            self._lock.release()
            raise

        def answer() -> Answer:
            try:
                reply = _receive(sock, inbox, seconds + GRACE + sent / SCAN_RATE)  # + indexing the file
                outcome = _answer(reply, job_id)
                self._backoff = BACKOFF_FIRST  # a working worker: the next failure starts the backoff afresh
            except (OSError, WorkerError) as error:
                self._gone(error)
            finally:
                self._lock.release()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer

    def _gone(self, error: OSError | WorkerError) -> NoReturn:
        why = str(error) if isinstance(error, WorkerError) else f"the upload worker is gone ({error})"
        self._fail(why)
        raise WorkerError(why) from None

    def _ensure_worker(self) -> socket.socket:
        if self._socket is not None:
            return self._socket
        now = self.clock()
        if now < self._not_before:
            raise WorkerError(f"the upload worker failed; restarting it in {self._not_before - now:.1f} s")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = processes.start(
                self._argv(theirs.fileno()),
                env=processes.environment(passed=PASSED_ENVIRONMENT),
                stdout=2,  # into our stderr: upload-all --json owns stdout, and the worker only logs
                pass_fds=[theirs.fileno()],
            )
        except OSError as error:
            ours.close()
            self._fail(f"cannot start the upload worker: {error}")
            raise WorkerError(f"cannot start the upload worker: {error}") from None
        finally:
            theirs.close()
        self._process, self._socket = process, ours
        if self._inbox is None:
            import mmap  # here: the idle daemon, which has no worker, need not load it (issue 15)

            # Mapped, not allocated: only the pages an answer is written into are ever touched (a
            # report's answer is a few hundred bytes; the largest, MAX_ANSWER).
            self._inbox = mmap.mmap(-1, MAX_ANSWER + 1)
        log.info("upload worker started as %s (pid %d)", self.user.pw_name, process.pid)
        try:
            ready = _decode(_receive(ours, self._inbox, START_TIMEOUT))
            if ready != {"ready": True}:
                raise WorkerError(f"the upload worker said {_show(ready)} instead of being ready")
        except WorkerError as error:
            code = self._fail(str(error))
            why = f"the upload worker did not start: {error}" + (f" (exit status {code})" if code else "")
            raise WorkerError(why) from None
        return ours

    def _argv(self, fd: int) -> list[str]:
        # sys.executable is exec'd as root, so a 0700 pyenv is fine; the worker drops privileges itself.
        user = self.user
        return [sys.executable, "-I", "-m", "crashd.worker", str(fd), str(user.pw_uid), str(user.pw_gid),
                repr(float(self.connect_timeout)), repr(float(self.read_timeout)),
                *([] if self.tls else ["plain"])]  # fmt: skip

    def _fail(self, why: str) -> int | None:
        """Kill the worker and its group, and hold off the next start: a crash loop costs little."""
        process, sock = self._process, self._socket
        self._process = self._socket = None
        if sock is not None:
            sock.close()
        code = _kill(process) if process is not None else None
        self._not_before = self.clock() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_CAP)
        log.warning("upload worker: %s", why)
        return code


@functools.cache
def _limits_fields(limits: Limits) -> dict[str, int]:
    """A job's ``limits``: made once per Limits (a run has one), not per job (asdict deep-copies)."""
    return dataclasses.asdict(limits)


def _kill(process: subprocess.Popen[bytes]) -> int | None:
    """SIGKILL the worker's process group and reap it; its exit status if it ended on its own."""
    code = processes.stop(process)
    return None if code == -signal.SIGKILL else code


def _memfd(body: bytes) -> int:
    """A memory file holding *body*, for the worker: the body is encoded once, on this side."""
    fd = os.memfd_create("crashd-report-body", os.MFD_CLOEXEC)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 0


def _receive(sock: socket.socket, inbox: mmap.mmap, timeout: float) -> bytes:
    """One message from the worker within *timeout* seconds, read into *inbox* (MAX_ANSWER + 1 bytes,
    kept: a buffer that large made for each answer took ~14 µs of each report's exchange); WorkerError
    for EOF, silence or excess."""
    sock.settimeout(timeout)
    try:
        size, _ancillary, flags, _address = sock.recvmsg_into([inbox])  # no room for descriptors
    except TimeoutError:
        raise WorkerError(f"the upload worker did not answer within {timeout:.0f} s") from None
    except OSError as error:
        raise WorkerError(f"the upload worker is gone ({error})") from None
    if not size:
        raise WorkerError("the upload worker exited")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or size > MAX_ANSWER:
        raise WorkerError(f"the upload worker sent a message larger than {MAX_ANSWER} bytes, or descriptors")
    return inbox[:size]


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise WorkerError(f"the upload worker sent something that is not JSON: {data[:80]!r}") from None


def _show(value: object) -> str:
    return repr(value)[:200]


def _text(value: object, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise WorkerError(f"the upload worker sent a {what} that is not a string: {_show(value)}")
    return value[:limit]


def _answer(data: bytes, job_id: int) -> Answer | Exception:
    """The worker's answer to job *job_id*: an Answer or the exception to raise; WorkerError if malformed."""
    reply = _decode(data)
    if not isinstance(reply, dict) or len(reply) < 2:
        raise WorkerError(f"the upload worker sent a malformed answer: {_show(reply)}")
    if reply.get("id") != job_id or isinstance(reply.get("id"), bool):
        raise WorkerError(f"the upload worker answered job {_show(reply.get('id'))}, not job {job_id}")
    if "status" in reply:
        return _response(reply)
    if len(reply) != 2:
        raise WorkerError(f"the upload worker sent a malformed answer: {_show(reply)}")
    if "error" in reply:
        error = reply["error"]
        if not isinstance(error, dict) or set(error) != {"class", "message"}:
            raise WorkerError(f"the upload worker sent a malformed error: {_show(error)}")
        kind, message = _text(error["class"], "error class", 100), _text(error["message"], "error message")
        cls = _ERRORS.get(kind)
        if cls is None:
            # The worker survived an exception of its own while talking to the server, most likely
            # caused by the server's answer: a server failure, retried at fleet scale.
            return uploader.ExchangeError(f"the upload worker failed: {kind}: {message}")
        return cls(message)
    if "invalid" in reply:
        return MalformedReportError(_text(reply["invalid"], "reason"))
    if "unavailable" in reply:
        return CoreUnavailable(_text(reply["unavailable"], "reason"))
    raise WorkerError(f"the upload worker sent a malformed answer: {_show(reply)}")


def _response(reply: dict[str, Any]) -> Answer:
    if set(reply) != {"id", "status", "body_b64", "headers"}:
        raise WorkerError(f"the upload worker sent a malformed answer: {_show(reply)}")
    status, body, headers = reply["status"], reply["body_b64"], reply["headers"]
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 999:
        raise WorkerError(f"the upload worker sent an impossible HTTP status {_show(status)}")
    if not isinstance(body, str) or len(body) > 4 * (uploader.MAX_ANSWER + 2) // 3:
        raise WorkerError("the upload worker sent a body that is not a string, or too long")
    try:
        raw = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise WorkerError("the upload worker sent a body that is not base64") from None
    if len(raw) > uploader.MAX_ANSWER:
        raise WorkerError(f"the upload worker sent a body larger than {uploader.MAX_ANSWER} bytes")
    if not isinstance(headers, dict) or not set(headers) <= set(ANSWER_HEADERS):
        raise WorkerError(f"the upload worker sent headers crashd did not ask for: {_show(headers)}")
    return Answer(status, raw, {name: _text(value, name) for name, value in headers.items()})


# -- the worker process -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """The worker: ``SOCKET_FD UID GID CONNECT_TIMEOUT READ_TIMEOUT [plain]``; exits 0 when the root side
    goes. ``plain``: http:// only, no TLS readied."""
    args = sys.argv[1:] if argv is None else argv
    try:
        fd, uid, gid = (int(arg) for arg in args[:3])
        connect_timeout, read_timeout = (float(arg) for arg in args[3:5])
        if args[5:] not in ([], ["plain"]):
            raise ValueError(args[5:])
    except ValueError:
        print("crashd-worker: usage: SOCKET_FD UID GID CONNECT_TIMEOUT READ_TIMEOUT [plain]", file=sys.stderr)
        return 2
    tls = not args[5:]
    sock = socket.socket(fileno=fd)
    transport = _warm_up(connect_timeout, read_timeout, tls)
    try:
        processes.drop_privileges(uid, gid)  # no groups, no capabilities, no_new_privs; verified
    except (OSError, processes.PrivilegeError) as error:
        print(f"crashd-worker: cannot drop privileges to {uid}:{gid}: {error}", file=sys.stderr)
        return 3
    os.closerange(3, fd)  # nothing root opened may outlive the drop
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))
    if tls:
        _check_ca_bundle(uid)
    signal.signal(signal.SIGALRM, _out_of_time)
    # The watchdog thread inherits a mask without SIGALRM, so the job's alarm interrupts the job itself.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    threading.Thread(target=processes.exit_when_orphaned, args=(fd,), daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    try:
        sock.send(json.dumps({"ready": True}).encode())
        return _serve(sock, transport)
    except BrokenPipeError:
        return 0  # the root side went away mid-job: nobody is waiting for the answer
    finally:
        transport.close()


def _warm_up(connect_timeout: float, read_timeout: float, tls: bool) -> uploader.HttpTransport:
    """Import and initialise everything a job needs while the interpreter's files are still readable.

    After the drop, a lazy import from a 0700 ``/root/.pyenv`` would fail; so would
    the first use of a codec or module that ``http.client``, ``urllib.request`` (the
    proxy variables) or ``ssl`` load on demand. With *tls*, the TLS context is made here too,
    so the CA certificates are read once, as root; without, the transport refuses https://.
    """
    import http.client
    import io

    if tls:
        uploader.tls_context()
    http.client.parse_headers(io.BytesIO(b"Content-Type: text/plain\r\n\r\n"))
    if uploader.proxies_set():  # the environment is the worker's for good: without one, never needed
        import urllib.request

        urllib.request.getproxies_environment()
    "x".encode("idna")
    return uploader.HttpTransport(connect_timeout, read_timeout, tls=tls)


def _check_ca_bundle(uid: int) -> None:
    """Say now, once, if HTTPS cannot work: no CA certificate loaded, and none this user can look up."""
    import ssl

    if uploader.tls_context().cert_store_stats()["x509_ca"]:
        return  # read before the drop (_warm_up)
    capath = ssl.get_default_verify_paths().capath
    if capath is None or not os.access(capath, os.R_OK | os.X_OK):
        print(f"crashd-worker: uid {uid} has no CA certificates (SSL_CERT_FILE, SSL_CERT_DIR): "
              "https uploads will fail", file=sys.stderr)  # fmt: skip


class _OutOfTime(uploader.UploadTimeout):
    pass


def _out_of_time(_signum: int, _frame: object) -> None:
    # Raised in the main thread, from whatever blocking read or write the job is in.
    raise _OutOfTime("the exchange with the server took longer than its time budget")


def _serve(sock: socket.socket, transport: uploader.HttpTransport) -> int:
    while True:
        data, fds, flags, _address = socket.recv_fds(sock, MAX_JOB + 1, 4)
        if not data and not fds:
            return 0  # the root side closed its end: done
        try:
            reply = _work(data, fds, flags, transport)
        finally:
            for fd in fds:  # _work took the report's; anything else was never wanted
                with contextlib.suppress(OSError):
                    os.close(fd)
        sock.send(_encode_reply(reply))


def _encode_reply(reply: dict[str, Any]) -> bytes:
    data = json.dumps(reply).encode()
    if len(data) > MAX_ANSWER:  # cannot happen (64 KiB of body, texts cut at 4 KiB): never send it
        data = json.dumps(
            {"id": reply["id"], "error": {"class": "ExchangeError", "message": "answer too large"}}
        )
        data = data.encode()
    return data


def _job_fields(data: bytes, fds: list[int], flags: int) -> tuple[dict[str, Any], Limits, bytes | None]:
    """The job, its limits, and its inline body (None: the body or report is the one descriptor)."""
    head, newline, inline = data.partition(b"\n")
    job = json.loads(head)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise ValueError("a job is one message")
    kind, url, system_id, oops_id = job["kind"], job["url"], job["system_id"], job["oops_id"]
    seconds, limits, length = job["seconds"], job["limits"], job["body"]
    if length is None:
        if len(fds) != 1 or newline:
            raise ValueError("a job without an inline body has one descriptor and nothing after its JSON")
    elif (
        kind != "report" or fds or not isinstance(length, int) or isinstance(length, bool)
        or not 0 <= length <= MAX_INLINE or len(inline) != length or not newline
    ):  # fmt: skip
        said = f"{len(inline)} bytes, said {length!r:.20}, {len(fds)} descriptor(s)"
        raise ValueError(f"bad inline body: {said}")
    if kind not in ("report", "core") or not isinstance(url, str) or not isinstance(system_id, str):
        raise ValueError(f"bad job {job!r:.200}")
    if not (kind == "report" or isinstance(oops_id, str)) or not isinstance(seconds, int | float):
        raise ValueError(f"bad job {job!r:.200}")
    if not 0 < seconds < 1e7:  # NaN included
        raise ValueError(f"bad time budget {seconds!r}")
    if (
        not isinstance(limits, dict)
        or set(limits) != _LIMITS
        or not all(isinstance(value, int) and value > 0 for value in limits.values())
    ):
        raise ValueError(f"bad limits {limits!r:.200}")
    return job, Limits(**limits), None if length is None else inline


def _work(data: bytes, fds: list[int], flags: int, transport: uploader.HttpTransport) -> dict[str, Any]:
    """Run one job; every failure becomes that job's answer, so nothing a server says ends the worker."""
    job_id: object = None
    seconds = 0.0
    try:
        job_id = json.loads(data.partition(b"\n")[0]).get("id")
        job, limits, inline = _job_fields(data, fds, flags)
        seconds = float(job["seconds"])
        if job["kind"] == "report":
            bound = uploader.max_body(limits)
            body = _read_body(fds.pop(), bound) if inline is None else inline
            if len(body) > bound:
                raise ValueError(f"the report body is larger than {bound} bytes")
            with _deadline(transport, seconds):
                answer = uploader.post_report(body, transport, job["url"], job["system_id"])
        else:
            with fs.reader(fds.pop(), shown="the report descriptor") as file:
                report = read_report(file, limits=limits)
                with _deadline(transport, seconds):
                    answer = uploader.post_core(
                        report, transport, job["url"], job["system_id"], job["oops_id"]
                    )
    except CoreUnavailable as error:
        return {"id": job_id, "unavailable": str(error)[:MAX_TEXT]}
    except ReportError as error:
        return {"id": job_id, "invalid": error.detail[:MAX_TEXT]}
    except Exception as error:  # any failure is this job's, never the end of the worker
        if isinstance(error, _OutOfTime):
            transport.close()  # a connection cut off mid-exchange must not be reused
            error = uploader.UploadTimeout(f"{error} ({seconds:.0f} s)")
        return {"id": job_id, "error": {"class": type(error).__name__, "message": str(error)[:MAX_TEXT]}}
    headers = {
        name: value[:MAX_TEXT]
        for name in ANSWER_HEADERS
        if (value := next((v for k, v in answer.headers.items() if k.lower() == name.lower()), None))
    }
    body_b64 = base64.b64encode(answer.body[: uploader.MAX_ANSWER]).decode()
    return {"id": job_id, "status": answer.status, "body_b64": body_b64, "headers": headers}


@contextlib.contextmanager
def _deadline(transport: uploader.HttpTransport, seconds: float) -> Iterator[None]:
    """The job's whole budget: the transport's deadline, and an alarm for any call that ignores it."""
    transport.deadline = time.monotonic() + seconds
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _read_body(fd: int, bound: int) -> bytes:
    """The report body root encoded, from the memory file it came in (which this owns): at most *bound*."""
    with fs.reader(fd, shown="the report body") as file:
        body = file.read(bound + 1)
    if len(body) > bound:
        raise ValueError(f"the report body is larger than {bound} bytes")
    return body


if __name__ == "__main__":
    sys.exit(main())
