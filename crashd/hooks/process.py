"""The hook child as a process: started unprivileged, talked to, bounded, killed, always reaped.

The privilege drop is ``subprocess``'s own ``user``/``group``/``extra_groups``/
``umask`` (done in C between fork and exec: safe in the threaded daemon, unlike a
``preexec_fn``, aesthetics lesson 11); ``start_new_session`` gives the child its
own session and process group; the environment is built from an allow-list;
``close_fds`` keeps every descriptor but the three pipes out.

Bounds (aesthetics lesson 10): *timeout* seconds per step of the protocol
(at least ``STARTUP_TIMEOUT`` for the interpreter to start), and
*output_cap* bytes of output (stdout and stderr together) per hook, read
incrementally from non-blocking pipes. Past either, :func:`kill_tree` stops the
child and every descendant (also those that left the group with ``setsid``) and
kills them with the group. After a normal exit the group is killed *before* the
leader is reaped, so its id cannot have been reused meanwhile. The exit status
becomes a sentence (:meth:`HookChild.exit_problem`).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping

from crashd.hooks.accounts import Account

__all__ = ["EXIT_REFUSED", "HookChild", "kill_tree"]

EXIT_REFUSED = 70  # child.py's status for "refusing to run as root"
_TAIL = 64 * 1024  # how much of the hooks' own output (stderr) is kept
STARTUP_TIMEOUT = 10.0  # seconds for an interpreter to start and speak, whatever the hook timeout
MiB = 1 << 20


class HookChild:
    """One running hook child: writes requests, yields protocol messages, enforces time and output bounds.

    *tail* collects the end of the child's stderr (what hooks print); it is
    shared by the children of one report.
    """

    def __init__(
        self, argv: list[str], account: Account, *, timeout: float, output_cap: int, tail: bytearray
    ) -> None:
        self.proc = proc = _spawn(argv, account)
        try:
            self._setup(proc)
        except BaseException:
            kill_tree(proc.pid)  # never leave a child unbounded or unreaped, whatever failed
            proc.wait()
            raise
        self.python, self.timeout, self.output_cap, self.tail = argv[0], timeout, output_cap, tail

    def _setup(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin and proc.stdout and proc.stderr
        self.failure: str | None = None
        self.output = 0  # bytes read from the child since the current hook started
        self._pending = bytearray()
        self._closing = False
        self._lines = bytearray()
        self._selector = selectors.DefaultSelector()
        self._in, self._out, self._err = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._selector.register(self._out, selectors.EVENT_READ)
        self._selector.register(self._err, selectors.EVENT_READ)
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):  # pidfd_open: Linux >= 5.3
            self._pidfd = os.pidfd_open(proc.pid)
            self._selector.register(self._pidfd, selectors.EVENT_READ)

    def send(self, message: Mapping[str, object]) -> None:
        self._pending += json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        self._want_write()

    def close_input(self) -> None:
        self._closing = True
        self._want_write()

    @property
    def input_closed(self) -> bool:
        """True once the last batch was handed out: the child may end."""
        return self._closing

    def messages(self) -> Iterator[dict[str, object]]:
        # Until the child's first word only our own start-up runs, not a hook: a short hook timeout
        # must not fail a child that a busy machine starts slowly.
        deadline = time.monotonic() + max(self.timeout, STARTUP_TIMEOUT)
        while not self._exited():
            left = deadline - time.monotonic()
            if left <= 0:
                self.failure = f"timed out after {self.timeout:g} s"
                return
            wait = min(left, 0.05 if self._pidfd is None else left)
            for key, _ in self._selector.select(wait):
                if key.fd == self._in:
                    self._write()
                elif key.fd in (self._out, self._err):
                    self._read(key.fd)
            if self.output > self.output_cap:
                self.failure = f"wrote more than {self.output_cap / MiB:g} MiB of output"
                return
            for message in self._parse():
                # Progress: the next step gets a full timeout.
                deadline = time.monotonic() + self.timeout
                yield message
            if self.failure:
                return
        self._drain()
        yield from self._parse()

    def end(self) -> None:
        """Make sure nothing of the child is left: kill what must die, reap, close."""
        if self.failure is not None or not self._exited():
            kill_tree(self.proc.pid)
        else:  # exited: its zombie keeps the group id taken while we clean the group up
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._drain()
        self.proc.wait()
        self._selector.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def exit_problem(self) -> str | None:
        """A sentence for an exit that was not a clean end of the protocol, else None."""
        status = self.proc.returncode
        if status == 0:
            return None
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            return f"was killed by {name}"
        if status == 127:
            return f"could not start: {self.python} not found (exit status 127)"
        if status == EXIT_REFUSED:
            return "refused to run as root"
        return f"exited with status {status}"

    def last_words(self) -> str:
        lines = self.tail[-2000:].decode("utf-8", "replace").strip().splitlines()[-5:]
        return (":\n" + "\n".join(lines)) if lines else ""

    def _exited(self) -> bool:
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _want_write(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.register(self._in, selectors.EVENT_WRITE)
        self._write()

    def _write(self) -> None:
        try:
            while self._pending:
                del self._pending[: os.write(self._in, self._pending[: 1 << 20])]
        except BlockingIOError:
            return
        except BrokenPipeError:  # the child is gone; its exit status will tell
            self._pending.clear()
        if self._closing or not self._pending:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._in)
        if self._closing and not self._pending and self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def _read(self, fd: int) -> bool:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not data:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            return False
        self.output += len(data)
        if fd == self._out:
            self._lines += data
        else:
            self.tail += data
            del self.tail[:-_TAIL]
        return True

    def _drain(self) -> None:
        """Read what the child wrote before it ended, without waiting for anyone still holding a pipe."""
        for fd in (self._out, self._err):
            while self.output <= self.output_cap and self._read(fd):
                pass

    def _parse(self) -> Iterator[dict[str, object]]:
        while (end := self._lines.find(b"\n")) >= 0:
            line = bytes(self._lines[:end])
            del self._lines[: end + 1]
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                self.failure = "wrote something that is not crashd's hook protocol"
                return
            yield message


def kill_tree(pid: int) -> None:
    """SIGKILL the child, its group, and every descendant — also those that left the group with ``setsid``.

    The child is stopped first: as a subreaper it then collects the orphans of its
    tree, and, unable to reap them, keeps their pids from being reused while they
    are found (by parent pid, from ``/proc``), stopped in turn, and killed.
    Limit: once the child itself is gone (a hook called ``os._exit``), orphans that
    also left the group have been re-parented to init and are out of reach; only
    a pid namespace or a cgroup would hold those.
    """
    tree = {pid}
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    for _ in range(100):
        new = {p for p, parent in _parents().items() if parent in tree and p not in tree}
        if not new:
            break
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        tree |= new
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    parents[int(name)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def _spawn(argv: list[str], account: Account) -> subprocess.Popen[bytes]:
    switch: dict[str, object] = {}
    if os.geteuid() == 0:
        switch = {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}
    return subprocess.Popen(  # type: ignore[call-overload]
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=account.environment(),
        cwd="/",
        umask=0o077,
        start_new_session=True,
        close_fds=True,
        **switch,
    )
