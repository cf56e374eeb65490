"""Issue 11, vulnerabilities 1 and 2: hostile hooks against the hook protocol and the process tree.

Real users, real processes, real pipes. A hook here is the attacker: it writes crashd's own protocol
lines into every descriptor it has or can open, tries to outrun its timeout and the output cap, and
leaves processes behind (a fork, a double fork into a new session, one that ignores SIGTERM), also
after killing its own runner. A second process of the same user tries to reach the protocol pipes
from outside. The assertions are on outcomes (killed, and the result says why; nothing injected;
no process left), never on wall-clock figures.
"""

# ruff: noqa: F811 - the fixtures of tests/test_hooks.py are imported by name and used as parameters

from __future__ import annotations

import json
import pwd
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from crashd.hooks import error_key, run_hooks
from crashd.hooks.accounts import Account, interpreter_for
from crashd.hooks.discovery import Plan
from crashd.hooks.runner import run
from tests.test_hooks import (  # noqa: F401 - fixtures among them
    Tree,
    gone,
    hook_fields,
    hook_test_cli,
    hooks_for,
    no_process_left,
    processes_of,
    report_file,
    tree,
    user,
    wait_until,
)

# Lines of crashd's hook protocol a hostile hook forges: a "done" that would inject a field and delete
# one, a "start" that used to reset the per-hook output cap and deadline, a "batch" end.
FORGE = """
import json, os, time

def forged(path):
    messages = [
        {"done": path, "fields": {"Injected": "yes"}, "removed": ["ProblemType"], "error": None, "stop": False},
        {"batch": "done"},
        {"start": path},
    ]
    return b"".join(json.dumps(m).encode() + b"\\n" for m in messages)

def spray(path):
    '''Write forged protocol lines into every descriptor we hold and every one of our parent's.'''
    data = forged(path)
    for fd in range(4, 1024):  # not 0-3: /dev/null, the output pipe, the hook's own result pipe
        try:
            os.write(fd, data)
        except OSError:
            pass
    for fd in (1, 2):
        os.write(fd, data)
    for n in range(64):
        try:
            with open(f"/proc/{os.getppid()}/fd/{n}", "wb", buffering=0) as f:
                f.write(data)
        except OSError:
            pass
"""


def test_forged_protocol_lines_neither_inject_fields_nor_outrun_the_timeout(
    tree: Tree, user: pwd.struct_passwd
) -> None:
    tree.hook(
        "general",
        "a_forger.py",
        FORGE
        + """
def add_info(report):
    report["Attempted"] = "yes"
    for _ in range(600):  # 60 s of forged progress, under a 1 s timeout
        spray(__file__)
        time.sleep(0.1)
    report["Finished"] = "yes"
""",
    )
    tree.hook("general", "b_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    result = hooks_for(tree, user, timeout=1)
    assert result.errors[error_key("a_forger.py")].startswith("crashd: the hook timed out after 1 s")
    assert "Injected" not in result.fields and "Finished" not in result.fields
    assert "ProblemType" not in result.removed
    assert hook_fields(result) == {"After": "ran"}  # a fresh child ran the hook after it
    assert result.ran == [str(tree.roots.general[0] / "a_forger.py"), str(tree.roots.general[0] / "b_after.py")]


def test_forged_start_lines_do_not_reset_the_output_cap(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general",
        "a_loud_forger.py",
        FORGE
        + """
def add_info(report):
    chunk = b"x" * (1 << 20)
    for _ in range(40):  # 40 MiB, a forged "start" after every MiB
        os.write(1, chunk)
        spray(__file__)
    report["Finished"] = "yes"
""",
    )
    after = tree.hook("general", "b_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    result = hooks_for(tree, user, timeout=120)
    assert "wrote more than 10 MiB of output" in result.errors[error_key("a_loud_forger.py")]
    assert "Finished" not in result.fields and "Injected" not in result.fields
    assert result.skipped[str(after)] == "not run: this report's hooks wrote more than 10 MiB of output"


INJECTOR = r"""
import ctypes, json, os, sys
uid, out = os.getuid(), sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
forged = b'{"done": "x", "fields": {"Injected": "yes"}}\n{"start": "x"}\n'
targets, reached = [], []
for name in os.listdir("/proc"):
    if not name.isdigit() or int(name) in (os.getpid(), os.getppid()):  # not the attacker's own
        continue
    try:
        with open(f"/proc/{name}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
    except (OSError, StopIteration):
        continue
    if str(uid) not in uids:
        continue
    targets.append(int(name))
    if libc.ptrace(ctypes.c_long(16), ctypes.c_long(int(name)), None, None) == 0:  # PTRACE_ATTACH
        reached.append(f"ptrace {name}")
        libc.ptrace(ctypes.c_long(17), ctypes.c_long(int(name)), None, None)  # PTRACE_DETACH
    pidfd = os.pidfd_open(int(name))
    for fd in range(16):
        got = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if got >= 0:
            reached.append(f"pidfd_getfd {name}/{fd}")
            try:
                os.write(got, forged)
            except OSError:
                pass
        try:
            with open(f"/proc/{name}/fd/{fd}", "wb", buffering=0) as f:
                f.write(forged)
                reached.append(f"/proc/{name}/fd/{fd}")
        except OSError:
            pass
    os.close(pidfd)
with open(out + "/injector.json", "w") as f:
    json.dump({"targets": targets, "reached": reached}, f)
"""


def test_another_process_of_the_hook_user_cannot_reach_the_protocol(
    tree: Tree, user: pwd.struct_passwd, user_tmp_path: Path
) -> None:
    injector = user_tmp_path / "injector.py"
    injector.write_text(INJECTOR)
    injector.chmod(0o644)
    tree.hook(
        "general",
        "a_waiting.py",
        f"""
import os, subprocess, sys
def add_info(report):
    # While this hook runs (its runner waiting for it), a process of the same user that is not
    # this hook's descendant attacks: run from the parent via a file the test watches.
    open("{tree.out}/ready", "w").close()
    for _ in range(3000):
        if os.path.exists("{tree.out}/injector.json"):
            break
        import time; time.sleep(0.01)
    report["Waited"] = "yes"
""",
    )
    ready = tree.out / "ready"
    python = interpreter_for(Account.from_passwd(user))
    with subprocess.Popen(
        [python, "-c", _run_when(ready, injector, tree.out)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        cwd="/",
    ) as attacker:
        result = hooks_for(tree, user, timeout=60)
        attacker.wait(timeout=60)
    attack = json.loads((tree.out / "injector.json").read_text())
    assert len(attack["targets"]) >= 2, attack  # it found the runner and the hook process ...
    assert attack["reached"] == [], attack  # ... and reached none of their descriptors
    assert hook_fields(result) == {"Waited": "yes"}, result
    assert result.errors == {}


def _run_when(ready: Path, injector: Path, out: Path) -> str:
    return textwrap.dedent(f"""
        import os, subprocess, sys, time
        for _ in range(6000):
            if os.path.exists({str(ready)!r}):
                break
            time.sleep(0.01)
        subprocess.run([sys.executable, {str(injector)!r}, {str(out)!r}], check=True)
    """)


LEAVER = """
import os, subprocess, time

def leave_processes(out):
    '''A fork, a double fork into a session of its own, one that ignores SIGTERM: their pids to a file.'''
    pids = [subprocess.Popen(["sleep", "1000"]).pid]
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.execvp("sleep", ["sleep", "1001"])
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.waitpid(middle, 0)
    os.close(w)
    pids.append(int(os.read(r, 64)))
    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 1002"], start_new_session=True)
    pids.append(stubborn.pid)
    with open(out + "/pids", "w") as f:
        f.write(" ".join(map(str, pids)))
"""

ENDINGS = {
    "returns": "    pass\n",
    "exits": "    os._exit(0)\n",
    "kills its runner": "    os.kill(os.getppid(), 9)\n    time.sleep(1000)\n",
    "times out": "    time.sleep(1000)\n",
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_nothing_a_hook_starts_outlives_it(tree: Tree, user: pwd.struct_passwd, ending: str) -> None:
    tree.hook(
        "general",
        "a_leaver.py",
        LEAVER + f"\ndef add_info(report):\n    leave_processes(report['OutDir'])\n{ENDINGS[ending]}",
    )
    tree.hook(
        "general",
        "b_check.py",
        """
import os
def add_info(report):
    pids = open(report["OutDir"] + "/pids").read().split()
    report["LeftAlive"] = " ".join(pid for pid in pids if os.path.exists(f"/proc/{pid}"))
""",
    )
    result = hooks_for(tree, user, {"OutDir": str(tree.out)}, timeout=5)
    pids = [int(p) for p in (tree.out / "pids").read_text().split()]
    assert len(pids) == 3
    # Already gone when the next hook started ...
    assert result.fields["LeftAlive"] == "", result
    # ... and dead and reaped by the time the run returns: no waiting.
    assert [pid for pid in pids if not gone(pid)] == []
    assert no_process_left(user.pw_uid)
    if ending == "times out":
        assert result.errors[error_key("a_leaver.py")].startswith("crashd: the hook timed out after 5 s")


def test_nothing_a_hook_starts_outlives_hook_test(
    tree: Tree,
    user: pwd.struct_passwd,
    hook_test_cli: Callable[..., tuple[int, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hook = tree.hook("dev", "leaver.py", LEAVER + "\ndef add_info(report):\n    leave_processes(report['OutDir'])\n")
    report = report_file(tree, user, {"ProblemType": "Crash", "OutDir": str(tree.out)})
    code, _, err = hook_test_cli(str(hook), str(report), capsys=capsys)
    assert code == 0, err
    pids = [int(p) for p in (tree.out / "pids").read_text().split()]
    assert [pid for pid in pids if not gone(pid)] == []
    assert processes_of(user.pw_uid) == []


def test_root_reports_hooks_never_run_as_the_upload_workers_user(
    tree: Tree, make_user: Callable[[], pwd.struct_passwd]
) -> None:
    worker, hooks = make_user(), make_user()
    probe = tree.hook("general", "probe.py", "import os\ndef add_info(report):\n    report['Uid'] = str(os.getuid())\n")
    as_root = run_hooks(
        {"ProblemType": "Crash"}, owner_uid=0, roots=tree.roots, fallback_user=hooks.pw_name,
        worker_user=worker.pw_name,
    )  # fmt: skip
    assert as_root.fields["Uid"] == str(hooks.pw_uid)
    # A report owned by the worker's user is treated like root's: the hook user runs its hooks.
    as_worker = run_hooks(
        {"ProblemType": "Crash"}, owner_uid=worker.pw_uid, roots=tree.roots, fallback_user=hooks.pw_name,
        worker_user=worker.pw_name,
    )  # fmt: skip
    assert as_worker.fields["Uid"] == str(hooks.pw_uid)
    # Configured to be the same user: refused, and said so for every hook.
    same = run_hooks(
        {"ProblemType": "Crash"}, owner_uid=0, roots=tree.roots, fallback_user=worker.pw_name,
        worker_user=worker.pw_name,
    )  # fmt: skip
    assert same.ran == [] and "also the upload worker's user" in same.skipped[str(probe)]


def test_a_hook_that_stops_its_runner_is_killed_at_its_timeout(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general",
        "a_stopper.py",
        "import os, signal, time\ndef add_info(report):\n    os.kill(os.getppid(), signal.SIGSTOP)\n",
    )
    tree.hook("general", "b_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    result = hooks_for(tree, user, timeout=1)
    # The hook itself returned at once; its stopped runner never said so: the step after it timed out.
    assert result.errors[error_key("a_stopper.py")].startswith("crashd: the hook timed out after 1 s")
    assert hook_fields(result) == {"After": "ran"}
    assert no_process_left(user.pw_uid)


FAKE_RUNNER = """
import json, os, sys
first = json.loads(sys.stdin.readline())
hook = first["hooks"][0]
for line in sys.argv[1:]:
    os.write(1, line.replace("HOOK", hook).encode() + b"\\n")
os.read(0, 1)
"""


@pytest.mark.parametrize(
    "lines",
    [
        ['{"start": "/elsewhere/not_handed_out.py"}'],
        ['{"start": "HOOK"}', '{"done": "/elsewhere/other.py", "fields": {"Injected": "yes"}}'],
        ['{"start": "HOOK"}', '{"start": "HOOK"}', '{"done": "HOOK", "fields": {"Injected": "yes"}}'],
        ['{"done": "HOOK", "fields": {"Injected": "yes"}}'],
    ],
)
def test_the_parent_accepts_only_the_hooks_it_handed_out_in_order(
    tree: Tree, user: pwd.struct_passwd, user_tmp_path: Path, lines: list[str]
) -> None:
    """A runner that lies (as a hook would, could it reach the protocol) is killed, and nothing it said is kept."""
    hook = tree.hook("general", "a_hook.py", "def add_info(report):\n    report['Real'] = 'yes'\n")
    fake = user_tmp_path / "fake-python"
    argv = " ".join(f"'{line}'" for line in lines)
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -I -c '{_quote(FAKE_RUNNER)}' {argv}\n")
    fake.chmod(0o755)
    plans = iter([Plan([hook])])
    result = run({"ProblemType": "Crash"}, lambda _fields: next(plans, None), account=Account.from_passwd(user),
                 python=str(fake), timeout=30)  # fmt: skip
    assert hook_fields(result) == {}, result
    outcome = result.errors.get(error_key(hook)) or result.skipped.get(str(hook))
    assert outcome is not None and "broke crashd's hook protocol" in outcome, result


def _quote(code: str) -> str:
    return code.replace("'", "'\\''")


SLOW_RUNNER = """
import json, os, sys, time
first = json.loads(sys.stdin.readline())
for hook in first["hooks"]:
    os.write(1, json.dumps({"start": hook}).encode() + b"\\n")
    os.write(1, json.dumps({"done": hook, "fields": {}, "removed": [], "error": None}).encode() + b"\\n")
    time.sleep(float(sys.argv[1]))  # each step within its own deadline, the sum past the report's
os.write(1, b'{"batch": "done"}\\n')
os.read(0, 1)
"""


def test_the_report_has_a_time_budget_no_step_can_extend(
    tree: Tree, user: pwd.struct_passwd, user_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step keeps to its own deadline, and yet the report's hooks stop at the report's budget:
    with a 2 s start-up allowance and no per-hook slack, 4 hooks of 0.3 s have 2 + 4 x 0.3 = 3.2 s."""
    import crashd.hooks.process
    import crashd.hooks.runner

    monkeypatch.setattr(crashd.hooks.process, "STARTUP_TIMEOUT", 2.0)
    monkeypatch.setattr(crashd.hooks.runner, "STARTUP_TIMEOUT", 2.0)
    monkeypatch.setattr(crashd.hooks.runner, "SLACK_PER_HOOK", 0.0)
    hooks = [tree.hook("general", f"{n}.py", "def add_info(report):\n    pass\n") for n in "abcd"]
    fake = user_tmp_path / "slow-python"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -I -c '{_quote(SLOW_RUNNER)}' 1.2\n")
    fake.chmod(0o755)
    plans = iter([Plan(hooks)])
    result = run({"ProblemType": "Crash"}, lambda _fields: next(plans, None), account=Account.from_passwd(user),
                 python=str(fake), timeout=0.3)  # fmt: skip
    # Starts at about 0, 1.2 and 2.4 s, each gap within its 2 s; the fourth would start at 3.6 s, past 3.2 s.
    assert result.skipped.get(str(hooks[-1])) == "not run: this report's hooks ran out of time", result
    assert result.ran == [str(hook) for hook in hooks[: len(result.ran)]]


def test_a_hook_cannot_signal_the_keeper(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general",
        "a_regicide.py",
        """
import os, signal
def add_info(report):
    with open(f"/proc/{os.getppid()}/stat", "rb") as f:  # the runner's parent: the keeper
        keeper = int(f.read().rsplit(b")", 1)[1].split()[1])
    outcomes = []
    for signum in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):
        try:
            os.kill(keeper, signum)
            outcomes.append("sent")
        except OSError as error:
            outcomes.append(type(error).__name__)
    report["Keeper"] = " ".join(outcomes)
""",
    )
    result = hooks_for(tree, user)
    assert result.fields["Keeper"] == "PermissionError PermissionError PermissionError", result
