"""Running `python -m crashd daemon` as a real process, with readiness waited on, never slept on.

    with run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "30") as daemon:
        drop(crash_dir / "_usr_bin_x.0.crash", crash("x"))
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=10)

The daemon gets a scratch crash dir (mode 3777, like /var/crash), a scratch state dir
(never /var/lib/crashd), the test system token in CRASH_DB_IDENTIFIER, and NOTIFY_SOCKET
pointing at an AF_UNIX datagram socket bound here: `run_daemon` returns once READY=1
has arrived on it. stderr goes to a file (the daemon logs a line per report; a pipe
nobody drains would block it), and the process is killed at the end whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from crashd.report import write_report
from tests.settings import default_config
from tests.test_cli import REPO
from tests.test_upload_all import TOKEN, crash

__all__ = ["TOKEN", "Daemon", "crash", "crash_dir_at", "crashd_status", "drop", "run_daemon", "wait_until"]


def crash_dir_at(path: Path) -> Path:
    """A fresh crash directory, mode 3777 as /var/crash."""
    path.mkdir()
    path.chmod(0o3777)
    return path


def drop(path: Path, fields: dict | bytes, owner: tuple[int, int] | None = None) -> Path:
    """Write a report as apport does: under a hidden temporary name in the same directory, then rename.

    The daemon sees one IN_MOVED_TO of a complete file. *fields* may be raw bytes for
    reports the writer would refuse to produce.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as f:
        if isinstance(fields, bytes):
            f.write(fields)
        else:
            write_report(f, fields)
    if owner is not None:
        os.chown(temporary, *owner)
    os.rename(temporary, path)
    return path


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    """Poll something no server or socket reports (a file, a process) until it holds or *timeout* passes."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return predicate()
        time.sleep(step)
    return True


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR", "NOTIFY_SOCKET")
    }
    return env | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN} | (extra or {})


def _locations(crash_dir: Path, state_dir: Path, config: Path | None) -> tuple[list[str], list[str]]:
    head = [sys.executable, "-m", "crashd", "--config", str(config or default_config())]
    return head, ["--crash-dir", str(crash_dir), "--state-dir", str(state_dir)]


def crashd_status(crash_dir: Path, state_dir: Path) -> dict[str, dict]:
    """`crashd status --json`, by report name."""
    head, where = _locations(crash_dir, state_dir, None)
    result = subprocess.run(
        [*head, "status", "--json", *where], capture_output=True, text=True, env=_environment(), timeout=60
    )
    assert result.returncode == 0 and result.stdout, result.stderr
    return {entry["name"]: entry for entry in json.loads(result.stdout)["reports"]}


class Daemon:
    """A running `crashd daemon` and what it told systemd (datagrams on NOTIFY_SOCKET)."""

    def __init__(self, process: subprocess.Popen[bytes], notify: socket.socket, stderr: Path, started: float):
        self.process, self.pid, self.stderr_path, self.started = process, process.pid, stderr, started
        self._notify = notify
        self._cond = threading.Condition()
        self._messages: list[tuple[float, str]] = []  # (monotonic time received, assignment)
        self._closed = threading.Event()
        self._lines: list[str] = []  # stderr lines read so far
        self._offset = 0
        notify.settimeout(0.1)
        self._reader = threading.Thread(target=self._read, name="sd_notify", daemon=True)
        self._reader.start()

    # -- sd_notify

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                datagram = self._notify.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._cond:
                self._messages.extend((now, line) for line in datagram.decode().splitlines() if line)
                self._cond.notify_all()

    def close(self) -> None:
        self._closed.set()
        self._reader.join(5)
        self._notify.close()

    @property
    def messages(self) -> list[str]:
        with self._cond:
            return [line for _, line in self._messages]

    def wait_message(self, pattern: str, timeout: float) -> tuple[float, str] | None:
        """The first assignment matching *pattern* (a regex, anchored at the start) with its arrival time."""
        regex = re.compile(pattern)

        def found() -> tuple[float, str] | None:
            return next(((t, line) for t, line in self._messages if regex.match(line)), None)

        end = time.monotonic() + timeout
        with self._cond:
            while (hit := found()) is None:
                left = end - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    return None
                self._cond.wait(min(left, 0.1))  # re-check the process too: a dead daemon sends nothing
            return hit

    # -- the process

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None if it is still running after *timeout*."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self, timeout: float = 10) -> int | None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def log_lines(self) -> list[str]:
        """The complete stderr lines so far (read incrementally: the log can grow large)."""
        with self.stderr_path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data.rpartition(b"\n")[0]
        if complete:
            self._offset += len(complete) + 1
            self._lines.extend(complete.decode(errors="replace").split("\n"))
        return self._lines

    def log_line(self, pattern: str, timeout: float) -> str | None:
        """Wait for a stderr line matching *pattern* (a regex searched in each line); None if none came."""
        regex = re.compile(pattern)
        found: list[str] = []

        def check() -> bool:
            found[:] = [line for line in self.log_lines() if regex.search(line)][:1]
            return bool(found) or not self.alive()

        wait_until(check, timeout, 0.01)
        return found[0] if found else None

    def vm_hwm_kib(self) -> int:
        """Peak resident memory (VmHWM) of the daemon so far, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM line")

    def __repr__(self) -> str:
        return f"<crashd daemon pid {self.pid}: {'running' if self.alive() else self.process.returncode}>"


def start_daemon(
    crash_dir: Path,
    state_dir: Path,
    url: str,
    *args: str,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    notify_dir: Path,
    stderr: Path,
) -> Daemon:
    """Start the daemon without waiting for readiness (see :func:`run_daemon`)."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    address = notify_dir / "notify"
    notify.bind(str(address))
    head, where = _locations(crash_dir, state_dir, config)
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [*head, "daemon", *where, "--url", url, *args],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            env=_environment((env or {}) | {"NOTIFY_SOCKET": str(address)}),
        )
    return Daemon(process, notify, stderr, time.monotonic())


@contextlib.contextmanager
def run_daemon(
    crash_dir: Path,
    state_dir: Path,
    url: str,
    *args: str,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    ready: bool = True,
    ready_timeout: float = 20,
) -> Iterator[Daemon]:
    """A running daemon; with *ready*, only once READY=1 has arrived on NOTIFY_SOCKET.

    Killed (SIGKILL) on the way out if it is still running; the notify socket is
    closed and its directory removed.
    """
    notify_dir = Path(tempfile.mkdtemp(prefix="crashd-notify-"))  # short: sun_path holds 108 bytes
    stderr = Path(tempfile.mkstemp(prefix="crashd-daemon-", suffix=".log")[1])
    daemon = None
    try:
        daemon = start_daemon(
            crash_dir, state_dir, url, *args, config=config, env=env, notify_dir=notify_dir, stderr=stderr
        )
        if ready and daemon.wait_message(r"READY=1$", ready_timeout) is None:
            raise AssertionError(f"no READY=1 within {ready_timeout} s ({daemon}); stderr:\n{daemon.stderr}")
        yield daemon
    finally:
        if daemon is not None:
            if daemon.alive():
                daemon.process.kill()
            daemon.process.wait(10)
            daemon.close()
        shutil.rmtree(notify_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            stderr.unlink()
