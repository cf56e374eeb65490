"""The hook child: runs the package hooks of one report in a process of its own, as the report's owner.

:mod:`crashd.hooks.runner` starts this file as ``python3 -I child.py LIMITS`` with
the uid, groups, umask, session, working directory and environment already set by
``subprocess`` (never by a ``preexec_fn``). This file never gains a privilege, it
only gives them up: ``PR_SET_NO_NEW_PRIVS``, not dumpable (no core, no ptrace by
other processes of the same user), rlimits, the first place in line for the OOM
killer, and it refuses to run as root at all.

Import discipline: the standard library only, and only modules that load fast —
the process starts once per report and its start-up *is* the hook overhead
(DESIGN.md §8: < 80 ms). Nothing from crashd is imported: the daemon's modules
stay out of the hooks' reach, and running this file by path needs no package on
``sys.path`` (``-I`` ignores ``PYTHONPATH``, and ``python -m`` would have to find
crashd before any argument could say where it is). ``import apport`` finds the
real apport when it is installed and otherwise ``compat/apport`` beside this file
(appended to ``sys.path``, so the real one always wins).

Protocol, one JSON document per line. stdin: ``{"fields": {key: value}, "hooks":
[path, …], "owners": [uid, …] | null, "timeout": s}``, then ``{"hooks": […]}`` for
every further batch, then EOF. stdout: ``{"start": path}`` before a hook,
``{"done": path, "fields": {…}, "removed": […], "error": text | null, "stop": bool}``
after it (the fields it added or changed), ``{"batch": "done"}`` after each batch.
A value is a str, or ``{"base64": …}`` for bytes. The hooks' own output (print,
commands they run) goes to stderr, never into the protocol.
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
EXIT_REFUSED = 70  # runner.py turns this status into "refused to run as root"
MAX_SOURCE = 4 << 20
KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
COMPAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat")
BUILTIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin") + os.sep


class HookReport(UserDict):
    """What ``add_info`` gets: apport's ``Report`` as far as hooks use it — str keys, str or bytes values.

    A ``UserDict``, like apport's ``ProblemReport``, so ``update()`` and
    ``setdefault()`` go through the same checks as ``report[key] = value``.
    """

    def __setitem__(self, key, value):
        if not isinstance(key, str) or not key or not KEY_CHARS.issuperset(key):
            raise ValueError(f"key {key!r} contains invalid characters (only letters, digits, '.', '_', '-')")
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
    limits = json.loads(argv[1])
    _harden()
    if 0 in os.getresuid() or 0 in os.getresgid():
        os.write(2, b"crashd hook child: refusing to run as root\n")
        os._exit(EXIT_REFUSED)
    _set_limits(limits)
    # Private copies of the protocol pipes; fd 0 becomes /dev/null and fd 1 the
    # stderr pipe, so neither hooks nor the commands they run can touch the protocol.
    requests = os.fdopen(os.dup(0), "rb")
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    sys.path.append(COMPAT)
    first = json.loads(requests.readline())
    report, ui, with_apport = HookReport(), NoninteractiveUI(), False
    report.data.update(decode(first["fields"]))
    owners, timeout = first.get("owners"), float(first.get("timeout", 30))
    me, hooks = os.getpid(), first["hooks"]
    while hooks is not None:
        signal.alarm(int(timeout * (len(hooks) + 1)) + 1)  # only if the parent is gone: it times us out first
        stopped = False
        for path in hooks:
            send(out, {"start": path})
            before = dict(report.data)
            if not with_apport and not path.startswith(BUILTIN):  # crashd's own hooks need no apport
                report, ui, api = apport_api(report.data)
                report.data["_HooksRunWith"], with_apport = api, True  # in this hook's fields: said once
            error, stopped = run_hook(path, report, ui, owners, timeout)
            if os.getpid() != me:  # a fork of ours came back from the hook: it must not speak for us
                os._exit(0)
            fields, removed, bad = diff(before, report)
            error = error or bad
            send(out, {"done": path, "fields": fields, "removed": removed, "error": error, "stop": stopped})
            if stopped:
                break
        send(out, {"batch": "done"})
        line = b"" if stopped else requests.readline()
        hooks = json.loads(line)["hooks"] if line.strip() else None
    end_descendants()
    os._exit(0)


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


def _harden():
    # Under memory pressure the kernel must pick a hook, never the daemon: raise our OOM score
    # (allowed unprivileged), before PR_SET_DUMPABLE makes /proc/self root's.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for option, value in ((PR_SET_NO_NEW_PRIVS, 1), (PR_SET_DUMPABLE, 0), (PR_SET_CHILD_SUBREAPER, 1)):
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


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


def _cpu_limit(seconds):
    """Allow the next hook *seconds* more CPU time; SIGXCPU ends the process past it."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime + seconds) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def run_hook(path, report, ui, owners, timeout):
    """Run one hook's ``add_info``: (error text or None, whether it asked to stop the rest)."""
    environ = dict(os.environ)
    try:
        _cpu_limit(timeout)
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
        os.environ.clear()
        os.environ.update(environ)
        os.chdir("/")
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
        if not isinstance(key, str) or not key or not KEY_CHARS.issuperset(key):
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


def send(fd, message):
    data = (json.dumps(message, ensure_ascii=False) + "\n").encode("utf-8")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def end_descendants():
    """Kill whatever the hooks left running: as subreaper, every orphan of ours is our child."""
    me = os.getpid()
    for _ in range(1000):
        try:
            if os.waitpid(-1, os.WNOHANG) != (0, 0):
                continue  # reaped one; look again
        except ChildProcessError:
            return  # no children at all: the common case, without scanning /proc
        children = _children(me)
        if not children:
            return  # not visible (yet): never block on a child we cannot kill
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _children(parent):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == parent:
                        found.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return found


if __name__ == "__main__":
    main(sys.argv)
