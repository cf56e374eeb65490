"""The crash directory attacked by local users, with real users, files and crashd processes (issue 11
vuln 6 and 7, robustness 2, 3 and 5; issue 13's normal-user run; issue 16's whoopsie takeover).

Each test builds the situation the way the attacker (or the system being replaced) would — files
created by throwaway users' own processes in a 3777 directory — and runs crashd as the service or an
administrator would: ``crashd daemon --once`` or ``crashd upload-all`` as root against the loopback
daisy, or ``crashd status`` / ``upload-all`` as a normal user.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pwd
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from crashd.report import write_report
from tests.crashd_run import FAST, Run, crash, crashd, state_dir_of, write_config
from tests.daisy import DaisyServer
from tests.test_cli import REPO

MiB = 1 << 20


@pytest.fixture
def crash_dir(user_tmp_path: Path) -> Path:
    directory = user_tmp_path / "crash"
    directory.mkdir()
    directory.chmod(0o3777)  # as /var/crash: anyone may create, nobody may remove another's file
    return directory


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "crashd.conf", **FAST)


@pytest.fixture
def mallory(make_user: Callable[[], pwd.struct_passwd]) -> pwd.struct_passwd:
    return make_user()


@pytest.fixture
def bob(make_user: Callable[[], pwd.struct_passwd]) -> pwd.struct_passwd:
    return make_user()


def as_user(run_as: Callable[..., subprocess.CompletedProcess[str]], user: pwd.struct_passwd, code: str,
            *args: str) -> None:  # fmt: skip
    """Run *code* as *user* in a real process; it must succeed."""
    done = run_as(user, code, *args)
    assert done.returncode == 0, done.stderr


def report_of(run_as: Callable[..., subprocess.CompletedProcess[str]], user: pwd.struct_passwd, crash_dir: Path,
              program: str, **extra: object) -> Path:  # fmt: skip
    """A crash report written by *user*'s own process, 0640, as apport writes it."""
    path = crash_dir / f"_usr_bin_{program}.{user.pw_uid}.crash"
    buffer = io.BytesIO()
    write_report(buffer, crash(program, **extra))
    as_user(run_as, user, (
        "import base64, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)\n"
        "os.write(fd, base64.b64decode(sys.argv[2]))\n"
    ), str(path), base64.b64encode(buffer.getvalue()).decode())  # fmt: skip
    return path


def touch(run_as: Callable[..., subprocess.CompletedProcess[str]], user: pwd.struct_passwd, path: Path) -> None:
    as_user(run_as, user, "import sys; open(sys.argv[1], 'a').close()", str(path))


def mkdir(run_as: Callable[..., subprocess.CompletedProcess[str]], user: pwd.struct_passwd, path: Path) -> None:
    as_user(run_as, user, "import os, sys; os.mkdir(sys.argv[1])", str(path))


def by_name(run: Run) -> dict[str, dict]:
    assert run.stdout, f"exit {run.code}: {run.stderr}"
    return run.reports()


def sent_names(daisy: DaisyServer) -> list[str]:
    return sorted(str(report.document["ExecutablePath"]) for report in daisy.reports if report.document)


# -- issue 11 vuln 6: stamps planted by another user --------------------------------------------


def test_a_planted_uploaded_stamp_does_not_hide_the_owners_upload_request(
    crash_dir: Path, config: Path, daisy: DaisyServer, run_as, bob, mallory
) -> None:
    """Old: mallory's ``.uploaded`` made crashd distrust both stamps: bob's report stayed held forever."""
    report = report_of(run_as, bob, crash_dir, "bobprog")
    stem = report.name[: -len(".crash")]
    touch(run_as, bob, crash_dir / f"{stem}.upload")  # bob asks for it to be sent (automatic is off)
    touch(run_as, mallory, crash_dir / f"{stem}.uploaded")
    run = crashd("daemon", crash_dir, "--once", url=daisy.url, config=config)
    assert run.code == 0, run.stderr
    assert sent_names(daisy) == ["/usr/bin/bobprog"]
    assert "ignoring a stamp crashd cannot trust" in run.stderr and f"owned by uid {mallory.pw_uid}" in run.stderr
    uploaded = (crash_dir / f"{stem}.uploaded").stat()
    assert (uploaded.st_uid, (crash_dir / f"{stem}.uploaded").read_text()) == (bob.pw_uid, daisy.reports[0].oops_id)


def test_a_planted_directory_stamp_never_fails_delivery(
    crash_dir: Path, config: Path, daisy: DaisyServer, run_as, bob, mallory
) -> None:
    """Old: ``mkdir X.upload`` by mallory failed bob's report on every run ("Is a directory")."""
    report = report_of(run_as, bob, crash_dir, "bobprog")
    stem = report.name[: -len(".crash")]
    mkdir(run_as, mallory, crash_dir / f"{stem}.upload")
    mkdir(run_as, mallory, crash_dir / f"{stem}.uploaded")
    for _ in range(2):  # the second run must neither fail nor send it again
        run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=config)
        assert (run.code, by_name(run)[report.name]["state"]) == (0, "sent"), run.stderr
    assert sent_names(daisy) == ["/usr/bin/bobprog"]
    assert "Is a directory" in run.stderr  # said, not fatal


# -- issue 16 item 4: taking over from whoopsie ----------------------------------------------------


def test_reports_whoopsie_sent_are_not_sent_again(
    crash_dir: Path, config: Path, daisy: DaisyServer, run_as, bob, make_user
) -> None:
    """A whoopsie-shaped crash directory: one report sent by whoopsie (its ``.uploaded``, owned by the
    whoopsie user and holding the OOPS id), one queued (bob's ``.upload``), one never asked for.
    Old: all three were sent again with new OOPS ids."""
    whoopsie = make_user()  # plays the legacy uploader's system user
    sent, queued, _new = (report_of(run_as, bob, crash_dir, name) for name in ("sentprog", "queuedprog", "newprog"))
    for report in (sent, queued):
        touch(run_as, bob, report.with_suffix(".upload"))
    as_user(run_as, whoopsie, "import sys; open(sys.argv[1], 'w').write('b5e7a9f0-0000-11ef-8000-000000000001')",
            str(sent.with_suffix(".uploaded")))  # fmt: skip
    planted = queued.with_suffix(".uploaded")
    touch(run_as, make_user(), planted)  # anyone else's .uploaded still counts for nothing
    argv = ["--config", str(config), "upload-all", "--json", "--crash-dir", str(crash_dir), "--state-dir",
            str(state_dir_of(crash_dir)), "--url", daisy.url]  # fmt: skip
    code = ("import sys\nimport crashd.spool\ncrashd.spool.LEGACY_UPLOADER = sys.argv[1]\n"
            "from crashd.cli import main\nsys.exit(main(sys.argv[2:]))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR")}
    done = subprocess.run([sys.executable, "-c", code, whoopsie.pw_name, *argv], capture_output=True, text=True,
                          env=env | {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": "deadbeef" + "0" * 120},
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    states = {entry["name"]: entry for entry in json.loads(done.stdout)["reports"]}
    assert states[sent.name]["state"] == "sent" and states[sent.name]["detail"] == "uploaded before"
    assert states[sent.name]["oops_id"] == "b5e7a9f0-0000-11ef-8000-000000000001"
    assert sent_names(daisy) == ["/usr/bin/newprog", "/usr/bin/queuedprog"]
    assert planted.stat().st_uid == bob.pw_uid  # crashd's own stamp replaced the planted one


# -- issue 11 robustness 2 and 3: record names and records of gone reports ------------------------


def test_a_255_byte_report_name_is_delivered_and_its_record_collected_when_it_is_gone(
    crash_dir: Path, config: Path, daisy: DaisyServer
) -> None:
    """Old: "cannot record delivery state: File name too long" for every name of 242+ bytes, and the
    records of deleted reports stayed forever."""
    long = crash_dir / ("_usr_bin_" + "x" * (255 - len("_usr_bin_.0.crash")) + ".0.crash")
    assert len(long.name) == 255
    short = crash_dir / "_usr_bin_short.0.crash"
    for path, program in ((long, "long"), (short, "short")):
        with path.open("wb") as out:
            write_report(out, crash(program))
    records = state_dir_of(crash_dir) / "reports"
    run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    assert run.code == 0 and {e["state"] for e in run.reports().values()} == {"sent"}, run.stderr
    assert len(list(records.iterdir())) == 2
    run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    assert run.code == 0 and len(daisy.reports) == 2, run.stderr  # the long one has no stamp: its record says sent
    long.unlink()
    short.unlink()
    run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    assert run.code == 0, run.stderr
    assert list(records.iterdir()) == []


def test_records_of_deleted_reports_are_collected(crash_dir: Path, config: Path, daisy: DaisyServer) -> None:
    """Old: 100,000 deleted reports left 100,000 records behind, forever."""
    reports = [crash_dir / f"_usr_bin_gone{n}.0.crash" for n in range(3)]
    for n, path in enumerate(reports):
        with path.open("wb") as out:
            write_report(out, crash(f"gone{n}"))
    records = state_dir_of(crash_dir) / "reports"
    run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    assert run.code == 0 and len(list(records.iterdir())) == 3, run.stderr
    for path in reports[1:]:
        path.unlink()
    run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    assert run.code == 0, run.stderr
    assert len(list(records.iterdir())) == 1 and len(daisy.reports) == 3


# -- issue 11 vuln 7: sparse files -------------------------------------------------------------------


def test_a_sparse_report_is_refused_before_it_is_read(
    crash_dir: Path, config: Path, daisy: DaisyServer, run_as, mallory
) -> None:
    report = report_of(run_as, mallory, crash_dir, "sparse", Huge="x")
    as_user(run_as, mallory, "import os, sys; os.truncate(sys.argv[1], 1 << 30)", str(report))
    assert report.stat().st_blocks * 512 < MiB
    run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=config)
    entry = by_name(run)[report.name]
    assert (run.code, entry["state"]) == (1, "invalid"), run.stderr
    assert entry["detail"].startswith("is sparse: 1 GiB long but only ") and entry["detail"].endswith(" allocated")
    assert daisy.reports == []
    assert report.stat().st_blocks * 512 < MiB  # nothing made it real data


# -- issue 13: a normal user beside other users' reports ------------------------------------------


def test_a_normal_user_sees_and_sends_only_their_own_reports(
    crash_dir: Path, daisy: DaisyServer, run_as, bob, mallory
) -> None:
    """Old: ``crashd status`` and ``upload-all`` as a user died with a PermissionError traceback on
    another user's 0640 report."""
    own = report_of(run_as, bob, crash_dir, "bobprog")
    other = report_of(run_as, mallory, crash_dir, "malprog")
    state = crash_dir.parent / "state"  # root's, 0711 as installed: no records for the user
    state.mkdir(mode=0o711, exist_ok=True)
    # The user's interpreter gets crashd's dependencies from the test's own environment, if it may read them.
    site = str(Path(requests.__file__).parents[1])
    probe = run_as(bob, "import sys; sys.path.append(sys.argv[1]); import backports.zstd, requests", site)
    if probe.returncode != 0:
        pytest.skip(f"crashd's dependencies in {site} cannot be imported by an unprivileged user")
    code = ("import os, sys\nsys.path.append(sys.argv.pop(1))\n"
            "os.environ['CRASH_DB_IDENTIFIER'] = 'deadbeef' + '0' * 120\n"
            "from crashd.cli import main\nsys.exit(main(sys.argv[1:]))")  # fmt: skip
    where = ["--crash-dir", str(crash_dir), "--state-dir", str(state)]
    status = run_as(bob, code, site, "status", "--json", *where)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    entries = {entry["name"]: entry for entry in json.loads(status.stdout)["reports"]}
    assert entries[own.name]["state"] == "held"  # listed: waiting for someone to send it
    assert (entries[other.name]["state"], entries[other.name]["detail"]) == ("skipped", "not readable by you")
    text = run_as(bob, code, site, "status", *where)
    assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
    assert sum(other.name in line for line in text.stdout.splitlines()) == 1
    sent = run_as(bob, code, site, "upload-all", "--json", "--url", daisy.url, *where)
    assert sent.returncode == 0 and "Traceback" not in sent.stderr, sent.stderr
    entries = {entry["name"]: entry for entry in json.loads(sent.stdout)["reports"]}
    assert (entries[own.name]["state"], entries[other.name]["state"]) == ("sent", "skipped")
    assert sent_names(daisy) == ["/usr/bin/bobprog"]


# -- issue 11 robustness 7: memory bounded by design, whatever the number of reports ---------------


def test_daemon_memory_does_not_grow_with_the_number_of_reports(tmp_path: Path) -> None:
    """Peak RSS of ``crashd daemon --once`` over 10,000 held reports, against the same command on an
    empty directory (each a fresh child: its own ``ru_maxrss``). Old: every name became an asyncio
    task at once, +2 MiB per 1,000 reports (224 MiB at 100,000); now the scan is streamed and only the
    reports being worked on are in memory. ``python -m bench spool_rss`` measures 100,000."""
    from bench._common import TOKEN, child_env, run_child
    from bench.spool_rss import fill

    def peak_mib(count: int) -> float:
        crash_dir, state_dir = tmp_path / f"crash{count}", tmp_path / f"state{count}"
        crash_dir.mkdir()
        fill(crash_dir, count)
        argv = [sys.executable, "-m", "crashd", "daemon", "--once", "--url", "http://127.0.0.1:9/",
                "--crash-dir", str(crash_dir), "--state-dir", str(state_dir)]  # fmt: skip
        run = run_child(argv, env=child_env(CRASH_DB_IDENTIFIER=TOKEN), timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stderr.count(": held: ") == count
        return run.maxrss_kib / 1024

    baseline, loaded = peak_mib(0), peak_mib(10_000)
    print(f"daemon --once: {baseline:.1f} MiB empty, {loaded:.1f} MiB with 10,000 reports")
    assert loaded - baseline < 8, f"+{loaded - baseline:.1f} MiB for 10,000 reports"
