"""upload_rate: 200 queued "spec" and "deps" reports through the real ``crashd upload-all``, against a floor.

Issue 15's target: 200 queued "deps" reports at ≥ 1,000 reports/s through ``upload-all`` as root
with the upload worker in use, "spec" reports (no package hook applies) at ≥ 500/s.

Each round, for each kind, interleaved (the order alternates between rounds):

* **crashd**: a fresh crash directory (mode 3777, as ``/var/crash``) of 200 reports
  (:mod:`bench.reports`, every one its own signature, so duplicate collapse keeps them all) owned by
  a non-root user, and ``python -m crashd upload-all --json`` as a child — as root, so the
  unprivileged upload worker does the HTTP;
* **floor**: the same kind of bodies (BSON, as crashd sends them) posted by a child with bare
  ``http.client`` on one kept-alive connection: what the server and the loopback cost.

Both rates are taken from the server's receive times (daisy's ``Exchange.received``): *first body →
200th body* (199 intervals), and for crashd also *start → 200th body*, interpreter start, imports,
identifier, tidy and worker start included (what a CI box waits for; whoopsie's anchor was
measured that way). Every figure is also given as a ratio to the floor of the same round.

The server is the loopback daisy (``tests.daisy``, ``core_policy="never"``) on a thread of this
process, which waits on its children meanwhile. Scratch directories are made under
``$CRASHD_BENCH_DIR`` (default ``/var/tmp``: on this class of machine ``/tmp``'s directories cost
up to 10 times more per file create than ``/var/tmp``'s, on the same file system).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import pstats
import pwd
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO, TOKEN, child_env, run_upload_all
from bench.reports import write_reports
from crashd.report import read_report, write_report
from crashd.uploader import encode_report
from tests.daisy import DaisyServer

COUNT = 200
TARGETS = {"deps": 1000.0, "spec": 500.0}  # reports/s, issue 15's "Done when"
WHOOPSIE = {"deps": (313.0, 833.0), "spec": (426.0, 976.0)}  # start → 200th body, issue 15 (reference)

# The floor's child: bare http.client, one connection, the bodies from a file of length-prefixed blobs.
_FLOOR = """
import http.client, struct, sys
from urllib.parse import urlsplit
url, token, path = sys.argv[1:4]
data = open(path, "rb").read()
bodies, at = [], 0
while at < len(data):
    (n,) = struct.unpack_from("<I", data, at)
    bodies.append(data[at + 4 : at + 4 + n])
    at += 4 + n
parts = urlsplit(url)
conn = http.client.HTTPConnection(parts.hostname, parts.port)
for body in bodies:
    conn.request("POST", f"/{token}", body, {"Content-Type": "application/octet-stream"})
    answer = conn.getresponse()
    answer.read()
    if answer.status != 200:
        sys.exit(f"the loopback daisy answered {answer.status}")
conn.close()
"""


def scratch_base() -> Path:
    return Path(os.environ.get("CRASHD_BENCH_DIR", "/var/tmp"))


def report_owner() -> pwd.struct_passwd:
    """A non-root user to own the reports: uid 1000 if there is one, else ``nobody``."""
    try:
        return pwd.getpwuid(1000)
    except KeyError:
        return pwd.getpwnam("nobody")


def queue(directory: Path, kind: str, offset: int, owner: pwd.struct_passwd) -> Path:
    """*COUNT* reports of *kind* in a fresh crash directory, owned by *owner* (as apport leaves them)."""
    directory.mkdir()
    directory.chmod(0o3777)  # as /var/crash
    for path in write_reports(directory, kind, COUNT, offset):
        os.chown(path, owner.pw_uid, owner.pw_gid)
        path.chmod(0o640)
    return directory


def _posts_since(daisy: DaisyServer, before: int) -> list[float]:
    return sorted(e.received for e in daisy.exchanges[before:] if e.method == "POST" and e.status == 200)


def _crashd(daisy: DaisyServer, crash_dir: Path, state_dir: Path) -> dict[str, float]:
    before = len(daisy.exchanges)
    started = time.time()
    result = run_upload_all(crash_dir, state_dir, daisy.url, TOKEN)
    if not result.stdout:
        raise RuntimeError(f"upload-all printed nothing (exit {result.returncode}): {result.stderr[-2000:]}")
    sent = json.loads(result.stdout)["sent"]
    times = _posts_since(daisy, before)
    if sent != COUNT or len(times) != COUNT:
        raise RuntimeError(f"upload-all sent {sent} of {COUNT}, the server took {len(times)}: {result.stderr[-2000:]}")
    return {
        "body_rate": (COUNT - 1) / (times[-1] - times[0]),
        "start_rate": COUNT / (times[-1] - started),
        "exit_s": result.wall,
    }


def _floor(daisy: DaisyServer, crash_dir: Path, work: Path) -> dict[str, float]:
    blobs = work / "bodies.bin"
    with blobs.open("wb") as out:
        for path in sorted(crash_dir.glob("*.crash")):
            with path.open("rb") as f:
                body = encode_report(read_report(f))
            out.write(struct.pack("<I", len(body)) + body)
    before = len(daisy.exchanges)
    subprocess.run(
        [sys.executable, "-c", _FLOOR, daisy.url, TOKEN, str(blobs)],
        env=child_env(), check=True, timeout=300,
    )  # fmt: skip
    times = _posts_since(daisy, before)
    if len(times) != COUNT:
        raise RuntimeError(f"the floor's {COUNT} bodies reached the server {len(times)} times")
    return {"body_rate": (COUNT - 1) / (times[-1] - times[0])}


def _profile(daisy: DaisyServer, crash_dir: Path, state_dir: Path, top: int = 30) -> str:
    """cProfile of ``upload-all`` run in this process (every thread), for where the time goes."""
    from crashd.cli import main

    argv = ["upload-all", "--json", "--crash-dir", str(crash_dir), "--state-dir", str(state_dir)]
    profiler = cProfile.Profile()
    os.environ["CRASH_DB_IDENTIFIER"] = TOKEN
    with contextlib.redirect_stdout(io.StringIO()):
        profiler.enable()
        try:
            main([*argv, "--url", daisy.url])
        except SystemExit:
            pass
        finally:
            profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _line(label: str, values: list[float], unit: str = "/s") -> str:
    return f"{label} median {statistics.median(values):6.0f}{unit} (range {min(values):.0f}-{max(values):.0f})"


def run(quick: bool = False, profile: bool = False) -> dict:
    """Interleaved rounds of crashd and the floor, "deps" and "spec"; the summary lines and a dict."""
    if os.geteuid() != 0:
        print("upload_rate: skipped: run as root (upload-all uses the upload worker only as root)")
        return {"skipped": "not root"}
    rounds = 2 if quick else 5
    owner = report_owner()
    samples: dict[str, dict[str, list[float]]] = {
        kind: {k: [] for k in ("crashd", "start", "floor", "ratio", "start_ratio", "exit_s")} for kind in TARGETS
    }
    base = scratch_base()
    work = Path(tempfile.mkdtemp(prefix="crashd-bench-rate-", dir=base))
    offset = (int(time.time()) % 100_000) * 10_000  # daisy keeps what it has seen: never a repeat
    print(f"upload_rate: scratch in {work}, reports owned by {owner.pw_name} (uid {owner.pw_uid}), "
          f"{rounds} rounds, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    profile_text = None
    try:
        with DaisyServer(core_policy="never") as daisy:
            n = 0
            for rnd in range(rounds):
                kinds = ("deps", "spec") if rnd % 2 == 0 else ("spec", "deps")
                for kind in kinds:
                    s = samples[kind]
                    floor_dir = queue(work / f"floor{n}", kind, offset + n * COUNT, owner)
                    crash_dir = queue(work / f"crash{n + 1}", kind, offset + (n + 1) * COUNT, owner)
                    got: dict[str, dict[str, float]] = {}
                    for step in ("floor", "crashd") if rnd % 2 == 0 else ("crashd", "floor"):
                        if step == "floor":
                            got[step] = _floor(daisy, floor_dir, work)
                        else:
                            got[step] = _crashd(daisy, crash_dir, work / f"state{n}")
                    n += 2
                    floor, crashd = got["floor"]["body_rate"], got["crashd"]
                    s["floor"].append(floor)
                    s["crashd"].append(crashd["body_rate"])
                    s["start"].append(crashd["start_rate"])
                    s["ratio"].append(crashd["body_rate"] / floor)
                    s["start_ratio"].append(crashd["start_rate"] / floor)
                    s["exit_s"].append(crashd["exit_s"])
                    shutil.rmtree(floor_dir)
            if profile:
                crash_dir = queue(work / "profiled", "deps", offset + (n + 1) * COUNT, owner)
                profile_text = _profile(daisy, crash_dir, work / "state-profiled")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results: dict = {"reports": COUNT, "rounds": rounds, "scratch": str(base), "load": os.getloadavg()[0]}
    for kind, s in samples.items():
        target = TARGETS[kind]
        med = statistics.median(s["crashd"])
        results[kind] = {k: statistics.median(v) for k, v in s.items()} | {"target": target}
        print(f"upload_rate {kind}: crashd upload-all first → {COUNT}th body: " + _line("", s["crashd"])
              + f"; x{statistics.median(s['ratio']):.2f} of the floor; target {target:.0f}/s: "
              + ("met" if med >= target else "MISSED"))  # fmt: skip
        low, high = WHOOPSIE[kind]
        print(f"upload_rate {kind}: crashd upload-all start → {COUNT}th body:" + _line("", s["start"])
              + f"; x{statistics.median(s['start_ratio']):.2f} of the floor (whoopsie, reference: {low:.0f}-{high:.0f}/s)"
              + f"; exit after {statistics.median(s['exit_s']):.3f} s")  # fmt: skip
        print(f"upload_rate {kind}: floor (bare http.client, same server, same round):" + _line("", s["floor"]))
    if profile_text:
        print(profile_text)
    deps, spec = results["deps"], results["spec"]
    print(
        f"upload_rate: SUMMARY deps {deps['crashd']:.0f}/s (x{deps['ratio']:.2f} floor, target 1000), "
        f"spec {spec['crashd']:.0f}/s (x{spec['ratio']:.2f} floor, target 500), first → {COUNT}th body at "
        f"the server; start → {COUNT}th: deps {deps['start']:.0f}/s, spec {spec['start']:.0f}/s"
    )
    return results


# -- used by bench.daemon: small reports of the earlier benchmark, and their bodies -------------


def write_queue(directory: Path, tag: str, count: int = COUNT) -> Path:
    """*count* small reports (~1.5 KiB) with round-unique Dates, in a fresh crash directory."""
    directory.mkdir()
    directory.chmod(0o3777)  # as /var/crash
    for i in range(count):
        name = f"app{i:03d}"
        frames = "\n".join(
            f"#{n}  0x{0x7F0000001000 + 64 * n + i:x} in func{n} () from /lib/libx.so.1" for n in range(8)
        )
        fields = {
            "ProblemType": "Crash",
            "Architecture": "amd64",
            "Date": f"Sat Nov 21 21:00:00 2026 {tag}",
            "DistroRelease": "Ubuntu 24.04",
            "ExecutablePath": f"/usr/bin/{name}",
            "Package": f"{name} 1.0",
            "ProcCmdline": f"/usr/bin/{name} --run",
            "ProcStatus": f"Name:\t{name}\nState:\tS (sleeping)\nPid:\t{1000 + i}\nVmRSS:\t12345 kB",
            "Signal": "11",
            "SignalName": "SIGSEGV",
            "Stacktrace": frames,
            "StacktraceTop": "\n".join(f"func{n} () from /lib/libx.so.1" for n in range(5)),
            "Uname": "Linux 6.8.0-51-generic x86_64",
        }
        with (directory / f"_usr_bin_{name}.0.crash").open("wb") as f:
            write_report(f, fields)
    return directory


def _bodies(crash_dir: Path) -> list[bytes]:
    bodies = []
    for path in sorted(crash_dir.glob("*.crash")):
        with path.open("rb") as f:
            bodies.append(encode_report(read_report(f)))
    return bodies


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    run("--quick" in sys.argv[1:], "--profile" in sys.argv[1:])
