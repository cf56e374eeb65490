"""Capture attacked (issue 11 vulnerabilities 3 and 4, robustness 4) and run as systemd really runs it (issue 13).

Real parts: throwaway users (mallory squats names, bob and the setgid helper's users crash), real uid
switches inside the crashing interpreter (``os.setreuid``/``setresgid``), a real setgid executable and
the ``/proc`` status and auxv of its live process, a real core of it (``gcore`` + ``zstd``), real journal
files made by ``systemd-journal-remote`` and read through systemd-python or ``journalctl``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from crashd.capture import coredump
from crashd.capture.crashdir import report_names
from crashd.capture.excepthook import is_crashd_process
from crashd.capture.journal import JournalEntry, untrusted
from crashd.spool import ReportName
from tests.daemon_run import wait_until
from tests.test_capture import (  # noqa: F401 - the fixtures dirs and real_core
    PTH,
    REPO,
    REPORT,
    UID,
    _run_script_as,
    _systemd_python_path,
    _tool,
    coredump_fields,
    dirs_fixture,
    export_entry,
    ingest,
    real_core_fixture,
    report_of,
)

RunAs = Callable[..., "subprocess.CompletedProcess[str]"]
MakeUser = Callable[[], pwd.struct_passwd]

# A program whose own code (trusted, like a setuid program's) names the system configuration, then
# becomes what the case needs and crashes. The hook is installed from the real .pth file first.
PROGRAM = """\
import os, site, sys
from pathlib import Path
import crashd.config
crashd.config.DEFAULT_CONFIG = Path({config!r})  # this test's "system" configuration
site.addsitedir({pth_dir!r})
{switch}
def inner():
    raise ValueError("boom")
inner()
"""


@pytest.fixture
def system(tmp_path: Path, user_tmp_path: Path) -> dict[str, Path]:
    """A "system" crash and state directory named only by the system configuration file, and the
    environment's own (what an attacker would point a privileged process at)."""
    out = {}
    for name in ("sys_crash", "sys_state", "env_crash", "env_state", "site"):
        out[name] = tmp_path / name
        out[name].mkdir()
    for name in ("sys_crash", "env_crash"):
        out[name].chmod(0o3777)
    tmp_path.chmod(0o755)
    out["config"] = tmp_path / "crashd.conf"
    out["config"].write_text(f"[crashd]\ncrash_dir = {out['sys_crash']}\nstate_dir = {out['sys_state']}\n")
    out["env_config"] = tmp_path / "elsewhere.conf"
    out["env_config"].write_text(
        f"[crashd]\ncrash_dir = {out['env_crash']}\nstate_dir = {out['env_state']}\n"
    )
    shutil.copy(PTH, out["site"] / PTH.name)
    return out


@pytest.fixture(scope="module")
def user_python(make_user: MakeUser, run_as: RunAs) -> str:
    """An interpreter every uid can run *and import from* (the test's own may live under a 0700 /root):
    a process that switches uids must still load the hook's modules afterwards."""
    done = run_as(make_user(), "import sys; print(sys.executable)")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _program(system: dict[str, Path], switch: str = "") -> Path:
    script = system["config"].parent / "prog.py"
    script.write_text(
        PROGRAM.format(config=str(system["config"]), pth_dir=str(system["site"]), switch=switch)
    )
    script.chmod(0o755)
    return script


def _env(system: dict[str, Path], **extra: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(REPO),
        "APPORT_REPORT_DIR": str(system["env_crash"]), "CRASHD_STATE_DIR": str(system["env_state"]),
        "CRASHD_CONFIG": str(system["env_config"]), **extra,
    }  # fmt: skip


def _stem(script: Path) -> str:
    return str(script.resolve()).replace("/", "_")


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- vulnerability 4: a privileged process trusts no environment ------------------------------------


@pytest.mark.parametrize(
    ("switch", "extra"),
    [("", {}), ("os.setreuid({uid}, 0)", {}), ("", {"CRASHD_EXCEPTHOOK": "0"})],
    ids=["root", "real-uid-user-effective-root", "root-opt-out-ignored"],
)
def test_privileged_excepthook_ignores_the_environment_and_reports_as_root(
    switch: str, extra: dict[str, str], system: dict[str, Path], make_user: MakeUser, user_python: str
) -> None:
    user = make_user()
    script = _program(system, switch.format(uid=user.pw_uid))
    done = subprocess.run(
        [user_python, str(script)], env=_env(system, **extra), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "ValueError: boom" in done.stderr, done.stderr
    assert _names(system["env_crash"]) == [], "APPORT_REPORT_DIR is ignored"
    real_uid = user.pw_uid if switch else 0
    (name,) = _names(system["sys_crash"])
    assert name == f"{_stem(script)}.{real_uid}.crash", "named for the real uid"
    st = (system["sys_crash"] / name).lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o640), "root's report, never the real user's"


def test_setgid_process_of_a_user_writes_no_report(
    system: dict[str, Path], make_user: MakeUser, user_python: str
) -> None:
    """Effective uid not 0 (a setgid program run by a user): no root-owned report is possible, so none."""
    user, other = make_user(), make_user()
    switch = f"os.setresgid({user.pw_gid}, {other.pw_gid}, {other.pw_gid}); os.setgroups([]); " + (
        f"os.setresuid({user.pw_uid}, {user.pw_uid}, {user.pw_uid})"
    )
    script = _program(system, switch)
    done = subprocess.run(
        [user_python, str(script)], env=_env(system), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and "ValueError: boom" in done.stderr, done.stderr
    assert _names(system["env_crash"]) == [] and _names(system["sys_crash"]) == []


# -- robustness 4: names squatted by another user ----------------------------------------------------


def test_root_writers_replace_a_squatted_name_without_opening_it(
    system: dict[str, Path],
    user_python: str,
    make_user: MakeUser,
    run_as: RunAs,
    real_core: tuple[Path, str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    mallory = make_user()
    script = _program(system)
    crash = system["sys_crash"]
    fifo, planted = crash / f"{_stem(script)}.0.crash", crash / REPORT
    done = run_as(mallory, f"import os; os.mkfifo({str(fifo)!r}); open({str(planted)!r}, 'w').write('mine')")
    assert done.returncode == 0, done.stderr
    # Root's Python crash: the FIFO is replaced (a reader opening it would block; nothing blocks here).
    done = subprocess.run(
        [user_python, str(script)], env=_env(system), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    st = fifo.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0, "root's report took its name back"
    assert report_of(fifo)["Traceback"].endswith(b"ValueError: boom")
    # ingest-coredump (root) writing uid 4242's report over mallory's file of that name.
    stored, _, pid = real_core
    dirs = {"crash": crash, "state": system["sys_state"]}
    code, out = ingest(dirs, export_entry(coredump_fields(stored, pid)), stored.parent, capsys=capsys)
    assert code == 0 and out.startswith("written:"), out
    st = planted.lstat()
    assert (st.st_uid, st.st_nlink) == (UID, 1) and report_of(planted)["ExecutablePath"] == b"/usr/bin/sleep"
    # A directory cannot be renamed over: the next name is taken instead.
    planted.unlink()
    planted.mkdir()
    code, out = ingest(dirs, export_entry(coredump_fields(stored, pid)), stored.parent, capsys=capsys)
    assert code == 0 and out.startswith("written:"), out
    second = crash / "_usr_bin_sleep~2.4242.crash"
    assert second.lstat().st_uid == UID and planted.is_dir(), out


def test_a_users_writer_takes_the_next_name_when_another_user_holds_it(
    system: dict[str, Path], make_user: MakeUser, run_as: RunAs
) -> None:
    mallory, bob = make_user(), make_user()
    script = _program(system)
    crash = system["env_crash"]
    stem = _stem(script)
    first, second, third = (crash / f"{stem}{n}.{bob.pw_uid}.crash" for n in ("", "~2", "~3"))
    done = run_as(mallory, f"import os; open({str(first)!r}, 'w').write('mine'); os.mkfifo({str(second)!r})")
    assert done.returncode == 0, done.stderr
    for counter in (None, b"2"):
        done = _run_script_as(run_as, bob, [str(script)], _env(system))
        assert done.returncode == 1 and "ValueError: boom" in done.stderr, done.stderr
        st = third.lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (bob.pw_uid, 0o640)
        assert report_of(third).get("CrashCounter") == counter, "the flood rule holds on the new name"
    assert first.read_text() == "mine" and stat.S_ISFIFO(second.lstat().st_mode), "mallory's files untouched"
    assert _names(crash) == sorted(p.name for p in (first, second, third))


def test_report_names() -> None:
    assert report_names("_usr_bin_prog.1000") == [
        "_usr_bin_prog.1000.crash",
        *(f"_usr_bin_prog~{n}.1000.crash" for n in range(2, 9)),
    ]
    longest = "_" + "x" * (255 - len(".1000.uploaded") - 1) + ".1000"  # report_stem's longest
    assert report_names(longest) == [longest + ".crash"], "no other name fits NAME_MAX with its stamps"
    assert all(ReportName.parse(name).uid == 1000 for name in report_names("_usr_bin_prog.1000"))


def test_a_symlink_holding_the_name_is_replaced_never_followed(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (dirs["crash"] / REPORT).symlink_to(victim)
    code, out = ingest(dirs, export_entry(coredump_fields(None)), tmp_path, capsys=capsys)
    assert code == 0 and out.startswith("written:"), out
    assert victim.read_text() == "precious"
    st = (dirs["crash"] / REPORT).lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_uid == UID


# -- vulnerability 3: a setgid program's core ------------------------------------------------------


@pytest.mark.parametrize("setgid", [True, False], ids=["setgid", "plain"])
def test_a_setgid_programs_core_gives_a_root_report(
    setgid: bool,
    make_user: MakeUser,
    user_tmp_path: Path,
    dirs: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A real setgid executable run by a user: its real /proc status and auxv, and its real core."""
    gcore, zstd = _tool("gcore"), _tool("zstd")
    user, group_owner = make_user(), make_user()
    program = user_tmp_path / "helper"
    shutil.copy("/usr/bin/sleep", program)
    os.chown(program, 0, group_owner.pw_gid)
    program.chmod(0o2755 if setgid else 0o755)
    child = subprocess.Popen(
        [str(program), "60"], user=user.pw_uid, group=user.pw_gid, extra_groups=[], cwd="/"
    )
    try:
        assert wait_until(lambda: os.path.realpath(f"/proc/{child.pid}/exe") == str(program), timeout=30)
        status = Path(f"/proc/{child.pid}/status").read_bytes()
        auxv = Path(f"/proc/{child.pid}/auxv").read_bytes()
        store = user_tmp_path / "coredump"
        store.mkdir()
        raw = store / "raw"
        subprocess.run([gcore, "-o", str(raw), str(child.pid)], capture_output=True, timeout=120, check=True)
    finally:
        child.kill()
        child.wait()
    stored = (
        store / f"core.helper.{user.pw_uid}.0123456789abcdef0123456789abcdef.{child.pid}.1700000000000000.zst"
    )
    subprocess.run([zstd, "-q", "--rm", f"{raw}.{child.pid}", "-o", str(stored)], check=True)
    egid = f"\t{group_owner.pw_gid}" if setgid else f"\t{user.pw_gid}"
    assert f"Gid:\t{user.pw_gid}{egid}{egid}{egid}".encode() in status, status
    fields = coredump_fields(
        # _UID=0: what systemd-coredump logs as where it has no systemd-coredump user to drop to.
        stored, child.pid, COREDUMP_UID=str(user.pw_uid), COREDUMP_GID=str(user.pw_gid), _UID="0",
        COREDUMP_EXE=str(program), COREDUMP_PROC_STATUS=status, COREDUMP_PROC_AUXV=auxv,
    )  # fmt: skip
    code, out = ingest(dirs, export_entry(fields), store, capsys=capsys)
    assert code == 0 and out.startswith("written:"), out
    (report,) = dirs["crash"].iterdir()
    assert report.lstat().st_uid == (0 if setgid else user.pw_uid), out
    assert "CoreDump" in report_of(report)


def _auxv(pairs: dict[int, int], word: str = "Q") -> bytes:
    return b"".join(struct.pack(f"<{word}{word}", key, value) for key, value in [*pairs.items(), (0, 0)])


def _status(
    uid: str = "1000\t1000\t1000\t1000", gid: str = "1000\t1000\t1000\t1000", cap: str = "0" * 16
) -> bytes:
    return f"Name:\tx\nUid:\t{uid}\nGid:\t{gid}\nCapPrm:\t{cap}\nCapEff:\t{cap}\n".encode()


_IDS = {11: 1000, 12: 1000, 13: 1000, 14: 1000}


@pytest.mark.parametrize(
    ("fields", "owner"),
    [
        ({"COREDUMP_DUMPABLE": b"1"}, 1000),
        ({"COREDUMP_DUMPABLE": b"2"}, 0),
        ({"COREDUMP_DUMPABLE": b"0"}, 0),
        ({"COREDUMP_PROC_STATUS": _status(gid="1000\t42\t42\t42"), "COREDUMP_DUMPABLE": b"1"}, 0),
        ({"COREDUMP_PROC_STATUS": _status(uid="1000\t1000\t1000\t0"), "COREDUMP_DUMPABLE": b"1"}, 0),
        ({"COREDUMP_PROC_STATUS": b"Name:\tx\nUid:\t1000\t1000\t1000\t1000\n"}, 0),
        ({"COREDUMP_PROC_AUXV": _auxv({**_IDS, 23: 0})}, 1000),
        ({"COREDUMP_PROC_AUXV": _auxv({**_IDS, 23: 0}, "I")}, 1000),
        ({"COREDUMP_PROC_AUXV": _auxv({**_IDS, 23: 1})}, 0),
        ({"COREDUMP_DUMPABLE": b"1", "COREDUMP_PROC_AUXV": _auxv({**_IDS, 23: 1})}, 0),
        ({"COREDUMP_DUMPABLE": b"1", "COREDUMP_PROC_AUXV": _auxv({**_IDS, 23: 0})}, 1000),
        ({"COREDUMP_PROC_AUXV": _auxv({**_IDS, 14: 42, 23: 0})}, 0),
        ({"COREDUMP_PROC_AUXV": b"\x01\x02\x03"}, 0),
        ({}, 1000),
        ({"COREDUMP_PROC_STATUS": _status(cap="0000000000002000")}, 0),
        ({"COREDUMP_GID": b"x"}, 0),
        ({"COREDUMP_UID": b"0", "COREDUMP_PROC_STATUS": _status(*["0\t0\t0\t0"] * 2)}, 0),
    ],
    ids=["dumpable", "suid-dumpable", "not-dumpable", "setgid", "fsuid", "no-gid-line", "auxv", "auxv32",
         "at-secure", "dumpable-but-at-secure", "dumpable-and-auxv", "auxv-egid", "auxv-garbage", "status-only", "capabilities", "bad-gid", "root"],
)  # fmt: skip
def test_core_owner_table(fields: dict[str, bytes], owner: int) -> None:
    entry = JournalEntry(
        {"COREDUMP_UID": b"1000", "COREDUMP_GID": b"1000", "COREDUMP_PROC_STATUS": _status()}
    )
    entry.fields.update(fields)
    assert coredump.core_owner(entry)[0] == owner, coredump.core_owner(entry)


# -- issue 13: trusting what systemd guarantees ------------------------------------------------------


def _entry(**fields: str) -> JournalEntry:
    base = {"_SYSTEMD_UNIT": "systemd-coredump@0-7-0.service", "_TRANSPORT": "journal",
            "_COMM": "systemd-coredum", "_UID": "1000", "COREDUMP_UID": "1000"}  # fmt: skip
    return JournalEntry({k: v.encode() for k, v in (base | fields).items() if v != "-"})


@pytest.mark.parametrize(
    ("fields", "trusted"),
    [
        ({}, True),  # logged as the crashing user (systemd-coredump dropped to it)
        ({"_UID": "996", "COREDUMP_UID": "0"}, True),  # a system uid's crash: logged as systemd-coredump
        ({"_UID": "0"}, True),  # no systemd-coredump user: logged as root
        ({"_UID": "1001"}, False),
        ({"_SYSTEMD_UNIT": "user@1000.service"}, False),  # `systemd-cat`/`logger` by the user
        ({"_SYSTEMD_UNIT": "systemd-coredump@0-8-0.service"}, False),  # another instance
        ({"_SYSTEMD_UNIT": "-"}, False),
        ({"_TRANSPORT": "stdout"}, False),
        ({"_COMM": "python3"}, False),
        ({"_COMM": "-"}, True),  # journald could not read it: the unit decides
    ],
    ids=["user", "coredump-user", "root", "other-uid", "user-unit", "other-instance", "no-unit", "stdout",
         "comm", "no-comm"],
)  # fmt: skip
def test_entry_origin_table(fields: dict[str, str], trusted: bool) -> None:
    assert (untrusted(_entry(**fields), "0-7-0", coredump_uid=996) is None) == trusted


def _journal(remote: str, export: bytes, path: Path) -> None:
    """A real journal file at *path* (replaced atomically) holding the entries of *export*."""
    source, tmp = path.with_suffix(".export"), path.with_name(path.stem + ".tmp.journal")
    source.write_bytes(export)
    done = subprocess.run(
        [remote, "--split-mode=none", "-o", str(tmp), str(source)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and tmp.exists(), done.stderr
    tmp.rename(path)


def _reader_env(reader: str, tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH for an ingest whose journal reader is systemd-python or, without it, journalctl."""
    if reader == "journalctl":
        _tool("journalctl")
        shadow = tmp_path / "no-systemd-python"
        (shadow / "systemd").mkdir(parents=True)
        (shadow / "systemd" / "__init__.py").write_text(
            "raise ImportError('python3-systemd is not installed')\n"
        )
        return os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), str(shadow)])}
    extra = _systemd_python_path(tmp_path)
    if extra is None:
        pytest.skip("python3-systemd is not importable by this interpreter")
    return os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), extra) if p)}


def _ingest_argv(pid: int, journal: Path, dirs: dict[str, Path], store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "crashd", "ingest-coredump", f"0-{pid}-0",
            "--journal-file", str(journal), "--crash-dir", str(dirs["crash"]), "--state-dir", str(dirs["state"]),
            "--coredump-dir", str(store), *extra]  # fmt: skip


UNRELATED = export_entry({"__CURSOR": "s=0;i=1", "__REALTIME_TIMESTAMP": "1699999999000000",
                          "__MONOTONIC_TIMESTAMP": "10", "_BOOT_ID": "0123456789abcdef0123456789abcdef",
                          "MESSAGE": "hello"})  # fmt: skip


@pytest.mark.parametrize("reader", ["systemd-python", "journalctl"])
def test_an_entry_logged_as_the_crashing_user_is_ingested_and_a_forged_one_is_not(
    reader: str, real_core: tuple[Path, str, int], dirs: dict[str, Path], tmp_path: Path
) -> None:
    """systemd-coredump logs as the crashing user (issue 13: never as root). A user's own forgery of the
    same fields (`systemd-cat`: its unit, its comm, stdout) is not taken, whatever it claims."""
    remote = _tool("systemd-journal-remote")
    env = _reader_env(reader, tmp_path)
    stored, _, pid = real_core
    forged = coredump_fields(stored, pid + 1, _SYSTEMD_UNIT="user@4242.service", _COMM="systemd-cat",
                             _TRANSPORT="stdout")  # fmt: skip
    journal = tmp_path / "system.journal"
    _journal(remote, UNRELATED + export_entry(coredump_fields(stored, pid)) + export_entry(forged), journal)
    run = subprocess.run(_ingest_argv(pid, journal, dirs, stored.parent), capture_output=True, text=True, env=env,
                         timeout=60)  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("written:"), run.stdout + run.stderr
    assert (dirs["crash"] / REPORT).lstat().st_uid == UID
    (dirs["crash"] / REPORT).unlink()
    # The forgery's instance: journald's own _SYSTEMD_UNIT does not name it, so there is no entry.
    forged_instance = _ingest_argv(pid + 1, journal, dirs, stored.parent, "--wait", "0")
    run = subprocess.run(forged_instance, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 4 and "no systemd-coredump entry" in run.stderr, run.stdout + run.stderr
    assert _names(dirs["crash"]) == []


@pytest.mark.parametrize("reader", ["systemd-python", "journalctl"])
def test_ingest_waits_for_an_entry_the_journal_has_not_stored_yet(
    reader: str, real_core: tuple[Path, str, int], dirs: dict[str, Path], tmp_path: Path
) -> None:
    remote = _tool("systemd-journal-remote")
    env = _reader_env(reader, tmp_path)
    stored, _, pid = real_core
    journal = tmp_path / "system.journal"
    _journal(remote, UNRELATED, journal)
    process = subprocess.Popen(
        _ingest_argv(pid, journal, dirs, stored.parent, "--wait", "120"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # readiness: it says it waits
        assert "waiting up to 120 s for the journal entry" in line, line
        _journal(remote, UNRELATED + export_entry(coredump_fields(stored, pid)), journal)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0 and out.startswith("written:"), out + err
    assert (dirs["crash"] / REPORT).exists()


# -- issue 13: crashd never reports itself -----------------------------------------------------------


CONSOLE_SCRIPT = """\
import site, sys
site.addsitedir({pth_dir!r})  # the system site directory, processed at start-up
from crashd.cli import main
sys.exit(main())
"""
DASH_M = """\
import runpy, site
site.addsitedir({pth_dir!r})
runpy.run_module("crashd", run_name="__main__", alter_sys=True)  # what `python -m crashd` does
"""


@pytest.mark.parametrize("launcher", [DASH_M, CONSOLE_SCRIPT], ids=["python-m-crashd", "console-script"])
def test_crashd_never_reports_its_own_exceptions(
    launcher: str, system: dict[str, Path], make_user: MakeUser, run_as: RunAs
) -> None:
    """A broken dependency kills `crashd daemon` with a traceback (issue 13): no report of it is written."""
    user = make_user()
    broken = system["config"].parent / "broken"
    broken.mkdir()
    (broken / "asyncinotify.py").write_text("raise RuntimeError('asyncinotify is unusable here')\n")
    script = system["config"].parent / "crashd"
    script.write_text(launcher.format(pth_dir=str(system["site"])))
    script.chmod(0o755)
    # The rest of crashd's dependencies from the test's environment, so that the broken one is what fails
    # (a missing one would be a clean one-line "crashd: … is not installed", exit 2: no traceback at all).
    site = str(Path(requests.__file__).parents[1])
    env = _env(system) | {"PYTHONPATH": os.pathsep.join([str(broken), str(REPO), site])}
    argv = [str(script), "daemon", "--once", "--crash-dir", str(system["env_crash"]),
            "--state-dir", str(system["env_state"])]  # fmt: skip
    done = _run_script_as(run_as, user, argv, env)
    assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr
    assert _names(system["env_crash"]) == [], "crashd reported itself"


@pytest.mark.parametrize(
    ("argv0", "frames", "own"),
    [
        ("{pkg}/__main__.py", [], True),  # python -m crashd, /usr/bin/crashd
        ("{pkg}/hooks/child.py", [], True),  # the hook child
        (
            "/usr/local/bin/crashd",
            ["/usr/local/bin/crashd", "{pkg}/cli/__init__.py", "{pkg}/daemon.py"],
            True,
        ),
        ("/usr/bin/prog", ["/usr/bin/prog", "{pkg}/report.py"], False),  # a program using crashd's library
        ("/usr/bin/prog", ["/usr/bin/prog"], False),
        ("", [], False),
    ],
    ids=["dash-m", "hook-child", "console-script", "library-user", "program", "no-argv"],
)
def test_is_crashd_process_table(argv0: str, frames: list[str], own: bool, tmp_path: Path) -> None:
    package = tmp_path / "crashd"
    (package / "hooks").mkdir(parents=True)
    (package / "cli").mkdir()
    for name in ("__main__.py", "hooks/child.py", "cli/__init__.py", "daemon.py", "report.py"):
        (package / name).touch()
    argv0 = argv0.format(pkg=package)
    assert is_crashd_process(argv0, [f.format(pkg=package) for f in frames], str(package)) == own


def test_a_core_of_crashds_own_units_is_skipped(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for unit in ("crashd.service", "crashd-coredump@0-1-0.service"):
        code, out = ingest(
            dirs, export_entry(coredump_fields(None, COREDUMP_UNIT=unit)), tmp_path, capsys=capsys
        )
        assert code == 0 and out.startswith("skipped: a crash of crashd itself"), out
    assert _names(dirs["crash"]) == []
