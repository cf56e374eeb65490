"""upload_rate: 200 queued small reports sent to the loopback daisy, whole command and library call.

DESIGN.md §8: "200 queued reports, loopback — whoopsie 0.1.33: 0.108 s (≈ 1,850/s);
target: at least whoopsie's rate". whoopsie is not installable here: an external anchor.

Measured, each round on a fresh crash directory whose reports carry round-unique
``Date`` values (daisy answers 409 to a crash it has seen, which would be cheaper):

(a)  ``python -m crashd upload-all`` as a child: interpreter start, imports, identifier,
     the uploads, the JSON summary -- what a CI box waits for; plus the same command on
     an empty crash directory, which is the fixed part of (a);
(b)  ``crashd.upload_all.upload_all(...)`` alone, in this process, with an on-disk state
     store (each record save is fsynced); (b') the same with records kept in memory;
(c)  the server's ceiling: the same 200 BSON bodies posted with bare ``http.client``, on
     one keep-alive connection and on four, so a slow (b) can be told from a slow server;
(d)  where (b)'s time goes: one worker thread, with the POST, the record saves and the
     stamps timed (``--profile`` adds cProfile's top entries of that run).

The server runs ``--core-policy never``: no core is asked for. It is a Python
``ThreadingHTTPServer`` in its own process; on this 2-core machine it shares the CPUs
with the client, which whoopsie's anchor (against a different server) did not.
"""

from __future__ import annotations

import cProfile
import http.client
import io
import json
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench._common import TOKEN, Stats, daisy_server, run_upload_all
from crashd.delivery import Courier
from crashd.report import DEFAULT_LIMITS, read_report, write_report
from crashd.spool import Spool
from crashd.state import StateStore
from crashd.upload_all import WORKERS, upload_all
from crashd.uploader import DirectUploader, HttpTransport, encode_report

COUNT = 200
WHOOPSIE_RATE = COUNT / 0.108  # reports/s, external anchor


def write_queue(directory: Path, tag: str, count: int = COUNT) -> Path:
    """*count* small reports (~1.5 KiB) with round-unique Dates, in a fresh crash directory."""
    directory.mkdir()
    directory.chmod(0o3777)  # as /var/crash
    for i in range(count):
        name = f"app{i:03d}"
        frames = "\n".join(
            f"#{n}  0x{0x7F0000001000 + 64 * n + i:x} in func{n} () from /lib/libx.so.1" for n in range(8)
        )
        fields = {
            "ProblemType": "Crash",
            "Architecture": "amd64",
            "Date": f"Sat Nov 21 21:00:00 2026 {tag}",
            "DistroRelease": "Ubuntu 24.04",
            "ExecutablePath": f"/usr/bin/{name}",
            "Package": f"{name} 1.0",
            "ProcCmdline": f"/usr/bin/{name} --run",
            "ProcStatus": f"Name:\t{name}\nState:\tS (sleeping)\nPid:\t{1000 + i}\nVmRSS:\t12345 kB",
            "Signal": "11",
            "SignalName": "SIGSEGV",
            "Stacktrace": frames,
            "StacktraceTop": "\n".join(f"func{n} () from /lib/libx.so.1" for n in range(5)),
            "Uname": "Linux 6.8.0-51-generic x86_64",
        }
        with (directory / f"_usr_bin_{name}.0.crash").open("wb") as f:
            write_report(f, fields)
    return directory


def _cli(crash_dir: Path, state_dir: Path, url: str) -> tuple[float, dict]:
    result = run_upload_all(crash_dir, state_dir, url, TOKEN)
    if not result.stdout:
        raise RuntimeError(f"upload-all printed nothing (exit {result.returncode}): {result.stderr}")
    return result.wall, json.loads(result.stdout)


class _Timed:
    """Seconds spent in a few methods of objects this benchmark built, summed per label.

    Instance attributes shadow the methods, so crashd's code is measured exactly as it
    runs, and nothing in crashd is patched.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrap(self, obj: object, method: str, label: str) -> None:
        inner = getattr(obj, method)

        def timed(*args: object, **kwargs: object) -> object:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                    self.calls[label] = self.calls.get(label, 0) + 1

        setattr(obj, method, timed)


def _library(
    crash_dir: Path, state_dir: Path | None, url: str, workers: int = WORKERS, timed: _Timed | None = None
) -> tuple[float, int]:
    """Time the ``upload_all`` call alone; spool, transport and state store are built outside the timer.

    *state_dir* None keeps the delivery records in memory (no fsync), to show what durability costs.
    """
    transport = HttpTransport()
    store = StateStore(state_dir)
    with Spool(crash_dir) as spool:
        if timed is not None:
            timed.wrap(transport, "post", "POST (http.client + server)")
            timed.wrap(store, "save", "state record save (write + fsync + rename)")
            timed.wrap(spool, "mark_upload", ".upload stamp")
            timed.wrap(spool, "mark_uploaded", ".uploaded stamp")
        courier = Courier(DirectUploader(transport), url, TOKEN, store)
        started = time.perf_counter()
        summary = upload_all(spool, courier, limits=DEFAULT_LIMITS, workers=workers)
        elapsed = time.perf_counter() - started
    transport.close()
    return elapsed, sum(1 for status in summary.reports if status.state.value == "sent")


def _bodies(crash_dir: Path) -> list[bytes]:
    bodies = []
    for path in sorted(crash_dir.glob("*.crash")):
        with path.open("rb") as f:
            bodies.append(encode_report(read_report(f)))
    return bodies


def _raw_posts(url: str, bodies: list[bytes], connections: int) -> float:
    """POST every body with bare http.client over *connections* keep-alive connections."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/octet-stream"}
    shares = [bodies[i::connections] for i in range(connections)]

    def send(share: list[bytes]) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
        for body in share:
            conn.request("POST", f"/{TOKEN}", body, headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the loopback daisy answered {answer.status}")
        conn.close()

    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def _profile(crash_dir: Path, state_dir: Path, url: str, top: int = 25) -> str:
    """cProfile of ``upload_all`` with one worker thread, the profiler switched on inside that thread."""
    profiler = cProfile.Profile()

    def start_in_thread(*_: object) -> None:
        sys.setprofile(None)
        profiler.enable()  # replaces this hook for the rest of the worker thread's life

    threading.setprofile(start_in_thread)
    try:
        _library(crash_dir, state_dir, url, workers=1)
    finally:
        threading.setprofile(None)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _rates(stats: Stats) -> dict[str, float]:
    median, best = stats.rate(COUNT)
    return {
        "seconds_median": stats.median,
        "seconds_best": stats.best,
        "spread": stats.spread,
        "reports_per_s_median": median,
        "reports_per_s_best": best,
    }


def run(quick: bool = False, profile: bool = False) -> dict:
    """Rounds of (a), (b), (c), then (d) once, each on fresh reports, against one loopback daisy."""
    rounds = 2 if quick else 5
    results: dict = {"reports": COUNT, "anchor_reports_per_s": WHOOPSIE_RATE, "rounds": rounds}
    samples: dict[str, list[float]] = {
        k: [] for k in ("cli", "library", "library_memory_state", "raw_http_1", "raw_http_4")
    }
    with tempfile.TemporaryDirectory(prefix="crashd-bench-rate-") as tmp:
        work = Path(tmp)
        fresh = iter(range(1_000_000))

        def queue() -> Path:
            n = next(fresh)
            return write_queue(work / f"crash{n}", f"run{n}")

        def state() -> Path:
            return work / f"state{next(fresh)}"

        with daisy_server(work / "daisy.log", "--core-policy", "never") as url:
            (work / "empty").mkdir()
            fixed = Stats(tuple(_cli(work / "empty", state(), url)[0] for _ in range(rounds)))
            for _ in range(rounds):
                wall, summary = _cli(queue(), state(), url)
                if summary["sent"] != COUNT:
                    raise RuntimeError(
                        f"upload-all sent {summary['sent']} of {COUNT}: {summary['reports'][:3]}"
                    )
                samples["cli"].append(wall)
                for key, state_dir in (("library", state()), ("library_memory_state", None)):
                    elapsed, sent = _library(queue(), state_dir, url)
                    if sent != COUNT:
                        raise RuntimeError(f"upload_all() sent {sent} of {COUNT}")
                    samples[key].append(elapsed)
                samples["raw_http_1"].append(_raw_posts(url, _bodies(queue()), 1))
                samples["raw_http_4"].append(_raw_posts(url, _bodies(queue()), 4))
            timed = _Timed()
            serial, _ = _library(queue(), state(), url, workers=1, timed=timed)
            profile_text = _profile(queue(), state(), url) if profile else None
    labels = {
        "cli": "(a) crashd upload-all",
        "library": "(b) upload_all()",
        "library_memory_state": "(b') state in memory",
        "raw_http_1": "(c) bare http.client x1",
        "raw_http_4": "(c) bare http.client x4",
    }
    for key, values in samples.items():
        stats = Stats(tuple(values))
        results[key] = _rates(stats)
        median, best = stats.rate(COUNT)
        print(
            f"upload_rate {labels[key]:<26}: {stats.describe()}; {median:5.0f} reports/s median, "
            f"{best:5.0f} best, x{median / WHOOPSIE_RATE:.2f} whoopsie"
        )
    results["cli_empty_dir_seconds"] = fixed.median
    print(
        f"upload_rate (a) on an empty crash dir  : {fixed.describe()} (start, imports, identifier: the fixed cost)"
    )
    results["serial"] = {
        "seconds": serial,
        "ms_per_report": {k: v / COUNT * 1000 for k, v in timed.seconds.items()},
    }
    rest = serial - sum(timed.seconds.values())
    print(
        f"upload_rate (d) one worker: {serial:.3f} s = {serial / COUNT * 1000:.2f} ms/report: "
        + ", ".join(
            f"{label} {seconds / COUNT * 1000:.2f} ({timed.calls[label] / COUNT:g} calls)"
            for label, seconds in timed.seconds.items()
        )
        + f", the rest (open, stamp checks, index, BSON, record reads, threads) {rest / COUNT * 1000:.2f} ms"
    )
    if profile_text:
        print(profile_text)
    lib, cli, raw = results["library"], results["cli"], results["raw_http_4"]
    print(
        f"upload_rate: SUMMARY {COUNT} reports: upload_all() {lib['seconds_median']:.3f} s median "
        f"({lib['reports_per_s_median']:.0f}/s, x{lib['reports_per_s_median'] / WHOOPSIE_RATE:.2f} whoopsie's "
        f"{WHOOPSIE_RATE:.0f}/s; {results['library_memory_state']['reports_per_s_median']:.0f}/s without fsync); "
        f"whole command {cli['seconds_median']:.3f} s ({cli['reports_per_s_median']:.0f}/s, "
        f"x{cli['reports_per_s_median'] / WHOOPSIE_RATE:.2f}); server ceiling {raw['reports_per_s_median']:.0f}/s"
    )
    return results


if __name__ == "__main__":
    run("--quick" in sys.argv[1:], "--profile" in sys.argv[1:])
