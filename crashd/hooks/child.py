"""The hook child: a root keeper, an unprivileged runner, and one process per hook (DESIGN.md §6).

:mod:`crashd.hooks.process` starts this file as ``python3 -I child.py CONFIG CONTROL`` with the
working directory, session and environment already set by ``subprocess``. Three kinds of process:

- the **keeper** (this process; root when crashd is): a child subreaper, so every process started
  below it stays below it whatever it does (``setsid``, a double fork); it forks the runner, keeps
  only the *CONTROL* pipe, and when the runner ends or the parent closes *CONTROL* it kills and
  reaps every descendant before it exits. Hooks never run here; no hook user can signal it.
- the **runner** (forked by the keeper): switches to the hook user (uid, gid, groups; it refuses
  uid or gid 0), sets ``PR_SET_NO_NEW_PRIVS``, rlimits, the first place in line for the OOM killer,
  and is not dumpable — so no process of that user can ptrace it, open its ``/proc/PID/fd`` or
  ``pidfd_getfd()`` its descriptors. It alone holds the protocol pipes to the parent. It is a
  subreaper too: what a hook leaves running is killed before the next hook starts.
- one **hook process** per hook (forked by the runner): it closes both protocol pipes before any
  hook code runs, runs ``add_info`` in a session of its own, and sends what changed back to the
  runner over a pipe of its own, which the runner reads bounded. Its stdout and stderr (and those
  of the commands it runs) are the output pipe, which the parent counts and never parses.

Import discipline: the standard library only, and only modules that load fast — the process
starts once per report and its start-up *is* the hook overhead (DESIGN.md §8: < 80 ms). Nothing
from crashd is imported: the daemon's modules stay out of the hooks' reach, and running this file
by path needs no package on ``sys.path`` (``-I`` ignores ``PYTHONPATH``, and ``python -m`` would
have to find crashd before any argument could say where it is). ``import apport`` finds the real
apport when it is installed and otherwise ``compat/apport`` beside this file (appended to
``sys.path``, so the real one always wins).

Protocol between the parent and the runner, one JSON document per line. stdin: ``{"fields": {key:
value}, "hooks": [path, …], "owners": [uid, …] | null, "timeout": s, "output_cap": bytes}``, then
``{"hooks": […]}`` for every further batch, then EOF. stdout: ``{"start": path}`` before a hook,
``{"done": path, "fields": {…}, "removed": […], "error": text | null, "stop": bool}`` after it (the
fields it added or changed), or ``{"done": path, "died": sentence}`` when its process ended without
a result, and ``{"batch": "done"}`` after each batch. A value is a str, or ``{"base64": …}`` for
bytes. CONFIG: ``{"account": {"uid", "gid", "groups"}, "limits": {…}}``.
"""

import base64
import contextlib
import json
import os
import resource
import signal
import sys
from collections import UserDict

PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 36, 4, 38
EXIT_REFUSED = 70  # process.py turns this status into "refused to run as root"
MAX_SOURCE = 4 << 20
KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
KEY_PUNCTUATION = frozenset("._-")
COMPAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat")
BUILTIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin") + os.sep


def valid_key(key):
    """The one key rule, :func:`crashd.report.valid_key`'s (this file imports nothing from crashd;
    tests/test_hooks.py pins the two equal): ASCII letters, digits and ``. - _``, one letter or digit."""
    return isinstance(key, str) and KEY_CHARS.issuperset(key) and not KEY_PUNCTUATION.issuperset(key)


class HookReport(UserDict):
    """What ``add_info`` gets: apport's ``Report`` as far as hooks use it — str keys, str or bytes values.

    A ``UserDict``, like apport's ``ProblemReport``, so ``update()`` and
    ``setdefault()`` go through the same checks as ``report[key] = value``.
    """

    def __setitem__(self, key, value):
        if not valid_key(key):
            raise ValueError(f"invalid key {key!r}: letters, digits, '.', '_' and '-', one letter or digit")
        if isinstance(value, bytearray):
            value = bytes(value)
        elif type(value).__name__ == "CompressedValue":  # problem_report's, which apport's reports accept
            value = value.get_value()
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"value of {key} must be str or bytes, not {type(value).__name__}")
        self.data[key] = value

    def add_tags(self, tags):
        """Add words to ``Tags`` (a sorted, space-separated set), as apport's ``add_tags``."""
        current = set(self.get("Tags", "").split())
        self["Tags"] = " ".join(sorted(current.union(tags)))

    def get_timestamp(self):
        """``Date`` as seconds since the epoch, or None (apport's ``get_timestamp``)."""
        import time

        try:
            return int(time.mktime(time.strptime(self["Date"])))
        except (KeyError, TypeError, ValueError, OverflowError):
            return None


class NoninteractiveUI:
    """The ``ui`` a hook gets: nobody is there to answer, so every question gets None."""

    def information(self, text):
        return None

    def yesno(self, text):
        return None

    def choice(self, text, options, multiple=False):
        return None

    def file(self, text):
        return None


def main(argv):
    config = json.loads(argv[1])
    control = int(argv[2])
    _harden_keeper()
    runner = os.fork()
    if runner == 0:
        os.close(control)
        _run(config)  # never returns
    os.close(0)
    os.close(1)
    os.open(os.devnull, os.O_RDONLY)  # fd 0
    os.open(os.devnull, os.O_WRONLY)  # fd 1: the protocol pipe is the runner's alone now
    os._exit(_keep(runner, control))


def _harden_keeper():
    """The keeper: a subreaper (every orphan below it becomes its child), and not dumpable."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for option, value in ((PR_SET_DUMPABLE, 0), (PR_SET_CHILD_SUBREAPER, 1)):
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def _keep(runner, control):
    """Wait until the runner ends or the parent closes *control*; then kill everything below us.

    Returns the exit status for the parent: the runner's, or 128 + the signal that killed it.
    """
    import select

    try:
        pidfd = os.pidfd_open(runner)
    except (AttributeError, OSError):
        pidfd = None
    status, watched = None, [control] + ([pidfd] if pidfd is not None else [])
    while status is None:
        ready, _, _ = select.select(watched, [], [], None if pidfd is not None else 0.05)
        if control in ready:
            break  # EOF or anything: the parent wants it all gone
        pid, raw = os.waitpid(runner, os.WNOHANG)
        if pid:
            status = os.waitstatus_to_exitcode(raw)
    end_descendants()
    if status is None:
        return 128 + signal.SIGKILL
    return status if status >= 0 else 128 - status


def end_descendants():
    """Kill every descendant and reap it. We are a subreaper: whatever a killed process leaves behind
    becomes our child, so nothing started below us escapes, whatever it does (setsid, double fork,
    ignoring SIGTERM). A killed process can fork no more, and each child is killed before its own
    children are listed, so one walk finds the whole tree; the loop catches what was re-parented."""
    me = os.getpid()
    while True:
        seen, frontier = set(), [(pid, me) for pid in _children(me)]
        while frontier:
            pid, parent = frontier.pop()
            if pid not in seen:
                seen.add(pid)
                _kill_child(pid, parent)
                frontier.extend((child, pid) for child in _children(pid))
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def _kill_child(pid, parent):
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
        with open(f"/proc/{pid}/stat", "rb") as f:
            still = int(f.read().rsplit(b")", 1)[1].split()[1]) == parent
    except (OSError, IndexError, ValueError):
        still = False  # gone meanwhile
    try:
        if still:  # else re-parented to us meanwhile: found in the next round
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except OSError:  # pidfd_send_signal filtered (seccomp): never leave it alive for that
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)


def _children(parent):
    """The children of *parent*: from ``/proc/PID/task/*/children``, else by parent pid from ``/proc``."""
    found = []
    try:
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children", "rb") as f:
                found.extend(int(pid) for pid in f.read().split())
        return found
    except FileNotFoundError as error:
        if not error.filename or not error.filename.endswith("/children"):
            return found  # the process is gone
    except (OSError, ValueError):
        return found
    for name in os.listdir("/proc"):  # a kernel without CONFIG_PROC_CHILDREN
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == parent:
                        found.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _run(config):
    """The runner: drop to the hook user, then run each hook handed out in a process of its own."""
    # Under memory pressure the kernel must pick a hook, never the daemon: raise our OOM score while
    # /proc/self is still ours to write (not dumpable, it stays root's after the switch).
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    try:
        _become(config["account"])
    except BaseException as error:  # whatever failed, no hook runs
        os.write(2, f"crashd hook runner: cannot switch user: {error}\n".encode())
        os._exit(EXIT_REFUSED)
    if 0 in os.getresuid() or 0 in os.getresgid():
        os.write(2, b"crashd hook runner: refusing to run as root\n")
        os._exit(EXIT_REFUSED)
    _harden_runner(config["limits"])
    # Private copies of the protocol pipes; fd 0 becomes /dev/null and fd 1 the output pipe, so that
    # nothing but this loop ever writes a protocol line. Hook processes close both copies.
    requests = os.fdopen(os.dup(0), "rb")
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    sys.path.append(COMPAT)
    first = json.loads(requests.readline())
    report, ui, with_apport, runs_with = HookReport(), NoninteractiveUI(), False, None
    report.data.update(decode(first["fields"]))
    owners, timeout, cap = first.get("owners"), float(first.get("timeout", 30)), int(first["output_cap"])
    hooks = first["hooks"]
    while hooks is not None:
        stopped = False
        for path in hooks:
            send(out, {"start": path})
            if not with_apport and not path.startswith(BUILTIN):  # crashd's own hooks need no apport
                report, ui, runs_with = apport_api(report.data)
                with_apport = True
            result = _hook_process(path, report, ui, owners, timeout, cap, (requests.fileno(), out))
            end_descendants()  # what the hook left running dies before the next one starts
            result = _apply(report, result)
            if runs_with and "fields" in result:  # said once, with the first hook that got this apport
                result["fields"]["_HooksRunWith"] = report.data["_HooksRunWith"] = runs_with
                runs_with = None
            send(out, {"done": path, **result})
            stopped = bool(result.get("stop"))
            if stopped:
                break
        send(out, {"batch": "done"})
        line = b"" if stopped else requests.readline()
        hooks = json.loads(line)["hooks"] if line.strip() else None
    os._exit(0)


def _become(account):
    """Switch to the hook user (uid, gid, groups) when root; otherwise it must be us already."""
    uid, gid, groups = account["uid"], account["gid"], account["groups"]
    if uid == 0 or gid == 0:
        raise PermissionError("uid or gid 0")
    if os.geteuid() == 0:
        os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid):
        raise PermissionError(f"running as uid {os.getuid()}, not {uid}")


def apport_api(fields):
    """(report, ui, name): the ``report`` and ``ui`` hooks get, from the apport ``import apport`` finds.

    The real apport when the hooks' Python has it (it is the reference), else
    crashd's ``compat/apport``. Either way ``report`` is an instance of that
    apport's ``Report`` (hooks check ``isinstance`` and call its ``add_*_info``),
    with :class:`HookReport`'s checks in front, holding *fields*; *name* is
    ``apport 2.x.y`` or ``crashd-compat N``, stored as ``_HooksRunWith``. Called
    before the first hook that is not one of crashd's built-in ones: a report
    with only those never pays for importing apport.
    """
    try:
        import apport
        from apport.hook_ui import NoninteractiveHookUI
        from apport.report import Report
    except Exception as error:  # a broken apport: hooks still run, and the report says why
        report = HookReport()
        report.data.update(fields)
        return report, NoninteractiveUI(), f"no apport ({type(error).__name__}: {error})"
    report = type("HookReport", (HookReport, Report), {})()
    report.data.clear()  # Report() adds ProblemType and Date of its own
    report.data.update(fields)
    report.old_keys = set(report.data)
    if os.path.dirname(os.path.dirname(os.path.abspath(apport.__file__))) == COMPAT:
        return report, NoninteractiveHookUI(), f"crashd-compat {apport.CRASHD_COMPAT}"
    return report, NoninteractiveHookUI(), f"apport {_apport_version(apport)}"


def _apport_version(apport):
    """The real apport's version: its distribution metadata, else ``apport/ui.py``'s ``__version__`` line."""
    from importlib import metadata

    with contextlib.suppress(Exception):
        return metadata.version("apport")
    import re

    ui_py = os.path.join(os.path.dirname(apport.__file__), "ui.py")
    with contextlib.suppress(OSError), open(ui_py, "rb") as f:
        found = re.search(rb'^__version__ = "([^"]+)"', f.read(1 << 20), re.MULTILINE)
        if found:
            return found.group(1).decode("ascii", "replace")
    return "(version unknown)"


def _harden_runner(limits):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # Not dumpable: no other process of this user can ptrace us, open /proc/PID/fd or pidfd_getfd() the
    # protocol pipes. Subreaper: a hook's orphans come to us, and die before the next hook starts.
    for option, value in ((PR_SET_NO_NEW_PRIVS, 1), (PR_SET_DUMPABLE, 0), (PR_SET_CHILD_SUBREAPER, 1)):
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")
    os.umask(0o077)
    os.chdir("/")
    _set_limits(limits)


def _set_limits(limits):
    """Lower the soft and hard limits; a limit already lower stays as it is."""
    uid = os.getuid()
    wanted = {
        resource.RLIMIT_AS: limits["address_space"],
        resource.RLIMIT_FSIZE: limits["file_size"],
        resource.RLIMIT_NOFILE: limits["open_files"],
        resource.RLIMIT_CORE: 0,
        # RLIMIT_NPROC counts every task of the uid, so the allowance is on top of what the user runs now.
        resource.RLIMIT_NPROC: _tasks_of(uid) + limits["processes"],
    }
    for which, value in wanted.items():
        hard = resource.getrlimit(which)[1]
        new = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (new, new))


def _tasks_of(uid):
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    with open(f"/proc/{name}/stat", "rb") as f:
                        count += int(f.read().rsplit(b")", 1)[1].split()[17])
            except (OSError, IndexError, ValueError):
                pass
    return count


def _hook_process(path, report, ui, owners, timeout, cap, protocol):
    """Run one hook in a fresh process that holds neither protocol pipe; its result, read back bounded.

    The result is ``{"fields", "removed", "error", "stop"}`` as :func:`diff` makes it, or
    ``{"died": sentence}`` when the process ended without one (``os._exit``, a signal, too much).
    """
    import select

    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the hook process
        try:
            for fd in (*protocol, result_r):
                os.close(fd)
            os.setsid()
            _cpu_limit(timeout)
            me, before = os.getpid(), dict(report.data)
            error, stopped = run_hook(path, report, ui, owners)
            if os.getpid() == me:  # a fork of the hook's that came back from add_info never speaks
                fields, removed, bad = diff(before, report)
                message = {"fields": fields, "removed": removed, "error": error or bad, "stop": stopped}
                send(result_w, message, newline=False)
        finally:
            os._exit(0)
    os.close(result_w)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd_open (old kernel, a seccomp filter): poll instead
        pidfd = None
    watched = [result_r] + ([pidfd] if pidfd is not None else [])
    data, too_much = bytearray(), False
    try:
        while True:
            ready, _, _ = select.select(watched, [], [], None if pidfd is not None else 0.05)
            if pidfd is None and not ready:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = os.waitstatus_to_exitcode(raw)
                    break
                continue
            if result_r in ready:
                chunk = os.read(result_r, 1 << 16)
                data += chunk
                if len(data) > cap:
                    too_much = True
                    os.kill(pid, signal.SIGKILL)
                if chunk and not too_much:
                    continue
            # The end of the result, or the end of the process (a descendant may still hold the pipe).
            status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            break
        os.set_blocking(result_r, False)
        with contextlib.suppress(BlockingIOError):
            while len(data) <= cap and (chunk := os.read(result_r, 1 << 16)):
                data += chunk
    finally:
        os.close(result_r)
        if pidfd is not None:
            os.close(pidfd)
    if too_much or len(data) > cap:
        return {"died": f"returned more than {cap / (1 << 20):g} MiB of fields"}
    if status != 0:
        return {"died": _exit_sentence(status)}
    try:
        result = json.loads(data)
    except ValueError:
        result = None
    return result if isinstance(result, dict) else {"died": "ended without a result"}


def _exit_sentence(status):
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _apply(report, result):
    """Take a hook process's result into our copy of the report; what to tell the parent."""
    if "died" in result:
        return {"died": str(result["died"])}
    fields = result.get("fields") if isinstance(result.get("fields"), dict) else {}
    removed = result.get("removed") if isinstance(result.get("removed"), list) else []
    try:
        report.data.update({k: v for k, v in decode(fields).items() if valid_key(k)})
    except (KeyError, TypeError, ValueError, AttributeError):
        return {"died": "ended with a result crashd cannot read"}
    for key in removed:
        report.data.pop(key, None)
    error = result.get("error")
    return {"fields": fields, "removed": removed, "error": None if error is None else str(error),
            "stop": bool(result.get("stop"))}


def _cpu_limit(seconds):
    """Allow this hook process *seconds* of CPU time; SIGXCPU ends it past that."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime + seconds) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def run_hook(path, report, ui, owners):
    """Run one hook's ``add_info``: (error text or None, whether it asked to stop the rest)."""
    try:
        namespace = {"__file__": path, "__name__": "crashd_hook", "__builtins__": __builtins__}
        exec(compile(load(path, owners), path, "exec"), namespace)
        call_add_info(namespace["add_info"], report, ui)
    except StopIteration:
        return None, True
    except BaseException as error:  # a hook's failure of any kind is recorded, never fatal
        return describe(error), False
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a hook may have closed or replaced them
                stream.flush()
    return None, False


def load(path, owners):
    """The hook's source, read through one descriptor that was checked like discovery checks the path."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PermissionError(f"{path}: not a regular file")
        if owners is not None and (st.st_uid not in owners or st.st_mode & 0o022):
            raise PermissionError(f"{path}: not owned by root, or writable by group or others")
        source = f.read(MAX_SOURCE + 1)
    if len(source) > MAX_SOURCE:
        raise ValueError(f"{path}: larger than {MAX_SOURCE >> 20} MiB")
    return source


def call_add_info(add_info, report, ui):
    """``add_info(report, ui)``, or ``add_info(report)`` when that is all it takes (apport's legacy form)."""
    code = getattr(add_info, "__code__", None)
    if code is not None:
        positional = code.co_argcount - (1 if getattr(add_info, "__self__", None) is not None else 0)
        two = positional >= 2 or bool(code.co_flags & 0x04)  # CO_VARARGS
    else:
        import inspect

        try:
            inspect.signature(add_info).bind(report, None)
            two = True
        except TypeError:
            two = False
    if two:
        add_info(report, ui)
    else:
        add_info(report)


def describe(error):
    """The traceback from the hook's own frames down, as apport stores it in ``HookError_<name>``."""
    try:
        import traceback

        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        return "".join(traceback.format_exception(type(error), error, tb))
    except MemoryError:
        return f"{type(error).__name__} (no traceback: out of memory)\n"


def diff(before, report):
    """(changed fields encoded, removed keys, error text or None) of one hook's run."""
    changed, bad = {}, {}
    for key, value in report.data.items():
        old = before.get(key)
        if value is old or value == old:
            continue
        if not valid_key(key):
            bad[key] = f"invalid key {key!r}"
        elif not isinstance(value, (str, bytes)):
            bad[key] = f"{key} set to a {type(value).__name__}"
        else:
            changed[key] = encode(value)
    for key in bad:  # stored behind HookReport's back (report.data[...]): dropped, and said so
        if key in before:
            report.data[key] = before[key]
        else:
            del report.data[key]
    removed = [key for key in before if key not in report.data]
    problems = "; ".join(bad.values())
    return changed, removed, f"the hook stored values crashd cannot keep: {problems}" if bad else None


def encode(value):
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:  # lone surrogates (surrogateescape'd file names): keep the bytes
            value = value.encode("utf-8", "surrogateescape")
    return {"base64": base64.b64encode(value).decode("ascii")}


def decode(fields):
    return {k: v if isinstance(v, str) else base64.b64decode(v["base64"]) for k, v in fields.items()}


def send(fd, message, newline=True):
    data = (json.dumps(message, ensure_ascii=False) + ("\n" if newline else "")).encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


if __name__ == "__main__":
    main(sys.argv)
