"""crashd.hooks against real processes: real uid switches, real rlimits, real hostile hooks.

Every test runs hooks as a throwaway user through the real runner (``python3 -I
child.py`` started by ``subprocess`` with ``user``/``group``/``extra_groups``),
from hook trees the test writes itself (``HookRoots`` pointed at ``tmp_path``).
Hooks report what they saw by adding fields, so the assertions read what the
child really had: its uid, groups, environment, descriptors, limits.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crashd.cli import main
from crashd.hooks import (
    HookLimits,
    HookResult,
    HookRoots,
    InvalidPackageError,
    error_key,
    host,
    run_hooks,
)
from crashd.hooks.accounts import CHILD, Account
from crashd.hooks.discovery import opt_hook_dirs, package_names, package_plan
from crashd.hooks.runner import run
from crashd.process import children
from crashd.report import write_report
from tests.daemon_run import wait_until

MiB = 1 << 20

# --- fixtures and helpers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user(make_user: Callable[[], pwd.struct_passwd]) -> pwd.struct_passwd:
    return make_user()


@dataclass
class Tree:
    """A hook tree of the test's own: general and package directories, an /opt and an extra dir."""

    base: Path
    roots: HookRoots
    extra: Path
    out: Path  # a directory the hook user may write to

    def hook(self, where: str, name: str, body: str, *, mode: int = 0o644, uid: int = 0) -> Path:
        directory = self.base / where
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_text(textwrap.dedent(body))
        os.chown(path, uid, -1)
        path.chmod(mode)
        return path


@pytest.fixture
def tree(user_tmp_path: Path, user: pwd.struct_passwd) -> Tree:
    base = user_tmp_path / "hooks"
    roots = HookRoots(general=(base / "general",), package=(base / "package",), opt=base / "opt")
    out = user_tmp_path / "out"
    out.mkdir()
    os.chown(out, user.pw_uid, user.pw_gid)
    return Tree(base, roots, base / "extra", out)


def hooks_for(
    tree: Tree, user: pwd.struct_passwd, fields: dict[str, str] | None = None, **kw: object
) -> HookResult:
    report = {"ProblemType": "Crash", "ExecutablePath": "/usr/bin/true", **(fields or {})}
    return run_hooks(report, owner_uid=user.pw_uid, roots=tree.roots, **kw)  # type: ignore[arg-type]


def hook_fields(result: HookResult) -> dict[str, str | bytes]:
    """What the hooks set, less ``_HooksRunWith`` (which apport the child gave them: tests/test_hook_compat.py)."""
    return {k: v for k, v in result.fields.items() if k != "_HooksRunWith"}


def gone(pid: int) -> bool:
    """Dead: no /proc entry, or a zombie nobody reaped yet (this machine's pid 1 may not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def processes_of(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and not gone(int(name)):
                    pids.append(int(name))
            except FileNotFoundError:
                pass
    return pids


def left_behind(uid: int) -> list[int]:
    """The processes of *uid* other than the runners of idle hook hosts (crashd started those, no hook)."""
    runners = {pid for child in host.idle() for pid in children(child.proc.pid)}
    return [pid for pid in processes_of(uid) if pid not in runners]


def no_process_left(uid: int) -> bool:
    """Nothing of *uid* left but idle hook hosts, and nothing at all once those are closed."""
    if left_behind(uid):
        return False
    host.close_all()
    return processes_of(uid) == []


# --- who the hooks run as, and what they inherit ------------------------------------------------------

PROBE = """
    import os, resource
    def add_info(report, ui):
        report["Uid"] = f"{os.getuid()} {os.geteuid()} {os.getresuid()}"
        report["Gid"] = f"{os.getgid()} {os.getegid()}"
        report["Groups"] = " ".join(map(str, sorted(os.getgroups())))
        report["Environ"] = repr(dict(os.environ))
        fds = []
        for fd in sorted(os.listdir("/proc/self/fd"), key=int):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:  # listdir's own descriptor, closed by now
                pass
        report["Fds"] = " ".join(fds)
        status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
        report["NoNewPrivs"] = status["NoNewPrivs"].strip()
        report["OomScoreAdj"] = open("/proc/self/oom_score_adj").read().strip()
        report["Session"] = f"{os.getpid()} {os.getpgid(0)} {os.getsid(0)}"
        report["Cwd"] = os.getcwd()
        old = os.umask(0); os.umask(old)
        report["Umask"] = oct(old)
        report["Limits"] = repr({name: resource.getrlimit(getattr(resource, "RLIMIT_" + name))
                                 for name in ("AS", "FSIZE", "NOFILE", "NPROC", "CPU", "CORE")})
"""


def test_a_hook_runs_as_the_report_owner_with_a_clean_contained_process(
    tree: Tree, user: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SECRET", "x")
    leak = os.open(tmp_path / "leaked-descriptor", os.O_RDWR | os.O_CREAT, 0o600)
    os.set_inheritable(leak, True)  # inheritable on purpose: close_fds must still keep it out
    try:
        tree.hook("general", "probe.py", PROBE)
        result = hooks_for(tree, user)
    finally:
        os.close(leak)
    assert result.errors == {}, result.errors
    fields = result.fields
    uid, gid = user.pw_uid, user.pw_gid
    assert fields["Uid"] == f"{uid} {uid} {(uid, uid, uid)}"
    assert fields["Gid"] == f"{gid} {gid}"
    assert fields["Groups"] == " ".join(map(str, sorted(set(os.getgrouplist(user.pw_name, gid)))))
    assert eval(fields["Environ"]) == {  # the child's whole environment, nothing inherited
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    assert "leaked-descriptor" not in fields["Fds"]
    # 0 = /dev/null, 1 and 2 = the output pipe, 3 = its own result pipe: nothing else, no protocol pipe.
    fds = fields["Fds"].split()
    assert fds[0] == "/dev/null" and len(fds) == 4 and all(fd.startswith("pipe:") for fd in fds[1:]), fds
    assert fds[1] == fds[2] != fds[3], fds
    assert fields["NoNewPrivs"] == "1"
    assert fields["OomScoreAdj"] == "1000"
    pid, pgid, sid = fields["Session"].split()
    assert pid == pgid == sid  # its own session and process group
    assert fields["Cwd"] == "/"
    assert fields["Umask"] == "0o77"
    limits = eval(fields["Limits"])
    default = HookLimits()
    assert limits["AS"] == (default.address_space,) * 2
    assert limits["FSIZE"] == (default.file_size,) * 2
    assert limits["NOFILE"] == (default.open_files,) * 2
    assert limits["CORE"] == (0, 0)
    assert limits["NPROC"][0] <= default.processes + 10  # the throwaway user runs (almost) nothing else
    assert limits["CPU"][0] <= 32  # the next hook's share: timeout + what was used so far


def test_the_hook_user_keeps_its_supplementary_groups(
    tree: Tree, make_user: Callable[[], pwd.struct_passwd]
) -> None:
    member, other = make_user(), make_user()
    subprocess.run(["usermod", "-a", "-G", other.pw_name, member.pw_name], check=True, capture_output=True)
    tree.hook("general", "probe.py", PROBE)
    result = hooks_for(tree, member)
    assert str(other.pw_gid) in result.fields["Groups"].split()


def test_root_owned_reports_run_hooks_as_the_fallback_user_never_as_root(
    tree: Tree, make_user: Callable[[], pwd.struct_passwd]
) -> None:
    crashd_like = make_user()
    tree.hook("general", "probe.py", PROBE)
    result = run_hooks(
        {"ProblemType": "Crash"}, owner_uid=0, roots=tree.roots, fallback_user=crashd_like.pw_name
    )
    assert result.fields["Uid"].split()[0] == str(crashd_like.pw_uid)
    assert result.fields["Gid"].split()[0] == str(crashd_like.pw_gid)


def test_without_the_fallback_user_root_reports_get_no_hooks_and_a_reason(tree: Tree) -> None:
    probe = tree.hook("general", "probe.py", PROBE)
    result = run_hooks(
        {"ProblemType": "Crash"}, owner_uid=0, roots=tree.roots, fallback_user="no-such-user-x"
    )
    assert result.ran == [] and hook_fields(result) == {}
    assert "'no-such-user-x' does not exist" in result.skipped[str(probe)]


def test_the_child_refuses_to_run_as_root_and_the_parent_refuses_to_start_it(tree: Tree) -> None:
    control_r, control_w = os.pipe()
    config = {"account": {"uid": 0, "gid": 0, "groups": [0]}, "limits": HookLimits().__dict__}
    try:
        done = subprocess.run(
            [sys.executable, "-I", str(CHILD), json.dumps(config), str(control_r)],
            input=b"",
            capture_output=True,
            pass_fds=(control_r,),
            timeout=30,
            check=False,
        )
    finally:
        os.close(control_r)
        os.close(control_w)
    assert done.returncode == 70 and b"uid or gid 0" in done.stderr, done
    root = Account(0, 0, (0,), "root", "/root")
    with pytest.raises(RuntimeError, match="root"):
        run({}, lambda _fields: None, account=root, python=sys.executable)


# --- containment ------------------------------------------------------------------------------------------


def test_a_hook_past_its_timeout_is_killed_with_everything_it_started(
    tree: Tree, user: pwd.struct_passwd
) -> None:
    tree.hook(
        "general",
        "a_sleeper.py",
        """
        import subprocess, time
        def add_info(report, ui):
            started = time.monotonic()  # CLOCK_MONOTONIC: the same clock as the test's
            same_group = subprocess.Popen(["sleep", "1000"])
            own_session = subprocess.Popen(["sleep", "1001"], start_new_session=True)
            with open(report["OutDir"] + "/pids", "w") as f:
                f.write(f"{started} {same_group.pid} {own_session.pid}")
            time.sleep(1000)
        """,
    )
    result = hooks_for(tree, user, {"OutDir": str(tree.out)}, timeout=1)
    returned = time.monotonic()
    assert result.errors[error_key("a_sleeper.py")].startswith("crashd: the hook timed out after 1 s")
    started, *pids = (tree.out / "pids").read_text().split()
    # Killed at its timeout, not left to its sleep(1000): a bound that only catches that hang, since a loaded
    # machine may take seconds to kill and reap (measured from the hook's own start, not crashd's) ...
    assert returned - float(started) < 1 + 30, returned - float(started)
    # ... and by then the grandchildren are dead too, also the one in its own session.
    assert [pid for pid in pids if not gone(int(pid))] == []
    tree.hook("general", "b_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    result = hooks_for(tree, user, {"OutDir": str(tree.out)}, timeout=1)
    assert result.fields["After"] == "ran"  # a fresh child ran the rest


def test_a_hook_printing_100_mb_is_cut_at_the_output_cap(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general",
        "a_loud.py",
        """
        import sys
        def add_info(report):
            chunk = "x" * (1 << 20)
            for _ in range(100):
                sys.stdout.write(chunk)
        """,
    )
    after = tree.hook("general", "b_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    result = hooks_for(tree, user, timeout=60)
    assert "wrote more than 10 MiB of output" in result.errors[error_key("a_loud.py")]
    # The cap is per report: once spent, nothing else of the report's runs.
    assert result.skipped[str(after)] == "not run: this report's hooks wrote more than 10 MiB of output"
    assert len(result.output) <= 64 * 1024
    assert hook_fields(result) == {}


def test_a_hook_returning_a_field_past_the_cap_loses_it_and_the_next_hook_runs(
    tree: Tree, user: pwd.struct_passwd
) -> None:
    tree.hook("general", "a_huge_field.py", "def add_info(report):\n    report['Huge'] = 'y' * (20 << 20)\n")
    tree.hook("general", "b_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    result = hooks_for(tree, user, timeout=60)
    assert "returned more than 10 MiB of fields" in result.errors[error_key("a_huge_field.py")]
    assert hook_fields(result) == {"After": "ran"}


def test_a_hook_allocating_too_much_hits_its_address_space_limit(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook("general", "a_greedy.py", "def add_info(report):\n    report['Big'] = bytes(8 << 30)\n")
    tree.hook("general", "b_after.py", "def add_info(report):\n    report['After'] = 'ran'\n")
    result = hooks_for(tree, user)
    assert "MemoryError" in result.errors[error_key("a_greedy.py")]
    assert result.fields["After"] == "ran"


def test_hostile_hooks_are_contained_and_recorded(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general", "a_shadow.py", "def add_info(report):\n    report['Shadow'] = open('/etc/shadow').read()\n"
    )
    tree.hook("general", "b_write.py", "def add_info(report):\n    open('/etc/crashd-hook-was-here', 'w')\n")
    tree.hook("general", "c_setuid.py", "import os\ndef add_info(report):\n    os.setuid(0)\n")
    tree.hook("general", "d_exit.py", "import os\ndef add_info(report):\n    os._exit(3)\n")
    tree.hook(
        "general",
        "e_segv.py",
        "import os, signal\ndef add_info(report):\n    os.kill(os.getpid(), signal.SIGSEGV)\n",
    )
    tree.hook("general", "f_sysexit.py", "import sys\ndef add_info(report):\n    sys.exit(5)\n")
    tree.hook(
        "general",
        "g_background.py",
        """
        import subprocess
        def add_info(report):
            report["Background"] = str(subprocess.Popen(["sleep", "1000"], start_new_session=True).pid)
        """,
    )
    tree.hook("general", "h_last.py", "def add_info(report):\n    report['Last'] = 'ran'\n")
    result = hooks_for(tree, user)
    errors = result.errors
    assert "PermissionError" in errors[error_key("a_shadow.py")] and "Shadow" not in result.fields
    assert "PermissionError" in errors[error_key("b_write.py")]
    assert not os.path.exists("/etc/crashd-hook-was-here")
    assert "PermissionError" in errors[error_key("c_setuid.py")]
    assert errors[error_key("d_exit.py")].startswith("crashd: the hook exited with status 3")
    assert errors[error_key("e_segv.py")].startswith("crashd: the hook was killed by signal 11 (SIGSEGV)")
    assert "SystemExit: 5" in errors[error_key("f_sysexit.py")]
    assert wait_until(lambda: gone(int(result.fields["Background"])), timeout=30)  # left behind, then killed
    assert result.fields["Last"] == "ran"


def test_a_fork_bomb_is_capped_and_leaves_nothing_behind(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general",
        "bomb.py",
        """
        import os, time
        def add_info(report):
            me, forks = os.getpid(), 0
            for _ in range(10000):
                try:
                    os.fork()
                    forks += 1
                except OSError:
                    break
            if os.getpid() != me:
                time.sleep(1000)  # every copy stays alive, holding its slot
            report["Forks"] = str(forks)
        """,
    )
    result = hooks_for(tree, user, timeout=10)
    assert result.errors == {}, result.errors
    assert 0 < int(result.fields["Forks"]) <= HookLimits().processes
    assert wait_until(lambda: not left_behind(user.pw_uid), timeout=30), left_behind(user.pw_uid)
    assert no_process_left(user.pw_uid)


# --- the hook API -------------------------------------------------------------------------------------


def test_both_add_info_signatures_and_a_ui_that_answers_none(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook("general", "a_one.py", "def add_info(report):\n    report['One'] = 'yes'\n")
    tree.hook(
        "general",
        "b_two.py",
        """
        def add_info(report, ui):
            answers = [ui.yesno("?"), ui.choice("?", ["a"]), ui.file("?"), ui.information("!")]
            report["Two"] = repr(answers)
        """,
    )
    tree.hook(
        "general",
        "c_default.py",
        "def add_info(report, ui=None):\n    report['Default'] = repr(ui is None)\n",
    )
    tree.hook("general", "d_varargs.py", "def add_info(*args):\n    args[0]['Varargs'] = str(len(args))\n")
    result = hooks_for(tree, user)
    assert result.errors == {}
    assert result.fields["One"] == "yes"
    assert result.fields["Two"] == "[None, None, None, None]"
    assert result.fields["Default"] == "False"
    assert result.fields["Varargs"] == "2"


def test_unreportable_reason_is_reported(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general", "refuse.py", "def add_info(report, ui):\n    report['UnreportableReason'] = 'low disk'\n"
    )
    assert hooks_for(tree, user).unreportable == "low disk"


def test_stop_iteration_stops_the_remaining_hooks(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general", "a_stop.py", "def add_info(report, ui):\n    report['A'] = '1'\n    raise StopIteration\n"
    )
    later = tree.hook("package", "pkg.py", "def add_info(report):\n    report['B'] = '1'\n")
    result = hooks_for(tree, user, {"Package": "pkg 1.0"})
    assert result.stopped and hook_fields(result) == {"A": "1"} and result.errors == {}
    assert "StopIteration" in result.skipped[str(later)]


def test_an_exception_records_hook_error_and_the_next_hook_runs(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook("general", "a-bad.py", "def add_info(report):\n    report['Partial'] = 'kept'\n    1 / 0\n")
    tree.hook("general", "b_good.py", "def add_info(report):\n    report['Good'] = 'yes'\n")
    result = hooks_for(tree, user)
    error = result.errors["HookError_a_bad"]
    assert "ZeroDivisionError" in error and "a-bad.py" in error and "child.py" not in error
    assert hook_fields(result) == {"Partial": "kept", "Good": "yes"}
    assert result.report_fields()["HookError_a_bad"] == error


def test_values_bytes_removals_and_a_restored_environment(tree: Tree, user: pwd.struct_passwd) -> None:
    tree.hook(
        "general",
        "a.py",
        """
        import os
        def add_info(report):
            report["Raw"] = b"\\x00\\xff binary"
            del report["Drop"]
            report.add_tags(["b", "a"])
            os.environ["LEAK"] = "1"
            os.chdir("/tmp")
            try:
                report["Bad"] = 3
            except TypeError:
                report["Refused"] = "yes"
        """,
    )
    tree.hook(
        "general",
        "b.py",
        "import os\ndef add_info(report):\n    report['Seen'] = os.environ.get('LEAK', '-') + os.getcwd()\n",
    )
    result = hooks_for(tree, user, {"Drop": "me", "Tags": "c"})
    assert result.errors == {}
    assert hook_fields(result) == {"Raw": b"\x00\xff binary", "Tags": "a b c", "Refused": "yes", "Seen": "-/"}
    assert result.removed == ["Drop"]


# --- discovery ----------------------------------------------------------------------------------------


def test_order_general_package_source_with_extra_dirs_first(tree: Tree, user: pwd.struct_passwd) -> None:
    trace = "def add_info(report):\n    report['Order'] = report.get('Order', '') + ' {}'\n"
    tree.hook("extra/general", "z_extra.py", trace.format("extra-general"))
    tree.hook("general", "a_general.py", trace.format("general"))
    shadowed = tree.hook("general", "z_extra.py", trace.format("shadowed"))
    tree.hook("extra", "late.py", trace.format("extra-package"))
    tree.hook("package", "source_src.py", trace.format("source"))
    tree.hook("package", "late.py", trace.format("package-shadowed"))
    result = hooks_for(tree, user, {"Package": "late 1.0", "SourcePackage": "src"}, extra_dirs=[tree.extra])
    assert result.fields["Order"].split() == [
        "extra-general",
        "general",
        "extra-package",
        "source",
    ]
    assert result.skipped[str(shadowed)] == "shadowed by an earlier z_extra.py"


def test_a_report_no_hook_applies_to_looks_nothing_up_and_starts_nothing(
    tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    # A root-owned report and no such hook user: looking the account up would fail, and say so.
    other = tree.hook("package", "other.py", "def add_info(report):\n    report['Ran'] = 'yes'\n")
    nobody = {"owner_uid": 0, "roots": tree.roots, "fallback_user": "crashdt-no-such-user"}
    with caplog.at_level(logging.INFO, logger="crashd"):
        assert run_hooks({"ProblemType": "Crash", "Package": "app 1.0"}, **nobody) == HookResult()
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger="crashd"):  # the control: a hook that applies needs the account
        result = run_hooks({"ProblemType": "Crash", "Package": "other 1.0"}, **nobody)
    assert result.skipped == {
        str(other): "hooks not run: the system user 'crashdt-no-such-user' does not exist"
    }
    assert "does not exist" in caplog.text


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Package", "../../x"),
        ("Package", "a/b 1.0"),
        ("SourcePackage", ".."),
        ("Package", "foo..bar"),
        ("Package", "-x"),
    ],
)
def test_a_package_name_that_could_leave_the_hook_directory_makes_the_report_invalid(
    tree: Tree, user: pwd.struct_passwd, key: str, value: str
) -> None:
    tree.hook("general", "marker.py", "def add_info(report):\n    open(report['OutDir'] + '/ran', 'w')\n")
    with pytest.raises(InvalidPackageError, match=f"invalid {key}"):
        hooks_for(tree, user, {key: value, "OutDir": str(tree.out)})
    assert not (tree.out / "ran").exists()  # refused before any hook, general ones included


def test_package_names_are_first_words() -> None:
    assert package_names({"Package": "libc6 2.36-9 [modified: x]", "SourcePackage": "glibc"}) == (
        "libc6",
        "glibc",
    )
    assert package_names({"Package": "  "}) == (None, None)
    assert package_names({"Package": "g++-12 12.2", "SourcePackage": "gcc-12"}) == ("g++-12", "gcc-12")


def test_hook_files_anyone_else_could_change_are_skipped(tree: Tree, user: pwd.struct_passwd) -> None:
    body = "def add_info(report):\n    report['Ran_{}'] = 'yes'\n"
    writable = tree.hook("general", "a.py", body.format("a"), mode=0o666)
    users = tree.hook("general", "b.py", body.format("b"), uid=user.pw_uid)
    (tree.base / "general" / "c.py").mkdir()
    target = tree.hook("elsewhere", "d.py", body.format("d"))
    (tree.base / "general" / "d.py").symlink_to(target)  # a root-owned link to a root-owned file is fine
    shared = tree.hook("shared/general", "e.py", body.format("e"))
    shared.parent.chmod(0o1777)  # /tmp-like: anyone could plant a link to any root-owned file here
    result = hooks_for(tree, user, extra_dirs=[tree.base / "shared"])
    assert hook_fields(result) == {"Ran_d": "yes"}
    assert result.skipped[str(writable)] == "writable by group or others (mode 0666)"
    assert result.skipped[str(users)] == f"owned by uid {user.pw_uid}, not by root"
    assert result.skipped[str(tree.base / "general" / "c.py")] == "not a regular file"
    assert result.skipped[str(shared)] == "in a directory writable by group or others (mode 1777)"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root-owned hook files are trusted")
def test_opt_programs_search_hooks_beside_their_resolved_path(tmp_path: Path) -> None:
    opt = Path("/opt")
    assert opt_hook_dirs("/opt/vendor/app/bin/prog", opt) == [
        Path("/opt/vendor/app/bin/share/crashd/hooks"),
        Path("/opt/vendor/app/bin/share/apport/package-hooks"),
        Path("/opt/vendor/app/share/crashd/hooks"),
        Path("/opt/vendor/app/share/apport/package-hooks"),
        Path("/opt/vendor/share/crashd/hooks"),
        Path("/opt/vendor/share/apport/package-hooks"),
        Path("/opt/share/crashd/hooks"),
        Path("/opt/share/apport/package-hooks"),
    ]
    assert opt_hook_dirs("/optical/prog", opt) == []
    assert opt_hook_dirs("/opt/../tmp/evil/prog", opt) == []  # only ever given resolved paths, but still
    # CVE-2017-10708: the decision is made on the resolved path, never on the string in the report.
    fake_opt = tmp_path / "opt"
    hooks = fake_opt / "vendor" / "share" / "apport" / "package-hooks"
    hooks.mkdir(parents=True)
    (hooks / "vendorpkg.py").write_text("def add_info(report):\n    pass\n")
    roots = HookRoots(general=(), package=(), opt=fake_opt)
    inside = {"Package": "vendorpkg", "ExecutablePath": f"{fake_opt}/vendor/bin/prog"}
    assert package_plan(inside, roots, realpath=os.path.realpath).hooks == [hooks / "vendorpkg.py"]
    escape = {"Package": "vendorpkg", "ExecutablePath": f"{fake_opt}/../../tmp/x"}
    assert package_plan(escape, roots, realpath=os.path.realpath).hooks == []
    link = tmp_path / "innocent"
    link.symlink_to(fake_opt / "vendor" / "bin" / "prog")
    assert package_plan({**inside, "ExecutablePath": str(link)}, roots).hooks == [hooks / "vendorpkg.py"]


def test_error_keys_are_apports_and_always_valid() -> None:
    assert (
        error_key("/usr/share/apport/package-hooks/source_gnome-shell.py") == "HookError_source_gnome_shell"
    )
    assert error_key("source_libstdc++.py") == "HookError_source_libstdc__"


# --- apport compatibility and crashd's own hooks ------------------------------------------------------


def test_an_apport_style_hook_runs_unchanged(tree: Tree, user: pwd.struct_passwd) -> None:
    (tree.out / "plain").write_text("plain text\n")
    (tree.out / "link").symlink_to(tree.out / "plain")
    (tree.out / "dirlink").symlink_to(tree.out)
    os.mkfifo(tree.out / "fifo")
    for name in ("plain", "fifo"):
        os.chown(tree.out / name, user.pw_uid, user.pw_gid)
    tree.hook(
        "package",
        "pkg.py",
        """
        import apport.hookutils
        import apport.packaging
        from apport.hookutils import *

        def add_info(report, ui):
            out = report["OutDir"]
            attach_file_if_exists(report, out + "/plain", "Plain")
            attach_file_if_exists(report, out + "/link", "Link")
            attach_file_if_exists(report, out + "/dirlink/plain", "DirLink")
            attach_file_if_exists(report, out + "/missing", "Missing")
            attach_file_if_exists(report, out + "/../out/plain", "Traversal")
            attach_file(report, out + "/fifo", "Fifo")
            report["Echo"] = command_output(["echo", "hello"])
            report["Fails"] = command_output(["false"])
            report["NotFound"] = command_output(["/nonexistent/tool"])
            report["Root"] = root_command_output(["dmesg"])
            report["Versions"] = package_versions("libc6", "no-such-package-x")
            attach_related_packages(report, ["dpkg"])
            report["Source"] = apport.packaging.get_source("libc6")
            report["Key"] = path_to_key("/etc/a b/c+d")
            report["Os"] = os.path.basename("/x/y")  # star-import brings os along, as in apport
        """,
    )
    result = hooks_for(tree, user, {"Package": "pkg 1.0", "OutDir": str(tree.out)})
    assert result.errors == {}, result.errors
    fields = result.fields
    assert fields["Plain"] == "plain text"
    assert fields["Link"].startswith("Error: [Errno 40]")  # O_NOFOLLOW, as apport
    assert fields["DirLink"] == "Error: path contained symlinks."
    assert "Missing" not in fields and "Traversal" not in fields
    assert fields["Fifo"] == "Error: path was not a regular file."
    assert fields["Echo"] == "hello"
    assert fields["Fails"] == "Error: command ['false'] failed with exit code 1: "
    assert fields["NotFound"].startswith("Error: [Errno 2]")
    # As apport where pkexec is absent: run as the hook's user (crashd never elevates), whatever that gives.
    if Path("/proc/sys/kernel/dmesg_restrict").read_text().strip() == "1":
        assert fields["Root"].startswith("Error: command ['dmesg'] failed with exit code 1: ")
    else:
        assert not fields["Root"].startswith("Error")
    if shutil.which("dpkg-query"):
        libc6 = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "libc6"], capture_output=True, text=True
        )
        assert fields["Versions"].splitlines() == [
            f"libc6             {libc6.stdout}",
            "no-such-package-x N/A",
        ]
        assert fields["RelatedPackageVersions"].startswith("dpkg ")
        assert fields["Source"] == "glibc"
    assert fields["Key"] == "/etc/a_b/c.d".replace("/", ".")
    assert fields["Os"] == "y"


@pytest.mark.skipif(
    not Path("/usr/share/apport/package-hooks/openssh-client.py").exists(), reason="no real hook"
)
def test_a_real_distribution_hook_runs_unchanged(user: pwd.struct_passwd) -> None:
    # openssh-client's hook asks ui.yesno() first and stops the report on None, as in whoopsie-upload-all.
    roots = HookRoots(general=(), package=(Path("/usr/share/apport/package-hooks"),), opt=None)
    result = run_hooks({"Package": "openssh-client 1:9.2p1"}, owner_uid=user.pw_uid, roots=roots)
    assert result.stopped and result.errors == {}
    assert result.ran == ["/usr/share/apport/package-hooks/openssh-client.py"]


# --- crashd hook-test --------------------------------------------------------------------------------


@pytest.fixture
def hook_test_cli(user: pwd.struct_passwd, tree: Tree) -> Iterator[Callable[..., tuple[int, str, str]]]:
    def cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        code = main(["hook-test", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    yield cli


def report_file(tree: Tree, user: pwd.struct_passwd, fields: dict[str, str], name: str = "r.crash") -> Path:
    path = tree.out / name
    with open(path, "wb") as f:
        write_report(f, fields)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


def test_hook_test_runs_one_hook_as_the_report_owner(
    tree: Tree,
    user: pwd.struct_passwd,
    hook_test_cli: Callable[..., tuple[int, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    hook = tree.hook(
        "dev",
        "mine.py",
        "import os\ndef add_info(report, ui):\n    report['Who'] = str(os.getuid())\n",
        uid=user.pw_uid,
    )
    report = report_file(tree, user, {"ProblemType": "Crash", "ExecutablePath": "/usr/bin/true"})
    code, out, err = hook_test_cli(str(hook), str(report), "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["fields"] == {"Who": str(user.pw_uid), "_HooksRunWith": "crashd-compat 1"}
    assert (
        "the daemon would skip" in err and "not by root" in err
    )  # an author's own file: run, with a warning
    code, out, _ = hook_test_cli(str(hook), str(report), capsys=capsys)
    assert code == 0 and f"Who: {user.pw_uid}" in out
    os.chown(report, 0, 0)  # root's report: the fallback user, never root
    code, out, _ = hook_test_cli(
        str(hook), str(report), "--json", "--fallback-user", user.pw_name, capsys=capsys
    )
    assert code == 0 and json.loads(out)["fields"]["Who"] == str(user.pw_uid)
    code, _, err = hook_test_cli(str(hook), str(report), "--fallback-user", "no-such-user-x", capsys=capsys)
    assert code == 1 and "'no-such-user-x' does not exist" in err


def test_hook_test_exit_codes(
    tree: Tree,
    user: pwd.struct_passwd,
    hook_test_cli: Callable[..., tuple[int, str, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = report_file(tree, user, {"ProblemType": "Crash"})
    failing = tree.hook("dev", "failing.py", "def add_info(report):\n    raise ValueError('nope')\n")
    refusing = tree.hook(
        "dev", "refusing.py", "def add_info(report):\n    report['UnreportableReason'] = 'no'\n"
    )
    assert hook_test_cli(str(failing), str(good), capsys=capsys)[0] == 1
    code, out, _ = hook_test_cli(str(refusing), str(good), capsys=capsys)
    assert code == 4 and "would record this report as invalid: no" in out
    assert hook_test_cli(str(tree.base / "missing.py"), str(good), capsys=capsys)[0] == 2
    assert hook_test_cli(str(failing), str(tree.out / "missing.crash"), capsys=capsys)[0] == 2
    bad_package = report_file(tree, user, {"ProblemType": "Crash", "Package": "../../etc/x"}, "bad.crash")
    code, _, err = hook_test_cli(str(failing), str(bad_package), capsys=capsys)
    assert code == 4 and "invalid Package" in err
    (tree.out / "link.crash").symlink_to(good)
    assert hook_test_cli(str(failing), str(tree.out / "link.crash"), capsys=capsys)[0] == 4
    (tree.out / "garbage.crash").write_bytes(b"\x00not a report\n")
    assert hook_test_cli(str(failing), str(tree.out / "garbage.crash"), capsys=capsys)[0] == 4


KEYS = ["Title", "dmi.bios.version", "Tag-1_x", "x", "9", "_", ".", "-", "._-", "", "a b", "a/b", "é", "Ünï",
        "a\n", "_HooksRun", "a" * 300]  # fmt: skip


def _child_module() -> object:
    """child.py as the child runs it: by path, importing nothing of crashd."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("crashd_hook_child", CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("key", KEYS)
def test_the_childs_key_rule_is_the_reports(key: str) -> None:
    """One key rule (issue 14): the child's copy (it imports nothing of crashd) equals crashd.report's."""
    from crashd.report import valid_key

    assert _child_module().valid_key(key) == valid_key(key)  # type: ignore[attr-defined]


def test_a_hook_setting_an_invalid_key_gets_a_hook_error_naming_it(
    tree: Tree, user: pwd.struct_passwd
) -> None:
    """``report["_"] = …`` passed the child and was then dropped silently; now it is the hook's error."""
    tree.hook(
        "general",
        "a_bad_key.py",
        "def add_info(report):\n    report['Kept'] = 'yes'\n    report['_'] = 'x'\n",
    )
    result = hooks_for(tree, user)
    assert "invalid key '_'" in result.errors[error_key("a_bad_key.py")]
    assert "_" not in hook_fields(result)
