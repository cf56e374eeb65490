"""`make demo`: crashd's main job end to end, on loopback, in a few seconds.

1. start a daisy-compatible crash database on 127.0.0.1 (tests/daisy.py);
2. start `crashd daemon` on a scratch crash directory, automatic reporting on;
3. crash two real programs: /usr/bin/sleep, cored with gdb's gcore and killed by
   SIGSEGV, and a Python program dying on an uncaught exception — each written as
   an apport-format report and renamed into the crash directory, as apport does —
   and plant a hostile file (a symlink to /etc/shadow) beside them;
4. watch the daemon collect them, run a package hook, and upload them with no
   command given; show `crashd status`, what the hook added, and what the server
   received: the OOPS ids, the core it asked for, and the refused hostile file.

Nothing outside the scratch directory is touched; it is removed at the end
unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from crashd.report import write_report

REPO = Path(__file__).resolve().parents[1]
ENV_ALLOW = ("LANG", "LANGUAGE", "LC_ALL", "PATH", "SHELL", "TERM")  # apport's ProcEnviron keeps few


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory to look at")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="crashd-demo-"))
    scratch.chmod(0o755)  # the unprivileged hook user must reach the demo's hook
    crash_dir, staging, state = scratch / "crash", scratch / "staging", scratch / "state"
    for directory in (crash_dir, staging):
        directory.mkdir()
    crash_dir.chmod(0o3777)  # as /var/crash
    config = write_demo_config(scratch)
    server = daemon = None
    try:
        step(1, "a daisy-compatible crash database on loopback")
        server, url = start_server(scratch / "received")
        say(f"listening on {url}")

        step(2, "crashd daemon on a scratch crash directory, automatic reporting on")
        crashd("--config", str(config), "prefs", "set", "AutomaticallyReportCrashes", "on", "--offline",
               "--state-dir", str(state))  # fmt: skip
        daemon = start_daemon(config, crash_dir, state, url, scratch / "notify")
        say(f"pid {daemon.pid}: READY=1 received over NOTIFY_SOCKET")

        step(3, "crash two real programs; their reports appear in the crash directory as apport writes them")
        native = crash_native_program(staging, scratch)
        python = crash_python_program(staging)
        for report in (native, python):
            report.rename(crash_dir / report.name)  # complete files only, as apport does
        (crash_dir / "_usr_sbin_evil.0.crash").symlink_to("/etc/shadow")
        say("and a hostile file: _usr_sbin_evil.0.crash, a symbolic link to /etc/shadow")

        step(4, "the daemon collects, runs the hooks, uploads (HTTP in an unprivileged worker), unasked")
        received = scratch / "received"
        delivered = wait_for(
            lambda: (
                all((crash_dir / f"{r.stem}.uploaded").exists() for r in (native, python))
                and any(received.glob("*-core.json"))
            )
        )
        status = json.loads(crashd("--config", str(config), "status", "--json", "--crash-dir", str(crash_dir),
                                   "--state-dir", str(state)).stdout)  # fmt: skip
        for entry in status["reports"]:
            oops = f"OOPS {entry['oops_id']}" if entry["oops_id"] else ""
            say(f"{entry['state']:<8} {entry['name']}  {oops}  {entry['detail'] or ''}".rstrip())

        step(5, f"crashd show {native.name}  (what the hooks added)")
        shown = crashd("show", str(crash_dir / native.name)).stdout.splitlines()
        for line in [line for line in shown if line.startswith(("DemoHook", "_HooksRun", "CrashdVersion"))]:
            say(line[:110])

        step(6, "what the crash database received")
        ok = show_received(scratch / "received", crash_dir, status)
        return 0 if ok and delivered else 1
    finally:
        for process in (daemon, server):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=10)
        if args.keep:
            print(f"\nscratch directory kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


DEMO_HOOK = """
def add_info(report, ui=None):
    import os
    report["DemoHook"] = "added by a package hook running as uid %d" % os.getuid()
"""


def write_demo_config(scratch: Path) -> Path:
    """A hook for the crashed program's package, and the unprivileged user that runs root's hooks."""
    hooks = scratch / "hooks"
    hooks.mkdir(mode=0o755)
    package = command("dpkg", "-S", "/usr/bin/sleep").partition(":")[0] or "crashd-demo"
    (hooks / f"{package}.py").write_text(DEMO_HOOK)
    config = scratch / "crashd.conf"
    config.write_text(f"[crashd]\nhook_dirs = {hooks}\n{UNPRIVILEGED}")
    return config


# Root's hooks and the upload worker run as this user; a real install has the `crashd` system user.
UNPRIVILEGED = "unprivileged_user = nobody\n"


def start_daemon(config: Path, crash_dir: Path, state: Path, url: str, notify: Path) -> subprocess.Popen[str]:
    """`crashd daemon`, waited on through NOTIFY_SOCKET as systemd would."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(30)
    env = os.environ | {
        "PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": "deadbeef-crashd-demo", "NOTIFY_SOCKET": str(notify),
        "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent",  # never take the names on this machine's bus
    }  # fmt: skip
    daemon = subprocess.Popen(
        [sys.executable, "-m", "crashd", "--config", str(config), "daemon", "--crash-dir", str(crash_dir),
         "--state-dir", str(state), "--url", url, "--idle-timeout", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True,
    )  # fmt: skip
    with listener:
        while b"READY=1" not in listener.recv(4096):
            pass
    return daemon


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> bool:
    """Poll a cheap condition until it holds or *timeout* passes (the demo's only wait)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def step(number: int, title: str) -> None:
    print(f"\n== {number}. {title}")


def say(text: str) -> None:
    print(f"   {text}")


def crashd(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": "deadbeef-crashd-demo",
        "DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent",
    }  # fmt: skip
    return subprocess.run([sys.executable, "-m", "crashd", *args], capture_output=True, text=True, env=env)


def start_server(record_dir: Path) -> tuple[subprocess.Popen[str], str]:
    record_dir.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.daisy", "--port", "0", "--record-dir", str(record_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    assert server.stdout is not None
    line = server.stdout.readline()  # the readiness line
    if not line.startswith("listening on "):
        raise SystemExit(f"demo: the crash database did not start: {line!r}")
    return server, line.removeprefix("listening on ").strip()


def crash_native_program(crash_dir: Path, scratch: Path) -> Path:
    """Run sleep, take a real core of it with gcore, kill it with SIGSEGV, write apport's report."""
    executable = "/usr/bin/sleep"
    victim = subprocess.Popen([executable, "600"])
    proc = Path(f"/proc/{victim.pid}")
    fields = {
        "ProblemType": "Crash",
        "Date": time.asctime(),
        "ExecutablePath": executable,
        "ProcCmdline": (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip(),
        "ProcCwd": os.readlink(proc / "cwd"),
        "ProcEnviron": environment(),
        "ProcStatus": (proc / "status").read_text().strip(),
        "ProcMaps": (proc / "maps").read_text().strip(),
    }
    core = capture_core(victim.pid, scratch / "core")
    victim.send_signal(signal.SIGSEGV)
    fields["Signal"] = str(-victim.wait())  # the kernel's word that it died of SIGSEGV
    fields.update(system_fields(executable))
    report = crash_dir / f"{executable.replace('/', '_')}.{os.getuid()}.crash"
    with report.open("wb") as out, core.open("rb") as core_file:
        write_report(out, [*fields.items(), ("CoreDump", core_file)])
    size = core.stat().st_size
    say(f"{executable} (pid {victim.pid}): a {size}-byte core by gcore, killed by signal {fields['Signal']}")
    return report


def capture_core(pid: int, prefix: Path) -> Path:
    gcore = shutil.which("gcore")
    if gcore is None:
        raise SystemExit("demo: gcore (Debian package gdb) takes the real core; run `make deps` as root")
    subprocess.run([gcore, "-o", str(prefix), str(pid)], check=True, capture_output=True, timeout=120)
    return prefix.with_name(f"{prefix.name}.{pid}")


def crash_python_program(crash_dir: Path) -> Path:
    """Run a Python program that dies on an uncaught exception; keep its traceback."""
    program = "import json\njson.loads('{\"unterminated\": ')\n"
    died = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    traceback = died.stderr.strip()
    interpreter = os.path.realpath(sys.executable)
    fields = {
        "ProblemType": "Crash",
        "Date": time.asctime(),
        "ExecutablePath": "/usr/local/bin/demo-json-tool",
        "InterpreterPath": interpreter,
        "PythonArgs": "['/usr/local/bin/demo-json-tool']",
        "Traceback": traceback,
        "ProcEnviron": environment(),
        **system_fields(interpreter),
    }
    report = crash_dir / f"_usr_local_bin_demo-json-tool.{os.getuid()}.crash"
    with report.open("wb") as out:
        write_report(out, fields)
    say(f"python program exited {died.returncode}: {traceback.splitlines()[-1]}")
    return report


def environment() -> str:
    return "\n".join(f"{key}={os.environ[key]}" for key in ENV_ALLOW if key in os.environ)


def system_fields(executable: str) -> dict[str, str]:
    """What apport adds from the system: package, architecture, release, kernel."""
    package = command("dpkg", "-S", executable).partition(":")[0] or "crashd-demo"
    version = command("dpkg-query", "-W", "-f", "${Version}", package) or "(not installed)"
    lines = Path("/etc/os-release").read_text().splitlines()
    release = {key: value.strip('"') for key, _, value in (line.partition("=") for line in lines)}
    return {
        "Package": f"{package} {version}",
        "Architecture": command("dpkg", "--print-architecture") or platform.machine(),
        "DistroRelease": f"{release.get('NAME', 'Linux')} {release.get('VERSION_ID', '')}".strip(),
        "Uname": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


def command(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return ""


def show_received(record_dir: Path, crash_dir: Path, summary: dict) -> bool:
    records = [json.loads(path.read_text()) for path in sorted(record_dir.glob("*.json"))]
    reports = [r for r in records if "document" in r]
    cores = [r for r in records if "decoded_size" in r]
    for record in reports:
        document = record["document"] or {}
        hooked = f", DemoHook: {document['DemoHook']!r}" if "DemoHook" in document else ""
        say(
            f"report POST /{record['token'][:16]}…  {len(document)} text fields, "
            f"no CoreDump: {'CoreDump' not in document}{hooked}, answered {record['answer']!r}"
        )
    for core in cores:
        say(
            f"core POST /{core['oops_id']}/submit-core/{core['arch']}/…  {core['body_size']} base64 bytes, "
            f"{core['compression']} → {core['decoded_size']} bytes decoded: {core['verdict']}"
        )
    for entry in summary["reports"]:
        stamp = crash_dir / (entry["name"].removesuffix(".crash") + ".uploaded")
        if stamp.exists():
            say(f"cat {stamp.name}: {stamp.read_text()}")
    return len(reports) == 2 and len(cores) == 1 and cores[0]["verdict"] == "ok"


if __name__ == "__main__":
    sys.exit(main())
