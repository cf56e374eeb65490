"""core_rss: peak RSS of ``crashd upload-all`` while a 2 GiB core streams to submit-core.

DESIGN.md §8: "2 GiB core, CORE requested — whoopsie holds the whole file; target: peak
RSS < 64 MiB while enriching and uploading". A real ``python -m crashd upload-all``
child sends one report to the loopback daisy (its own process, ``--core-policy
always``), which asks for the core, so every stored base64 line goes to submit-core;
the server decodes and decompresses it as it arrives and records the verdict.

The report file must stay under crashd's 2 GiB report-file bound (DESIGN.md §7 rule 3),
so the core cannot be incompressible: 2 GiB of a 4 MiB pattern that is half random
bytes, half zero pages deflates to ~1 GiB and a ~1.4 GiB file. (A 2 GiB incompressible
core makes a 2.8 GB file, which crashd refuses as invalid before reading it.)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from bench._common import (
    TOKEN,
    GiB,
    MiB,
    Stats,
    daisy_server,
    free_bytes,
    mib,
    run_upload_all,
    write_core_block,
)
from crashd.report import read_report, write_report

TARGET_KIB = 64 * 1024
NEEDED_FREE = 8 * 10**9  # bytes free before a full run starts (the file is ~1.5 GB)


def write_big_report(path: Path, core_size: int) -> None:
    """Header fields that make daisy want the core (as tests/test_upload_all.py's crash()), then the core."""
    with path.open("wb") as f:
        write_report(
            f,
            {
                "ProblemType": "Crash",
                "Architecture": "amd64",
                "Date": "Sat Nov 21 21:00:00 2026",
                "ExecutablePath": "/usr/bin/bigcore",
                "Package": "bigcore 1.0",
                "ProcStatus": "Name:\tbigcore",
                "Signal": "11",
                "StacktraceAddressSignature": "/usr/bin/bigcore:11:deadbeef",
            },
        )
        write_core_block(f, "CoreDump", core_size, random_fraction=0.5, seed=1)


def _body_size(report: Path) -> int:
    """Bytes of the submit-core body: the stored base64 lines (the server's record drops big bodies)."""
    with report.open("rb") as f:
        return read_report(f).entries["CoreDump"].size


def _one_run(crash_dir: Path, work: Path, run: int, core_size: int) -> dict:
    """One upload against a fresh server (a second report of the same crash would get 409, no CORE)."""
    for stamp in crash_dir.glob("*.upload*"):
        stamp.unlink()
    records, log = work / f"records-{run}", work / f"daisy-{run}.log"
    with daisy_server(log, "--core-policy", "always", "--record-dir", str(records)) as url:
        state = work / f"state-{run}"  # never the default /var/lib/crashd
        result = run_upload_all(crash_dir, state, url, TOKEN)
    if result.returncode != 0:
        raise RuntimeError(f"upload-all exited {result.returncode}: {result.stdout}{result.stderr}")
    (entry,) = json.loads(result.stdout)["reports"]
    cores = [json.loads(p.read_text()) for p in sorted(records.glob("*-core.json"))]
    if len(cores) != 1:
        raise RuntimeError(f"expected one core at the server, got {len(cores)}; see {log}")
    core = cores[0]
    log_line = next((ln for ln in log.read_text().splitlines() if "submit-core" in ln), "")
    return {
        "state": entry["state"],
        "detail": entry["detail"],
        "wall_s": result.wall,
        "client_cpu_s": result.cpu,
        "peak_rss_kib": result.maxrss_kib,
        "compressed_bytes": core["compressed_size"],
        "verdict": core["verdict"],
        "decoded_size": core["decoded_size"],
        "status": core["status"],
        "server_log": log_line,
    }


def run(quick: bool = False) -> dict | None:
    """Generate the report once, then upload it a few times, each in a fresh child and server."""
    core_size, runs = (256 * MiB, 2) if quick else (2 * GiB, 3)
    tmp_root = tempfile.gettempdir()
    needed = NEEDED_FREE if not quick else 10**9
    if free_bytes(tmp_root) < needed:
        print(f"core_rss: skipped, less than {needed / 1e9:.0f} GB free in {tmp_root}")
        return None
    with tempfile.TemporaryDirectory(prefix="crashd-bench-core-") as tmp:
        work = Path(tmp)
        crash_dir = work / "crash"
        crash_dir.mkdir()
        crash_dir.chmod(0o3777)  # as /var/crash
        report = crash_dir / "_usr_bin_bigcore.0.crash"
        started = time.perf_counter()
        write_big_report(report, core_size)
        size, body = report.stat().st_size, _body_size(report)
        print(
            f"core_rss: wrote a {size / MiB:.0f} MiB report (core {core_size / MiB:.0f} MiB decoded) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        results = [_one_run(crash_dir, work, n, core_size) for n in range(runs)]
    for r in results:
        ok = r["state"] == "sent" and r["verdict"] == "ok" and r["decoded_size"] == core_size
        r["verified"] = ok
        print(
            f"core_rss run: peak RSS {mib(r['peak_rss_kib'])}, {r['wall_s']:.1f} s "
            f"(client CPU {r['client_cpu_s']:.1f} s), "
            f"{body / 1e6 / r['wall_s']:.0f} MB/s of base64 body; server: verdict {r['verdict']}, "
            f"decoded {r['decoded_size']} bytes; {r['server_log']!r}"
        )
    peaks = Stats(tuple(float(r["peak_rss_kib"]) for r in results))
    walls = Stats(tuple(r["wall_s"] for r in results))
    verified = all(r["verified"] for r in results)
    summary = {
        "core_decoded_bytes": core_size,
        "report_bytes": size,
        "body_bytes": body,
        "peak_rss_kib_median": peaks.median,
        "peak_rss_kib_worst": peaks.worst,
        "target_kib": TARGET_KIB,
        "wall_s_median": walls.median,
        "wall_s_best": walls.best,
        "wall_spread": walls.spread,
        "mb_per_s_median": body / 1e6 / walls.median,
        "verified": verified,
        "runs": results,
    }
    print(
        f"core_rss: SUMMARY {core_size / GiB:g} GiB core ({body / MiB:.0f} MiB body): peak RSS median "
        f"{mib(int(peaks.median))}, worst {mib(int(peaks.worst))} (target < 64 MiB: "
        f"{'met' if peaks.worst < TARGET_KIB else 'MISSED'}, {peaks.worst / TARGET_KIB:.2f} of it); "
        f"wall {walls.describe()}; {body / 1e6 / walls.median:.0f} MB/s; "
        f"server verified {'ok' if verified else 'NOT ok'}"
    )
    return summary


if __name__ == "__main__":
    run("--quick" in sys.argv[1:])
