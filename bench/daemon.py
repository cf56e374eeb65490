"""daemon: ``crashd daemon`` as a real service: report → POST latency, queued rate, idle cost.

DESIGN.md §8 and issue 15 targets; whoopsie 0.1.33 is a reference figure (measured side by side in
issue 15, not runnable here); every figure comes with a floor measured in the same run:

- ``.upload``/report drop → POST received, loopback, "spec" and "deps" reports (bench.reports):
  median ≤ 3 ms, p99 ≤ 10 ms (whoopsie 1.5 to 1.8 ms median); floor: bare ``http.client``;
- 200 queued reports: "deps" ≥ 1,000/s, "spec" ≥ 500/s (whoopsie 313 to 976/s); floor: the same
  bodies posted back to back with bare ``http.client`` on one connection;
- idle: exits when idle; while up and idle 0 wake-ups and < 24 MiB RSS (issue 15; 30 MiB before).

Every part runs ``python -m crashd daemon`` as a child with scratch crash and state
directories, ``$NOTIFY_SOCKET`` pointing at a datagram socket of ours (so READY=1,
STATUS= and STOPPING=1 are seen exactly as systemd sees them), and the loopback daisy
(``tests/daisy.py``, ``--core-policy never``) in a process of its own.

Why the server is wrapped: the latency ends when the server *has* the POST, which only
the server knows. ``tests/daisy.py`` keeps no receive times, so the server process here
is a small subclass of ``DaisyServer`` that prints ``CLOCK_MONOTONIC`` (system-wide on
Linux, so comparable with ours) the moment a report body is fully read, before it is
judged or answered. This keeps the server's CPU out of both the daemon and us, and
the reading of our pipe out of the measured path.

1. **latency**: per kind ("deps", then "spec": crashd enriches it in process and rewrites it before
   the POST), reports arrive one at a time while the daemon idles. *automatic*: consent
   is automatic; each report is written to a hidden temporary name in the crash directory
   and renamed to ``NAME.crash`` (MOVED_TO); the clock starts just before the rename.
   *manual*: consent is not automatic, the reports are there (held) when the daemon
   starts; the clock starts just before ``NAME.upload`` is created (CLOSE_WRITE). The next
   report comes only once the daemon has said ``0 in progress`` after the POST and a few
   milliseconds more, so each one meets an idle daemon, as a crash normally does.
   *floor*: the same POSTs sent with bare ``http.client`` from this process, timed the same
   way: what the Python server and loopback take by themselves.
2. **queued**: 200 "deps" and 200 "spec" reports (interleaved rounds), then 1,000 "deps", in the
   directory when ``daemon --once`` starts;
   reports/s from READY=1 to the last POST received (start-up, identifier and rescan are
   before READY; they are shown apart, with the whole process's wall time).
3. **idle**: an empty directory, ``--idle-timeout 120``; from just after READY=1 (and the
   loop's first STATUS) over 60 s (``--quick``: 10 s): VmRSS/VmHWM, context switches of
   every thread (each one is a wake-up: a sleeping thread that never runs switches never)
   and utime+stime; then SIGTERM → exit. And ``--idle-timeout 5`` on an empty directory:
   it must exit 0 by itself about 5 s after READY=1. The idle RSS is also given as a ratio
   to a *floor* measured in the same run: a bare ``python -c 'import asyncio; ...'`` idling
   in its event loop (the interpreter and asyncio, which any asyncio daemon pays).
   ``python -m bench.daemon --idle`` runs this part alone; ``--idle --bus`` runs it on a private
   system bus (``tests/dbus_bus.py``), as deployed: the daemon then serves D-Bus.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import math
import os
import pwd
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench._common import REPO, TOKEN, child_env, mib, post_bodies
from bench.reports import deps_report, spec_report
from bench.upload_rate import _bodies
from crashd.consent import set_preference
from crashd.report import write_report

LATENCY_COUNT = 200
TARGET_MEDIAN_MS, TARGET_P99_MS = 3.0, 10.0  # issue 15, "spec" and "deps" alike
TARGET_RATE = {"deps": 1000, "spec": 500}  # 200 queued reports, reports/s (issue 15)
# Reference figures (issue 15: whoopsie 0.1.33, same loopback server and reports, interleaved; not runnable here)
WHOOPSIE_MEDIAN_MS = {"spec": "1.5-1.7", "deps": "1.5-1.8"}
WHOOPSIE_RATE = "313-976/s"
TARGET_RSS_MIB = 24  # issue 15 item 4 (was 30)
SETTLE = 0.005  # s between the temporary file and its rename, and after each report is done
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The server process: DaisyServer with a receive time per report (see the module docstring).
_SERVER = """
import signal, sys, threading, time
from tests.daisy import DaisyServer

class Timed(DaisyServer):
    _out = threading.Lock()

    def _submit(self, token, headers, body, scripted):
        received = time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # the whole request is in
        status, text = super()._submit(token, headers, body, scripted)
        with self._out:
            print(received, status, flush=True)
        return status, text

signals = {signal.SIGTERM, signal.SIGINT}
signal.pthread_sigmask(signal.SIG_BLOCK, signals)
with Timed(0, core_policy="never", log=sys.stderr) as daisy:
    print("listening on", daisy.url, flush=True)
    signal.sigwait(signals)
"""


def _now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class _Recorder:
    """Timestamped items from a reader thread, and waiting for a condition on them."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str]] = []  # (CLOCK_MONOTONIC ns, text)
        self._cond = threading.Condition()

    def add(self, when_ns: int, text: str) -> None:
        with self._cond:
            self.items.append((when_ns, text))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[int, str]]], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.items), timeout)

    def snapshot(self) -> list[tuple[int, str]]:
        with self._cond:
            return list(self.items)


@dataclass
class _Daisy:
    """The timed loopback daisy: its URL and every report POST as (receive ns, status)."""

    url: str
    posts: _Recorder = field(default_factory=_Recorder)

    def count(self) -> int:
        return len(self.posts.snapshot())

    def wait_posts(self, count: int, timeout: float) -> list[int]:
        """Receive times of the first *count* POSTs; RuntimeError if they do not all come."""
        if not self.posts.wait_for(lambda items: len(items) >= count, timeout):
            raise RuntimeError(f"the server got {self.count()} of {count} POSTs within {timeout} s")
        items = self.posts.snapshot()[:count]
        if bad := [text for _, text in items if text != "200"]:
            raise RuntimeError(f"the server answered {bad[:5]} (expected 200 only)")
        return [when for when, _ in items]


@contextmanager
def _daisy(log: Path) -> Iterator[_Daisy]:
    """Start the timed server in its own process; its receive times are read by a thread."""
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=child_env(),
            cwd=REPO,
            text=True,
        )
    assert proc.stdout is not None
    stdout = proc.stdout
    try:
        line = stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the loopback daisy did not start: {line!r}; see {log}")
        daisy = _Daisy(line.removeprefix("listening on "))

        def read() -> None:
            for record in stdout:
                received, status = record.split()
                daisy.posts.add(int(received), status)

        threading.Thread(target=read, name="daisy-reader", daemon=True).start()
        yield daisy
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        stdout.close()


class _Notify:
    """A ``$NOTIFY_SOCKET`` of our own: every datagram the daemon sends, with its arrival time.

    Drained all the time by a thread: a full datagram queue would block the daemon's
    ``sendto`` (a blocking AF_UNIX socket), i.e. stall its event loop.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages = _Recorder()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(4096)
            except OSError:
                return
            when = _now_ns()
            for assignment in data.decode(errors="replace").splitlines():
                self.messages.add(when, assignment)

    def wait(self, text: str, after_ns: int = 0, timeout: float = 30.0) -> int:
        """Arrival time of the first *text* (e.g. ``READY=1``) that came at or after *after_ns*."""
        found: list[int] = []

        def seen(items: list[tuple[int, str]]) -> bool:
            found[:] = [when for when, message in items if message == text and when >= after_ns][:1]
            return bool(found)

        if not self.messages.wait_for(seen, timeout):
            raise RuntimeError(f"the daemon did not send {text!r} within {timeout} s")
        return found[0]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv()
        self._sock.close()
        self._thread.join(timeout=5)


IDLE_STATUS = "STATUS=0 in progress, 0 waiting"


@dataclass
class _Service:
    """One ``crashd daemon`` child with its notify socket and scratch directories."""

    proc: subprocess.Popen[bytes]
    notify: _Notify
    started_ns: int
    ready_ns: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextmanager
def _service(
    work: Path, crash_dir: Path, state_dir: Path, url: str, *flags: str, config: Path | None = None
) -> Iterator[_Service]:
    """Start ``crashd [--config CONFIG] daemon FLAGS`` and wait for READY=1; stop it (SIGTERM) when done."""
    notify = _Notify(work / f"notify-{crash_dir.name}")
    env = child_env(CRASH_DB_IDENTIFIER=TOKEN, NOTIFY_SOCKET=str(notify.path))
    argv = [sys.executable, "-m", "crashd", *(["--config", str(config)] if config else []), "daemon", *flags]
    argv += ["--crash-dir", str(crash_dir), "--state-dir", str(state_dir), "--url", url]
    log = work / f"daemon-{crash_dir.name}.log"
    with log.open("ab") as log_file:
        started = _now_ns()
        proc = subprocess.Popen(argv, stdout=log_file, stderr=log_file, env=env, cwd=REPO)
    service = _Service(proc, notify, started)
    try:
        service.ready_ns = notify.wait("READY=1", timeout=30)
        yield service
    except RuntimeError as error:
        raise RuntimeError(f"{error}; see {log}:\n{log.read_text(errors='replace')[-2000:]}") from None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()


def _scratch(work: Path, tag: str, *, automatic: bool) -> tuple[Path, Path]:
    """A fresh state directory with consent stored (ReportCrashes on by default; automatic or not); the crash dir's path beside it."""
    state_dir = work / f"state-{tag}"
    set_preference(state_dir, "AutomaticallyReportCrashes", automatic, config=None)
    return work / f"crash-{tag}", state_dir


# -- /proc ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    """What /proc says about a process at one moment."""

    when_ns: int
    switches: dict[int, int]  # per thread id: voluntary + nonvoluntary context switches
    cpu_s: float  # utime + stime of all threads
    rss_kib: int
    hwm_kib: int

    @property
    def total_switches(self) -> int:
        return sum(self.switches.values())


def _status_fields(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _sample(pid: int) -> _Sample:
    """Context switches of every thread, CPU time, VmRSS and VmHWM; reading /proc wakes nobody."""
    switches = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = _status_fields(f"/proc/{pid}/task/{tid}/status")
        except FileNotFoundError:
            continue  # a thread that just ended
        switches[int(tid)] = int(fields["voluntary_ctxt_switches"]) + int(
            fields["nonvoluntary_ctxt_switches"]
        )
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    utime, stime = int(stat[11]), int(stat[12])  # fields 14 and 15 of proc(5)
    status = _status_fields(f"/proc/{pid}/status")
    return _Sample(
        _now_ns(),
        switches,
        (utime + stime) / CLK_TCK,
        int(status["VmRSS"].split()[0]),
        int(status["VmHWM"].split()[0]),
    )


# -- 1. latency ----------------------------------------------------------------------------

KINDS = ("deps", "spec")  # bench.reports: already enriched / as apport's crash handler writes them
_offsets = itertools.count(0, 100_000)  # every report of a run is a different crash to daisy


def _stage(directory: Path, kind: str, count: int) -> list[Path]:
    """*count* realistic "spec" or "deps" reports (bench.reports) in *directory*, root's (root may own a
    report named for any uid), each with its own Date and first StacktraceTop frame: distinct crashes,
    so neither daisy (409) nor duplicate collapse makes one cheaper than another."""
    directory.mkdir(exist_ok=True)
    directory.chmod(0o3777)  # as /var/crash
    make = {"spec": spec_report, "deps": deps_report}[kind]
    offset, paths = next(_offsets), []
    for i in range(count):
        fields = make(offset + i)
        fields["StacktraceTop"] = f"crash_here_{offset + i} () from /usr/lib/libapp.so\n{fields['StacktraceTop']}"
        path = directory / f"_usr_bin_{kind}{i:05d}.1000.crash"
        with path.open("wb") as f:
            write_report(f, fields)
        paths.append(path)
    return paths


def _percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: p99 of 200 samples is the 198th smallest, not an interpolation."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def _latency_stats(samples_ms: list[float]) -> dict[str, float]:
    return {
        "count": len(samples_ms),
        "median_ms": statistics.median(samples_ms),
        "p90_ms": _percentile(samples_ms, 0.90),
        "p99_ms": _percentile(samples_ms, 0.99),
        "best_ms": min(samples_ms),
        "worst_ms": max(samples_ms),
        "mean_ms": statistics.fmean(samples_ms),
    }


def _settle(service: _Service, posted_ns: int) -> None:
    """Wait until the daemon has finished with the report it just posted, then a little more."""
    service.notify.wait(IDLE_STATUS, after_ns=posted_ns, timeout=10)
    time.sleep(SETTLE)


def _latency_automatic(work: Path, daisy: _Daisy, count: int, kind: str) -> tuple[list[float], _Sample]:
    """Automatic consent: rename each report into the crash dir; ms from rename to POST received."""
    staged = _stage(work / f"staged-auto-{kind}", kind, count)
    crash_dir, state_dir = _scratch(work, f"latency-auto-{kind}", automatic=True)
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    samples = []
    base = daisy.count()
    with _service(work, crash_dir, state_dir, daisy.url, "--idle-timeout", "120") as service:
        service.notify.wait(IDLE_STATUS, after_ns=service.ready_ns)
        for i, path in enumerate(staged):
            data = path.read_bytes()
            temporary = crash_dir / f".{path.name}.tmp"  # hidden: the daemon ignores it
            with temporary.open("wb") as f:
                f.write(data)
            time.sleep(SETTLE)  # the temporary file's own events are not what is measured
            started = _now_ns()
            os.rename(temporary, crash_dir / path.name)
            received = daisy.wait_posts(base + i + 1, timeout=10)[-1]
            samples.append((received - started) / 1e6)
            _settle(service, received)
        after = _sample(service.pid)
    return samples, after


def _latency_manual(
    work: Path, daisy: _Daisy, count: int, kind: str = "deps", config: Path | None = None
) -> list[float]:
    """Consent not automatic, reports held: create ``NAME.upload``; ms from then to POST received.

    *config*: a ``crashd.conf`` for the daemon (bench.hooks gives it a hook tree and a hook user)."""
    crash_dir, state_dir = _scratch(work, f"latency-manual-{kind}", automatic=False)
    _stage(crash_dir, kind, count)
    samples = []
    base = daisy.count()
    with _service(work, crash_dir, state_dir, daisy.url, "--idle-timeout", "120", config=config) as service:
        service.notify.wait(IDLE_STATUS, after_ns=service.ready_ns, timeout=60)  # all looked at, held
        time.sleep(0.2)
        if daisy.count() != base:
            raise RuntimeError("the daemon sent reports nobody marked, with automatic consent off")
        for i, report in enumerate(sorted(crash_dir.glob("*.crash"))):
            stamp = report.with_suffix(".upload")
            started = _now_ns()
            os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            received = daisy.wait_posts(base + i + 1, timeout=10)[-1]
            samples.append((received - started) / 1e6)
            _settle(service, received)
    return samples


def _latency_floor(work: Path, daisy: _Daisy, count: int, kind: str) -> list[float]:
    """The same kind of POSTs with bare ``http.client`` on one keep-alive connection, from this process.

    What the server and loopback take on their own (HTTP parsing in a Python server,
    thread wake-ups): the part of the latencies above that no daemon can remove.
    """
    directory = work / f"floor-{kind}-{next(_offsets)}"
    bodies = _bodies(_stage(directory, kind, count)[0].parent)
    parts = urlsplit(daisy.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    headers = {"Content-Type": "application/octet-stream"}
    samples = []
    base = daisy.count()
    try:
        for i, body in enumerate(bodies):
            started = _now_ns()
            conn.request("POST", f"/{TOKEN}", body, headers)
            received = daisy.wait_posts(base + i + 1, timeout=10)[-1]
            samples.append((received - started) / 1e6)
            conn.getresponse().read()
            time.sleep(SETTLE)
    finally:
        conn.close()
    return samples


def _latency_part(work: Path, daisy: _Daisy, count: int, results: dict) -> None:
    """Per kind, in one run: the floor, automatic, manual, the floor again (its figure: both rounds)."""
    load_before = os.getloadavg()[0]
    for kind in KINDS:
        floor = _latency_floor(work, daisy, count // 2, kind)
        automatic, busy = _latency_automatic(work, daisy, count, kind)
        manual = _latency_manual(work, daisy, count, kind)
        floor += _latency_floor(work, daisy, count - count // 2, kind)
        base = statistics.median(floor)
        results[f"latency_floor_http_client_{kind}"] = _latency_stats(floor)
        for how, samples in (("automatic", automatic), ("manual", manual)):
            stats = results[f"latency_{how}_{kind}"] = _latency_stats(samples)
            stats["median_over_floor"] = stats["median_ms"] / base
        results[f"rss_after_latency_{kind}_kib"] = {"rss": busy.rss_kib, "hwm": busy.hwm_kib}
        for key, label in (
            (f"latency_automatic_{kind}", "report renamed in"),
            (f"latency_manual_{kind}", ".upload created"),
            (f"latency_floor_http_client_{kind}", "bare http.client"),
        ):
            s = results[key]
            ratio = f"; x{s['median_over_floor']:.1f} the floor" if "median_over_floor" in s else ""
            print(
                f"daemon latency {kind}, {label:<17} → POST received ({s['count']}): median {s['median_ms']:.2f} ms, "
                f"p90 {s['p90_ms']:.2f}, p99 {s['p99_ms']:.2f}, best {s['best_ms']:.2f}, worst {s['worst_ms']:.2f}{ratio}"
            )
    results["latency_loadavg_1min"] = [load_before, os.getloadavg()[0]]
    print(
        f"daemon latency: 1-min load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"(on {os.cpu_count()} CPUs: other work inflates the tail)"
    )


# -- 2. queued -----------------------------------------------------------------------------


def _queued(work: Path, daisy: _Daisy, count: int, tag: str, kind: str = "deps") -> dict[str, float]:
    """``daemon --once`` over *count* reports present at start: timings from spawn, READY and POSTs;
    and the floor of the same run: the same kind of bodies posted back to back with bare http.client."""
    crash_dir, state_dir = _scratch(work, tag, automatic=True)
    _stage(crash_dir, kind, count)
    before = daisy.count()
    floor_s = post_bodies(daisy.url, _bodies(_stage(work / f"{tag}-floor", kind, count)[0].parent))
    daisy.wait_posts(before + count, timeout=60)
    base = before + count  # the floor's POSTs came first
    with _service(work, crash_dir, state_dir, daisy.url, "--once") as service:
        received = daisy.wait_posts(base + count, timeout=120)[base:]
        code = service.proc.wait(timeout=60)
        exited = _now_ns()
    if code != 0:
        raise RuntimeError(f"daemon --once exited {code}")
    if daisy.count() != base + count:
        raise RuntimeError(f"{daisy.count() - base} POSTs for {count} reports")
    ready, first, last = service.ready_ns, min(received), max(received)
    rate = count / ((last - ready) / 1e9)
    return {
        "reports": count,
        "spawn_to_ready_s": (ready - service.started_ns) / 1e9,
        "ready_to_last_post_s": (last - ready) / 1e9,
        "ready_to_first_post_ms": (first - ready) / 1e6,
        "first_to_last_post_s": (last - first) / 1e9,
        "spawn_to_exit_s": (exited - service.started_ns) / 1e9,
        "reports_per_s": rate,
        "reports_per_s_whole_process": count / ((exited - service.started_ns) / 1e9),
        "floor_reports_per_s": count / floor_s,
        "rate_over_floor": rate / (count / floor_s),
    }


def _queued_part(work: Path, daisy: _Daisy, rounds_200: int, results: dict) -> None:
    """200 "deps" and "spec" reports (*rounds_200* rounds each, interleaved), then 1,000 "deps"."""
    runs: dict[str, list[dict[str, float]]] = {f"{kind}-200": [] for kind in KINDS}
    for n in range(rounds_200):
        for kind in KINDS:
            runs[f"{kind}-200"].append(_queued(work, daisy, 200, f"queued-{kind}-200-{n}", kind))
    runs["deps-1000"] = [_queued(work, daisy, 1000, "queued-deps-1000", "deps")]
    results["queued"] = {}
    for key, rounds in runs.items():
        rates = [r["reports_per_s"] for r in rounds]
        median = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
        median["reports_per_s_best"] = max(rates)
        results["queued"][key] = median
        kind, count = key.split("-")
        print(
            f"daemon queued {kind} {int(count):>4}: READY→last POST {median['ready_to_last_post_s']:.3f} s "
            f"({median['reports_per_s']:.0f}/s median of {len(rounds)}, best {max(rates):.0f}/s; floor "
            f"{median['floor_reports_per_s']:.0f}/s, x{median['rate_over_floor']:.2f} the floor); first POST "
            f"{median['ready_to_first_post_ms']:.1f} ms after READY; spawn→READY "
            f"{median['spawn_to_ready_s']:.3f} s; whole process {median['spawn_to_exit_s']:.3f} s "
            f"({median['reports_per_s_whole_process']:.0f}/s)"
        )


# -- 3. idle -------------------------------------------------------------------------------


def _as_deployed(work: Path) -> Path | None:
    """A ``crashd.conf`` naming an upload-worker user that exists, where this machine has no ``crashd``.

    Deployed, ``crashd`` exists (sysusers.d) and the daemon's look-up at start ends in /etc/passwd; a name
    found nowhere sends NSS on to its other modules (``libnss_systemd``, ~0.35 MiB the daemon then keeps),
    a cost of this machine, not of crashd. None where the user exists."""
    try:
        pwd.getpwnam("crashd")
        return None
    except KeyError:
        config = work / "as-deployed.conf"
        config.write_text("[crashd]\nunprivileged_user = nobody\n")
        return config


def _idle(work: Path, daisy: _Daisy, window: float) -> dict[str, object]:
    """An idle daemon over *window* seconds: RSS, wake-ups (context switches), CPU; then SIGTERM."""
    crash_dir, state_dir = _scratch(work, "idle", automatic=True)
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    config = _as_deployed(work)
    with _service(work, crash_dir, state_dir, daisy.url, "--idle-timeout", "120", config=config) as service:
        at_ready = _sample(service.pid)
        service.notify.wait(IDLE_STATUS, after_ns=service.ready_ns)  # the loop's first pass
        time.sleep(0.2)  # ...and its way into epoll_wait
        first = _sample(service.pid)
        samples = [first]
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            samples.append(_sample(service.pid))
        last = samples[-1]
        stopping = _now_ns()
        service.proc.send_signal(signal.SIGTERM)
        code = service.proc.wait(timeout=10)
        stopped = _now_ns()
        saw_stopping = bool([m for w, m in service.notify.messages.snapshot() if m == "STOPPING=1"])
    per_thread = {tid: last.switches.get(tid, 0) - count for tid, count in first.switches.items()} | {
        tid: n for tid, n in last.switches.items() if tid not in first.switches
    }
    return {
        "window_s": (last.when_ns - first.when_ns) / 1e9,
        "threads": len(last.switches),
        "wakeups": last.total_switches - first.total_switches,
        "wakeups_per_thread": {str(tid): n for tid, n in per_thread.items()},
        "switches_ready_to_window": first.total_switches - at_ready.total_switches,
        "cpu_s": last.cpu_s - first.cpu_s,
        "cpu_s_at_window_start": first.cpu_s,
        "rss_kib": last.rss_kib,
        "rss_kib_max": max(s.rss_kib for s in samples),
        "hwm_kib": last.hwm_kib,
        "sigterm_exit_code": code,
        "sigterm_to_exit_ms": (stopped - stopping) / 1e6,
        "sigterm_stopping_sent": saw_stopping,
    }


def _idle_exit(work: Path, daisy: _Daisy, timeout: float = 5.0) -> dict[str, float]:
    """``--idle-timeout 5`` on an empty directory: it must exit 0 by itself about 5 s after READY=1."""
    crash_dir, state_dir = _scratch(work, "idle-exit", automatic=True)
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    with _service(work, crash_dir, state_dir, daisy.url, "--idle-timeout", f"{timeout:g}") as service:
        code = service.proc.wait(timeout=timeout + 30)
        exited = _now_ns()
        stopping = service.notify.wait("STOPPING=1", after_ns=service.ready_ns, timeout=1)
    if code != 0:
        raise RuntimeError(f"the idle daemon exited {code}")
    return {
        "idle_timeout_s": timeout,
        "exit_code": code,
        "spawn_to_ready_s": (service.ready_ns - service.started_ns) / 1e9,
        "ready_to_exit_s": (exited - service.ready_ns) / 1e9,
        "ready_to_stopping_s": (stopping - service.ready_ns) / 1e9,
        "spawn_to_exit_s": (exited - service.started_ns) / 1e9,
    }


# The idle floor: the interpreter and asyncio, idling in epoll_wait like the daemon.
_FLOOR = """
import asyncio

async def main():
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _idle_floor() -> int:
    """VmRSS (KiB) of a bare asyncio process idling in its loop: what the daemon is compared with."""
    proc = subprocess.Popen([sys.executable, "-c", _FLOOR], stdout=subprocess.PIPE, env=child_env())
    try:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError("the idle floor process did not start")
        time.sleep(0.2)  # into epoll_wait, as the daemon's sample waits too
        return _sample(proc.pid).rss_kib
    finally:
        proc.kill()
        proc.wait()


# -- the run -------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _idle_part(work: Path, daisy: _Daisy, window: float, results: dict) -> None:
    """Idle over *window* s against the floor, then the idle exit; printed and put in *results*."""
    floor_kib = _idle_floor()
    idle = _idle(work, daisy, window)
    exit_run = _idle_exit(work, daisy)
    idle["floor_rss_kib"] = floor_kib
    idle["rss_over_floor"] = idle["rss_kib_max"] / floor_kib
    results["idle"], results["idle_exit"] = idle, exit_run
    print(
        f"daemon idle over {idle['window_s']:.1f} s: {idle['wakeups']} wake-ups (context switches, "
        f"{idle['threads']} thread(s)), CPU {idle['cpu_s'] * 1000:.0f} ms, VmRSS {mib(idle['rss_kib'])} "
        f"(max {mib(idle['rss_kib_max'])}, VmHWM {mib(idle['hwm_kib'])}); "
        f"{idle['switches_ready_to_window']} switches from READY=1 to the window; "
        f"SIGTERM → exit {idle['sigterm_to_exit_ms']:.0f} ms (exit {idle['sigterm_exit_code']}, "
        f"STOPPING=1 {'sent' if idle['sigterm_stopping_sent'] else 'NOT sent'})"
    )
    print(
        f"daemon idle floor (bare python + asyncio, idling): VmRSS {mib(floor_kib)}; "
        f"the daemon {idle['rss_over_floor']:.2f} times that"
    )
    print(
        f"daemon --idle-timeout 5, empty dir: exit {exit_run['exit_code']} after {exit_run['ready_to_exit_s']:.2f} s "
        f"from READY=1 ({exit_run['spawn_to_exit_s']:.2f} s from spawn; start-up {exit_run['spawn_to_ready_s']:.2f} s)"
    )
    quiet, small = idle["wakeups"] == 0, idle["rss_kib_max"] < TARGET_RSS_MIB * 1024
    exits = exit_run["exit_code"] == 0 and exit_run["ready_to_exit_s"] < exit_run["idle_timeout_s"] + 1
    print(
        f"daemon: SUMMARY idle: {idle['wakeups']} wake-ups in {idle['window_s']:.0f} s (target 0: "
        f"{_verdict(quiet)}), {mib(idle['rss_kib_max'])} RSS, {idle['rss_over_floor']:.2f} times the floor (target < {TARGET_RSS_MIB} MiB: {_verdict(small)}), "
        f"CPU {idle['cpu_s'] * 1000:.0f} ms; --idle-timeout 5 exits {exit_run['exit_code']} "
        f"{exit_run['ready_to_exit_s']:.2f} s after READY=1 ({_verdict(exits)})"
    )


def run_idle(quick: bool = False, bus: bool = False) -> dict:
    """The idle part alone (``python -m bench.daemon --idle``): floor, idle window, idle exit. With *bus*
    (``--bus``), on a private system bus (``tests/dbus_bus.py``), as deployed: the daemon then serves
    com.ubuntu.WhoopsiePreferences and follows NetworkManager (absent there) over dbus-fast."""
    results: dict = {"target": {"idle_rss_mib": TARGET_RSS_MIB}, "system_bus": bus}
    with tempfile.TemporaryDirectory(prefix="crashd-bench-daemon-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        if bus:
            from tests.dbus_bus import PrivateBus

            private = PrivateBus(work / "bus")
            stack.callback(private.stop)
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = private.start()  # child_env() passes it on
            print(f"daemon idle: on a private system bus ({private.address})")
        with _daisy(work / "daisy.log") as daisy:
            _idle_part(work, daisy, 10.0 if quick else 60.0, results)
    return results


def run(quick: bool = False) -> dict:
    """Latency (automatic, manual), queued 200/1,000, idle and idle exit; one daisy for all."""
    latency_count = 100 if quick else LATENCY_COUNT
    window = 10.0 if quick else 60.0
    rounds_200 = 1 if quick else 3
    results: dict = {
        "anchor": {"median_ms": WHOOPSIE_MEDIAN_MS, "queued_reports_per_s": WHOOPSIE_RATE},
        "target": {
            "median_ms": TARGET_MEDIAN_MS, "p99_ms": TARGET_P99_MS, "queued_reports_per_s": TARGET_RATE,
            "idle_rss_mib": TARGET_RSS_MIB,
        },
    }
    with tempfile.TemporaryDirectory(prefix="crashd-bench-daemon-") as tmp:
        work = Path(tmp)
        with _daisy(work / "daisy.log") as daisy:
            _latency_part(work, daisy, latency_count, results)
            _queued_part(work, daisy, rounds_200, results)
            _idle_part(work, daisy, window, results)

    latency_ok = True
    for kind in KINDS:
        auto, man = results[f"latency_automatic_{kind}"], results[f"latency_manual_{kind}"]
        floor = results[f"latency_floor_http_client_{kind}"]
        ok = max(auto["median_ms"], man["median_ms"]) <= TARGET_MEDIAN_MS
        ok = ok and max(auto["p99_ms"], man["p99_ms"]) <= TARGET_P99_MS
        latency_ok = latency_ok and ok
        print(
            f"daemon: SUMMARY latency {kind} → POST received: automatic {auto['median_ms']:.2f} ms median "
            f"(x{auto['median_over_floor']:.1f} the floor) / {auto['p99_ms']:.2f} ms p99, .upload "
            f"{man['median_ms']:.2f} (x{man['median_over_floor']:.1f}) / {man['p99_ms']:.2f} ms; floor "
            f"{floor['median_ms']:.2f} ms (target ≤ {TARGET_MEDIAN_MS:g} / ≤ {TARGET_P99_MS:g}; whoopsie "
            f"{WHOOPSIE_MEDIAN_MS[kind]} median): {_verdict(ok)}"
        )
    queued = results["queued"]
    for kind in KINDS:
        q = queued[f"{kind}-200"]
        print(
            f"daemon: SUMMARY queued {kind}: 200 at {q['reports_per_s']:.0f}/s (x{q['rate_over_floor']:.2f} the "
            f"http.client floor, {q['floor_reports_per_s']:.0f}/s; target ≥ {TARGET_RATE[kind]}/s, whoopsie "
            f"{WHOOPSIE_RATE}): {_verdict(q['reports_per_s'] >= TARGET_RATE[kind])}"
        )
    q1000 = queued["deps-1000"]
    print(f"daemon: SUMMARY queued deps: 1,000 at {q1000['reports_per_s']:.0f}/s (x{q1000['rate_over_floor']:.2f} the floor)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.daemon", description=__doc__.split("\n")[0],
        epilog="Scratch directories go in $TMPDIR: use /var/tmp on a disk whose /tmp is churned by tests.",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="fewer reports, a 10 s idle window")
    parser.add_argument("--idle", action="store_true", help="the idle part alone")
    parser.add_argument("--bus", action="store_true", help="with --idle: on a private system bus, D-Bus served")
    args = parser.parse_args()
    if args.idle:
        run_idle(args.quick, bus=args.bus)
    else:
        run(args.quick)
