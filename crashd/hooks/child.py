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
  subreaper too: what a hook leaves running is killed before the next hook starts. It may serve
  several reports of its user in turn (a hook host, :mod:`crashd.hooks.host`): each starts afresh
  at the header only the parent can send.
- one **hook process** per hook (forked by the runner): it closes both protocol pipes before any
  hook code runs, runs ``add_info`` in a session of its own, and sends what changed back to the
  runner over a pipe of its own, which the runner reads bounded. Its stdout and stderr (and those
  of the commands it runs) are the output pipe, which the parent counts and never parses.

Import discipline: the standard library only, and only modules that load fast — the process starts
once per burst of a user's reports and its start-up *is* the first report's hook overhead (DESIGN.md
§8: < 80 ms). Nothing from crashd is imported: the daemon's modules stay out of the hooks' reach,
and running this file by path needs no package on ``sys.path`` (``-I`` ignores ``PYTHONPATH``, and
``python -m`` would have to find crashd before any argument could say where it is). Two files beside
it are loaded by path instead: ``crashd/process.py`` (the one door for processes, privileges, prctl
and /proc; registered as ``crashd_process``, the name compat apport imports it by) and
``hook_api.py`` (what a hook gets: its ``report``, ``ui`` and apport; the call of ``add_info``).
This file is the protocol: the keeper, the runner's loop, one process per hook and its result.

Protocol between the parent and the runner, one JSON document per line. stdin: ``{"fields": {key:
value}, "hooks": [path, …], "owners": [uid, …] | null, "timeout": s, "output_cap": bytes}`` starts a
report, ``{"hooks": […]}`` is its next batch (never after a ``stop``); the next ``{"fields": …}``
starts the next report, EOF ends the runner. stdout: ``{"start": path}`` before a hook,
``{"done": path, "fields": {…}, "removed": […], "error": text | null, "stop": bool}`` after it (the
fields it added or changed), or ``{"done": path, "died": sentence}`` when its process ended without
a result, and ``{"batch": "done"}`` after each batch. A value is a str, or ``{"base64": …}`` for
bytes. CONFIG: ``{"account": {"uid", "gid", "groups"}, "limits": {…}}``.
"""

import base64
import contextlib
import importlib.util
import json
import os
import resource
import signal
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
EXIT_REFUSED = 70  # process.py turns this status into "refused to run as root"


def _load(name, path):
    """The module in *path*, loaded by path and registered as *name* (nothing is looked up on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


process = _load("crashd_process", os.path.join(os.path.dirname(HERE), "process.py"))
hook_api = _load("crashd_hook_api", os.path.join(HERE, "hook_api.py"))
valid_key, HookReport, NoninteractiveUI = hook_api.valid_key, hook_api.HookReport, hook_api.NoninteractiveUI


def main(argv):
    config = json.loads(argv[1])
    control = int(argv[2])
    # The keeper: not dumpable, and a subreaper (every orphan below it becomes its child).
    process.not_dumpable()
    process.subreaper()
    runner = os.fork()
    if runner == 0:
        os.close(control)
        _run(config)  # never returns
    os.close(0)
    os.close(1)
    os.open(os.devnull, os.O_RDONLY)  # fd 0
    os.open(os.devnull, os.O_WRONLY)  # fd 1: the protocol pipe is the runner's alone now
    os._exit(_keep(runner, control))


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
    process.end_descendants()
    if status is None:
        return 128 + signal.SIGKILL
    return status if status >= 0 else 128 - status


def _run(config):
    """The runner: drop to the hook user, then run each hook handed out in a process of its own."""
    # Under memory pressure the kernel must pick a hook, never the daemon: raise our OOM score while
    # /proc/self is still ours to write (not dumpable, it stays root's after the switch).
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")
    account = config["account"]
    try:
        process.drop_privileges(account["uid"], account["gid"], account["groups"])
    except BaseException as error:  # whatever failed, no hook runs
        os.write(2, f"crashd hook runner: cannot switch user: {error}\n".encode())
        os._exit(EXIT_REFUSED)
    if 0 in os.getresuid() or 0 in os.getresgid():
        os.write(2, b"crashd hook runner: refusing to run as root\n")
        os._exit(EXIT_REFUSED)
    # Not dumpable: no other process of this user can ptrace us, open /proc/PID/fd or pidfd_getfd() the
    # protocol pipes. Subreaper: a hook's orphans come to us, and die before the next hook starts.
    process.not_dumpable()
    process.subreaper()
    os.umask(0o077)
    os.chdir("/")
    limits = config["limits"]
    process.set_limits({
        resource.RLIMIT_AS: limits["address_space"],
        resource.RLIMIT_FSIZE: limits["file_size"],
        resource.RLIMIT_NOFILE: limits["open_files"],
        resource.RLIMIT_CORE: 0,
        # RLIMIT_NPROC counts every task of the uid, so the allowance is on top of what the user runs now.
        resource.RLIMIT_NPROC: process.tasks_of(os.getuid()) + limits["processes"],
    })  # fmt: skip
    # Private copies of the protocol pipes; fd 0 becomes /dev/null and fd 1 the output pipe, so that
    # nothing but this loop ever writes a protocol line. Hook processes close both copies.
    requests = os.fdopen(os.dup(0), "rb")
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    sys.path.append(hook_api.COMPAT)
    report = stopped = None
    while line := requests.readline().strip():
        message = json.loads(line)
        if "fields" in message:  # a new report: only the parent starts one (hooks never hold this pipe)
            process.end_descendants()  # nothing of the report before is left (each hook's already went)
            report, ui, with_apport, runs_with = HookReport(), NoninteractiveUI(), False, None
            report.data.update(decode(message["fields"]))
            owners, timeout = message.get("owners"), float(message.get("timeout", 30))
            cap = int(message["output_cap"])
        elif report is None or stopped:
            break  # a batch with no report, or after StopIteration: the parent never sends one
        stopped = False
        for path in message["hooks"]:
            send(out, {"start": path})
            if not with_apport:
                report, ui, runs_with = hook_api.apport_api(report.data)
                with_apport = True
            result = _hook_process(path, report, ui, owners, timeout, cap, (requests.fileno(), out))
            process.end_descendants()  # what the hook left running dies before the next one starts
            result = _apply(report, result)
            if runs_with and "fields" in result:  # said once, with the first hook that got this apport
                result["fields"]["_HooksRunWith"] = report.data["_HooksRunWith"] = runs_with
                runs_with = None
            send(out, {"done": path, **result})
            stopped = bool(result.get("stop"))
            if stopped:
                break
        send(out, {"batch": "done"})
    os._exit(0)


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
            process.cpu_limit(timeout)
            me, before = os.getpid(), dict(report.data)
            error, stopped = hook_api.run_hook(path, report, ui, owners)
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
        return {"died": process.exit_sentence(status)}
    try:
        result = json.loads(data)
    except ValueError:
        result = None
    return result if isinstance(result, dict) else {"died": "ended without a result"}


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
    return {
        "fields": fields,
        "removed": removed,
        "error": None if error is None else str(error),
        "stop": bool(result.get("stop")),
    }


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
