"""Hook hosts (issue 15): a burst of one user's reports starts one hook child, and nothing else changes.

Real users, real processes. A hook reports its runner by ``os.getppid()`` (each hook is a fresh
process forked by the runner), so the assertions see which host ran a report. The assertions are on
outcomes (which runner, which process is alive), never on wall-clock figures.
"""

# ruff: noqa: F811 - the fixtures of tests/test_hooks.py are imported by name and used as parameters

from __future__ import annotations

import os
import pwd
import threading
from collections.abc import Callable, Iterator

import pytest

from crashd.hooks import error_key, host, run_hooks
from crashd.process import children
from tests.test_hooks import (  # noqa: F401 - fixtures among them
    Tree,
    gone,
    hook_fields,
    hooks_for,
    processes_of,
    tree,
    user,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="hooks switch uids: needs root")

RUNNER = "import os\ndef add_info(report):\n    report['Runner'] = str(os.getppid())\n"

LEAVE = """
import os, subprocess
def add_info(report):
    if os.fork() == 0:  # a double fork into a session of its own: an orphan of the runner's
        os.setsid()
        child = subprocess.Popen(["sleep", "1000"])
        with open(report["OutDir"] + "/left", "w") as f:
            f.write(str(child.pid))
        os._exit(0)
    os.wait()
"""

CHECK = """
import os
def add_info(report):
    path = report["OutDir"] + "/left"
    if os.path.exists(path):
        pid = open(path).read()
        try:
            state = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()[0]
        except OSError:
            state = "gone"
        report["LeftState"] = state
"""


@pytest.fixture(autouse=True)
def no_hosts() -> Iterator[None]:
    """Each test starts and ends with no idle host."""
    host.close_all()
    yield
    host.close_all()


def runner_of(tree: Tree, user: pwd.struct_passwd, **kw: object) -> int:
    result = hooks_for(tree, user, **kw)
    assert not result.errors, result.errors
    return int(result.fields["Runner"])


def idle_runners() -> set[int]:
    return {pid for child in host.idle() for pid in children(child.proc.pid)}


def test_a_host_runs_the_next_report_of_the_same_user(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook("general", "runner.py", RUNNER)
    first = runner_of(tree, user)
    assert idle_runners() == {first}  # kept, waiting
    assert runner_of(tree, user) == first  # the same runner: no new interpreter
    assert os.stat(f"/proc/{first}").st_uid == user.pw_uid  # the hook user's, never root's


def test_each_report_gets_its_own_fields_and_bounds(tree: Tree, user: pwd.struct_passwd) -> None:
    """Nothing of one report reaches the next one's hooks: the runner starts each report afresh."""
    tree.hook(
        "general",
        "echo.py",
        "import os\ndef add_info(report):\n"
        "    report['Seen'] = ' '.join(sorted(k for k in report if k.startswith('Mine')))\n"
        "    report['Runner'] = str(os.getppid())\n"
        "    report['Mine' + report['Which']] = 'set'\n",
    )
    one = hooks_for(tree, user, {"Which": "One", "MineA": "x"})
    two = hooks_for(tree, user, {"Which": "Two"})
    assert one.fields["Runner"] == two.fields["Runner"]
    assert one.fields["Seen"] == "MineA" and two.fields["Seen"] == ""
    assert "_HooksRunWith" in one.fields and "_HooksRunWith" in two.fields  # said for every report


def test_what_a_hook_leaves_is_gone_before_the_next_reports_hooks_start(
    tree: Tree, user: pwd.struct_passwd
) -> None:
    tree.hook("general", "a_runner.py", RUNNER)
    tree.hook("general", "b_leave.py", LEAVE)
    first = hooks_for(tree, user, {"OutDir": str(tree.out)})
    assert not first.errors, first.errors
    left = int((tree.out / "left").read_text())
    assert gone(left)  # the runner ended it before it answered
    tree.hook("general", "c_check.py", CHECK)
    second = hooks_for(tree, user, {"OutDir": str(tree.out)})
    assert second.fields["Runner"] == first.fields["Runner"]  # the same host ...
    assert second.fields["LeftState"] in ("gone", "Z", "X")  # ... held nothing of the first report


def test_a_host_whose_report_failed_is_not_kept(tree: Tree, user: pwd.struct_passwd) -> None:
    runner = tree.hook("general", "a_runner.py", RUNNER)
    first = runner_of(tree, user, timeout=2)
    slow = tree.hook("general", "b_slow.py", "import time\ndef add_info(report):\n    time.sleep(1000)\n")
    timed_out = hooks_for(tree, user, timeout=2)
    assert timed_out.fields["Runner"] == str(first)  # the kept host ran it ...
    assert timed_out.errors[error_key(slow)].startswith("crashd: the hook timed out after 2 s")
    assert wait_until(lambda: gone(first), timeout=30)  # ... and was ended with the timeout, never kept
    assert host.idle() == []
    slow.unlink()
    assert runner_of(tree, user, timeout=2) != first
    assert runner.exists()


def test_different_users_get_different_hosts(
    tree: Tree, user: pwd.struct_passwd, make_user: Callable[[], pwd.struct_passwd]
) -> None:
    other = make_user()
    tree.hook("general", "runner.py", RUNNER)
    mine = runner_of(tree, user)
    theirs = int(
        run_hooks({"ProblemType": "Crash"}, owner_uid=other.pw_uid, roots=tree.roots).fields["Runner"]
    )
    assert mine != theirs and idle_runners() == {mine, theirs}
    assert os.stat(f"/proc/{theirs}").st_uid == other.pw_uid
    assert runner_of(tree, user) == mine


def test_concurrent_reports_of_one_user_use_separate_hosts(tree: Tree, user: pwd.struct_passwd) -> None:
    """One report at a time per host: the second of two overlapping reports starts its own child."""
    gate = tree.out / "gate"
    tree.hook(
        "general",
        "runner.py",
        "import os, time\ndef add_info(report):\n    report['Runner'] = str(os.getppid())\n"
        f"    open({str(tree.out)!r} + '/' + report['Which'], 'w').close()\n"
        f"    while not os.path.exists({str(gate)!r}):\n        time.sleep(0.01)\n",
    )
    results: dict[str, int] = {}

    def report(which: str) -> None:
        results[which] = int(hook_fields(hooks_for(tree, user, {"Which": which}))["Runner"])

    threads = [threading.Thread(target=report, args=(which,)) for which in ("one", "two")]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: (tree.out / "one").exists() and (tree.out / "two").exists(), 30)
    gate.touch()
    for thread in threads:
        thread.join()
    assert results["one"] != results["two"]
    assert len(host.idle()) == 1  # one idle host per user is kept


def test_a_host_ends_when_idle(tree: Tree, user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "IDLE_SECONDS", 0.2)
    tree.hook("general", "runner.py", RUNNER)
    first = runner_of(tree, user)
    assert wait_until(lambda: host.idle() == [] and gone(first), timeout=30)
    assert processes_of(user.pw_uid) == []
    assert runner_of(tree, user) != first  # a new burst starts a new host


def test_closing_the_hosts_ends_every_process_of_theirs(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook("general", "runner.py", RUNNER)
    first = runner_of(tree, user)
    keepers = [child.proc.pid for child in host.idle()]
    host.close_all()
    assert gone(first) and all(gone(pid) for pid in keepers)
    assert processes_of(user.pw_uid) == []


def test_a_host_killed_while_idle_is_replaced(tree: Tree, user: pwd.struct_passwd) -> None:
    """The hook user may kill its own runner between reports: the next report starts a fresh host."""
    tree.hook("general", "runner.py", RUNNER)
    first = runner_of(tree, user)
    os.kill(first, 9)
    assert wait_until(lambda: gone(first), timeout=30)
    assert runner_of(tree, user) != first


def test_a_host_whose_report_hit_the_output_cap_is_not_kept(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook("general", "a_runner.py", RUNNER)
    first = runner_of(tree, user)
    loud = tree.hook(
        "general", "b_loud.py", "import os\ndef add_info(report):\n    os.write(1, b'x' * (3 << 20))\n"
    )
    result = hooks_for(tree, user, output_cap=1 << 20)
    assert result.fields["Runner"] == str(first)
    assert "wrote more than 1 MiB of output" in result.errors[error_key(loud)]
    assert gone(first) and host.idle() == []


def test_a_report_stopped_by_a_hook_leaves_a_host_that_runs_the_next_report_whole(
    tree: Tree, user: pwd.struct_passwd
) -> None:
    tree.hook("general", "a_runner.py", RUNNER)
    tree.hook(
        "general",
        "b_stop.py",
        "def add_info(report):\n    if report.get('Stop'):\n        raise StopIteration\n",
    )
    after = tree.hook("general", "c_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    stopped = hooks_for(tree, user, {"Stop": "yes"})
    assert stopped.stopped and str(after) in stopped.skipped
    whole = hooks_for(tree, user)
    assert whole.fields["Runner"] == stopped.fields["Runner"]
    assert whole.fields["After"] == "ran" and not whole.stopped


@pytest.mark.parametrize("way", ["process", "pipeline"])
def test_one_reports_hooks_run_while_a_courier_works_on_another(
    tree: Tree, user: pwd.struct_passwd, way: str
) -> None:
    """A courier works on one report at a time (its threads take turns for the GIL, issue 15), but lets
    go while a report waits: two reports' hooks, each waiting for the other to start, both finish, and
    the second report's POST goes out while the first one's hook still runs. In a pipeline (the daemon's
    way), a report ahead holds the wire when the first hook report is reached: its answer is recorded
    before the hook runs, or the other thread waits for the wire forever, holding what the first needs."""
    from crashd.delivery import Courier
    from crashd.hooks.options import HookOptions
    from crashd.report import DEFAULT_LIMITS
    from crashd.spool import ReportName, Spool
    from crashd.state import StateStore
    from crashd.uploader import DirectUploader, HttpTransport
    from tests.daisy import DaisyServer
    from tests.test_upload_all import TOKEN, crash, write

    tree.hook(
        "general",
        "meet.py",
        "import os, time\ndef add_info(report):\n"
        f"    out = {str(tree.out)!r}\n"
        "    if 'Which' not in report:\n"
        "        return\n"
        "    open(out + '/' + report['Which'], 'w').close()\n"
        "    end = time.monotonic() + 20\n"
        "    met = lambda: all(os.path.exists(out + '/' + which) for which in '12')\n"
        "    while not met() and time.monotonic() < end:\n"
        "        time.sleep(0.01)\n"
        "    report['Met'] = 'yes' if met() else 'no'\n"
        "    while report['Which'] == '1' and not os.path.exists(out + '/posted2') and time.monotonic() < end:\n"
        "        time.sleep(0.01)\n"
        "    report['Saw'] = 'yes' if os.path.exists(out + '/posted2') else 'no'\n",
    )
    crash_dir = tree.base.parent / "crash"
    crash_dir.mkdir(mode=0o3777)
    crash_dir.chmod(0o3777)
    names = [f"_usr_bin_meet{which}.{user.pw_uid}.crash" for which in ("1", "2")]
    for which, name in zip(("1", "2"), names, strict=True):
        write(crash_dir / name, crash(f"meet{which}", Which=which), owner=(user.pw_uid, user.pw_gid))
    statuses = {}
    with DaisyServer(core_policy="never") as daisy, Spool(crash_dir) as spool:
        courier = Courier(DirectUploader(HttpTransport(5, 5)), daisy.url, TOKEN, StateStore(None))
        hooks = HookOptions(roots=tree.roots, timeout=30)

        def process(name: str) -> None:
            statuses[name] = courier.process(spool, ReportName.parse(name), DEFAULT_LIMITS, hooks=hooks)

        def pipeline(*batch: str) -> None:
            for name, status in courier.pipeline(
                spool, map(ReportName.parse, batch), DEFAULT_LIMITS, hooks=hooks
            ):
                statuses[name.crash] = status

        if way == "process":
            threads = [threading.Thread(target=process, args=(name,), daemon=True) for name in names]
        else:  # one batch with a report ahead of the hooks' one, on the wire when its hooks are reached
            ahead = "_usr_bin_ahead.0.crash"
            write(crash_dir / ahead, crash("ahead", _HooksRun="yes"))
            threads = [threading.Thread(target=pipeline, args=(ahead, names[0]), daemon=True),
                       threading.Thread(target=pipeline, args=(names[1],), daemon=True)]  # fmt: skip

        def second_in() -> bool:
            return any((report.document or {}).get("Which") == "2" for report in daisy.reports)

        def watch() -> None:  # tells the first report's hook when the second report's POST is in
            if wait_until(second_in, 30):
                (tree.out / "posted2").touch()

        threads.append(threading.Thread(target=watch, daemon=True))  # a deadlock fails the test, not the run
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        documents = [report.document for report in daisy.reports]
    assert len(statuses) == 2 + (way == "pipeline")
    assert all(status is not None and status.state.value == "sent" for status in statuses.values()), statuses
    assert sorted(document["Met"] for document in documents if "Met" in document) == ["yes", "yes"], documents
    first = next(document for document in documents if document.get("Which") == "1")
    assert first["Saw"] == "yes", documents  # the second report's POST went out while its hook ran
