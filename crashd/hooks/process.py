"""The hook child as a process tree: started, talked to, bounded, killed whole, always reaped.

``child.py`` runs as a *keeper* (with this process's privileges: root in the daemon) that forks the
unprivileged *runner*, which forks one process per hook (see its docstring). Four pipes::

    requests   parent → runner (fd 0)     the report's fields, the hooks handed out
    protocol   runner → parent (fd 1)     start / done / batch: written by the runner alone
    output     hooks  → parent (fd 2)     what hooks and their commands print: counted, never parsed
    control    parent → keeper            closed by the parent: kill everything, reap, exit

:func:`crashd.process.start` sets the working directory, session, umask and an allow-listed
environment (in C between fork and exec: safe in the threaded daemon, aesthetics lesson 11);
``close_fds`` keeps every other descriptor out. The uid switch happens in the runner, never in
the keeper, which runs no hook code.

Bounds (aesthetics lesson 10), none of which anything the hooks send can raise: the caller's
*deadline* for the current step and the report's :class:`Budget` (an absolute deadline and an
output cap for all of the report's hooks together, protocol bytes included). Past any of them the
control pipe is closed: the keeper, a subreaper, SIGKILLs every process below it — also those
that left with ``setsid`` or a double fork, also those ignoring SIGTERM — and exits only when none
is left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from crashd import process
from crashd.hooks.accounts import CHILD, Account

__all__ = ["EXIT_REFUSED", "STARTUP_TIMEOUT", "Budget", "HookChild"]

log = logging.getLogger(__name__)

EXIT_REFUSED = 70  # child.py's status for "refusing to run as root" (or cannot become the hook user)
_TAIL = 64 * 1024  # how much of the hooks' own output is kept
STARTUP_TIMEOUT = 10.0  # seconds for an interpreter to start and speak, whatever the hook timeout
_END_TIMEOUT = 10.0  # seconds for the keeper to kill and reap its tree once told to
MiB = 1 << 20


@dataclass
class Budget:
    """The bounds of one report's hooks, shared by every child that runs them.

    Only the parent's runner code moves *deadline* (by a fixed amount per hook it hands out);
    *output* counts every byte any child of the report sent, and is never reset.
    """

    output_cap: int
    deadline: float  # time.monotonic()
    output: int = 0


class HookChild:
    """One keeper and its runner: writes requests, yields protocol messages, enforces the bounds.

    *tail* collects the end of the hooks' output; it is shared by the children of one report.
    The caller sets :attr:`deadline` (monotonic) and :attr:`deadline_reason` for each step.
    """

    def __init__(self, python: str, account: Account, limits: Mapping[str, int], *, budget: Budget,
                 tail: bytearray) -> None:  # fmt: skip
        self.python, self.budget, self.tail = python, budget, tail
        self.deadline = time.monotonic() + STARTUP_TIMEOUT
        self.deadline_reason = f"did not start within {STARTUP_TIMEOUT:g} s"
        self.failure: str | None = None
        self._pending = bytearray()
        self._lines = bytearray()
        self._eof = False
        config = {"account": {"uid": account.uid, "gid": account.gid, "groups": list(account.groups)},
                  "limits": dict(limits)}  # fmt: skip
        ends = [os.pipe() for _ in range(4)]
        (req_r, self._in), (self._out, proto_w), (self._err, out_w), (ctl_r, self._control) = ends
        try:
            self.proc = process.start(
                [python, "-I", str(CHILD), json.dumps(config), str(ctl_r)],
                env=account.environment(),
                stdin=req_r,
                stdout=proto_w,
                stderr=out_w,
                pass_fds=(ctl_r,),
            )
        except BaseException:
            for fd in (self._in, self._out, self._err, self._control):
                os.close(fd)
            raise
        finally:
            for fd in (req_r, proto_w, out_w, ctl_r):  # the tree's ends: only the tree holds them
                os.close(fd)
        self._selector = selectors.DefaultSelector()
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._selector.register(self._out, selectors.EVENT_READ)
        self._selector.register(self._err, selectors.EVENT_READ)
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):  # pidfd_open: Linux >= 5.3
            self._pidfd = os.pidfd_open(self.proc.pid)
            self._selector.register(self._pidfd, selectors.EVENT_READ)

    def send(self, message: Mapping[str, object]) -> None:
        self._pending += json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        self._want_write()

    def messages(self) -> Iterator[dict[str, object]]:
        """The runner's messages, until it and everything below the keeper have ended, or a bound is hit."""
        while not (self._eof and self._exited()):
            now = time.monotonic()
            if now >= self.budget.deadline:
                self.failure = "ran out of the time all of this report's hooks may take"
                return
            if now >= self.deadline:
                self.failure = self.deadline_reason
                return
            left = min(self.budget.deadline, self.deadline) - now
            for key, _ in self._selector.select(min(left, 0.05 if self._pidfd is None else left)):
                if key.fd == self._in:
                    self._write()
                elif key.fd in (self._out, self._err):
                    self._read(key.fd)
            if self.budget.output > self.budget.output_cap:
                self.failure = f"wrote more than {self.budget.output_cap / MiB:g} MiB of output"
                return
            yield from self._parse()
            if self.failure:
                return
        self._drain()
        yield from self._parse()

    def next_report(self, budget: Budget, tail: bytearray) -> None:
        """Take this kept child (a hook host) on for another report, with that report's own bounds."""
        self.budget, self.tail, self.failure = budget, tail, None
        self.deadline = time.monotonic() + STARTUP_TIMEOUT
        self.deadline_reason = f"did not answer within {STARTUP_TIMEOUT:g} s"

    def settled(self) -> bool:
        """Whether the report just run left this child fit to keep: every message asked for was read, none
        more, the hooks' output read to its end within the report's cap, and the runner still waiting.

        The runner answered the last batch after it killed and reaped everything the hooks started, so
        nothing writes to the output pipe any more: what is in it now belongs to the report just run.
        """
        self._drain()
        return (
            self.failure is None
            and not self._pending
            and not self._lines
            and not self._eof
            and self.budget.output <= self.budget.output_cap
            and not self._exited()
        )

    def end(self) -> None:
        """Make sure nothing of the tree is left: tell the keeper to kill it all, reap the keeper, close."""
        self._close_requests()  # a runner still waiting for work ends at once
        os.close(self._control)  # the keeper kills and reaps everything below it, then exits
        try:
            self.proc.wait(timeout=_END_TIMEOUT)
        except subprocess.TimeoutExpired:  # a process stuck in the kernel (D state): the keeper waits for it
            log.error("hook child %d did not end %g s after it was told to", self.proc.pid, _END_TIMEOUT)
            self.proc.kill()
            self.proc.wait()
        self._drain()
        self._selector.close()
        for fd in (self._out, self._err, self._pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def exit_problem(self) -> str | None:
        """A sentence for an exit that was not a clean end of the protocol, else None."""
        status = self.proc.returncode
        if status == 0:
            return None
        if status > 128:  # the keeper's way of saying the runner was killed by a signal
            status = 128 - status
        if status == EXIT_REFUSED:
            return "refused to run as root or could not switch to the hook user"
        return process.exit_sentence(status)

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
        except (BrokenPipeError, OSError):  # the runner is gone; its exit will tell
            self._pending.clear()
        if not self._pending:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._in)

    def _close_requests(self) -> None:
        if self._in >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._in)
            os.close(self._in)
            self._in = -1

    def _read(self, fd: int) -> bool:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        except OSError:  # closed
            return False
        if not data:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(fd)
            self._eof = self._eof or fd == self._out
            return False
        self.budget.output += len(data)
        if fd == self._out:
            self._lines += data
        else:
            self.tail += data
            del self.tail[:-_TAIL]
        return True

    def _drain(self) -> None:
        """Read what the tree wrote before it ended, within the cap, without waiting for anyone."""
        for fd in (self._out, self._err):
            while self.budget.output <= self.budget.output_cap and self._read(fd):
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
                self.failure = "broke crashd's hook protocol"
                return
            yield message
