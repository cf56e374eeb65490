"""The system-test scenarios, run as root *inside* the booted container by tests/system/run.

Standard library only (it runs under the container's /usr/bin/python3 with ``-I``, next to the crashd that
README's install put there). Each scenario asserts what a user or administrator would see on a real system:
systemd as PID 1, the real system bus and polkitd, systemd-coredump, crashd.path/crashd.timer. Every
scenario prints one line ``system-test: scenario NAME: PASS|FAIL (…)``; a failing one also prints the
journal of its time. Exit status: 0 when all passed, 1 otherwise.

``scenarios.py NAME…`` runs only those scenarios (after the shared setup).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

SRC = Path("/opt/crashd-src")
CRASH_DIR = Path("/var/crash")
DAISY_PORT = 18080
DAISY_RECORDS = Path("/run/systest-daisy")
WORK = Path("/run/systest")  # root-only scratch: cores taken by gcore, monitor logs
CONFIG = Path("/etc/crashd/crashd.conf")
HOOK_DIR = Path("/usr/share/crashd/hooks")
TIMER_DROPIN = Path("/etc/systemd/system/crashd.timer.d/system-test.conf")
POLKIT_RULE = Path("/etc/polkit-1/rules.d/50-crashd-system-test.rules")
ALICE, BOB, CAROL = "alice", "bob", "carol"  # two normal users and an administrator (group sudo)
PY_TOOL = Path("/usr/bin/systest-json-tool")  # shipped by a real (throwaway) Debian package
# Copies of sleep: each scenario crashes its own executable, so their reports never collide.
SLEEPERS = ("path", "timer", "hooked", "signal", "mine", "theirs")

Scenario = Callable[[], None]
SCENARIOS: list[tuple[str, Scenario]] = []


class Failed(AssertionError):
    """What a user would have seen go wrong."""


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS.append((fn.__name__, fn))
    return fn


# -- small tools -------------------------------------------------------------------------------------


def run(argv: list[str], *, user: str | None = None, check: bool = True, timeout: float = 60,
        input: str | bytes | None = None, text: bool = True) -> subprocess.CompletedProcess:
    """Run *argv* (as *user*, via setpriv: a real uid switch and no PAM session), capturing its output."""
    if user is not None:
        entry = pwd.getpwnam(user)
        argv = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
                "env", "-i", f"HOME={entry.pw_dir}", f"USER={user}", f"LOGNAME={user}",
                "PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", *argv]
    if isinstance(input, bytes):
        text = False
    done = subprocess.run(argv, capture_output=True, timeout=timeout, input=input, text=text)
    if check and done.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {done.returncode}: {_text(done.stderr).strip()[-2000:]}")
    return done


def _text(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode(errors="replace")


def wait_for(what: str, condition: Callable[[], object], timeout: float = 60, interval: float = 0.2) -> object:
    """Poll *condition* until it returns something true; fail naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def unit_state(unit: str) -> str:
    return run(["systemctl", "is-active", unit], check=False).stdout.strip()


def systemctl(*args: str) -> None:
    run(["systemctl", *args])


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def expect(condition: object, message: str) -> None:
    if not condition:
        raise Failed(message)


# -- the loopback crash database ---------------------------------------------------------------------

_daisy_runs = 0


def start_daisy() -> None:
    """tests/daisy.py as a transient unit; each start records into its own directory."""
    global _daisy_runs
    _daisy_runs += 1
    record_dir = DAISY_RECORDS / str(_daisy_runs)
    run(["systemd-run", "--unit=systest-daisy", "--collect", f"--working-directory={SRC}",
         "/usr/bin/python3", "-m", "tests.daisy", f"--port={DAISY_PORT}", f"--record-dir={record_dir}"])
    wait_for("the loopback daisy to listen", _daisy_listening, timeout=30)


def stop_daisy() -> None:
    run(["systemctl", "stop", "systest-daisy"], check=False)
    wait_for("the loopback daisy to stop", lambda: not _daisy_listening(), timeout=30)


def _daisy_listening() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", DAISY_PORT), timeout=1):
        return True
    return False


def daisy_records(kind: str) -> list[dict]:
    """Every report (kind "report") or core ("core") the daisy runs received so far."""
    records = []
    for path in sorted(glob.glob(f"{DAISY_RECORDS}/*/*-{kind}.json")):
        with contextlib.suppress(OSError, ValueError):
            records.append(json.loads(Path(path).read_text()))
    return records


def received_reports(executable: str) -> list[dict]:
    return [r for r in daisy_records("report")
            if (r.get("document") or {}).get("ExecutablePath") == executable and r.get("oops_id")]


def received_core(oops_id: str) -> dict | None:
    return next((c for c in daisy_records("core") if c.get("oops_id") == oops_id), None)


# -- reports, written the way apport and its UIs write them --------------------------------------------


def as_user(user: str, action: Callable[[], None]) -> None:
    """Run *action* in a child that switched to *user* for real (setgroups, setgid, setuid)."""
    entry = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups(os.getgrouplist(user, entry.pw_gid))
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            os.umask(0o027)
            action()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise Failed(f"writing as {user} failed (see the traceback above)")


def crash_native(user: str, executable: str, package: str) -> tuple[Path, str]:
    """A real crash of *user*'s process: gcore's core of it, then SIGSEGV; apport's report (0640), and
    the .upload a UI writes. Returns the report's path and the core's sha256."""
    from crashd.report import write_report  # the crashd README's install put on the system

    victim = subprocess.Popen(["setpriv", f"--reuid={uid(user)}", f"--regid={pwd.getpwnam(user).pw_gid}",
                               "--init-groups", executable, "600"], stdin=subprocess.DEVNULL)
    try:
        proc = Path(f"/proc/{victim.pid}")
        wait_for(f"{executable} to run", lambda: os.readlink(proc / "exe") == executable, timeout=10)
        fields = {
            "ProblemType": "Crash",
            "Date": time.asctime(),
            "ExecutablePath": executable,
            "Package": package,
            "ProcCmdline": f"{executable} 600",
            "ProcStatus": (proc / "status").read_text().strip(),
            "ProcMaps": (proc / "maps").read_text().strip(),
            "Architecture": "amd64",
            "DistroRelease": "Debian 12",
            "Signal": "11",
        }
        core = gcore(victim.pid)
    finally:
        victim.send_signal(signal.SIGSEGV)
        victim.wait(timeout=10)
    report = CRASH_DIR / f"{executable.replace('/', '_')}.{uid(user)}.crash"

    def write() -> None:
        fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "wb") as out:
            write_report(out, [*fields.items(), ("CoreDump", core_file)])
        mark_upload(report)

    with core.open("rb") as core_file:  # opened by root: the scratch directory is root's
        as_user(user, write)
    return report, sha256(core)


def gcore(pid: int) -> Path:
    """A real core of a live process, taken by root (gdb's gcore)."""
    prefix = WORK / "core"
    run(["gcore", "-o", str(prefix), str(pid)], timeout=120)
    return Path(f"{prefix}.{pid}")


def mark_upload(report: Path) -> None:
    """What a UI does when the user agrees to send: an empty NAME.upload (as the user)."""
    os.close(os.open(report.with_suffix(".upload"), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o640))


def remove_reports(prefix: str) -> None:
    for path in CRASH_DIR.glob(prefix + "*"):
        path.unlink()


def uploaded_oops(report: Path) -> str | None:
    """The OOPS id in NAME.uploaded, once crashd wrote it."""
    with contextlib.suppress(OSError):
        return report.with_suffix(".uploaded").read_text().strip() or None
    return None


def wait_until_idle(timeout: float = 90) -> None:
    wait_for("crashd.service to exit when idle (systemctl is-active crashd: inactive)",
             lambda: unit_state("crashd.service") == "inactive", timeout=timeout)
    result = run(["systemctl", "show", "crashd.service", "-p", "Result", "--value"]).stdout.strip()
    expect(result == "success", f"crashd.service ended with Result={result}")


def journal_cursor() -> str:
    out = run(["journalctl", "-n", "0", "--show-cursor", "--no-pager"], check=False).stdout
    match = re.search(r"-- cursor: (\S+)", out)
    return match.group(1) if match else ""


# -- setup shared by every scenario --------------------------------------------------------------------


def setup() -> None:
    WORK.mkdir(mode=0o700, exist_ok=True)
    for user in (ALICE, BOB, CAROL):
        if run(["id", user], check=False).returncode != 0:
            run(["useradd", "--create-home", "--shell", "/bin/bash", user])
    run(["usermod", "-aG", "sudo", CAROL])
    # An administrator's rule (README "Installing on a system"): members of sudo may change consent
    # without an authentication agent.
    POLKIT_RULE.write_text(
        'polkit.addRule(function(action, subject) {\n'
        '    if ((action.id == "org.crashd.change-preferences" ||\n'
        '         action.id == "com.ubuntu.whoopsiepreferences.change") && subject.isInGroup("sudo"))\n'
        '        return polkit.Result.YES;\n'
        '});\n')
    # The loopback crash database, and short timings so that the scenarios take seconds, not hours.
    ours = (f"[crashd]\n# tests/system/scenarios.py\nurl = http://127.0.0.1:{DAISY_PORT}\nidle_timeout = 3\n"
            "backoff_base = 5\nbackoff_server_base = 5\nbackoff_cap = 10\n")
    CONFIG.write_text(re.sub(r"^\[crashd\]\n", lambda _: ours, CONFIG.read_text(), count=1, flags=re.M))
    # A package hook that tells what it ran as.
    HOOK_DIR.mkdir(parents=True, exist_ok=True)
    (HOOK_DIR / "systest-hooked.py").write_text(
        "import os\n\n\ndef add_info(report, ui=None):\n"
        "    status = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)\n"
        "    report['SystestHookUid'] = str(os.getuid())\n"
        "    report['SystestHookCapEff'] = status['CapEff'].strip()\n"
        "    report['SystestHookNoNewPrivs'] = status['NoNewPrivs'].strip()\n")
    for name in SLEEPERS:
        shutil.copy("/usr/bin/sleep", sleeper(name))
    install_python_tool()
    start_daisy()
    wait_until_idle()


def sleeper(name: str) -> str:
    return f"/usr/local/bin/systest-{name}"


def install_python_tool() -> None:
    """A Python program in a real Debian package, so that its report has a Package (daisy requires one)."""
    tree = WORK / "systest-json-tool"
    (tree / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (tree / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: systest-json-tool\nVersion: 1.0\nArchitecture: all\nMaintainer: crashd <crashd@invalid>\n"
        "Depends: python3\nDescription: a Python program that dies of an uncaught exception\n")
    script = tree / "usr" / "bin" / PY_TOOL.name
    script.write_text("#!/usr/bin/python3\nimport json\n\njson.loads('{\"unterminated\": ')\n")
    script.chmod(0o755)
    run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(WORK / "systest-json-tool.deb")])
    run(["dpkg", "-i", str(WORK / "systest-json-tool.deb")])


# -- the scenarios ------------------------------------------------------------------------------------


@scenario
def sysusers_and_tmpfiles() -> None:
    """DESIGN.md §3: the crashd system user, /var/crash 3777, /var/lib/crashd root 0711; units enabled."""
    entry = pwd.getpwnam("crashd")
    expect(entry.pw_uid < 1000, f"crashd is not a system user (uid {entry.pw_uid})")
    expect(entry.pw_shell.endswith("nologin"), f"crashd's shell is {entry.pw_shell}")
    for path, mode in ((CRASH_DIR, 0o3777), (Path("/var/lib/crashd"), 0o711)):
        st = path.stat()
        expect(st.st_mode & 0o7777 == mode, f"{path} has mode {st.st_mode & 0o7777:o}, expected {mode:o}")
    expect(Path("/var/lib/crashd").stat().st_uid == 0, "/var/lib/crashd is not root's")
    for unit in ("crashd.path", "crashd.timer"):
        enabled = run(["systemctl", "is-enabled", unit], check=False).stdout.strip()
        expect(enabled == "enabled", f"{unit} is {enabled}, README's install enables it")
        expect(unit_state(unit) == "active", f"{unit} is {unit_state(unit)}")


@scenario
def path_activation_upload() -> None:
    """A user's report → crashd.path → crashd.service → daisy (OOPS id, core) → the service exits idle."""
    executable = sleeper("path")
    before = len(received_reports(executable))
    report, core_sha = crash_native(ALICE, executable, "coreutils 9.1-1")
    wait_for("crashd.path to start crashd.service", lambda: unit_state("crashd.service") != "inactive"
             or uploaded_oops(report), timeout=30)
    oops = wait_for(f"{report.name}.uploaded with the OOPS id", lambda: uploaded_oops(report), timeout=60)
    sent = received_reports(executable)
    expect(len(sent) == before + 1, f"daisy received {len(sent) - before} reports, expected 1")
    expect(sent[-1]["oops_id"] == oops, f"{report.name}.uploaded says {oops}, daisy gave {sent[-1]['oops_id']}")
    core = wait_for(f"the core of {oops}", lambda: received_core(oops), timeout=30)
    expect(core["decoded_sha256"] == core_sha, "the core daisy received is not the core gcore took")
    wait_until_idle()


@scenario
def timer_retries_when_server_was_down() -> None:
    """Server down → pending → the service exits → crashd.timer (shortened) → delivered, exactly once."""
    executable = sleeper("timer")
    TIMER_DROPIN.parent.mkdir(parents=True, exist_ok=True)
    TIMER_DROPIN.write_text("[Timer]\nOnBootSec=\nOnUnitInactiveSec=5s\nRandomizedDelaySec=0\nAccuracySec=1s\n")
    try:
        systemctl("daemon-reload")
        systemctl("restart", "crashd.timer")
        stop_daisy()
        report, _ = crash_native(ALICE, executable, "coreutils 9.1-1")
        cursor = journal_cursor()
        wait_for("crashd to try and fail", lambda: f"{report.name}: not delivered" in journal("crashd.service", cursor),
                 timeout=60)
        wait_until_idle()
        expect(uploaded_oops(report) is None, f"{report.name} is marked sent while the server was down")
        triggered = run(["systemctl", "show", "crashd.timer", "-p", "LastTriggerUSecMonotonic",
                         "--value"]).stdout.strip()
        start_daisy()
        oops = wait_for(f"{report.name} to be delivered after crashd.timer fired", lambda: uploaded_oops(report),
                        timeout=120)
        later = run(["systemctl", "show", "crashd.timer", "-p", "LastTriggerUSecMonotonic",
                     "--value"]).stdout.strip()
        expect(later != triggered, "crashd.timer did not fire; something else delivered the report")
        wait_until_idle()
        sent = received_reports(executable)
        expect(len(sent) == 1, f"daisy received {len(sent)} copies of {report.name}, expected exactly 1")
        expect(sent[0]["oops_id"] == oops, "the OOPS id in .uploaded is not daisy's")
    finally:
        TIMER_DROPIN.unlink(missing_ok=True)
        systemctl("daemon-reload")
        systemctl("restart", "crashd.timer")
        if not _daisy_listening():
            start_daisy()


def journal(unit: str, cursor: str) -> str:
    """The messages *unit* logged after *cursor*."""
    args = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
    return run([*args, f"--after-cursor={cursor}"] if cursor else args, check=False).stdout


def gdbus_get(user: str, dest: str, path: str, interface: str, prop: str) -> str:
    done = run(["gdbus", "call", "--system", "--dest", dest, "--object-path", path, "--method",
                "org.freedesktop.DBus.Properties.Get", interface, prop], user=user, timeout=30)
    return done.stdout.strip()


def gdbus_set(user: str, dest: str, path: str, method: str, value: bool) -> subprocess.CompletedProcess:
    return run(["gdbus", "call", "--system", "--dest", dest, "--object-path", path, "--method", method,
                "true" if value else "false"], user=user, check=False, timeout=30)


WHOOPSIE = ("com.ubuntu.WhoopsiePreferences", "/com/ubuntu/WhoopsiePreferences")
CRASHD = ("org.crashd.Crashd1", "/org/crashd/Crashd1")


@scenario
def dbus_activation_and_polkit() -> None:
    """gdbus as a user activates crashd; polkitd refuses the user's setter, allows root's and an admin's."""
    systemctl("stop", "crashd.service")
    expect(unit_state("crashd.service") == "inactive", "crashd.service did not stop")
    got = gdbus_get(ALICE, *WHOOPSIE, "com.ubuntu.WhoopsiePreferences", "ReportCrashes")
    expect(got in ("(<true>,)", "(<false>,)"), f"WhoopsiePreferences.ReportCrashes read as {got!r}")
    # The names are served before READY=1, so the answer may come while the unit is still "activating".
    wait_for("crashd.service active after the D-Bus call",
             lambda: unit_state("crashd.service") == "active", timeout=30)
    got = gdbus_get(ALICE, *CRASHD, "org.crashd.Preferences1", "AutomaticallyReportCrashes")
    expect(got == "(<false>,)", f"Preferences1.AutomaticallyReportCrashes read as {got!r} (default off)")
    refused = gdbus_set(ALICE, *CRASHD, "org.crashd.Preferences1.SetAutomaticallyReportCrashes", True)
    expect(refused.returncode != 0, "a normal user changed consent without authorisation")
    expect(re.search(r"AccessDenied|NotAuthorized|not authori[sz]ed", refused.stderr),
           f"the refusal does not say why: {refused.stderr.strip()}")
    refused = gdbus_set(ALICE, *WHOOPSIE, "com.ubuntu.WhoopsiePreferences.SetReportMetrics", False)
    expect(refused.returncode != 0, "a normal user changed ReportMetrics without authorisation")
    with gdbus_monitor() as monitor:
        for who, target, method in (
            ("root", CRASHD, "org.crashd.Preferences1.SetAutomaticallyReportCrashes"),
            (CAROL, WHOOPSIE, "com.ubuntu.WhoopsiePreferences.SetReportMetrics"),
        ):
            value = method.endswith("AutomaticallyReportCrashes")  # on, resp. ReportMetrics off
            done = gdbus_set(who if who != "root" else None, *target, method, value)
            expect(done.returncode == 0, f"{who}'s {method} was refused: {done.stderr.strip()}")
        wait_for("gdbus monitor to see PropertiesChanged", lambda: "PropertiesChanged" in monitor.read_text(),
                 timeout=10)
    systemctl("restart", "crashd.service")
    got = gdbus_get(ALICE, *CRASHD, "org.crashd.Preferences1", "AutomaticallyReportCrashes")
    expect(got == "(<true>,)", f"AutomaticallyReportCrashes did not persist across a restart: {got!r}")
    got = gdbus_get(BOB, *WHOOPSIE, "com.ubuntu.WhoopsiePreferences", "ReportMetrics")
    expect(got == "(<false>,)", f"ReportMetrics did not persist across a restart: {got!r}")
    # Back to the default for the other scenarios (a UI's .upload decides).
    done = gdbus_set(None, *CRASHD, "org.crashd.Preferences1.SetAutomaticallyReportCrashes", False)
    expect(done.returncode == 0, f"root could not switch automatic reporting off: {done.stderr.strip()}")
    wait_until_idle()


@scenario
def prefs_refusal_exit_code() -> None:
    """`crashd prefs set` refused by polkit: one crashd: line and its own exit code, not 2 (usage)."""
    done = run(["crashd", "prefs", "set", "AutomaticallyReportCrashes", "on"], user=ALICE, check=False)
    expect(done.returncode not in (0, 2), f"a polkit refusal exited {done.returncode}")
    expect(done.stderr.startswith("crashd: ") and "Traceback" not in done.stderr,
           f"not one crashd: line: {done.stderr.strip()}")


@scenario
def systemd_coredump_capture() -> None:
    """A real systemd-coredump run → crashd-coredump@.service → the user's report → uploaded, core exact."""
    executable = "/usr/bin/sleep"
    remove_reports("_usr_bin_sleep.")
    entry = pwd.getpwnam(BOB)
    victim = subprocess.Popen(["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}",
                               "--init-groups", executable, "601"])
    try:
        wait_for("sleep to run", lambda: os.readlink(f"/proc/{victim.pid}/exe") == executable, timeout=10)
        core = gcore(victim.pid)
        # The kernel's invocation, per systemd 252's sysctl.d/50-coredump.conf:
        # |/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h %d — the core on stdin.
        with core.open("rb") as stdin:
            done = subprocess.run(["/lib/systemd/systemd-coredump", str(victim.pid), str(entry.pw_uid),
                                   str(entry.pw_gid), "11", str(int(time.time())), str(2**63),
                                   socket.gethostname(), "1"], stdin=stdin, capture_output=True,
                                  timeout=120)
        expect(done.returncode == 0, f"systemd-coredump exited {done.returncode}: {done.stderr!r}")
    finally:
        victim.kill()
        victim.wait(timeout=10)
    report = CRASH_DIR / f"_usr_bin_sleep.{entry.pw_uid}.crash"
    wait_for(f"crashd-coredump@ to write {report}", report.exists, timeout=60)
    st = report.stat()
    expect(st.st_uid == entry.pw_uid, f"{report} is owned by uid {st.st_uid}, not {BOB}'s")
    as_user(BOB, lambda: mark_upload(report))
    oops = wait_for(f"{report.name} to be sent", lambda: uploaded_oops(report), timeout=60)
    got = wait_for(f"the core of {oops}", lambda: received_core(oops), timeout=30)
    expect(got["decoded_sha256"] == sha256(core), "the core daisy received is not the one systemd-coredump got")
    wait_until_idle()


@scenario
def python_excepthook() -> None:
    """An uncaught exception in a /usr/bin/python3 program of a user → a report (the .pth hook) → sent."""
    report = CRASH_DIR / f"{str(PY_TOOL).replace('/', '_')}.{uid(ALICE)}.crash"
    report.unlink(missing_ok=True)
    done = run([str(PY_TOOL)], user=ALICE, check=False)
    expect(done.returncode == 1 and "JSONDecodeError" in done.stderr,
           f"the program did not die of its exception: {done.returncode} {done.stderr.strip()}")
    wait_for(f"the excepthook to write {report}", report.exists, timeout=30)
    expect(report.stat().st_uid == uid(ALICE), f"{report} is not {ALICE}'s")
    as_user(ALICE, lambda: mark_upload(report))
    wait_for(f"{report.name} to be sent", lambda: uploaded_oops(report), timeout=60)
    sent = received_reports(str(PY_TOOL))
    expect(sent and "Traceback" in sent[-1]["document"], "daisy got no Traceback for the Python crash")
    wait_until_idle()


@scenario
def hardening() -> None:
    """Hooks run as the user, the worker as crashd with no capabilities, exposure ≤ 3.0."""
    out = run(["systemd-analyze", "security", "crashd.service", "--no-pager"]).stdout
    match = re.search(r"Overall exposure level for crashd\.service: ([0-9.]+)", out)
    expect(match, f"no exposure level in systemd-analyze security's output: {out[-500:]}")
    expect(float(match.group(1)) <= 3.0, f"exposure {match.group(1)} > 3.0")
    executable = sleeper("hooked")
    crashd_uid = uid("crashd")
    seen: dict[int, tuple[int, str, str]] = {}  # pid -> (uid, CapEff, NoNewPrivs), sampled from /proc

    inet_in_daemon: set[int] = set()  # TCP sockets ever held by the root daemon itself

    def sample() -> str | None:
        for pid in _cgroup_pids("crashd.service"):
            with contextlib.suppress(OSError, KeyError):
                status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
                seen[pid] = (int(status["Uid"].split()[1]), status["CapEff"].strip(), status["NoNewPrivs"].strip())
        if main:
            inet_in_daemon.update(_socket_inodes(main) & _tcp_inodes())
        return uploaded_oops(report)

    main = 0
    report, _ = crash_native(ALICE, executable, "systest-hooked 1.0")
    main = int(wait_for("crashd.path to start crashd.service", lambda: int(
        run(["systemctl", "show", "crashd.service", "-p", "MainPID", "--value"]).stdout or 0), timeout=30))
    wait_for(f"{report.name} to be sent", sample, timeout=60, interval=0.02)
    # The worker imports as root and drops ~100 ms after it starts; a fast send can end before a sample
    # sees it dropped. It lives on until the daemon exits idle, so keep sampling until it shows.
    with contextlib.suppress(Failed):
        wait_for("the worker to run as crashd", lambda: sample() and any(
            s[0] == crashd_uid for s in seen.values()), timeout=10, interval=0.02)
    workers = {pid: s for pid, s in seen.items() if s[0] == crashd_uid}
    expect(workers, f"no process of crashd.service ran as the crashd user: {seen}")
    for pid, (_, cap_eff, nnp) in workers.items():
        expect(int(cap_eff, 16) == 0 and nnp == "1", f"worker {pid}: CapEff {cap_eff}, NoNewPrivs {nnp}")
    expect(main in seen and seen[main][0] == 0 and seen[main][2] == "1",
           f"the daemon (pid {main}) is not root with NoNewPrivs: {seen.get(main)}")
    expect(not inet_in_daemon, "the root daemon held a TCP socket itself (only the worker may)")
    document = received_reports(executable)[-1]["document"]
    expect(document.get("SystestHookUid") == str(uid(ALICE)),
           f"the package hook ran as uid {document.get('SystestHookUid')}, not {ALICE}'s")
    expect(int(document.get("SystestHookCapEff", "1"), 16) == 0, "the hook had capabilities")
    expect(document.get("SystestHookNoNewPrivs") == "1", "the hook could gain privileges")
    wait_until_idle()


@scenario
def report_changed_signal() -> None:
    """A desktop watching the bus (gdbus monitor) sees Reports1.ReportChanged when a report is sent."""
    executable = sleeper("signal")
    with gdbus_monitor() as monitor:
        report, _ = crash_native(ALICE, executable, "coreutils 9.1-1")
        wait_for(f"{report.name} to be sent", lambda: uploaded_oops(report), timeout=60)
        wait_for("gdbus monitor to see ReportChanged", lambda: "ReportChanged" in monitor.read_text(), timeout=10)
    wait_until_idle()


@contextlib.contextmanager
def gdbus_monitor() -> Iterator[Path]:
    """`gdbus monitor --system --dest org.crashd.Crashd1` (which activates crashd) while the block runs."""
    log = WORK / "monitor.log"
    with log.open("w") as out:
        monitor = subprocess.Popen(["gdbus", "monitor", "--system", "--dest", "org.crashd.Crashd1"],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for("crashd to be activated for gdbus monitor", lambda: unit_state("crashd.service") == "active")
        yield log
    finally:
        monitor.terminate()
        monitor.wait(timeout=10)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if (m := re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))):
                    inodes.add(int(m.group(1)))
    return inodes


def _tcp_inodes() -> set[int]:
    """Inodes of every TCP socket of the system (/proc/net/tcp and tcp6: column 10)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9:
                    inodes.add(int(fields[9]))
    return inodes


def _cgroup_pids(unit: str) -> list[int]:
    """The processes in *unit*'s control group, from /proc (works on cgroup v1 and v2 hosts alike)."""
    group = run(["systemctl", "show", unit, "-p", "ControlGroup", "--value"], check=False).stdout.strip()
    pids: list[int] = []
    if not group:
        return pids
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            paths = [line.split(":", 2)[-1] for line in (proc / "cgroup").read_text().splitlines()]
            if any(path == group or path.startswith(group + "/") for path in paths):
                pids.append(int(proc.name))
    return pids


@scenario
def user_status_and_upload_all() -> None:
    """A normal user runs `crashd status` and `upload-all` with another user's report in /var/crash."""
    systemctl("stop", "crashd.path")
    try:
        systemctl("stop", "crashd.service")
        # A package version of their own: the same crash as an earlier scenario's, already sent, would be
        # a duplicate within duplicate_window, counted and removed rather than sent again (by design).
        mine, _ = crash_native(ALICE, sleeper("mine"), "coreutils 9.1-1+status")
        theirs, _ = crash_native(BOB, sleeper("theirs"), "coreutils 9.1-1+status")
        for path in (mine, theirs):
            path.with_suffix(".upload").unlink()
        status = run(["crashd", "status"], user=ALICE, check=False)
        expect("Traceback" not in status.stderr, f"crashd status as {ALICE} crashed: {status.stderr[-800:]}")
        expect(status.returncode == 0, f"crashd status as {ALICE} exited {status.returncode}: {status.stderr}")
        expect(mine.name in status.stdout, f"{ALICE}'s own report is not listed: {status.stdout}")
        upload = run(["crashd", "upload-all", "--timeout", "60"], user=ALICE, check=False, timeout=120)
        both = upload.stdout + upload.stderr
        expect("Traceback" not in both, f"crashd upload-all as {ALICE} crashed: {both[-800:]}")
        expect(theirs.name in both, f"{BOB}'s report is not mentioned as skipped: {both}")
        expect(uploaded_oops(mine), f"{ALICE}'s own report was not sent: {both}")
        expect(uploaded_oops(theirs) is None, f"{BOB}'s report was sent by {ALICE}")
        expect(upload.returncode in (0, 1), f"upload-all exited {upload.returncode}")
    finally:
        systemctl("start", "crashd.path")


@scenario
def journal_outcome_lines() -> None:
    """`journalctl -u crashd`: each report's outcome in one line, with structured fields."""
    out = run(["journalctl", "-u", "crashd.service", "-o", "json", "--no-pager"]).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    sent = [e for e in entries if e.get("CRASHD_REPORT") and "sent, OOPS id" in str(e.get("MESSAGE", ""))]
    expect(sent, "no 'sent, OOPS id' line with a CRASHD_REPORT field in journalctl -u crashd")
    expect(all(e.get("MESSAGE_ID") for e in sent), "outcome lines without MESSAGE_ID")
    expect(all("\n" not in str(e.get("MESSAGE")) for e in sent), "an outcome line spans several lines")


# -- the runner --------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    wanted = set(argv)
    unknown = wanted - {name for name, _ in SCENARIOS}
    if unknown:
        print(f"system-test: unknown scenarios: {' '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    cursor = journal_cursor()
    try:
        setup()
    except Exception as error:
        print(f"system-test: setup: FAIL: {error}")
        _journal_since(cursor)
        return 1
    failed = []
    for name, fn in SCENARIOS:
        if wanted and name not in wanted:
            continue
        cursor, started = journal_cursor(), time.monotonic()
        try:
            fn()
        except Exception as error:
            failed.append(name)
            print(f"system-test: scenario {name}: FAIL ({time.monotonic() - started:.1f} s): {error}", flush=True)
            if not isinstance(error, Failed):
                traceback.print_exc(file=sys.stdout)
            _journal_since(cursor)
            continue
        print(f"system-test: scenario {name}: PASS ({time.monotonic() - started:.1f} s)", flush=True)
    if failed:
        print(f"system-test: {len(failed)} scenario(s) failed: {' '.join(failed)}")
    return 1 if failed else 0


def _journal_since(cursor: str) -> None:
    args = ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", "80"]
    if cursor:
        args.append(f"--after-cursor={cursor}")
    out = run(args, check=False).stdout
    print("    | " + "\n    | ".join(out.rstrip().splitlines()), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
