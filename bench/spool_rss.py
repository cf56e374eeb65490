"""spool_rss: peak RSS of ``crashd daemon --once`` and ``crashd status`` with 100,000 reports in the crash dir.

Issue 11 (robustness 7): 100,000 files took the daemon to 224 MiB peak RSS. Target: < 64 MiB,
memory bounded by design (the directory streamed, per-report state on disk). Each command runs as
a child of its own (``run_child``: its own ``ru_maxrss``), first on an empty crash directory (the
baseline: interpreter and imports), then on N reports. The reports are valid crashes nobody marked
for upload and consent is not automatic, so each is looked at, judged ``held`` and left: no
network, the cost is the scan and the per-report work. The figure that matters is the growth over
the baseline, per 1,000 reports.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench._common import TOKEN, child_env, run_child

COUNT = 100_000
TARGET_MIB = 64
REPORT = (
    b"ProblemType: Crash\nArchitecture: amd64\nDate: Sat Nov 21 21:00:00 2026\n"
    b"ExecutablePath: /usr/bin/prog\nPackage: prog 1.0\nProcStatus: Name:\tprog\nSignal: 11\n"
)


def fill(crash_dir: Path, count: int) -> None:
    """*count* small held reports, written as fast as Python can (one write each)."""
    dirfd = os.open(crash_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for n in range(count):
            fd = os.open(f"_usr_bin_prog{n}.0.crash", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=dirfd)
            os.write(fd, REPORT)
            os.close(fd)
    finally:
        os.close(dirfd)


def measure(count: int) -> dict[str, float]:
    """Peak RSS (MiB) of ``daemon --once`` and of ``status --json`` on *count* reports."""
    with tempfile.TemporaryDirectory(prefix="crashd-bench-spool-") as tmp:
        crash_dir, state_dir = Path(tmp) / "crash", Path(tmp) / "state"
        crash_dir.mkdir()
        fill(crash_dir, count)
        where = ["--crash-dir", str(crash_dir), "--state-dir", str(state_dir)]
        env = child_env(CRASH_DB_IDENTIFIER=TOKEN)
        figures = {}
        for name, argv in (
            ("daemon", ["daemon", "--once", "--url", "http://127.0.0.1:9/", *where]),
            ("status", ["status", "--json", *where]),
        ):
            run = run_child([sys.executable, "-m", "crashd", *argv], env=env, timeout=1800)
            if run.returncode != 0:
                raise RuntimeError(f"crashd {name} exited {run.returncode}: {run.stderr[-2000:]}")
            figures[name] = run.maxrss_kib / 1024
        shutil.rmtree(crash_dir)
        return figures


def run(quick: bool = False) -> dict[str, object]:
    count = COUNT // 10 if quick else COUNT
    base, full = measure(0), measure(count)
    results: dict[str, object] = {"reports": count, "target_mib": TARGET_MIB}
    for name in ("daemon", "status"):
        growth = full[name] - base[name]
        results[name] = {"baseline_mib": base[name], "peak_mib": full[name], "per_1000_kib": growth * 1024000 / count}
        print(f"spool_rss: {name}: {base[name]:.1f} MiB empty, {full[name]:.1f} MiB with {count:,} reports "
              f"(+{growth * 1024000 / count:.0f} KiB per 1,000)")  # fmt: skip
    daemon = full["daemon"]
    verdict = "met" if daemon < TARGET_MIB else "MISSED"
    print(f"spool_rss: SUMMARY daemon peak {daemon:.1f} MiB with {count:,} reports: {verdict} (< {TARGET_MIB} MiB)")
    return results


if __name__ == "__main__":
    run("--quick" in sys.argv)
