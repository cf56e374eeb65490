"""Helpers shared by the benchmarks: child processes with their own peak RSS, the loopback
crash database as a separate process, statistics over repeated runs, and a fast writer
for multi-gigabyte apport-format cores.

Why a child for everything memory-related: ``ru_maxrss`` is a high-water mark, so the
only clean way to know what one command peaked at is to run it on its own and read
*that* process's rusage (``wait4``) -- never ``RUSAGE_CHILDREN`` of this process, which
also counts the server and every earlier child once they are reaped.
"""

from __future__ import annotations

import base64
import http.client
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
# daisy leaves deadbeef... tokens out of its counters; any 128 hex digits will do.
TOKEN = "deadbeef" + "0" * 120


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a crashd child: the source tree importable, no stray crashd settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


@dataclass(frozen=True)
class ChildRun:
    """One finished child: exit code, output, wall time, its own peak RSS and CPU time."""

    returncode: int
    stdout: str
    stderr: str
    wall: float  # seconds from fork to reaping
    maxrss_kib: int
    cpu: float  # user + system seconds of the child


# A tiny launcher between us and the measured command. On Linux a process's ru_maxrss
# starts at the high-water mark of the memory it was spawned from (vfork shares the
# parent's mm, and exec records its peak), so a command spawned straight from this
# process would "peak" at least at our own size. The launcher is small and fresh: its
# forked child starts from the launcher's few MiB. It times fork-to-reap itself.
_LAUNCHER = """
import os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(result, "w") as f:
    cpu = usage.ru_utime + usage.ru_stime
    f.write(f"{os.waitstatus_to_exitcode(status)} {wall!r} {usage.ru_maxrss} {cpu!r}")
"""


def run_child(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> ChildRun:
    """Run *argv* (argv[0] an absolute path): exit code, output, wall and CPU time, peak RSS.

    Output goes to temporary files rather than pipes: nothing has to read while the
    child runs, so neither its speed nor its memory depends on a reader.
    """
    with tempfile.TemporaryDirectory(prefix="crashd-bench-run-") as tmp:
        result = Path(tmp) / "result"
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", _LAUNCHER, str(result), *argv],
                stdout=out,
                stderr=err,
                env=env or child_env(),
                cwd=REPO,
                start_new_session=True,  # a timeout kills the launcher and the command together
            )
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        if not result.exists():
            raise RuntimeError(f"the launcher failed: {err_path.read_text(errors='replace')}")
        code, wall, maxrss, cpu = result.read_text().split()
        return ChildRun(
            int(code),
            out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"),
            float(wall),
            int(maxrss),
            float(cpu),
        )


def run_upload_all(crash_dir: Path, state_dir: Path, url: str, token: str) -> ChildRun:
    """A real ``crashd upload-all --json`` child on *crash_dir* (state beside it, never /var/lib/crashd)."""
    argv = [
        "upload-all",
        "--json",
        "--crash-dir",
        str(crash_dir),
        "--state-dir",
        str(state_dir),
        "--url",
        url,
    ]
    return run_child([sys.executable, "-m", "crashd", *argv], env=child_env(CRASH_DB_IDENTIFIER=token))


def post_bodies(url: str, bodies: Sequence[bytes]) -> float:
    """Seconds to POST every body back to back with bare ``http.client`` on one kept-alive connection:
    the floor the upload path is measured against (the server and loopback, nothing of crashd's)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)
    headers = {"Content-Type": "application/octet-stream"}
    started = time.perf_counter()
    try:
        for body in bodies:
            conn.request("POST", f"{parts.path.rstrip('/')}/{TOKEN}", body, headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the loopback daisy answered {answer.status}")
    finally:
        conn.close()
    return time.perf_counter() - started


def rss_now_kib() -> int:
    """This process's resident set now (not the high-water mark), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@contextmanager
def daisy_server(log: Path, *args: str) -> Iterator[str]:
    """The loopback daisy (``python -m tests.daisy``) as its own process; yields its URL.

    A separate process so its memory and its CPU accounting stay out of the measured
    client. Its per-request log goes to *log* (read afterwards for verification).
    """
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.daisy", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=child_env(),
            cwd=REPO,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()  # printed once it accepts connections
        if not line.startswith("listening on "):
            raise RuntimeError(f"the loopback daisy did not start: {line!r}; see {log}")
        yield line.removeprefix("listening on ")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass(frozen=True)
class Stats:
    """Repeated measurements of one quantity (lower is better, e.g. seconds)."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def worst(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """(worst - best) / median: how noisy the runs were."""
        return (self.worst - self.best) / self.median if self.median else 0.0

    def rate(self, count: float) -> tuple[float, float]:
        """(median, best) of count/sample, e.g. reports per second."""
        return count / self.median, count / self.best

    def describe(self, unit: str = "s") -> str:
        return (
            f"median {self.median:.4g} {unit}, best {self.best:.4g} {unit}, "
            f"spread {self.spread:.0%} over {len(self.samples)} runs"
        )


def free_bytes(path: str | Path) -> int:
    return shutil.disk_usage(path).free


def machine() -> dict[str, str]:
    """What the figures were measured on (for bench/out/results.json and the README)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


# -- a fast apport-format core ------------------------------------------------------------

_SEGMENT = 4 * MiB  # decoded bytes per repeated deflate segment
_LINE_RAW = 96 * KiB  # compressed bytes per base64 line (crashd's own writer makes ~this size)


def write_core_block(
    file: BinaryIO, key: str, size: int, *, random_fraction: float = 0.5, seed: int = 0
) -> int:
    """Append ``key: base64`` holding one gzip stream that decompresses to *size* bytes.

    Why not ``write_report``: gzip level 6 over gigabytes takes minutes. Instead one
    4 MiB segment (``random_fraction`` of it random, the rest zero pages, like a core)
    is deflated once at level 1 and ended with a full flush, so it references nothing
    before it and ends byte-aligned; repeating that segment's bytes is then a valid
    deflate stream of the repeated data. A gzip header line, the repeated segment
    lines and a trailer line (final empty block, CRC-32, size) complete it, each line
    its own base64 string as apport writes them. Returns the decoded size written.
    """
    if size % _SEGMENT:
        raise ValueError(f"size must be a multiple of {_SEGMENT} bytes")
    rng = random.Random(seed)
    noise = int(_SEGMENT * random_fraction)
    segment = rng.randbytes(noise) + bytes(_SEGMENT - noise)
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = deflate.compress(segment) + deflate.flush(zlib.Z_FULL_FLUSH)
    lines = b"".join(
        b" " + base64.b64encode(packed[i : i + _LINE_RAW]) + b"\n" for i in range(0, len(packed), _LINE_RAW)
    )
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # no name, no mtime, OS unix
    file.write(key.encode("ascii") + b": base64\n " + base64.b64encode(gzip_header) + b"\n")
    crc = 0
    for _ in range(size // _SEGMENT):
        file.write(lines)
        crc = zlib.crc32(segment, crc)
    final_block = b"\x03\x00"  # BFINAL=1, fixed Huffman, end-of-block only
    trailer = final_block + crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
    file.write(b" " + base64.b64encode(trailer) + b"\n")
    return size
