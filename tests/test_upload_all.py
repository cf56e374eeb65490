"""`crashd upload-all` end to end: real processes, the loopback daisy, real files and users."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crashd.collector import SENT_KINDS, needs_hooks
from crashd.report import read_report, write_report
from tests.daisy import DaisyServer, Hang, Respond
from tests.fixtures import APPORT, WHOOPSIE, apport_manifest, require
from tests.settings import default_config
from tests.test_cli import REPO

TOKEN = "deadbeef" + "0" * 120  # daisy leaves deadbeef… tokens out of its counters


@pytest.fixture
def daisy():
    with DaisyServer() as server:
        yield server


def upload_all(crash_dir: Path, url: str, *args: str, timeout: float = 120) -> tuple[int, dict]:
    """Run `crashd upload-all --json` on *crash_dir*, with its state beside it (never /var/lib/crashd)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR")}
    env |= {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "crashd",
            "--config",
            str(default_config()),
            "upload-all",
            "--json",
            "--crash-dir",
            str(crash_dir),
            "--state-dir",
            str(crash_dir.parent / "state"),
            "--url",
            url,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def by_name(summary: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in summary["reports"]}


def write(path: Path, fields: dict, owner: tuple[int, int] | None = None) -> Path:
    with path.open("wb") as f:
        write_report(f, fields)
    if owner:
        os.chown(path, *owner)
    return path


def crash(name: str, **extra: object) -> dict:
    return {
        "ProblemType": "Crash",
        "Architecture": "amd64",
        "Date": f"Sat Nov 21 21:00:00 2026 {name}",
        "ExecutablePath": f"/usr/bin/{name}",
        "Package": f"{name} 1.0",
        "ProcStatus": f"Name:\t{name}",
        "Signal": "11",
        **extra,
    }


# -- the shared corpus, judged against apport's own decoding -----------------------------


def expected_state(record: dict, path: Path) -> str:
    if record["ProblemType"] not in SENT_KINDS:
        return "skipped"
    if any(not key["binary"] and key["type"] == "bytes" for key in record["keys"].values()):
        return "invalid"  # text that is not UTF-8 cannot be a BSON string
    found = "Package" in record["keys"] or package_found(path)
    return "sent" if found else "rejected"  # daisy: "Incomplete crash report."


# What crashd adds to a report itself (crashd/enrich.py).
OWN_FIELDS = {
    "Architecture", "DistroRelease", "Uname", "ExecutableTimestamp", "Package", "SourcePackage",
    "PackageArchitecture", "Dependencies", "CrashdVersion",
}  # fmt: skip


def package_found(path: Path) -> bool:
    """Whether crashd fills ``Package`` in itself (issue 15): a report not enriched yet whose
    ``ExecutablePath`` (or its /usr-merged name) dpkg says a package owns."""
    with path.open("rb") as f:
        report = read_report(f)
    if not needs_hooks(report) or "ExecutablePath" not in report or not shutil.which("dpkg-query"):
        return False
    executable = report.text_bytes("ExecutablePath").decode("utf-8", "replace")
    names = {executable, executable.removeprefix("/usr")}
    return any(
        subprocess.run(["dpkg-query", "-S", "--", name], capture_output=True).returncode == 0
        for name in names
    )


def test_corpus_arrives_byte_exact_with_cores(daisy, crash_dir):
    manifest = apport_manifest()
    records = {record["file"]: record for record in manifest["files"]}
    for name in records:
        shutil.copy(APPORT / name, crash_dir / name)
    code, summary = upload_all(crash_dir, daisy.url)

    states = by_name(summary)
    assert {name: states[name]["state"] for name in records} == {
        n: expected_state(r, APPORT / n) for n, r in records.items()
    }
    assert code == 1  # some reports were rejected or invalid
    assert summary["sent"] == sum(expected_state(r, APPORT / n) == "sent" for n, r in records.items())

    received = {report.oops_id: report.document for report in daisy.reports if report.oops_id}
    assert {report.token for report in daisy.reports} == {TOKEN}
    cores = {core.oops_id: core for core in daisy.cores}
    for name, record in records.items():
        if states[name]["state"] != "sent":
            assert not (crash_dir / name).with_suffix(".uploaded").exists()
            continue
        text_keys = [key for key in record["key_order"] if not record["keys"][key]["binary"]]
        document = received[states[name]["oops_id"]]
        with (APPORT / name).open("rb") as f:
            enriched = needs_hooks(read_report(f))
        if enriched:  # issue 15: crashd's own fields follow the file's, and _HooksRun: yes ends them
            text_keys = [key for key in text_keys if key != "_HooksRun"]
            kept = [key for key in document if key in record["keys"] and key != "_HooksRun"]
            assert kept == text_keys, name
            assert set(document) - set(record["keys"]) <= OWN_FIELDS | {"_HooksRun"}, name
            assert list(document)[-1] == "_HooksRun" and document["_HooksRun"] == "yes", name
        else:
            assert list(document) == text_keys, name  # file order, no binary field in the first POST
        for key in text_keys:
            assert hashlib.sha256(document[key].encode()).hexdigest() == record["keys"][key]["sha256"], (
                name,
                key,
            )
        assert (crash_dir / name).with_suffix(".uploaded").read_text() == states[name]["oops_id"]
        if states[name]["oops_id"] in cores:
            core = cores[states[name]["oops_id"]]
            assert core.verdict == "ok", (name, core.verdict)
            assert core.decoded_sha256 == record["keys"]["CoreDump"]["sha256"], name
    assert any(core.compression == "zstd" for core in cores.values())


def test_daisy_integration_fixture_takes_the_core_path(daisy, crash_dir):
    source = require(WHOOPSIE / "error-tracker-integration" / "_usr_bin_cat.2001.crash")
    shutil.copy(source, crash_dir)
    code, summary = upload_all(crash_dir, daisy.url)
    assert (code, summary["sent"]) == (0, 1)
    (core,) = daisy.cores
    assert (core.verdict, core.decoded_size, core.arch) == ("ok", 936288, "amd64")


# -- generated reports: the suite needs no shared fixtures for these ---------------------


def test_all_sent_exits_0_and_a_rerun_sends_nothing(daisy, crash_dir):
    for name in ("alpha", "beta", "gamma"):
        write(crash_dir / f"_usr_bin_{name}.0.crash", crash(name))
    code, summary = upload_all(crash_dir, daisy.url)
    assert code == 0 and summary["sent"] == 3 and summary["failed"] == summary["pending"] == 0
    for entry in summary["reports"]:
        assert (crash_dir / entry["name"]).with_suffix(".uploaded").read_text() == entry["oops_id"]
        assert (crash_dir / entry["name"]).with_suffix(".upload").exists()
    code, again = upload_all(crash_dir, daisy.url)
    assert code == 0 and len(daisy.reports) == 3
    assert {e["detail"] for e in again["reports"]} == {"uploaded before"}
    assert [e["oops_id"] for e in again["reports"]] == [e["oops_id"] for e in summary["reports"]]


def test_user_report_gets_stamps_owned_by_the_user(daisy, crash_dir, make_user):
    user = make_user()
    report = write(crash_dir / f"_usr_bin_app.{user.pw_uid}.crash", crash("app"), (user.pw_uid, user.pw_gid))
    code, summary = upload_all(crash_dir, daisy.url)
    assert code == 0, summary
    for stamp in (report.with_suffix(".upload"), report.with_suffix(".uploaded")):
        st = stamp.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (user.pw_uid, user.pw_gid, 0o640)


def test_hostile_and_invalid_files_are_listed_and_left_untouched(daisy, crash_dir, make_user):
    user = make_user()
    good = write(crash_dir / "_usr_bin_good.0.crash", crash("good"))
    (crash_dir / "_etc_shadow.0.crash").symlink_to("/etc/shadow")
    os.mkfifo(crash_dir / "_usr_bin_fifo.0.crash")
    (crash_dir / "x.crash").mkdir()
    os.link(good, crash_dir / "_usr_bin_hardlink.0.crash")
    write(crash_dir / "_usr_bin_spoof.0.crash", crash("spoof"), (user.pw_uid, user.pw_gid))  # not root's
    (crash_dir / "_usr_bin_broken.0.crash").write_bytes(b"ProblemType: Crash\n\nDate: x\n")
    # Already enriched (as apport leaves it), so collection does not rewrite it before the encoding refuses it.
    write(crash_dir / "_usr_bin_latin1.0.crash", crash("latin1", Note=b"caf\xe9", _HooksRun="yes"))
    before = {p.name: p.lstat() for p in crash_dir.iterdir()}

    code, summary = upload_all(crash_dir, daisy.url, timeout=60)

    states = by_name(summary)
    assert code == 1
    expected = {
        "_etc_shadow.0.crash": "is a symbolic link",
        "_usr_bin_fifo.0.crash": "is a FIFO",
        "x.crash": "is a directory",
        "_usr_bin_hardlink.0.crash": "has 2 hard links",
        "_usr_bin_good.0.crash": "has 2 hard links",  # the other name of the same inode
        "_usr_bin_spoof.0.crash": f"is owned by uid {user.pw_uid} but named for uid 0",
        "_usr_bin_broken.0.crash": "line 2: an empty line",
        "_usr_bin_latin1.0.crash": "Note is not valid UTF-8",
    }
    for name, reason in expected.items():
        assert states[name]["state"] == "invalid" and reason in states[name]["detail"], states[name]
    assert daisy.reports == []
    after = {p.name: p.lstat() for p in crash_dir.iterdir()}
    # Nothing refused got a stamp; the files themselves are exactly as they were.
    assert set(after) - set(before) == {"_usr_bin_latin1.0.upload"}  # refused only when encoding
    for name, st in before.items():
        assert (after[name].st_mtime_ns, after[name].st_size, after[name].st_uid) == (
            st.st_mtime_ns, st.st_size, st.st_uid,
        )  # fmt: skip


def test_bug_reports_are_skipped_not_failed(daisy, crash_dir):
    write(crash_dir / "bash.0.crash", {"ProblemType": "Bug", "Package": "bash 5"})
    code, summary = upload_all(crash_dir, daisy.url)
    assert code == 0 and summary["skipped"] == 1 and daisy.reports == []
    assert not (crash_dir / "bash.0.upload").exists()


def test_server_errors_leave_reports_pending_for_the_next_run(daisy, crash_dir):
    report = write(crash_dir / "_usr_bin_flaky.0.crash", crash("flaky"))
    daisy.script(Respond(503, b"overloaded"))
    code, summary = upload_all(crash_dir, daisy.url)
    assert code == 1 and summary["failed"] == 1
    assert "503: overloaded" in summary["reports"][0]["detail"]
    assert report.with_suffix(".upload").exists() and not report.with_suffix(".uploaded").exists()
    code, summary = upload_all(crash_dir, daisy.url)
    assert code == 0 and summary["sent"] == 1


def test_rejection_keeps_the_servers_reason(daisy, crash_dir):
    write(crash_dir / "_usr_bin_nopkg.0.crash", {k: v for k, v in crash("nopkg").items() if k != "Package"})
    code, summary = upload_all(crash_dir, daisy.url)
    assert code == 1 and summary["rejected"] == 1
    assert summary["reports"][0]["detail"] == "400: Incomplete crash report."


def test_duplicate_counts_as_sent(daisy, crash_dir):
    report = write(crash_dir / "_usr_bin_twice.0.crash", crash("twice"))
    assert upload_all(crash_dir, daisy.url)[0] == 0
    asked = report.with_suffix(".upload")
    asked.touch()  # a UI asks again, later than crashd's stamp (set, not slept for: a coarse clock ticks rarely)
    later = report.with_suffix(".uploaded").stat().st_mtime_ns + 1_000_000_000
    os.utime(asked, ns=(later, later))
    code, summary = upload_all(crash_dir, daisy.url)
    assert code == 0 and summary["sent"] == 1
    assert "already has this report" in summary["reports"][0]["detail"]
    assert [r.status for r in daisy.reports] == [200, 409]


def test_connection_refused_is_failed_not_lost(crash_dir):
    with DaisyServer() as closed:
        url = closed.url
    report = write(crash_dir / "_usr_bin_offline.0.crash", crash("offline"))
    code, summary = upload_all(crash_dir, url)
    assert code == 1 and summary["failed"] == 1 and "refused" in summary["reports"][0]["detail"].lower()
    assert report.with_suffix(".upload").exists()


def test_timeout_bounds_the_whole_run(daisy, crash_dir):
    for name in ("slow1", "slow2", "slow3", "slow4", "slow5", "slow6"):
        write(crash_dir / f"_usr_bin_{name}.0.crash", crash(name))
    daisy.script(*[Hang()] * 6)
    started = time.monotonic()
    code, summary = upload_all(crash_dir, daisy.url, "--timeout", "1.5")
    assert time.monotonic() - started < 60  # not six hung uploads each waiting out the 60 s read timeout
    assert code == 1
    assert summary["sent"] == 0 and summary["failed"] + summary["pending"] == 6


def test_core_upload_memory_is_flat(daisy, crash_dir, tmp_path):
    core = tmp_path / "core"
    with core.open("wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(96):  # 96 MiB that gzip cannot shrink: a 128 MiB base64 block
            f.write(block)
    with core.open("rb") as source:
        write(
            crash_dir / "_usr_bin_big.0.crash",
            crash("big", StacktraceAddressSignature="big", CoreDump=source),
        )
    env = {k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR")}
    env |= {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN}
    measure = "import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    command = [
        sys.executable,
        "-m",
        "crashd",
        "upload-all",
        "--crash-dir",
        str(crash_dir),
        "--state-dir",
        str(tmp_path / "state"),
        "--url",
        daisy.url,
    ]
    result = subprocess.run(
        [sys.executable, "-c", measure, *command], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    peak_kib = int(result.stdout.splitlines()[-1])
    (stored,) = daisy.cores
    assert stored.verdict == "ok" and stored.decoded_size == 96 << 20
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB"


def test_text_arrives_exactly_as_stored(daisy, crash_dir):
    fields = crash("exact", Trailing="line\n", Tabbed="a\tb", Unicode="caf\u00e9 \u2665", Nul="a\x00b")
    fields["_HooksRun"] = "yes"  # already enriched: what arrives is exactly what the file holds
    write(crash_dir / "_usr_bin_exact.0.crash", fields)
    assert upload_all(crash_dir, daisy.url)[0] == 0
    document = daisy.reports[0].document
    assert (
        "Nul" not in document
    )  # control bytes make it binary (as apport writes it): never in the first POST
    assert document == {key: value for key, value in fields.items() if key != "Nul"}


def test_an_executable_path_longer_than_any_path_is_refused_before_it_is_resolved(daisy, crash_dir):
    """Issue 11: root resolved ExecutablePath for the /opt hook rule in time quadratic in its length
    (128 KiB: 4.5 s; 512 KiB: about a minute, per report, per run). Refused now, before resolving."""
    hostile = "/opt/" + "a/" * (256 * 1024)  # 512 KiB of path components
    write(crash_dir / "_opt_a.0.crash", crash("long", ExecutablePath=hostile))
    write(crash_dir / "_usr_bin_good.0.crash", crash("good"))

    code, summary = upload_all(crash_dir, daisy.url, timeout=30)  # the old code takes longer than this

    states = by_name(summary)
    assert states["_usr_bin_good.0.crash"]["state"] == "sent", states
    refused = states["_opt_a.0.crash"]
    assert refused["state"] == "invalid" and "ExecutablePath" in refused["detail"], refused
    assert "PATH_MAX" in refused["detail"], refused
    assert code == 1
    assert [r.document["ExecutablePath"] for r in daisy.reports] == ["/usr/bin/good"]
