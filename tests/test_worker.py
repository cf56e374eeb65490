"""The upload worker (DESIGN.md §2, issue 8): HTTP runs unprivileged, the root part never touches the network.

Real `crashd upload-all` and `crashd daemon` processes as root against the loopback daisy, with a
throwaway user as `unprivileged_user`; the worker is found as crashd's child in /proc while a `Hang()`
keeps it busy, and its credentials and sockets are read from /proc, as an administrator would.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import mmap
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bson
import pytest

from crashd import cli
from crashd.cli import _common
from crashd.config import ConfigError, Settings
from crashd.consent import set_preference
from crashd.report import DEFAULT_LIMITS, Limits, MalformedReportError, Report, read_report
from crashd.uploader import (
    ConnectError,
    CoreUnavailable,
    DirectUploader,
    ExchangeError,
    Job,
    OfflineError,
    UploadError,
    WorkerError,
    encode_report,
)
from crashd.worker import (
    MAX_ANSWER,
    MAX_INLINE,
    PASSED_ENVIRONMENT,
    WorkerUploader,
    _answer,
    _job_fields,
    _receive,
)
from tests.crashd_run import FAST, TOKEN, crash, crashd, popen, state_dir_of, write, write_config
from tests.daemon_run import drop, run_daemon, wait_until
from tests.daisy import DaisyServer, Hang, Reset, Respond
from tests.settings import NO_SUCH_USER

# Only the tests of what root does need root (the throwaway users' tests skip through make_user).
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the worker split happens only as root")

NAME = "_usr_bin_app.0.crash"
MiB = 1 << 20


@pytest.fixture(scope="module")
def user(make_user: Callable[[], pwd.struct_passwd]) -> pwd.struct_passwd:
    return make_user()


@pytest.fixture
def config(tmp_path: Path, user: pwd.struct_passwd) -> Path:
    return write_config(tmp_path / "crashd.conf", **FAST, unprivileged_user=user.pw_name)


def upload_all(crash_dir: Path, url: str, config: Path, *args: str):
    return crashd("upload-all", crash_dir, "--json", *args, url=url, config=config)


# -- /proc ------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def worker_of(pid: int, timeout: float = 20) -> int:
    """The upload worker started by crashd process *pid* (it runs `-c … crashd.worker …`)."""

    def find() -> int | None:
        for child in children(pid):
            try:
                if b"crashd.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                continue
        return None

    assert wait_until(lambda: find() is not None, timeout), f"no upload worker under pid {pid}"
    worker = find()
    assert worker is not None
    return worker


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def inet_sockets(pid: int) -> set[str]:
    """Socket inodes *pid* holds that are TCP or UDP sockets (v4 or v6)."""
    inet: set[str] = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as f:
            next(f)
            inet.update(line.split()[9] for line in f)
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[len("socket:[") : -1])
    return held & inet


def assert_unprivileged(worker: int, user: pwd.struct_passwd) -> None:
    status = proc_status(worker)
    assert status["Uid"].split() == [str(user.pw_uid)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(user.pw_gid)] * 4, status["Gid"]
    assert status["Groups"] == "", status["Groups"]
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0, status
    assert status["NoNewPrivs"] == "1"
    assert os.getpgid(worker) == worker, "the worker leads its own process group"


def assert_contained(worker: int, report: Path) -> None:
    """A clean environment, cwd /, and no descriptor but stdio, sockets and what it was handed: the
    report's body in a memory file (a report job) or the report itself (a core job)."""
    environment = Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
    names = {entry.partition(b"=")[0].decode() for entry in environment if entry}
    assert names <= {"PATH", "LANG", *PASSED_ENVIRONMENT}, names
    assert os.readlink(f"/proc/{worker}/cwd") == "/"
    for fd in Path(f"/proc/{worker}/fd").iterdir():
        target = os.readlink(fd)
        if int(fd.name) > 2:
            handed = target in (str(report), "/memfd:crashd-report-body (deleted)")
            assert target.startswith("socket:[") or handed, (fd.name, target)


# -- delivery ---------------------------------------------------------------------------------


def test_upload_all_as_root_delivers_reports_and_a_core_byte_exact_through_the_worker(crash_dir, config):
    core = os.urandom(300 * 1024)
    write(crash_dir / NAME, crash("app", CoreDump=core))
    write(crash_dir / "_usr_bin_other.0.crash", crash("other"))
    with DaisyServer(core_policy="always") as daisy:
        run = upload_all(crash_dir, daisy.url, config)
        assert daisy.errors == []
    assert run.code == 0, run.stderr
    assert run.json["sent"] == 2
    assert {r.document["ExecutablePath"] for r in daisy.reports} == {"/usr/bin/app", "/usr/bin/other"}
    (stored,) = daisy.cores
    assert stored.verdict == "ok" and stored.decoded_sha256 == hashlib.sha256(core).hexdigest()
    assert "upload worker" not in run.stderr and "sysusers" not in run.stderr


def test_a_0600_report_goes_out_by_descriptor_though_the_worker_cannot_open_it(
    crash_dir, config, daisy, user, run_as
):
    report = write(crash_dir / NAME, crash("app"))
    report.chmod(0o600)
    run = upload_all(crash_dir, daisy.url, config)
    assert run.code == 0, run.stderr
    assert daisy.reports[0].document["ExecutablePath"] == "/usr/bin/app"
    tried = run_as(
        user, "import sys\ntry: open(sys.argv[1], 'rb')\nexcept PermissionError: sys.exit(7)", str(report)
    )
    assert tried.returncode == 7, tried.stderr


@pytest.mark.parametrize("configured", [True, False], ids=["unprivileged_user", "nobody"])
@pytest.mark.parametrize("command", ["upload-all", "daemon"])
def test_the_worker_is_unprivileged_and_only_it_holds_an_inet_socket(
    crash_dir, tmp_path, daisy, user, command, configured
):
    """With unprivileged_user, the worker runs as it; without (issue 11: fail closed), as nobody —
    never the HTTP in the root process."""
    name = user.pw_name if configured else NO_SUCH_USER
    config = write_config(tmp_path / "hang.conf", **FAST, unprivileged_user=name, read_timeout=60)
    worker_user = user if configured else pwd.getpwnam(_common.WORKER_FALLBACK_USER)
    daisy.script(Hang())
    if command == "upload-all":
        write(crash_dir / NAME, crash("app"))
        process = popen("upload-all", crash_dir, "--json", url=daisy.url, config=config)
        root, finish = process.pid, lambda: process.communicate(timeout=30)
        context = None
    else:
        state = state_dir_of(crash_dir)
        state.mkdir(mode=0o700)
        set_preference(state, "AutomaticallyReportCrashes", True, config=None)
        context = run_daemon(crash_dir, state, daisy.url, "--idle-timeout", "60", config=config)
        daemon = context.__enter__()
        drop(crash_dir / NAME, crash("app"))
        root, finish = daemon.process.pid, lambda: None
    worker = None
    try:
        assert daisy.wait_for(lambda: len(daisy.exchanges) == 1, timeout=20)  # the POST hangs now
        worker = worker_of(root)
        assert_unprivileged(worker, worker_user)
        assert_contained(worker, crash_dir / NAME)
        assert proc_status(root)["Uid"].split()[0] == "0"
        assert inet_sockets(root) == set(), "the root process holds an inet socket"
        assert inet_sockets(worker), "the worker holds no inet socket while its POST hangs"
    finally:
        daisy.stop()  # cuts the hanging connection: the attempt fails and the run ends
        finish()
        if context is not None:
            context.__exit__(None, None, None)
        if worker is not None:
            assert wait_until(lambda: not Path(f"/proc/{worker}").exists(), 20), "the worker outlived crashd"


# -- a hostile server is bounded and recorded --------------------------------------------------

HOSTILE = {
    "100 MB body": (Respond(500, b"x" * (100 * MiB)), {}, "500: xxxx"),
    "1 MB header line": (Respond(200, b"", {"X-Big": "a" * MiB}), {}, "header"),
    "invalid UTF-8": (Respond(500, b"\xff\xfe\xc3(" * 10), {}, "500:"),
    "reset mid-body": (Reset(), {}, ""),
    "answer never ends": (Hang(), {"read_timeout": 1}, "timed out"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_server_is_bounded_and_recorded_against_the_report(crash_dir, tmp_path, daisy, user, case):
    action, extra, reason = HOSTILE[case]
    config = write_config(tmp_path / "c.conf", **FAST, unprivileged_user=user.pw_name, **extra)
    report = write(crash_dir / NAME, crash("app"))
    daisy.script(action)
    run = upload_all(crash_dir, daisy.url, config)
    assert run.code == 1, run.stderr
    (entry,) = run.json["reports"]
    assert entry["state"] == "failed" and entry["detail"], entry
    assert reason.lower() in entry["detail"].lower(), entry
    assert len(entry["detail"]) <= 64 * 1024 + 16  # the answer is cut at 64 KiB (uploader.MAX_ANSWER)
    assert run.seconds < 60  # the 60 s default read timeout: a bound that catches only a hang
    assert "upload worker" not in run.stderr, "the worker itself failed: " + run.stderr
    assert not report.with_suffix(".uploaded").exists()


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    """200 with a 1 MB Content-Length, then one byte every 20 ms: no read ever times out."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while not stop.wait(0.02):
        conn.sendall(b"x")


def reset_mid_body(conn: socket.socket, stop: threading.Event) -> None:
    """500 with a 100 kB Content-Length, 1000 bytes of it, then a TCP reset."""
    conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"e" * 1000)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A loopback HTTP server for what daisy.py cannot script: it reads one request's head, then *answer*s."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (data := conn.recv(65536)):
                    head += data
                answer(conn, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        thread.join(10)


@pytest.mark.parametrize(
    ("answer", "reason"), [(trickle, "time budget"), (reset_mid_body, "connection")], ids=["trickle", "reset"]
)
def test_a_response_that_never_ends_or_breaks_off_is_bounded_and_recorded(
    crash_dir, tmp_path, user, answer, reason
):
    config = write_config(
        tmp_path / "c.conf", **{**FAST, "connect_timeout": 1}, read_timeout=1, unprivileged_user=user.pw_name
    )
    report = write(crash_dir / NAME, crash("app"))
    with raw_server(answer) as url:
        run = upload_all(crash_dir, url, config)
    assert run.code == 1, run.stderr
    (entry,) = run.json["reports"]
    assert entry["state"] == "failed" and reason in entry["detail"].lower(), entry
    assert run.seconds < 60  # the 60 s default read timeout: a bound that catches only a hang
    assert "upload worker" not in run.stderr, "the worker itself failed: " + run.stderr
    assert not report.with_suffix(".uploaded").exists()


# -- a dying worker loses nothing ---------------------------------------------------------------


def test_sigkill_of_the_worker_mid_upload_leaves_the_report_pending_and_a_rerun_delivers_it(
    crash_dir, config, daisy
):
    report = write(crash_dir / NAME, crash("app"))
    daisy.script(Hang())
    process = popen("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    assert daisy.wait_for(lambda: len(daisy.exchanges) == 1, timeout=20)
    os.kill(worker_of(process.pid), signal.SIGKILL)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1, err
    (entry,) = json.loads(out)["reports"]
    assert entry["state"] == "failed" and "upload worker" in entry["detail"], entry
    assert report.with_suffix(".upload").exists() and not report.with_suffix(".uploaded").exists()

    run = upload_all(crash_dir, daisy.url, config)
    assert run.code == 0, run.stderr
    assert run.json["reports"][0]["oops_id"] == report.with_suffix(".uploaded").read_text()


def test_a_dead_worker_is_restarted_only_after_a_backoff(crash_dir, daisy, user):
    path = write(crash_dir / NAME, crash("app"))
    uploader = WorkerUploader(user, 2, 2)
    now = [1000.0]
    uploader.clock = lambda: now[0]
    try:
        with opened(path) as (_fd, report):
            assert uploader.pid is None  # started on the first job, not before
            assert uploader.send(report_job(report, daisy.url)).status == 200
            first = uploader.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            with pytest.raises(WorkerError, match="upload worker"):
                uploader.send(report_job(report, daisy.url))
            assert uploader.pid is None
            now[0] += 0.9
            with pytest.raises(WorkerError, match="restarting"):  # within the backoff: no new process
                uploader.send(report_job(report, daisy.url))
            assert uploader.pid is None
            now[0] += 0.2  # 1 s after the failure
            assert uploader.send(report_job(report, daisy.url)).status == 409
            assert uploader.pid not in (None, first)
    finally:
        uploader.close()
    assert len(daisy.reports) == 2


def worker_children() -> list[int]:
    """This test process's upload workers (WorkerUploader starts them as its children)."""
    return [pid for pid in children(os.getpid()) if b"crashd.worker" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_prepare_starts_the_worker_in_the_background_and_the_next_job_uses_it(crash_dir, daisy, user):
    """Issue 15: the ~100 ms start overlaps the caller's preparing the job; prepare() itself returns at
    once (the start runs in a thread), and the job waits for that start rather than making its own."""
    path = write(crash_dir / NAME, crash("app"))
    uploader = WorkerUploader(user, 2, 2)
    try:
        assert uploader.pid is None and worker_children() == []
        uploader.prepare()
        assert wait_until(lambda: uploader.pid is not None, 30), "prepare() started no worker"
        started = uploader.pid
        uploader.prepare()  # one is running (or starting): nothing more starts
        with opened(path) as (_fd, report):
            assert uploader.send(report_job(report, daisy.url)).status == 200
        assert uploader.pid == started
        assert worker_children() == [started]
    finally:
        uploader.close()
    assert wait_until(lambda: worker_children() == [], 20)


def test_a_start_prepare_asked_for_never_outlives_close(user):
    """close() right after prepare(): the start under way is waited for and ended, and a prepare()
    after close() starts nothing (a stopping daemon must not leave a worker behind)."""
    uploader = WorkerUploader(user, 2, 2)
    uploader.prepare()
    uploader.close()
    assert uploader.pid is None
    uploader.prepare()
    starting = lambda: [t for t in threading.enumerate() if t.name == "crashd-worker-start"]  # noqa: E731
    assert wait_until(lambda: not starting(), 30)
    assert uploader.pid is None
    assert wait_until(lambda: worker_children() == [], 20), "a worker outlived close()"


@root_only
def test_a_daemon_with_only_held_reports_starts_no_worker_until_one_is_asked_for(crash_dir, config, daisy):
    """prepare() is asked only when a POST is due: held reports (consent not automatic) start nothing;
    the .upload a UI writes does, and the report goes out."""
    state = state_dir_of(crash_dir)
    state.mkdir(mode=0o700)
    with run_daemon(crash_dir, state, daisy.url, "--idle-timeout", "60", config=config) as daemon:
        drop(crash_dir / NAME, crash("app"))
        assert daemon.log_line(r"^crashd: _usr_bin_app\.0\.crash: held: ", timeout=10), daemon.stderr
        assert wait_until(lambda: daemon.messages[-1] == "STATUS=0 in progress, 0 waiting", timeout=10)
        assert [pid for pid in children(daemon.process.pid) if b"crashd.worker" in _cmdline(pid)] == []
        (crash_dir / NAME).with_suffix(".upload").touch()
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=20), daemon.stderr
        worker_of(daemon.process.pid)


def test_a_worker_that_crashes_on_every_job_is_restarted_at_most_once_per_backoff_step(
    crash_dir, daisy, user
):
    """A crash loop, on the root side's (fake) clock: each failure doubles the wait for the next start."""
    path = write(crash_dir / NAME, crash("app"))
    uploader = WorkerUploader(user, 2, 2)
    now = [0.0]
    uploader.clock = lambda: now[0]
    daisy.script(*[Hang()] * 20)
    stop = threading.Event()

    def crash_every_job() -> None:  # SIGKILL each worker once its POST has reached the server
        killed: set[int] = set()
        while not stop.is_set():
            pid = uploader.pid
            if pid is not None and pid not in killed and len(daisy.exchanges) > len(killed):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            stop.wait(0.002)

    killer = threading.Thread(target=crash_every_job)
    killer.start()
    starts, failures = [], 0
    try:
        with opened(path) as (_fd, report):
            for _ in range(400):  # one attempt every 0.25 s for 100 s
                try:
                    uploader.send(report_job(report, daisy.url))
                except WorkerError as error:
                    failures += 1
                    if "restarting" not in str(error):
                        starts.append(now[0])
                now[0] += 0.25
    finally:
        stop.set()
        killer.join()
        daisy.stop()
        uploader.close()
    assert failures == 400
    assert starts == [0, 1, 3, 7, 15, 31, 63], starts  # then 123 (the backoff is capped at 60 s)


def test_a_report_the_worker_cannot_read_is_invalid_and_a_missing_core_unavailable(crash_dir, daisy, user):
    path = write(crash_dir / NAME, crash("app"))
    uploader = WorkerUploader(user, 2, 2)
    try:
        with opened(path) as (fd, report), pytest.raises(CoreUnavailable):
            uploader.send(core_job(fd, report, daisy.url))
        with opened(path) as (fd, report):
            path.write_bytes(b"ProblemType: Crash\nno colon here\n")  # changed after root indexed it
            with pytest.raises(MalformedReportError, match="line 2: no colon"):
                uploader.send(core_job(fd, report, daisy.url))  # a core's report is indexed by the worker
        assert uploader.pid is not None, "neither refusal is the worker's failure"
    finally:
        uploader.close()
    assert daisy.reports == []


def test_the_worker_sends_the_body_root_encoded_as_it_is(crash_dir, daisy, user):
    """The body is encoded once, on the root side: the worker neither reads the report nor re-encodes it."""
    path = write(crash_dir / NAME, crash("app"))
    uploader = WorkerUploader(user, 2, 2)
    try:
        with opened(path) as (_fd, report):
            document = bson.decode(encode_report(report)) | {"EncodedBy": "root"}
            assert uploader.send(Job.of_report(bson.encode(document), daisy.url, TOKEN)).status == 200
    finally:
        uploader.close()
    assert daisy.reports[0].document == document


@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY"])
def test_the_worker_goes_through_the_administrators_proxy(crash_dir, daisy, user, monkeypatch, variable):
    """The proxy variables are passed to the worker, which reads them (its proxy module imported before its
    drop only when one is set): the POST reaches the proxy — here the loopback daisy — in absolute form."""
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, daisy.url)
    path = write(crash_dir / NAME, crash("app"))
    uploader = WorkerUploader(user, 2, 2, tls=False)
    try:
        with opened(path) as (_fd, report):
            answer = uploader.send(Job.of_report(encode_report(report), "http://crash.invalid", TOKEN))
    finally:
        uploader.close()
    assert answer.status == 404  # daisy's answer to a route it does not serve: the proxy was reached
    assert [exchange.path for exchange in daisy.exchanges] == [f"http://crash.invalid/{TOKEN}"]


def test_the_worker_reads_with_the_root_sides_limits_and_never_moves_its_offset(crash_dir, daisy, user):
    path = write(crash_dir / NAME, crash("app", Stacktrace="x" * 5000))
    uploader = WorkerUploader(user, 2, 2)
    try:
        with opened(path) as (fd, report):
            report.limits = Limits(text_value=1000)  # the worker applies root's limits, whatever they are
            os.lseek(fd, 17, os.SEEK_SET)
            with pytest.raises(MalformedReportError, match="text_value"):
                uploader.send(core_job(fd, report, daisy.url))
            assert os.lseek(fd, 0, os.SEEK_CUR) == 17
        with opened(path) as (fd, report):
            os.lseek(fd, 17, os.SEEK_SET)
            with pytest.raises(CoreUnavailable):  # read to the end with the default limits: no core
                uploader.send(core_job(fd, report, daisy.url))
            assert os.lseek(fd, 0, os.SEEK_CUR) == 17
            assert uploader.send(report_job(report, daisy.url)).status == 200
    finally:
        uploader.close()


def test_the_worker_ends_with_its_root_side_even_mid_upload(crash_dir, config, daisy):
    write(crash_dir / NAME, crash("app"))
    daisy.script(Hang())
    process = popen("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    try:
        assert daisy.wait_for(lambda: len(daisy.exchanges) == 1, timeout=20)
        worker = worker_of(process.pid)
        process.kill()
        process.communicate(timeout=30)
        assert wait_until(lambda: gone(worker), 10), "the worker outlived its root side"
    finally:
        process.kill()


def test_https_works_after_the_drop(crash_dir, tmp_path, user):
    """TLS needs the ssl module and the CA bundle after the drop: a self-signed server is refused by
    certificate verification, which proves both were usable (not a PermissionError on either)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    path = write(crash_dir / NAME, crash("app"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            # The handshake fails on the client's side: it must not trust this certificate.
            with (
                contextlib.suppress(OSError),
                listener.accept()[0] as conn,
                context.wrap_socket(conn, server_side=True),
            ):
                pass

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        uploader = WorkerUploader(user, 5, 5)
        try:
            with (
                opened(path) as (_fd, report),
                pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
            ):
                uploader.send(report_job(report, f"https://127.0.0.1:{port}"))
        finally:
            uploader.close()
        server.join(10)


def test_a_worker_for_an_http_database_readies_no_tls_and_refuses_https(crash_dir, daisy, user):
    """An http:// crash database: the worker skips reading the CA certificates at its start (~20 ms of
    what the first POST waits for), and a job for an https:// URL is refused, never attempted."""
    path = write(crash_dir / NAME, crash("app"))
    uploader = WorkerUploader(user, 2, 2, tls=False)
    try:
        with opened(path) as (_fd, report):
            assert uploader.send(report_job(report, daisy.url)).status == 200
            assert uploader.pid is not None
            argv = Path(f"/proc/{uploader.pid}/cmdline").read_bytes().split(b"\0")
            assert argv[-2:] == [b"plain", b""]
            with pytest.raises(UploadError, match="started for an http:// crash database"):
                uploader.send(report_job(report, "https://127.0.0.1:9"))  # nothing listens: not tried
    finally:
        uploader.close()
    assert len(daisy.reports) == 1


def test_the_worker_readies_tls_unless_the_crash_database_is_http(user):
    for url, tls in [("https://daisy.ubuntu.com", True), ("http://127.0.0.1:8080", False),
                     ("HTTP://errors.example", False)]:  # fmt: skip
        uploader = _common.make_uploader(Settings(unprivileged_user=user.pw_name, url=url), None)
        assert isinstance(uploader, WorkerUploader) and uploader.tls is tls, url


@root_only
def test_without_the_user_root_uploads_through_a_worker_as_nobody_and_says_so_once(
    crash_dir, tmp_path, daisy
):
    config = write_config(tmp_path / "c.conf", **FAST, unprivileged_user=NO_SUCH_USER)
    write(crash_dir / NAME, crash("app"))
    write(crash_dir / "_usr_bin_other.0.crash", crash("other"))
    run = upload_all(crash_dir, daisy.url, config)
    assert run.code == 0, run.stderr
    assert run.json["sent"] == 2
    said = [line for line in run.stderr.splitlines() if f"runs as {_common.WORKER_FALLBACK_USER!r}" in line]
    assert len(said) == 1 and NO_SUCH_USER in said[0] and "useradd --system" in said[0], run.stderr


@root_only
def test_without_the_user_nor_nobody_root_refuses_with_exit_2_and_says_how_to_create_it(
    crash_dir, tmp_path, monkeypatch, capsys
):
    """The other choice of fail-closed, for a system with no ``nobody`` either: nothing is sent."""
    monkeypatch.setattr(_common, "WORKER_FALLBACK_USER", "crashdt-no-nobody-either")
    config = write_config(tmp_path / "c.conf", unprivileged_user=NO_SUCH_USER)
    write(crash_dir / NAME, crash("app"))
    state = state_dir_of(crash_dir)
    for command in ("upload-all", "daemon"):
        where = ["--crash-dir", str(crash_dir), "--state-dir", str(state), "--url", "http://127.0.0.1:9"]
        assert cli.main(["--config", str(config), command, *where]) == 2
        error = capsys.readouterr().err
        assert NO_SUCH_USER in error and "systemd-sysusers" in error and "useradd --system" in error, error
    assert sorted(p.name for p in crash_dir.iterdir()) == [NAME]  # not even stamped


def test_only_root_uses_the_worker(user, monkeypatch):
    settings = Settings(unprivileged_user=user.pw_name)
    uploader = _common.make_uploader(settings, None)
    assert isinstance(uploader, WorkerUploader) and uploader.pid is None  # started on the first job
    with pytest.raises(ConfigError, match="root"):
        _common.make_uploader(Settings(unprivileged_user="root"), None)
    monkeypatch.setattr(_common.os, "geteuid", lambda: 1000)  # a user flushing their own reports: one process
    assert isinstance(_common.make_uploader(settings, None), DirectUploader)


# -- the answer protocol -----------------------------------------------------------------------


def gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie its new parent has not reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


@contextlib.contextmanager
def opened(path: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[tuple[int, Report]]:
    """A report as delivery holds it: an open descriptor and the index root read from it."""
    with path.open("rb") as f:
        yield f.fileno(), read_report(f, limits=limits)


def report_job(report: Report, url: str) -> Job:
    """The report's POST as delivery makes it: its body encoded on this side."""
    return Job.of_report(encode_report(report), url, TOKEN)


def core_job(fd: int, report: Report, url: str) -> Job:
    return Job.of_core(fd, report.limits, url, TOKEN, "some-oops")


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


SO_SNDBUFFORCE = 32  # Linux's <asm/socket.h>; not in Python's socket module


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (b"x" * 300, b"x" * 300),
        (b"y" * MAX_ANSWER, b"y" * MAX_ANSWER),  # the largest answer, whole
        (b"z" * (MAX_ANSWER + 1), "larger than"),  # one byte more: refused, not cut
        (b"w" * (MAX_ANSWER + 9000), "larger than"),
        (None, "exited"),  # EOF
    ],
)
def test_the_root_side_takes_one_whole_answer_of_at_most_max_answer_bytes(sent, received):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    inbox = mmap.mmap(-1, MAX_ANSWER + 1)
    with ours, theirs, inbox:
        theirs.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 * MAX_ANSWER)  # past wmem_max (as root)
        if sent is None:
            theirs.close()
        else:
            theirs.sendall(b"q" * 1000)  # an earlier answer, longer: nothing of it shows in the next
            assert _receive(ours, inbox, 5) == b"q" * 1000
            theirs.sendall(sent)
        if isinstance(received, bytes):
            assert _receive(ours, inbox, 5) == received
        else:
            with pytest.raises(WorkerError, match=received):
                _receive(ours, inbox, 5)


def test_answers_map_back_to_answers_and_errors():
    body = base64.b64encode(b"oops OOPSID").decode()
    answer = _answer(_json({"id": 3, "status": 429, "body_b64": body, "headers": {"Retry-After": "5"}}), 3)
    assert not isinstance(answer, BaseException)
    assert (answer.status, answer.body, dict(answer.headers)) == (429, b"oops OOPSID", {"Retry-After": "5"})
    offline = _answer(_json({"id": 3, "error": {"class": "OfflineError", "message": "no route"}}), 3)
    assert isinstance(offline, OfflineError) and str(offline) == "no route"
    unknown = _answer(_json({"id": 3, "error": {"class": "KeyError", "message": "'x'"}}), 3)
    assert type(unknown) is ExchangeError and "KeyError" in str(unknown)
    assert isinstance(_answer(_json({"id": 3, "invalid": "line 2: no colon"}), 3), MalformedReportError)
    assert isinstance(_answer(_json({"id": 3, "unavailable": "no core"}), 3), CoreUnavailable)


@pytest.mark.parametrize(
    "reply",
    [
        b"\xff not json",
        b"[]",
        _json({"id": 4, "status": 200, "body_b64": "", "headers": {}}),  # another job's
        _json({"id": True, "status": 200, "body_b64": "", "headers": {}}),
        _json({"id": 3, "status": "200", "body_b64": "", "headers": {}}),
        _json({"id": 3, "status": 200, "body_b64": "!!", "headers": {}}),
        _json({"id": 3, "status": 200, "body_b64": base64.b64encode(b"x" * 70000).decode(), "headers": {}}),
        _json({"id": 3, "status": 200, "body_b64": "", "headers": {}, "extra": 1}),
        _json({"id": 3, "status": 200, "body_b64": "", "headers": {"Set-Cookie": "x"}}),
        _json({"id": 3, "status": 200, "body_b64": "", "headers": {"Retry-After": 5}}),
        _json({"id": 3, "status": 200, "body_b64": "", "headers": []}),
        _json({"id": 3, "error": "boom"}),
        _json({"id": 3, "error": {"class": "OfflineError"}}),
        _json({"id": 3, "invalid": "x", "unavailable": "y"}),
        b"[" * 100000,
        _json({"id": 3, "invalid": 5}),
        _json({"id": 3, "what": "?"}),
    ],
)
def test_a_malformed_answer_is_a_worker_error(reply):
    with pytest.raises(WorkerError):
        _answer(reply, 3)


def _job_message(body: bytes | None = b"BODY", said: object = "len", kind: str = "report") -> bytes:
    job = {"id": 1, "kind": kind, "url": "http://x", "system_id": TOKEN, "oops_id": "o", "seconds": 5.0,
           "limits": dataclasses.asdict(DEFAULT_LIMITS)}  # fmt: skip
    job["body"] = (len(body) if said == "len" else said) if body is not None else None
    return json.dumps(job).encode() + (b"\n" + body if body is not None else b"")


def test_a_small_body_travels_inline_and_is_taken_as_it_is():
    job, limits, inline = _job_fields(_job_message(b"\x00\n{raw bson}"), [], 0)
    assert (job["kind"], limits, inline) == ("report", DEFAULT_LIMITS, b"\x00\n{raw bson}")
    job, _, inline = _job_fields(_job_message(None), [7], 0)
    assert inline is None


@pytest.mark.parametrize(
    ("message", "fds"),
    [
        (_job_message(b"BODY", said=3), []),  # a length that does not match
        (_job_message(b"BODY", said=5), []),
        (_job_message(b"BODY", said=True), []),
        (_job_message(b"BODY", said="4"), []),
        (_job_message(b"BODY"), [7]),  # an inline body and a descriptor
        (_job_message(None), []),  # neither
        (_job_message(None) + b"\nextra", [7]),  # bytes after the JSON with a descriptor
        (_job_message(b"x" * (MAX_INLINE + 1)), []),  # over the inline bound
        (_job_message(b"BODY", kind="core"), []),  # a core never travels inline
    ],
)
def test_a_job_with_a_bad_inline_body_is_refused(message, fds):
    with pytest.raises((ValueError, KeyError, TypeError)):
        _job_fields(message, fds, 0)


def test_the_worker_refuses_to_run_as_root():
    with pytest.raises(ValueError, match="root"):
        WorkerUploader(pwd.getpwuid(0))


@root_only
def test_the_worker_exits_non_zero_when_it_cannot_drop_privileges():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        done = subprocess.run(
            [sys.executable, "-I", "-m", "crashd.worker", str(theirs.fileno()), "0", "0", "1", "1"],
            pass_fds=[theirs.fileno()], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 3 and "uid or gid 0" in done.stderr, done.stderr


def test_the_pipeline_prepares_the_next_report_while_one_is_on_the_wire_and_posts_it_once_that_answer_is_recorded(
    crash_dir, user
):
    """Issue 15, the queued rate: ``Courier.pipeline`` hands a POST to the worker and, before its answer,
    makes the next report ready (its ``posting`` record written); that report's POST goes out only once
    the answer before it is recorded — a kill repeats at most the POST on the wire, as with ``process``."""
    from crashd.delivery import Courier
    from crashd.spool import ReportName, Spool
    from crashd.state import StateStore

    events: list[tuple[str, str]] = []

    class Recording(StateStore):
        def save(self, record, now, *, sync=True):  # type: ignore[no-untyped-def]
            events.append((record.phase.value, record.name))
            return super().save(record, now, sync=sync)

    class Watched(WorkerUploader):
        def start(self, job: Job) -> Callable[[], Any]:
            name = bson.decode(job.body)["ExecutablePath"].replace("/", "_") + ".0.crash"
            events.append(("on the wire", name))
            receive = super().start(job)

            def answer() -> Any:
                result = receive()
                events.append(("answered", name))
                return result

            return answer

    names = [f"_usr_bin_app{i}.0.crash" for i in range(4)]
    for i, name in enumerate(names):
        write(crash_dir / name, crash(f"app{i}", _HooksRun="yes"))
    uploader = Watched(user, 2, 2)
    try:
        with DaisyServer(core_policy="never") as daisy, Spool(crash_dir) as spool:  # a POST a report
            courier = Courier(uploader, daisy.url, TOKEN, Recording.open(crash_dir.parent / "state"), grouped=True)
            outcomes = list(courier.pipeline(spool, map(ReportName.parse, names), DEFAULT_LIMITS))
            sent = len(daisy.reports)
    finally:
        uploader.close()
    assert [(name.crash, status and status.state.value) for name, status in outcomes] == [
        (name, "sent") for name in names
    ]
    assert sent == len(names)
    for before, after in itertools.pairwise(names):
        assert events.index(("sent", before)) < events.index(("on the wire", after))
        assert events.index(("posting", after)) < events.index(("answered", before))  # ready meanwhile
