"""Issue 15: crashd's own fields go out from memory, and are written into the report after its POST.

A report that is not enriched yet (no ``Dependencies``) and that no package hook applies to is sent with
what crashd adds itself (:mod:`crashd.enrich`) built in memory; the file is rewritten with the same
fields only once nothing more is due for it (crashd.delivery, ``Courier.write_back``). These tests
follow the file, its stamps, its delivery record and the server through that, and through a
``kill -9`` at each point of it: a real ``crashd`` process (``upload-all``, or ``daemon --once``)
whose named step is replaced by a SIGKILL of itself, then a normal run. Nothing is lost, nothing is
sent twice except a POST cut off before its answer was recorded (daisy answers 409), and a newer crash
is never stamped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from crashd.consent import set_preference
from crashd.report import read_report
from crashd.state import StateStore
from crashd.uploader import sent_fields
from tests.crashd_run import (
    FAST,
    _command,
    _environment,
    crash,
    crashd,
    popen,
    state_dir_of,
    write,
    write_config,
)
from tests.daisy import DaisyServer, Delay, Respond
from tests.test_faults import fill, tiny_filesystem, unfill

NAME = "_usr_bin_app.0.crash"

# Run crashd with one step replaced by a SIGKILL of the process: the state on disk is what a kill -9
# at that very point leaves. argv: the point, then crashd's own arguments.
KILL_AT = """
import os, signal, sys
import crashd.policy
from crashd.spool import Spool

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[1]
if point == "answer":  # the POST went out and was answered; the answer is not recorded
    crashd.policy.classify = die
elif point == "uploaded":  # sent and recorded; before its .uploaded stamp
    Spool.mark_uploaded = die
elif point == "rewrite":  # stamped; the rewrite with the added fields has not begun
    Spool.replace_report = die
elif point == "follow":  # the rewritten report is in place; its record still names the old file
    replace_report = Spool.replace_report
    def replaced(*args, **kwargs):
        replace_report(*args, **kwargs)
        die()
    Spool.replace_report = replaced
elif point == "upload":  # the daemon's own .upload, written last, after the POST and the rewrite
    Spool.mark_upload = die
else:
    raise SystemExit(f"no such point {point}")
from crashd.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


@pytest.fixture
def fast(tmp_path: Path) -> Path:
    return write_config(tmp_path / "crashd.conf", **FAST)


@pytest.fixture
def report(crash_dir: Path) -> Path:
    """Not enriched yet, and no package hook applies (the tests' configs name no hook directory)."""
    return write(crash_dir / NAME, crash("app"))


def killed_at(point: str, command: str, crash_dir: Path, url: str, config: Path) -> None:
    argv = _command(command, crash_dir, *(["--once"] if command == "daemon" else []), url=url, config=config)
    assert argv[1:3] == ["-m", "crashd"]
    run = subprocess.run(
        [argv[0], "-c", KILL_AT, point, *argv[3:]],
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=60,
    )
    assert run.returncode == -signal.SIGKILL, f"not killed at {point} (exit {run.returncode}):\n{run.stderr}"


def finish(command: str, crash_dir: Path, url: str, config: Path):
    if command == "daemon":
        return crashd("daemon", crash_dir, "--once", url=url, config=config)
    return crashd("upload-all", crash_dir, "--json", url=url, config=config)


def fields_of(path: Path) -> dict[str, str]:
    with path.open("rb") as f:
        return dict(sent_fields(read_report(f)))


def record_of(crash_dir: Path) -> dict:
    return json.loads(StateStore.reader(state_dir_of(crash_dir)).record_path(NAME).read_text())


def status_of(crash_dir: Path) -> dict:
    return crashd("status", crash_dir, "--json").reports()[NAME]


def automatic(crash_dir: Path) -> None:
    state = state_dir_of(crash_dir)
    state.mkdir(mode=0o700, exist_ok=True)
    set_preference(state, "AutomaticallyReportCrashes", True, config=None)


def no_temporaries(crash_dir: Path) -> None:
    assert not list(crash_dir.glob(".crashd-*.tmp")), "a temporary was left behind"  # crashd.fs's names


@pytest.mark.parametrize("command", ["upload-all", "daemon"])
def test_the_report_holds_what_was_sent_after_the_post(daisy, crash_dir, report, fast, command):
    if command == "daemon":
        automatic(crash_dir)
    original = fields_of(report)  # read first: reading moves the access time
    before = report.stat()
    assert "Dependencies" not in original and "_HooksRun" not in original
    run = finish(command, crash_dir, daisy.url, fast)
    assert run.code == 0, run.stderr
    (received,) = daisy.reports
    assert received.status == 200
    after = report.stat()
    assert after.st_ino != before.st_ino  # rewritten: a new file in its place
    assert (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)
    assert (after.st_uid, after.st_gid, after.st_mode) == (before.st_uid, before.st_gid, before.st_mode)
    stored = fields_of(report)
    assert stored == received.document  # what the file holds is exactly what was sent, in order
    assert stored["_HooksRun"] == "yes" and set(original.items()) < set(stored.items())
    assert report.with_suffix(".uploaded").read_text() == received.oops_id
    record = record_of(crash_dir)
    assert record["phase"] == "sent" and record["fingerprint"]["inode"] == after.st_ino  # it followed
    no_temporaries(crash_dir)

    again = finish(command, crash_dir, daisy.url, fast)  # nothing left to do, and nothing is redone
    assert again.code == 0, again.stderr
    assert len(daisy.reports) == 1 and report.stat().st_ino == after.st_ino
    assert status_of(crash_dir)["state"] == "sent"


@pytest.mark.parametrize("command", ["upload-all", "daemon"])
def test_a_core_asked_for_is_named_by_the_architecture_crashd_added(daisy, crash_dir, fast, command):
    """The core is read from the file after its report's POST, so the file holds what was sent by then
    (found by the booted-system test: systemd-coredump's reports have no Architecture until crashd adds it)."""
    if command == "daemon":
        automatic(crash_dir)
    fields = crash("app", CoreDump=os.urandom(4096))
    del fields["Architecture"]
    write(crash_dir / NAME, fields)
    run = finish(command, crash_dir, daisy.url, fast)
    assert run.code == 0, run.stderr
    (received,) = daisy.reports
    (core,) = daisy.cores
    assert (core.verdict, core.decoded_size) == ("ok", 4096), run.stderr
    assert core.arch == received.document["Architecture"] == fields_of(crash_dir / NAME)["Architecture"]


def test_a_report_that_fails_is_not_rewritten_until_it_is_sent(daisy, crash_dir, report, fast):
    """Nothing is final after a failed POST: the file stays as it was (the fields are made again in
    memory for the retry), and the retry sends the same fields, then writes them."""
    daisy.stop()
    before = report.read_bytes()
    assert crashd("upload-all", crash_dir, "--json", url=daisy.url, config=fast).code == 1
    assert report.read_bytes() == before
    daisy.start()
    assert crashd("upload-all", crash_dir, "--json", url=daisy.url, config=fast).code == 0
    (received,) = daisy.reports
    assert fields_of(report) == received.document


def test_a_rewrite_that_fails_after_the_post_is_logged_and_the_report_stays_sent(daisy, tmp_path, fast):
    """No room left for the rewritten report (every data block in use; a 409's empty ``.uploaded``
    needs none): the POST's outcome stands, the file is left as it was, and the log names the file
    and the reason."""
    with tiny_filesystem(tmp_path / "crash", size="256k") as crash_dir:
        crash_dir.chmod(0o3777)
        report = write(crash_dir / NAME, crash("app"))
        before = report.read_bytes()
        fillers = fill(crash_dir, inodes=False)
        daisy.script(Respond(409, "already reported"))
        run = crashd("upload-all", crash_dir, "--json", url=daisy.url, config=fast)
        assert run.code == 0, run.stderr
        assert run.json["reports"][0]["state"] == "sent"
        (received,) = daisy.reports
        assert received.document["_HooksRun"] == "yes"  # the fields went out all the same
        assert report.read_bytes() == before
        line = f"{crash_dir}/{NAME}: sent, but the fields crashd added could not be written into it: "
        assert any(
            e.startswith(f"crashd: {line}") and "No space left" in e for e in run.stderr.splitlines()
        ), run.stderr
        assert report.with_suffix(".uploaded").read_text() == ""
        no_temporaries(crash_dir)
        unfill(fillers)
        assert crashd("upload-all", crash_dir, "--json", url=daisy.url, config=fast).code == 0
        assert len(daisy.reports) == 1  # sent: not again, and its copy is not rewritten later either
        assert report.read_bytes() == before


# point: (POSTs the server sees in all, whether the file ends up with the added fields)
KILLS = {
    "answer": (2, True),  # resent after the kill: daisy answers 409, counted as sent, then written back
    "uploaded": (1, False),  # the next run only stamps it; the copy keeps what it had (the server has all)
    "rewrite": (1, False),  # stamped already: sent, nothing more to do
    "follow": (1, True),  # in place with the old times: its .uploaded says sent, though the record does not
}


@pytest.mark.parametrize("point", list(KILLS))
def test_kill_9_around_the_post_and_the_rewrite_loses_nothing_and_resends_at_most_once(
    daisy: DaisyServer, crash_dir, report, fast, point
):
    posts, rewritten = KILLS[point]
    original = fields_of(report)
    killed_at(point, "upload-all", crash_dir, daisy.url, fast)
    run = finish("upload-all", crash_dir, daisy.url, fast)
    assert run.code == 0, run.stderr
    assert [r.status for r in daisy.reports] == [200, 409][:posts]
    first = daisy.reports[0]
    assert first.document["_HooksRun"] == "yes"
    stamp = report.with_suffix(".uploaded").read_text()
    assert stamp == (first.oops_id if posts == 1 else "")  # a 409 carries no id
    assert status_of(crash_dir)["state"] == "sent"
    assert fields_of(report) == (first.document if rewritten else original)
    no_temporaries(crash_dir)
    again = finish("upload-all", crash_dir, daisy.url, fast)
    assert again.code == 0 and len(daisy.reports) == posts


@pytest.mark.parametrize("point", ["follow", "upload"])
def test_kill_9_of_the_daemon_after_the_post_sends_nothing_again(daisy, crash_dir, report, fast, point):
    automatic(crash_dir)
    killed_at(point, "daemon", crash_dir, daisy.url, fast)
    (first,) = daisy.reports
    assert fields_of(report) == first.document  # the rewrite came before the kill
    run = finish("daemon", crash_dir, daisy.url, fast)
    assert run.code == 0, run.stderr
    assert len(daisy.reports) == 1
    assert report.with_suffix(".uploaded").read_text() == first.oops_id
    assert status_of(crash_dir)["state"] == "sent"


def test_a_newer_crash_put_in_place_during_the_post_is_neither_overwritten_nor_stamped(
    daisy, crash_dir, report, fast
):
    """apport replaces the report while its POST is out: the rewrite is dropped (the name is another
    file), the newer crash keeps its own bytes, is not taken for sent, and goes out next."""
    daisy.script(Delay(3))  # long enough to replace the report once its POST is recorded
    process = popen("upload-all", crash_dir, "--json", url=daisy.url, config=fast)
    try:
        assert daisy.wait_for(lambda: daisy.pending_actions() == 0, timeout=20), "no POST under way"
        newer = write(crash_dir / ".newer.tmp", crash("app", Date="Sun Nov 22 10:00:00 2026 newer"))
        os.rename(newer, report)
        stored = report.read_bytes()
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert report.read_bytes() == stored  # not overwritten with the older crash's fields
    assert not report.with_suffix(".uploaded").exists()  # not taken for sent
    no_temporaries(crash_dir)
    run = finish("upload-all", crash_dir, daisy.url, fast)
    assert run.code == 0, run.stderr
    assert [r.status for r in daisy.reports] == [200, 200]
    assert daisy.reports[1].document["Date"].endswith("newer")
    assert fields_of(report) == daisy.reports[1].document
