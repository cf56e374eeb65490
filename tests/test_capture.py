"""Capture without apport (issue 7): systemd-coredump entries and uncaught Python exceptions → reports.

Real parts (DESIGN.md §11): a real ELF core of a live process (``gcore``), compressed with ``zstd`` as
systemd-coredump stores it; ``journalctl -o export`` text built here, and — with
``systemd-journal-remote`` and python3-systemd — turned into a real journal file read back through
``systemd.journal.Reader``; the hook runs in real interpreters, as a throwaway user; the units are checked
with ``systemd-analyze verify``.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from crashd import cli
from crashd.capture import coredump
from crashd.capture.excepthook import filter_environ
from crashd.consent import set_preference, store_consent
from crashd.report import read_report
from tests.crashd_run import write_config
from tests.daemon_run import crashd_status, run_daemon, wait_until
from tests.daisy import DaisyServer

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "data" / "systemd"
PTH = REPO / "data" / "crashd-excepthook.pth"
BOOT_ID = "0123456789abcdef0123456789abcdef"
UID = 4242  # the crashing uid: no such user is needed to own a report
_SBIN = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/lib/systemd", "/usr/lib/systemd"]
)


def _tool(name: str) -> str:
    path = shutil.which(name, path=_SBIN)
    if path is None:
        pytest.skip(f"{name} not found")
    return path


# -- a real core ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="real_core")
def real_core_fixture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """(the zstd core as systemd-coredump stores it, sha256 of the raw core, pid) of a sleeping child."""
    gcore, zstd = _tool("gcore"), _tool("zstd")
    work = tmp_path_factory.mktemp("core")
    child = subprocess.Popen(["sleep", "60"])
    try:
        done = subprocess.run(
            [gcore, "-o", str(work / "core"), str(child.pid)], capture_output=True, text=True, timeout=60
        )
        raw = work / f"core.{child.pid}"
        if done.returncode != 0 or not raw.exists():
            pytest.skip(f"gcore could not dump a process here: {done.stderr.strip()[-200:]}")
    finally:
        child.kill()
        child.wait()
    sha = hashlib.sha256(raw.read_bytes()).hexdigest()
    store = work / "coredump"
    store.mkdir()
    stored = store / f"core.sleep.{UID}.{BOOT_ID}.{child.pid}.1700000000000000.zst"
    subprocess.run([zstd, "-q", str(raw), "-o", str(stored)], check=True)
    raw.unlink()
    return stored, sha, child.pid


def export_entry(fields: dict[str, str | bytes]) -> bytes:
    """One ``journalctl -o export`` entry: text fields as NAME=value, others binary-safe."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode() if isinstance(value, str) else value
        if b"\n" in data or not data.isascii():
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out) + b"\n"


def coredump_fields(stored: Path | None, pid: int = 4711, **extra: str | bytes) -> dict[str, str | bytes]:
    """The fields systemd-coredump logs for a crash of /usr/bin/sleep by UID."""
    fields: dict[str, str | bytes] = {
        "__CURSOR": f"s=0;i={pid};b={BOOT_ID};m=1;t=1;x=1",
        "__REALTIME_TIMESTAMP": "1700000000000000",
        "__MONOTONIC_TIMESTAMP": "1000",
        "_BOOT_ID": BOOT_ID,
        "MESSAGE": f"Process {pid} (sleep) of user {UID} dumped core.",
        "MESSAGE_ID": coredump.MESSAGE_ID.decode(),
        "PRIORITY": "2",
        # What journald adds for systemd-coredump, which logs after dropping to the crashing user:
        "_TRANSPORT": "journal",
        "_UID": str(UID),
        "_GID": str(UID),
        "_COMM": "systemd-coredum",
        "_EXE": "/usr/lib/systemd/systemd-coredump",
        "_SYSTEMD_UNIT": f"systemd-coredump@0-{pid}-0.service",
        "COREDUMP_PID": str(pid),
        "COREDUMP_UID": str(UID),
        "COREDUMP_GID": str(UID),
        "COREDUMP_SIGNAL": "11",
        "COREDUMP_SIGNAL_NAME": "SIGSEGV",
        "COREDUMP_TIMESTAMP": "1700000000000000",
        "COREDUMP_COMM": "sleep",
        "COREDUMP_EXE": "/usr/bin/sleep",
        "COREDUMP_CMDLINE": "sleep 60",
        "COREDUMP_CWD": "/home/user",
        "COREDUMP_UNIT": "user@4242.service",
        "COREDUMP_ENVIRON": "LANG=C.UTF-8\nSECRET_TOKEN=hunter2\nPATH=/home/u/bin:/usr/bin\nLD_PRELOAD=/x.so",
        "COREDUMP_PROC_STATUS": f"Name:\tsleep\nUid:\t{UID}\t{UID}\t{UID}\t{UID}\nGid:\t{UID}\t{UID}\t{UID}\t{UID}\n"
        "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n",
        "COREDUMP_PROC_MAPS": b"55d0-55d1 r--p 00000000 08:01 1 /usr/bin/sleep\n7f00-7f01 r-xp 0 08:01 2 /lib/\xff.so\n",
    }
    if stored is not None:
        fields["COREDUMP_FILENAME"] = str(stored)
    fields.update(extra)
    return fields


@pytest.fixture(name="dirs")
def dirs_fixture(tmp_path: Path) -> dict[str, Path]:
    crash, state = tmp_path / "crash", tmp_path / "state"
    crash.mkdir(mode=0o3777)
    crash.chmod(0o3777)
    state.mkdir(mode=0o755)
    return {"crash": crash, "state": state}


def ingest(
    dirs: dict[str, Path], export: bytes, coredump_dir: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """``crashd ingest-coredump --from-export FILE`` in-process; (exit code, stdout + stderr)."""
    path = dirs["crash"].parent / "entry.export"
    path.write_bytes(export)
    code = cli.main(
        ["ingest-coredump", *args, "--from-export", str(path), "--crash-dir", str(dirs["crash"]),
         "--state-dir", str(dirs["state"]), "--coredump-dir", str(coredump_dir)]
    )  # fmt: skip
    out = capsys.readouterr()
    return code, out.out + out.err


def report_of(path: Path) -> dict[str, bytes]:
    with open(path, "rb") as f:
        report = read_report(f, name=str(path))
        return {key: b"".join(report.chunks(key)) for key in report}


REPORT = "_usr_bin_sleep.4242.crash"


def test_coredump_entry_becomes_a_report_with_the_exact_core(
    real_core: tuple[Path, str, int], dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    stored, sha, pid = real_core
    started = time.perf_counter()
    code, out = ingest(dirs, export_entry(coredump_fields(stored, pid)), stored.parent, capsys=capsys)
    print(f"ingest of a {stored.stat().st_size} byte zstd core: {time.perf_counter() - started:.3f} s")
    assert code == 0, out
    path = dirs["crash"] / REPORT
    st = path.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (UID, 0o640), out
    assert [p.name for p in dirs["crash"].iterdir()] == [REPORT], "no temporary file left behind"
    with open(path, "rb") as f:
        report = read_report(f, name=str(path))
        assert report.entries["CoreDump"].binary
        first = next(report.base64_body("CoreDump"))
        digest = hashlib.sha256()
        for chunk in report.chunks("CoreDump"):
            digest.update(chunk)
    assert digest.hexdigest() == sha, "CoreDump decompresses to exactly the core"
    import base64

    assert base64.b64decode(first[:8]).startswith(b"\x28\xb5\x2f\xfd"), "stored as the zstd stream"
    fields = report_of(path)
    assert fields["ProblemType"] == b"Crash"
    assert fields["ExecutablePath"] == b"/usr/bin/sleep"
    assert fields["ProcCmdline"] == b"sleep 60"
    assert fields["Signal"] == b"11" and fields["SignalName"] == b"SIGSEGV"
    assert fields["BootId"] == BOOT_ID.encode() and fields["Unit"] == b"user@4242.service"
    assert fields["ProcEnviron"] == b"LANG=C.UTF-8\nPATH=(custom, user)\nLD_PRELOAD=<set>"
    assert b"Uid:\t4242" in fields["ProcStatus"] and b"/usr/bin/sleep" in fields["ProcMaps"]
    assert fields["Date"].startswith(b"Tue Nov 14") or fields["Date"].startswith(b"Wed Nov 15")
    assert "written" in out


def test_truncated_core_is_never_attached(
    real_core: tuple[Path, str, int], dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    stored, _, pid = real_core
    entry = export_entry(coredump_fields(stored, pid, COREDUMP_TRUNCATED="1"))
    code, out = ingest(dirs, entry, stored.parent, capsys=capsys)
    assert code == 0, out
    fields = report_of(dirs["crash"] / REPORT)
    assert "CoreDump" not in fields
    assert b"cut the core" in fields["CoreDumpTruncated"]


@pytest.mark.parametrize(
    "extra", [{"COREDUMP_CONTAINER_CMDLINE": "/sbin/init"}, {"COREDUMP_ROOT": "/var/lib/machines/x"}]
)
def test_container_and_namespaced_crashes_are_skipped(
    extra: dict[str, str], dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = ingest(dirs, export_entry(coredump_fields(None, **extra)), tmp_path, capsys=capsys)
    assert code == 0 and out.startswith("skipped:"), out
    assert list(dirs["crash"].iterdir()) == []


def test_consent_off_writes_nothing(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_consent(dirs["state"], report_crashes=False, config=None)
    code, out = ingest(dirs, export_entry(coredump_fields(None)), tmp_path, capsys=capsys)
    assert code == 3, out
    assert list(dirs["crash"].iterdir()) == []


@pytest.mark.parametrize(
    "export",
    [
        b"MESSAGE_ID=x\nCOREDUMP_EXE\n\xff\xff\xff\xff\xff\xff\xff\x7fab\n\n",  # length beyond any bound
        b"bad name=1\n\n",
        export_entry(coredump_fields(None, COREDUMP_EXE="relative/path")),
        b"MESSAGE=not a coredump\n\n",
        # Logged by something else than systemd-coredump's unit (journald's own fields say so):
        export_entry(coredump_fields(None, _UID="1000")),
        export_entry(coredump_fields(None, _SYSTEMD_UNIT="user@4242.service")),
        export_entry(coredump_fields(None, _COMM="python3")),
        export_entry(coredump_fields(None, _TRANSPORT="stdout")),
    ],
    ids=["too-long", "bad-name", "relative-exe", "not-coredump", "uid", "unit", "comm", "transport"],
)
def test_invalid_input_is_exit_4(
    export: bytes, dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = ingest(dirs, export, tmp_path, capsys=capsys)
    assert code == 4, out
    assert out.startswith("crashd: ") and list(dirs["crash"].iterdir()) == []


def test_a_core_outside_the_store_or_not_roots_is_not_embedded(
    real_core: tuple[Path, str, int],
    dirs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored, _, _ = real_core
    store = tmp_path / "store"
    store.mkdir()
    (store / "core.link.zst").symlink_to(stored)
    theirs = store / "core.theirs.zst"
    shutil.copy(stored, theirs)
    os.chown(theirs, UID, UID)
    for path in ("/etc/passwd", store / "core.link.zst", theirs):
        code, out = ingest(dirs, export_entry(coredump_fields(Path(path))), store, capsys=capsys)
        assert code == 0, out
        fields = report_of(dirs["crash"] / REPORT)
        assert "CoreDump" not in fields and b"CoreDumpUnavailable" not in fields
        assert fields["CoreDumpUnavailable"], fields
        (dirs["crash"] / REPORT).unlink()


def test_setuid_crash_gets_a_root_owned_report(
    dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = f"Name:\tsu\nUid:\t{UID}\t0\t0\t0\n"
    code, out = ingest(
        dirs, export_entry(coredump_fields(None, COREDUMP_PROC_STATUS=status)), tmp_path, capsys=capsys
    )
    assert code == 0, out
    assert (dirs["crash"] / REPORT).lstat().st_uid == 0


def test_flood_rule_counts_repeats_until_sent_or_a_day_old(
    real_core: tuple[Path, str, int], dirs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    stored, sha, pid = real_core
    entry = export_entry(coredump_fields(stored, pid))
    path = dirs["crash"] / REPORT
    assert ingest(dirs, entry, stored.parent, capsys=capsys)[0] == 0
    first = path.lstat()
    for expected in (2, 3):
        code, out = ingest(dirs, entry, stored.parent, capsys=capsys)
        assert code == 0 and out.startswith("counted:"), out
        fields = report_of(path)
        assert fields["CrashCounter"] == str(expected).encode()
        assert hashlib.sha256(fields["CoreDump"]).hexdigest() == sha, "the core survives the rewrite"
        now = path.lstat()
        assert (now.st_uid, stat.S_IMODE(now.st_mode), now.st_mtime_ns) == (UID, 0o640, first.st_mtime_ns)
    assert sorted(p.name for p in dirs["crash"].iterdir()) == [REPORT]
    # Sent (a current .uploaded): the next crash is a new report.
    uploaded = dirs["crash"] / "_usr_bin_sleep.4242.uploaded"
    uploaded.write_text("oops")
    code, out = ingest(dirs, entry, stored.parent, capsys=capsys)
    assert code == 0 and out.startswith("written:"), out
    assert "CrashCounter" not in report_of(path)
    uploaded.unlink()
    # Unsent but more than a day old: replaced too.
    day_ago = time.time() - 86400 - 60
    os.utime(path, (day_ago, day_ago))
    code, out = ingest(dirs, entry, stored.parent, capsys=capsys)
    assert code == 0 and out.startswith("written:") and "CrashCounter" not in report_of(path), out


def test_environ_allow_list() -> None:
    env = ["HOME=/root", "LANG=de_DE.UTF-8", "LC_ALL=C", "SHELL=/bin/bash", "PATH=/usr/bin:/bin",
           "AWS_SECRET_ACCESS_KEY=x", "PYTHONPATH=/home/u/lib", "PATH=/opt/x/bin"]  # fmt: skip
    assert filter_environ(env) == (
        "LANG=de_DE.UTF-8\nLC_ALL=C\nSHELL=/bin/bash\nPYTHONPATH=<set>\nPATH=(custom, no user)"
    )


# -- a real journal file ---------------------------------------------------------------------------


def _systemd_python_path(tmp_path: Path) -> str | None:
    """A PYTHONPATH entry that makes ``systemd.journal`` importable by this interpreter, or None.

    python3-systemd lives in the system's dist-packages; the test venv may use another build of the same
    Python version, which loads its extension modules fine — but only the ``systemd`` package is exposed.
    """
    try:
        import systemd.journal  # noqa: F401

        return ""
    except ImportError:
        pass
    tag = sys.implementation.cache_tag  # cpython-311: the extension modules must be built for it
    for base in (
        "/usr/lib/python3/dist-packages",
        f"/usr/lib/python3.{sys.version_info.minor}/site-packages",
    ):
        package = Path(base) / "systemd"
        if any(package.glob(f"_reader.{tag}-*.so")):
            (tmp_path / "sdpy").mkdir()
            (tmp_path / "sdpy" / "systemd").symlink_to(package)
            return str(tmp_path / "sdpy")
    return None


def test_journal_file_round_trip(
    real_core: tuple[Path, str, int], dirs: dict[str, Path], tmp_path: Path
) -> None:
    remote = _tool("systemd-journal-remote")
    extra = _systemd_python_path(tmp_path)
    if extra is None:
        pytest.skip("python3-systemd is not importable by this interpreter")
    stored, sha, pid = real_core
    export = tmp_path / "in.export"
    # Another crash's entry and an unrelated message around ours: the match must pick the right one.
    export.write_bytes(
        export_entry({"__CURSOR": "s=0;i=1", "__REALTIME_TIMESTAMP": "1699999999000000",
                      "__MONOTONIC_TIMESTAMP": "10", "_BOOT_ID": BOOT_ID, "MESSAGE": "hello"})
        + export_entry(coredump_fields(stored, pid))
        + export_entry(coredump_fields(None, pid + 1, COREDUMP_EXE="/usr/bin/other"))
    )  # fmt: skip
    journal = tmp_path / "out.journal"
    done = subprocess.run(
        [remote, "--split-mode=none", "-o", str(journal), str(export)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and journal.exists(), done.stderr
    env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), extra) if p)}
    run = subprocess.run(
        [sys.executable, "-m", "crashd", "ingest-coredump", f"0-{pid}-0",
         "--journal-file", str(journal), "--crash-dir", str(dirs["crash"]), "--state-dir", str(dirs["state"]),
         "--coredump-dir", str(stored.parent)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    fields = report_of(dirs["crash"] / REPORT)
    assert hashlib.sha256(fields["CoreDump"]).hexdigest() == sha
    assert fields["ProcMaps"].endswith(b"/lib/\xef\xbf\xbd.so"), "binary-safe field read back (as text)"


# -- units -----------------------------------------------------------------------------------------


def test_units_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    bindir, units = tmp_path / "bin", tmp_path / "units"
    bindir.mkdir()
    units.mkdir()
    (bindir / "crashd").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "crashd").chmod(0o755)
    service = (SYSTEMD / "crashd-coredump@.service.in").read_text().replace("@BINDIR@", str(bindir))
    assert "@" + "BINDIR" not in service and f"ExecStart={bindir}/crashd ingest-coredump %i" in service
    (units / "crashd-coredump@.service").write_text(service)
    real = Path("/lib/systemd/system/systemd-coredump@.service")
    if real.exists():
        shutil.copy(real, units / real.name)
    else:  # systemd-coredump not installed: a stand-in template to hang the drop-in on
        (units / real.name).write_text("[Service]\nType=oneshot\nExecStart=/bin/true\n")
    dropin = units / "systemd-coredump@.service.d"
    dropin.mkdir()
    shutil.copy(SYSTEMD / "systemd-coredump@.service.d" / "crashd.conf", dropin / "crashd.conf")
    assert "OnSuccess=crashd-coredump@%i.service" in (dropin / "crashd.conf").read_text()
    env = os.environ | {"SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat", "LC_ALL": "C.UTF-8"}
    instances = [str(units / "crashd-coredump@0-1-0.service"), str(units / "systemd-coredump@0-1-0.service")]
    done = subprocess.run(
        [analyze, "verify", *instances], capture_output=True, text=True, env=env, timeout=60
    )
    ours = [
        line for line in (done.stdout + done.stderr).splitlines() if str(units) in line or "coredump@" in line
    ]
    assert done.returncode == 0 and ours == [], done.stdout + done.stderr
    # verify reads the drop-in: a misspelt key in it is reported.
    (dropin / "crashd.conf").write_text("[Unit]\nOnSucces=crashd-coredump@%i.service\n")
    done = subprocess.run(
        [analyze, "verify", instances[1]], capture_output=True, text=True, env=env, timeout=60
    )
    assert "OnSucces" in done.stderr
    score = subprocess.run(
        [analyze, "security", "--offline=true", instances[0]],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    print(score.stdout.splitlines()[-1:] if score.returncode == 0 else score.stderr)


# -- the Python exception hook -----------------------------------------------------------------------

SCRIPT = """\
import site, sys
site.addsitedir({pth_dir!r})  # processes crashd-excepthook.pth exactly as at start-up
def inner():
    raise {exc}
inner()
"""


@pytest.fixture
def hook_env(tmp_path: Path, dirs: dict[str, Path]) -> Callable[[str], tuple[Path, dict[str, str]]]:
    """(script raising EXC, environment) for running a script under the hook via the real .pth file."""
    pth_dir = tmp_path / "site"
    pth_dir.mkdir()
    shutil.copy(PTH, pth_dir / PTH.name)
    tmp_path.chmod(0o755)

    def make(exc: str) -> tuple[Path, dict[str, str]]:
        script = tmp_path / "prog.py"
        script.write_text(SCRIPT.format(pth_dir=str(pth_dir), exc=exc))
        script.chmod(0o755)
        env = {
            "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(REPO), "SECRET": "hunter2",
            "APPORT_REPORT_DIR": str(dirs["crash"]), "CRASHD_STATE_DIR": str(dirs["state"]),
        }  # fmt: skip
        return script, env

    return make


def _python_report(dirs: dict[str, Path], script: Path, uid: int) -> Path:
    return dirs["crash"] / f"{str(script.resolve()).replace('/', '_')}.{uid}.crash"


def test_uncaught_exception_report_owned_by_the_user(
    hook_env: Callable[[str], tuple[Path, dict[str, str]]],
    dirs: dict[str, Path],
    make_user: Callable[[], pwd.struct_passwd],
    run_as: Callable[..., subprocess.CompletedProcess[str]],
    user_tmp_path: Path,
) -> None:
    user = make_user()
    script, env = hook_env('ValueError("boom from the test")')
    code = f"import os, sys; os.execve(sys.executable, [sys.executable, {str(script)!r}], {env!r})"
    done = run_as(user, code)
    assert done.returncode == 1, done.stderr
    assert "ValueError: boom from the test" in done.stderr, "the user still sees the traceback"
    path = _python_report(dirs, script, user.pw_uid)
    st = path.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.pw_uid, 0o640)
    fields = report_of(path)
    assert fields["ProblemType"] == b"Crash"
    assert fields["ExecutablePath"] == str(script.resolve()).encode()
    assert b"in inner" in fields["Traceback"] and fields["Traceback"].endswith(
        b"ValueError: boom from the test"
    )
    assert b"hunter2" not in b"".join(fields.values())
    assert fields["ProcEnviron"] == b"LANG=C.UTF-8\nPYTHONPATH=<set>"
    for key in ("InterpreterPath", "PythonArgs", "ProcStatus", "ProcCmdline", "ProcCwd", "Date"):
        assert fields[key], key
    # Same script crashing again: counted, not a second report.
    done = run_as(user, code)
    assert done.returncode == 1 and report_of(path)["CrashCounter"] == b"2"
    assert [p.name for p in dirs["crash"].iterdir()] == [path.name]


def _run_script_as(
    run_as: Callable[..., subprocess.CompletedProcess[str]],
    user: pwd.struct_passwd,
    argv: list[str],
    env: dict[str, str],
) -> subprocess.CompletedProcess[str]:
    """``python ARGV`` as *user*, stdin /dev/null, exactly *env* (as root the hook would trust no env)."""
    code = (
        "import os, sys; os.dup2(os.open('/dev/null', os.O_RDONLY), 0); "
        f"os.execve(sys.executable, [sys.executable, *{argv!r}], {env!r})"
    )
    return run_as(user, code)


@pytest.mark.parametrize(
    ("exc", "flags"),
    [("KeyboardInterrupt()", []), ("BrokenPipeError()", []), ("ValueError('x')", ["-i"])],
    ids=["KeyboardInterrupt", "BrokenPipeError", "interactive"],
)
def test_skipped_exceptions_and_interactive_sessions(
    exc: str,
    flags: list[str],
    hook_env: Callable[[str], tuple[Path, dict[str, str]]],
    dirs: dict[str, Path],
    make_user: Callable[[], pwd.struct_passwd],
    run_as: Callable[..., subprocess.CompletedProcess[str]],
    user_tmp_path: Path,
) -> None:
    script, env = hook_env(exc)
    done = _run_script_as(run_as, make_user(), [*flags, str(script)], env)
    assert done.returncode != 0 or flags, done.stderr
    assert list(dirs["crash"].iterdir()) == []


def test_hook_obeys_consent(
    hook_env: Callable[[str], tuple[Path, dict[str, str]]],
    dirs: dict[str, Path],
    make_user: Callable[[], pwd.struct_passwd],
    run_as: Callable[..., subprocess.CompletedProcess[str]],
    user_tmp_path: Path,
) -> None:
    user = make_user()
    script, env = hook_env("ValueError('x')")
    store_consent(dirs["state"], report_crashes=False, config=None)
    done = _run_script_as(run_as, user, [str(script)], env)
    assert done.returncode == 1 and "ValueError: x" in done.stderr
    assert list(dirs["crash"].iterdir()) == []
    (dirs["state"] / "consent.json").unlink()
    done = _run_script_as(run_as, user, [str(script)], env)
    assert len(list(dirs["crash"].iterdir())) == 1, "on again: reported"


def _startup_medians(python: str, envs: dict[str, dict[str, str]], runs: int = 20) -> dict[str, float]:
    """Median wall time of ``python -c pass`` per environment, runs interleaved so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(runs):
        for name, env in envs.items():
            started = time.perf_counter()
            subprocess.run([python, "-c", "pass"], env=env, check=True)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _python_with_user_site() -> str:
    """An interpreter that processes the user site directory (a venv's does not), for the .pth timing."""
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        probe = subprocess.run([python, "-c", "import site; print(site.ENABLE_USER_SITE)"],
                               capture_output=True, text=True, check=False)  # fmt: skip
        if probe.stdout.strip() == "True":
            return python
    pytest.skip("no interpreter here processes a user site directory")


def test_pth_startup_cost(tmp_path: Path) -> None:
    """``python3 -c pass`` with and without the .pth in a site directory processed at start-up.

    What is asserted is what the cost is made of — the .pth loads exactly ``crashd`` and
    ``crashd.capture``, nothing else — not a wall-clock figure, which a loaded machine moves by
    milliseconds; the timing is printed for the record (goal < 1 ms).
    """
    python = _python_with_user_site()
    envs = {}
    for name, with_pth in (("without", False), ("with", True)):
        base = tmp_path / name
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "PYTHONUSERBASE": str(base)}
        site_dir = Path(
            subprocess.run([python, "-c", "import site; print(site.getusersitepackages())"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
        )  # fmt: skip
        site_dir.mkdir(parents=True)
        if with_pth:
            shutil.copy(PTH, site_dir / PTH.name)
            check = subprocess.run(
                [python, "-c", "import sys; print(sys.excepthook.__name__, 'crashd.capture.excepthook' in sys.modules)"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            # Installed, and the writer is imported only when an exception happens.
            assert check.stdout.split() == ["crashd_excepthook", "False"], check.stdout + check.stderr
        envs[name] = env
    modules = {}
    for name, env in envs.items():
        listed = subprocess.run([python, "-c", "import sys; print(*sys.modules)"],
                                env=env, capture_output=True, text=True, check=True)  # fmt: skip
        modules[name] = set(listed.stdout.split())
    assert modules["with"] - modules["without"] == {"crashd", "crashd.capture"}, (
        "the .pth imports nothing else"
    )
    _startup_medians(python, envs, 3)  # warm the caches (.pyc)
    results = _startup_medians(python, envs)
    overhead_ms = (results["with"] - results["without"]) * 1000
    print(
        f"{python} -c pass, median of 20: without {results['without'] * 1000:.2f} ms, "
        f"with the .pth {results['with'] * 1000:.2f} ms, overhead {overhead_ms:.2f} ms (goal < 1 ms)"
    )


# -- end to end: captured, then delivered by the daemon -------------------------------------------


def test_a_coredump_and_a_python_exception_are_uploaded_by_the_daemon(
    real_core: tuple[Path, str, int],
    dirs: dict[str, Path],
    hook_env: Callable[[str], tuple[Path, dict[str, str]]],
    make_user: Callable[[], pwd.struct_passwd],
    run_as: Callable[..., subprocess.CompletedProcess[str]],
    user_tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored, core_sha, pid = real_core
    code, out = ingest(dirs, export_entry(coredump_fields(stored, pid)), stored.parent, capsys=capsys)
    assert code == 0, out
    user = make_user()
    script, env = hook_env('RuntimeError("captured, then delivered")')
    done = run_as(
        user, f"import os, sys; os.execve(sys.executable, [sys.executable, {str(script)!r}], {env!r})"
    )
    assert done.returncode == 1, done.stderr
    python_report = _python_report(dirs, script, user.pw_uid)
    assert python_report.exists()

    # The crashing uid 4242 has no account here, so take the setuid case (a root-owned report): its hooks
    # run as the hook user. A general hook supplies Package, which daisy requires, as a
    # distribution's hooks do; the test script and uid 4242 belong to no package.
    os.chown(dirs["crash"] / REPORT, 0, 0)
    hooks = Path(tempfile.mkdtemp(prefix="crashd-capture-hooks-"))
    try:
        (hooks / "general").mkdir(mode=0o755, parents=True)
        hooks.chmod(0o755)
        (hooks / "general" / "package.py").write_text(GENERAL_HOOK)
        config = write_config(
            dirs["state"].parent / "crashd.conf", hook_dirs=hooks, unprivileged_user=user.pw_name,
            hook_user=make_user().pw_name,  # root's reports' hooks: never the worker's user
        )  # fmt: skip
        deliver(dirs, config, python_report, script, core_sha)
    finally:
        shutil.rmtree(hooks, ignore_errors=True)


GENERAL_HOOK = """
def add_info(report, ui=None):
    report.setdefault("Package", "crashd-test-package 1.0")
"""


def deliver(dirs: dict[str, Path], config: Path, python_report: Path, script: Path, core_sha: str) -> None:
    state = dirs["state"]
    set_preference(state, "AutomaticallyReportCrashes", True, config=None)
    with (
        DaisyServer(core_policy="always") as daisy,
        run_daemon(dirs["crash"], state, daisy.url, config=config),
    ):
        stamps = [
            dirs["crash"] / f"{name.removesuffix('.crash')}.uploaded" for name in (REPORT, python_report.name)
        ]
        delivered = wait_until(
            lambda: all(stamp.exists() for stamp in stamps) and len(daisy.cores) >= 1, timeout=20
        )
        assert delivered, (daisy.reports, crashd_status(dirs["crash"], state))
        documents = {report.document["ExecutablePath"]: report.document for report in daisy.reports}
        assert documents["/usr/bin/sleep"]["Signal"] == "11"
        assert documents[str(script.resolve())]["Traceback"].endswith(
            "RuntimeError: captured, then delivered"
        )
        (core,) = [core for core in daisy.cores if core.verdict == "ok"]
        assert (
            core.compression == "zstd" and core.decoded_sha256 == core_sha
        )  # the very core, never re-packed
