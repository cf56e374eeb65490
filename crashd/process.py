"""The one door for child processes, privileges, ``prctl`` and ``/proc`` (DESIGN.md §7).

Every child crashd starts — the hook child, the upload worker, ``journalctl``, the
commands crashd's own hooks and its compat apport run — starts here, the same way:

- an environment built from an allow-list (:func:`environment`), nothing inherited;
- stdin ``/dev/null`` unless the caller hands a pipe, every other descriptor closed
  (``close_fds``; *pass_fds* names the exceptions), cwd ``/``, umask 077, a session of its own;
- resource limits (at least no core file), lowered right after the start with ``prlimit``:
  ``subprocess`` sets everything else in C between fork and exec, and a ``preexec_fn``
  is unsafe in the threaded daemon;
- a timeout (:func:`run`) or an owner that bounds it (the hook child, the worker), and always
  reaped — :func:`stop` kills the child's whole process group and waits for it;
- its end said as a sentence (:func:`exit_sentence`).

Privileges are dropped one way (:func:`drop_privileges`: groups, gid, uid, ``no_new_privs``,
then verified in ``/proc/self/status``); this module is the only caller of ``prctl`` and the
only reader of ``/proc/PID/stat`` and ``/proc/PID/status``.

**Standard library only, and nothing of crashd.** The hook child (``hooks/child.py``) runs by
path under the system ``python3 -I``, where crashd need not be importable (a source tree, a
venv) and where the daemon's modules must stay out of the hooks' reach; so it loads *this file*
by path (``importlib.util.spec_from_file_location``, beside the package) and registers it as
``sys.modules["crashd_process"]`` before any hook runs. crashd's compat apport runs inside that
child and does ``import crashd_process`` by that name; everything else imports
:mod:`crashd.process`. Imports that cost start-up time (``subprocess``, ``ctypes``) happen on
first use: the hook child's start is the hook overhead (DESIGN.md §8).

Longer than ~400 lines on purpose: one concept (the process door), and one file, because the
hook child loads it by path and can load no package around it.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence

TYPE_CHECKING = False  # typing costs the hook child start-up time; the names below are for checkers only
if TYPE_CHECKING:
    from typing import IO, Any

__all__ = [
    "DEVNULL",
    "PIPE",
    "SAFE_PATH",
    "STDOUT",
    "Finished",
    "PrivilegeError",
    "children",
    "cpu_limit",
    "drop_privileges",
    "end_descendants",
    "environment",
    "exit_sentence",
    "exit_when_orphaned",
    "not_dumpable",
    "parent_of",
    "parse_status",
    "read_status",
    "release_free_memory",
    "run",
    "set_limits",
    "start",
    "stop",
    "subreaper",
    "tasks_of",
]

SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
IDENTITY = ("HOME", "USER", "LOGNAME")  # what a hook's own commands keep of the hook's environment
CAP = 8 << 20  # bytes of output run() keeps by default
NO_CORE = {resource.RLIMIT_CORE: 0}
PIPE, STDOUT, DEVNULL = -1, -2, -3  # subprocess's, without importing it
_PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 4, 36, 38


class PrivilegeError(RuntimeError):
    """The privilege drop did not take: the process must not go on."""


# -- the environment and the exit status -----------------------------------------------------------


def environment(
    *, passed: Iterable[str] = (), source: Mapping[str, str] | None = None, **values: str
) -> dict[str, str]:
    """A child's whole environment: ``PATH`` and ``LANG``, the names in *passed* that *source*
    (``os.environ``) sets to something, then *values*. Nothing else is inherited."""
    source = os.environ if source is None else source
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    env.update({name: source[name] for name in passed if source.get(name)})
    env.update(values)
    return env


def exit_sentence(status: int) -> str:
    """A child's exit status (``Popen.returncode``: negative for a signal) as the end of a sentence."""
    if status < 0:
        try:
            name = f" ({signal.Signals(-status).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {-status}{name}"
    return f"exited with status {status}"


# -- starting, stopping, running -------------------------------------------------------------------


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    pass_fds: Sequence[int] = (),
    limits: Mapping[int, int] = NO_CORE,
) -> Any:  # subprocess.Popen[bytes], imported on first use
    """Start *argv* the one way (see the module docstring); *stdin* None is ``/dev/null``.

    *env* is required: build it with :func:`environment`. The caller owns the child and must end
    it with :func:`stop` or wait for it; :func:`run` does both.
    """
    import subprocess

    proc = subprocess.Popen(
        list(argv),
        stdin=DEVNULL if stdin is None else stdin,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        close_fds=True,
        env=dict(env),
        cwd="/",
        umask=0o077,
        start_new_session=True,
    )
    for which, value in limits.items():
        with contextlib.suppress(ProcessLookupError, PermissionError):  # ended already; became setuid
            resource.prlimit(proc.pid, which, _lowered(value, resource.prlimit(proc.pid, which)[1]))
    return proc


def stop(proc: Any, timeout: float = 5.0) -> int | None:
    """SIGKILL *proc*'s process group and reap it: its exit status, or None if it is stuck in the kernel."""
    import subprocess

    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


class Finished:
    """What :func:`run` saw: *status* (None when it was stopped: *problem* says why) and *output*."""

    __slots__ = ("output", "problem", "status")

    def __init__(self, status: int | None, output: bytes, problem: str | None) -> None:
        self.status, self.output, self.problem = status, output, problem

    @property
    def failure(self) -> str | None:
        """None for exit status 0, else a sentence: the bound it hit, or how it ended."""
        if self.problem is not None:
            return self.problem
        return None if self.status == 0 else exit_sentence(self.status or 0)

    def __repr__(self) -> str:
        return f"Finished(status={self.status!r}, output={self.output[:80]!r}, problem={self.problem!r})"


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input: bytes | str | None = None,
    stdout: int | IO[Any] | None = PIPE,
    stderr: int | IO[Any] | None = DEVNULL,
    cap: int = CAP,
    keep: Callable[[bytes], bool] | None = None,
    limits: Mapping[int, int] = NO_CORE,
) -> Finished:
    """Run *argv* to its end within *timeout* seconds, reading at most *cap* bytes of its output.

    The output is what comes through the one :data:`PIPE` among *stdout* and *stderr* — *stderr*
    :data:`STDOUT` merges the two, :data:`DEVNULL` (the default) drops it, None leaves it where
    ours goes. Past *timeout* or *cap* the child's process group is
    killed and ``status`` is None. With *keep*, the output is read line by line and only the lines
    *keep* accepts are kept, up to *cap* (the rest are read and dropped, never a failure). *env*
    None is :func:`environment` with our :data:`IDENTITY`. OSError when *argv* cannot be started.
    """
    import selectors
    import subprocess
    import time

    piped = [stream for stream in (stdout, stderr) if stream == PIPE]
    if len(piped) != 1:
        raise ValueError("run() reads exactly one pipe: stdout or stderr")
    proc = start(
        argv, env=environment(passed=IDENTITY) if env is None else env, limits=limits,
        stdin=PIPE if input is not None else None, stdout=stdout, stderr=stderr,
    )  # fmt: skip
    pipe = proc.stdout if stdout == PIPE else proc.stderr
    pending = memoryview(input.encode() if isinstance(input, str) else input or b"")
    output, partial, problem = bytearray(), bytearray(), None
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(pipe, selectors.EVENT_READ)
            if proc.stdin:
                os.set_blocking(proc.stdin.fileno(), False)
                selector.register(proc.stdin, selectors.EVENT_WRITE)
            while selector.get_map() and problem is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    problem = f"timed out after {timeout:g} seconds"
                    break
                for key, _ in selector.select(left):
                    if key.fileobj is proc.stdin:
                        try:
                            pending = pending[os.write(proc.stdin.fileno(), pending[: 1 << 16]) :]
                        except BrokenPipeError:
                            pending = pending[:0]
                        if not pending:
                            selector.unregister(proc.stdin)
                            proc.stdin.close()
                        continue
                    data = os.read(pipe.fileno(), 1 << 16)
                    if not data:
                        selector.unregister(pipe)
                        data = b"\n" if partial else b""  # the last line, unterminated
                    if keep is None:
                        output += data
                        if len(output) > cap:
                            problem = f"wrote more than {cap / (1 << 20):g} MiB"
                        continue
                    partial += data
                    *lines, rest = partial.split(b"\n")
                    partial[:] = rest
                    for line in lines:
                        if len(output) < cap and keep(line + b"\n"):
                            output += line + b"\n"
        if problem is None:  # its output ended; it may still run (a daemon it became): bounded too
            try:
                status = proc.wait(timeout=max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                problem = f"timed out after {timeout:g} seconds"
    finally:
        if problem is not None or proc.returncode is None:  # a bound, or an exception on our side
            stop(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
    return Finished(None if problem else status, bytes(output[:cap]), problem)


# -- limits ----------------------------------------------------------------------------------------


def _lowered(value: int, hard: int) -> tuple[int, int]:
    """(soft, hard) for a limit of *value*: a limit already lower stays as it is."""
    new = value if hard == resource.RLIM_INFINITY else min(value, hard)
    return new, new


def set_limits(limits: Mapping[int, int]) -> None:
    """Lower this process's soft and hard ``resource.RLIMIT_*`` limits to *limits* (never raise one)."""
    for which, value in limits.items():
        resource.setrlimit(which, _lowered(value, resource.getrlimit(which)[1]))


def cpu_limit(seconds: float) -> None:
    """Allow this process *seconds* more of CPU time; SIGXCPU ends it past that."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime + seconds) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


# -- prctl and privileges --------------------------------------------------------------------------


def _prctl(option: int, value: int) -> None:
    import ctypes  # imported here, not at the top: loading ctypes costs the hook child start-up time

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def not_dumpable() -> None:
    """No process of our user may ptrace us, open our ``/proc/PID/fd`` or ``pidfd_getfd()`` our fds."""
    _prctl(_PR_SET_DUMPABLE, 0)


def subreaper() -> None:
    """Orphans of our descendants become our children (whatever ``setsid`` or double fork they did)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); False where there is none.

    A long-lived process keeps the heap it grew to: the daemon's start-up (imports, the first tidy) and
    each burst of reports leave freed memory that glibc holds on to (~0.7 MiB of an idle daemon's RSS,
    issue 15). Called when the daemon goes idle, never on the path of a report; a few hundred µs.
    """
    glibc = "CS_GNU_LIBC_VERSION" in os.confstr_names and os.confstr("CS_GNU_LIBC_VERSION")
    if not glibc:  # musl and others: no malloc_trim, nothing to do
        return False
    import ctypes  # see _prctl

    ctypes.CDLL(None).malloc_trim(0)
    return True


def drop_privileges(uid: int, gid: int, groups: Iterable[int] = ()) -> None:
    """Become *uid*:*gid* with *groups* for good: no capabilities, ``no_new_privs``, no way back.

    As root: ``setgroups``, ``setresgid``, ``setresuid`` (a full switch from root clears the
    permitted and effective capabilities). Not root: we must be *uid* already. Then
    ``PR_SET_NO_NEW_PRIVS``, and the kernel's word is checked in ``/proc/self/status`` rather
    than the calls' — a wrong assumption here would be silent. PrivilegeError (or OSError) when
    anything did not take; uid or gid 0 is refused.
    """
    if uid == 0 or gid == 0:
        raise PrivilegeError("refusing to run as uid or gid 0")
    import ctypes  # noqa: F401  (now: after the switch, a 0700 interpreter's modules can no longer be read)

    groups = sorted(set(groups))
    switched = os.geteuid() == 0
    if switched:
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    status = read_status()
    if status.get("Uid", "").split() != [str(uid)] * 4:
        raise PrivilegeError(f"still Uid {status.get('Uid')!r}, not {uid}")
    if switched and status.get("Gid", "").split() != [str(gid)] * 4:
        raise PrivilegeError(f"still Gid {status.get('Gid')!r}, not {gid}")
    if switched and sorted(int(g) for g in status.get("Groups", "").split()) != groups:
        raise PrivilegeError(f"in groups {status.get('Groups')!r}, not {groups}")
    for capabilities in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
        if int(status.get(capabilities, "1"), 16) != 0:
            raise PrivilegeError(f"{capabilities} is {status.get(capabilities)}")
    if status.get("NoNewPrivs") != "1":
        raise PrivilegeError("no_new_privs did not take")


# -- /proc ----------------------------------------------------------------------------------------


def parse_status(data: bytes) -> dict[str, str]:
    """``Name:\\tvalue`` lines (``/proc/PID/status``, or a copy of one) → {name: value, stripped}; the
    first line of a name wins."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        name, colon, value = line.partition(":")
        if colon:
            out.setdefault(name, value.strip())
    return out


def read_status(pid: int | str = "self") -> dict[str, str]:
    """``/proc/PID/status``, parsed. Read as bytes: after a privilege drop, a text codec not loaded yet
    could not be imported any more."""
    with open(f"/proc/{pid}/status", "rb") as f:
        return parse_status(f.read(1 << 16))


def _stat(pid: int | str) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after ``(comm)`` — state is [0], ppid [1], num_threads [17].

    comm may hold anything, ``)`` and spaces too: the fields start after its last ``)``.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read(4096).rsplit(b")", 1)[1].split()


def parent_of(pid: int) -> int | None:
    """*pid*'s parent, or None when it is gone."""
    try:
        return int(_stat(pid)[1])
    except (OSError, IndexError, ValueError):
        return None


def children(parent: int) -> list[int]:
    """The children of *parent*: from ``/proc/PID/task/*/children``, else by parent pid from ``/proc``."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children", "rb") as f:
                found.extend(int(pid) for pid in f.read().split())
        return found
    except FileNotFoundError as error:
        if not error.filename or not str(error.filename).endswith("/children"):
            return found  # the process is gone
    except (OSError, ValueError):
        return found
    for name in os.listdir("/proc"):  # a kernel without CONFIG_PROC_CHILDREN
        if name.isdigit() and parent_of(int(name)) == parent:
            found.append(int(name))
    return found


def tasks_of(uid: int) -> int:
    """How many tasks (threads) *uid* runs now: what ``RLIMIT_NPROC`` counts."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += int(_stat(name)[17])
            except (OSError, IndexError, ValueError):
                pass
    return count


# -- ending a tree ---------------------------------------------------------------------------------


def end_descendants() -> None:
    """Kill every descendant of ours and reap it; for a :func:`subreaper`.

    Whatever a killed process leaves behind becomes our child, so nothing started below us
    escapes, whatever it does (``setsid``, double fork, ignoring SIGTERM). A killed process can
    fork no more, and each child is killed before its own children are listed, so one walk finds
    the whole tree; the loop catches what was re-parented meanwhile.
    """
    me = os.getpid()
    while True:
        seen, frontier = set(), [(pid, me) for pid in children(me)]
        while frontier:
            pid, parent = frontier.pop()
            if pid not in seen:
                seen.add(pid)
                _kill_child(pid, parent)
                frontier.extend((child, pid) for child in children(pid))
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _kill_child(pid: int, parent: int) -> None:
    """SIGKILL *pid* if it still is *parent*'s child. A pidfd pins the process before its parent is
    checked, so a pid freed and reused meanwhile (a grandchild its parent reaped) is never hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd_open: the plain kill, with its tiny reuse window
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return
    try:
        if parent_of(pid) == parent:  # else gone, or re-parented to us meanwhile: the next round
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError:  # pidfd_send_signal filtered (seccomp): never leave it alive for that
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)


def exit_when_orphaned(fd: int) -> None:
    """Exit this process at once when the peer of socket *fd* hangs up (run it in a daemon thread).

    Not ``PR_SET_PDEATHSIG``: that fires when the *thread* that started us ends (the daemon's
    threads come and go) and the uid switch clears it. ``poll`` reports the hang-up without
    taking a message, so the main thread's reads are unaffected.
    """
    import select

    poller = select.poll()
    poller.register(fd, select.POLLRDHUP)
    while True:
        for _, events in poller.poll():
            if events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                os._exit(0)
