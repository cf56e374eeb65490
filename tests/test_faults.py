"""The fault list, end to end: real `crashd upload-all` processes against the loopback daisy.

Every failure the network, the server, the operator or the disk can produce: what
the run reports, what is kept on disk, what the server sees, and that a later run
finishes the job without losing or needlessly resending anything. Backoff is
configured down to tens of milliseconds so retries happen within a test.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crashd.state import StateStore
from tests.crashd_run import FAST, TOKEN, crash, crashd, popen, state_dir_of, write, write_config
from tests.daisy import DaisyServer, Delay, Hang, Reset, Respond

NAME = "_usr_bin_app.0.crash"


# An answer slower than the 0.5 s read timeout by far more than a loaded machine could add to a run: a run
# that took less did not wait for it.
SLOW_ANSWER = 60


@pytest.fixture
def fast(tmp_path: Path) -> Path:
    """A config with tiny backoff windows (50–200 ms) on both scales."""
    return write_config(tmp_path / "crashd.conf", **FAST)


@pytest.fixture
def report(crash_dir: Path) -> Path:
    # Enriched already (as apport's UI leaves it): these tests follow the file through faults, and
    # crashd's own write-back of its fields would be one more change to tell apart.
    return write(crash_dir / NAME, crash("app", _HooksRun="yes"))


def upload_all(crash_dir: Path, url: str, *args: str, config: Path | None = None, **kw):
    return crashd("upload-all", crash_dir, "--json", *args, url=url, config=config, **kw)


def status_json(crash_dir: Path) -> dict[str, dict]:
    return crashd("status", crash_dir, "--json").reports()


def record_of(crash_dir: Path, name: str = NAME) -> dict:
    return json.loads(StateStore.reader(state_dir_of(crash_dir)).record_path(name).read_text())


def statuses(daisy: DaisyServer) -> list[int | None]:
    return [r.status for r in daisy.reports]


def assert_pending(report: Path) -> None:
    assert report.with_suffix(".upload").exists(), "the report lost its .upload mark"
    assert not report.with_suffix(".uploaded").exists(), "an unsent report was stamped .uploaded"


def assert_stamped(report: Path, daisy: DaisyServer) -> str:
    oops_id = report.with_suffix(".uploaded").read_text()
    assert oops_id in {r.oops_id for r in daisy.reports if r.oops_id}, oops_id
    return oops_id


# -- 1. connection refused ------------------------------------------------------------------


def test_connection_refused_fails_keeps_the_report_and_a_later_run_sends_it(daisy, crash_dir, report, fast):
    daisy.stop()  # nobody listens on the port
    started = time.time()
    run = upload_all(crash_dir, daisy.url, config=fast)
    assert run.code == 1
    (entry,) = run.json["reports"]
    assert entry["state"] == "failed" and "refused" in entry["detail"].lower()
    assert_pending(report)

    (status,) = status_json(crash_dir).values()
    assert status["attempts"] == 1
    assert status["next_attempt"] is not None and status["next_attempt"] > started
    assert "refused" in status["detail"].lower()

    daisy.start()  # the same port
    run = upload_all(crash_dir, daisy.url, config=fast)
    assert run.code == 0 and run.json["sent"] == 1
    assert run.json["reports"][0]["oops_id"] == assert_stamped(report, daisy)
    assert statuses(daisy) == [200]


# -- 2.–5. transient failures are retried within a run with --timeout -----------------------


def test_server_errors_are_retried_within_the_run_until_sent(daisy, crash_dir, report, fast):
    daisy.script(Respond(500, "boom"), Respond(500, "boom"))
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)
    assert run.code == 0, run.stderr
    assert run.json["reports"][0]["state"] == "sent"
    assert statuses(daisy) == [500, 500, 200]
    assert_stamped(report, daisy)
    assert status_json(crash_dir)[NAME]["attempts"] == 3
    assert run.seconds < 20  # before its own --timeout: backoff windows of 50–200 ms, not the 20 s allowed


def http_date_ahead(seconds: int) -> tuple[str, float]:
    """An HTTP date at least *seconds* (at most seconds + 1) from now, and its epoch time."""
    when = math.ceil(time.time()) + seconds
    return email.utils.formatdate(when, usegmt=True), float(when)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_retry_after_is_honoured_then_sent(daisy, crash_dir, report, fast, form):
    if form == "seconds":
        retry_after, not_before = "1", None
    else:
        retry_after, not_before = http_date_ahead(2)
    daisy.script(Respond(429, "slow down", {"Retry-After": retry_after}))
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)

    assert run.code == 0, run.stderr  # and so sent before the run's own timeout
    assert statuses(daisy) == [429, 200]
    first, second = (exchange.received for exchange in daisy.exchanges)
    if not_before is None:
        assert second - first >= 1.0, f"retried {second - first:.3f} s after a Retry-After of 1 s"
    else:
        assert second >= not_before, f"retried {not_before - second:.3f} s before the Retry-After date"
    assert_stamped(report, daisy)


def test_reset_mid_response_is_retried_then_sent(daisy, crash_dir, report, fast):
    daisy.script(Reset())
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)
    assert run.code == 0, run.stderr
    assert statuses(daisy) == [None, 200]  # the reset one got no answer
    assert_stamped(report, daisy)
    assert status_json(crash_dir)[NAME]["attempts"] == 2


def test_answer_slower_than_read_timeout_is_retried_not_waited_for(daisy, crash_dir, report, tmp_path):
    config = write_config(tmp_path / "slow.conf", **FAST, read_timeout=0.5)
    daisy.script(Delay(SLOW_ANSWER))
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=config)
    assert run.code == 0, run.stderr
    assert run.seconds < SLOW_ANSWER, f"the run took {run.seconds:.2f} s: it waited for the slow answer"
    assert run.json["reports"][0]["oops_id"] == assert_stamped(report, daisy)
    assert status_json(crash_dir)[NAME]["attempts"] == 2


def test_answer_slower_than_read_timeout_fails_a_run_without_timeout(daisy, crash_dir, report, tmp_path):
    config = write_config(tmp_path / "slow.conf", **FAST, read_timeout=0.5)
    daisy.script(Delay(SLOW_ANSWER))
    run = upload_all(crash_dir, daisy.url, config=config)
    assert run.code == 1 and run.seconds < SLOW_ANSWER
    entry = run.json["reports"][0]
    assert entry["state"] == "failed" and "timed out" in entry["detail"].lower()
    assert_pending(report)


# -- 6.–8. answers that are not retried, or only slowly ----------------------------------------


def test_400_is_rejected_with_the_servers_text_and_never_retried(daisy, crash_dir, report, fast):
    daisy.script(Respond(400, "Invalid crash report: no Package."))
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)
    assert run.code == 1
    (entry,) = run.json["reports"]
    assert (entry["state"], entry["detail"]) == ("rejected", "400: Invalid crash report: no Package.")
    assert run.seconds < 20  # final at once: the run does not wait out its timeout
    assert statuses(daisy) == [400]
    assert not report.with_suffix(".uploaded").exists()

    again = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)
    assert again.code == 1 and again.json["reports"][0]["state"] == "rejected"
    assert statuses(daisy) == [400]  # the second run sent nothing
    assert status_json(crash_dir)[NAME]["state"] == "rejected"


def test_409_already_reported_counts_as_sent(daisy, crash_dir, report, fast):
    daisy.script(Respond(409, "Crash already reported."))
    run = upload_all(crash_dir, daisy.url, config=fast)
    assert run.code == 0
    (entry,) = run.json["reports"]
    assert entry["state"] == "sent" and "already has this report" in entry["detail"]
    assert report.with_suffix(".uploaded").exists()  # no id came with the 409: an empty stamp
    again = upload_all(crash_dir, daisy.url, config=fast)
    assert again.code == 0 and statuses(daisy) == [409]


def test_404_says_the_url_looks_wrong_loudly_and_keeps_the_report(daisy, crash_dir, report, fast):
    daisy.script(Respond(404, "Not Found"))
    started = time.time()
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)  # no -v: warnings and up only
    assert run.code == 1
    (entry,) = run.json["reports"]
    assert entry["state"] == "failed" and "URL looks wrong" in entry["detail"] and "404" in entry["detail"]
    assert any("URL looks wrong" in line for line in run.stderr.splitlines()), run.stderr
    assert statuses(daisy) == [404]  # retried slowly: not again within this run
    assert run.seconds < 20  # nor did the run wait out its timeout for it
    assert_pending(report)
    assert status_json(crash_dir)[NAME]["next_attempt"] >= started + 3600 - 5


def test_404_error_names_the_url_that_looks_wrong(daisy, crash_dir, report, fast):
    daisy.script(Respond(404, "Not Found"))
    run = upload_all(crash_dir, daisy.url, config=fast)
    assert daisy.url in run.json["reports"][0]["detail"] or daisy.url in run.stderr


# -- 9. the core upload fails, and is retried alone ---------------------------------------------


@pytest.fixture
def core_daisy() -> Iterator[DaisyServer]:
    with DaisyServer(core_policy="always") as server:
        yield server
        assert server.errors == []


def test_failed_core_upload_is_retried_without_resending_the_report(core_daisy, crash_dir, fast):
    daisy = core_daisy
    report = write(crash_dir / NAME, crash("app", CoreDump=b"\x7fELF\x02\x01" + os.urandom(4096)))
    daisy.script(Respond(500, "core store down"), endpoint="core")

    run = upload_all(crash_dir, daisy.url, config=fast)
    (entry,) = run.json["reports"]
    assert entry["state"] == "sent" and "core pending" in entry["detail"] and "500" in entry["detail"]
    oops_id = assert_stamped(report, daisy)
    core = record_of(crash_dir)["core"]
    assert (core["phase"], core["attempts"]) == ("pending", 1) and core["next_attempt"] is not None
    status = status_json(crash_dir)[NAME]
    assert status["state"] == "sent" and "core pending" in status["detail"] and status["next_attempt"]

    run = upload_all(crash_dir, daisy.url, config=fast)
    assert run.code == 0
    assert [r.status for r in daisy.reports] == [200]  # the report was POSTed once
    assert [(c.status, c.oops_id) for c in daisy.cores] == [(500, oops_id), (200, oops_id)]
    assert daisy.cores[-1].verdict == "ok"
    assert record_of(crash_dir)["core"]["phase"] == "sent"
    assert report.with_suffix(".uploaded").read_text() == oops_id
    assert "core sent" in status_json(crash_dir)[NAME]["detail"]


def test_a_timeout_run_retries_the_core_in_the_same_run(core_daisy, crash_dir, fast):
    daisy = core_daisy
    write(crash_dir / NAME, crash("app", CoreDump=b"\x7fELF\x02\x01" + os.urandom(4096)))
    daisy.script(Respond(500, "core store down"), endpoint="core")
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)
    assert run.code == 0
    assert [r.status for r in daisy.reports] == [200]
    assert [c.status for c in daisy.cores] == [500, 200]
    assert "core sent" in run.json["reports"][0]["detail"]


def test_retrying_a_core_does_not_mark_the_report_for_upload_again(core_daisy, crash_dir, fast):
    report = write(crash_dir / NAME, crash("app", CoreDump=b"\x7fELF\x02\x01" + os.urandom(4096)))
    core_daisy.script(Respond(500), endpoint="core")
    upload_all(crash_dir, core_daisy.url, config=fast)
    marked = report.with_suffix(".upload").stat().st_mtime_ns
    upload_all(crash_dir, core_daisy.url, config=fast)
    assert [c.status for c in core_daisy.cores] == [500, 200]
    assert report.with_suffix(".upload").stat().st_mtime_ns == marked


# -- 10. kill -9 at random moments -----------------------------------------------------------


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_at_most_once_per_kill(daisy, crash_dir, fast):
    total, max_kills = 200, 15
    reports = [write(crash_dir / f"_usr_bin_app{i:03d}.0.crash", crash(f"app{i:03d}")) for i in range(total)]
    rng = random.Random(20261121)
    kills = 0
    for _ in range(max_kills):
        unstamped = sum(not r.with_suffix(".uploaded").exists() for r in reports)
        target = len(daisy.reports) + rng.randint(0, unstamped)  # 0: kill it while it starts up
        proc = popen("upload-all", crash_dir, url=daisy.url, config=fast)
        end = time.monotonic() + 60
        # Woken by every server event; the short timeout only notices a run that ended by itself.
        while not daisy.wait_for(lambda k=target: len(daisy.reports) >= k, timeout=0.1):
            if proc.poll() is not None or time.monotonic() > end:
                break
        time.sleep(rng.uniform(0, 0.005))  # jitter: land anywhere between one answer and the next
        proc.kill()
        _, stderr = proc.communicate()
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, stderr  # it finished before the kill
            break
        kills += 1
    run = upload_all(crash_dir, daisy.url, config=fast)

    assert run.code == 0, run.stderr
    assert run.json["sent"] == total
    assert kills >= 3, f"only {kills} runs were killed: the test lost its point"
    received = daisy.reports
    accepted = {r.document["ExecutablePath"]: r.oops_id for r in received if r.status == 200}
    assert len(accepted) == total == sum(r.status == 200 for r in received)  # each accepted once, none lost
    assert all(r.status == 409 for r in received if r.status != 200)
    assert len(received) - total <= kills, f"{len(received) - total} duplicates for {kills} kills"
    empty = 0
    for i, path in enumerate(reports):
        stamp = path.with_suffix(".uploaded").read_text()
        if stamp:
            assert stamp == accepted[f"/usr/bin/app{i:03d}"], path.name
        else:
            empty += 1  # accepted by a killed run, resent and answered 409, which carries no id
    assert empty <= len(received) - total
    assert {s["state"] for s in status_json(crash_dir).values()} == {"sent"}


# -- 11. stopping while an upload hangs ------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_an_upload_hangs_exits_without_waiting_for_it(daisy, crash_dir, report, fast, signum):
    daisy.script(Hang())
    proc = popen("upload-all", crash_dir, url=daisy.url, config=fast)  # read timeout 60 s: it would hang
    try:
        assert daisy.wait_for(lambda: len(daisy.reports) == 1, timeout=20), "the POST never arrived"
        sent = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)  # at once, not at the 60 s read timeout: catches only that
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
        proc.communicate()
    print(f"exited {elapsed * 1000:.0f} ms after {signum.name}")
    assert proc.returncode == 128 + signum
    assert f"stopped by {signum.name}" in stderr
    assert_pending(report)

    run = upload_all(crash_dir, daisy.url, config=fast)
    assert run.code == 0 and statuses(daisy) == [None, 200]
    assert_stamped(report, daisy)


# -- 12. a full disk -----------------------------------------------------------------------------


@contextlib.contextmanager
def tiny_filesystem(directory: Path, *, size: str = "64k", inodes: int | None = None) -> Iterator[Path]:
    """A tmpfs of *size* mounted on *directory* (root only); skips the test where mounting is denied."""
    directory.mkdir(exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill(directory: Path, *, inodes: bool = True) -> list[Path]:
    """Use up every data block (and every inode) of *directory*'s file system; returns what to delete."""
    fillers = [directory / ".filler"]
    with fillers[0].open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while f.write(b"\0" * 4096):
            pass
    for i in range(100_000 if inodes else 0):
        path = directory / f".filler{i}"
        try:
            path.touch()
        except OSError as error:
            assert error.errno == errno.ENOSPC
            break
        fillers.append(path)
    with pytest.raises(OSError):
        (directory / ".probe").write_bytes(b"x")
    return fillers


def unfill(fillers: list[Path]) -> None:
    for path in fillers:
        path.unlink()


def test_full_state_dir_sends_nothing_loses_nothing_and_a_rerun_sends(daisy, crash_dir, report, fast):
    state = state_dir_of(crash_dir)
    with tiny_filesystem(state):
        (state / "reports").mkdir(mode=0o700)
        fillers = fill(state, inodes=False)
        before = report.read_bytes(), report.stat().st_mtime_ns

        run = upload_all(crash_dir, daisy.url, config=fast)

        assert run.code == 1
        assert "No space left on device" in run.stdout + run.stderr
        assert daisy.reports == []  # nothing goes out before its "posting" record is written
        assert (report.read_bytes(), report.stat().st_mtime_ns) == before
        assert_pending(report)
        assert list((state / "reports").iterdir()) == []  # no partial record, no temporary

        unfill(fillers)
        run = upload_all(crash_dir, daisy.url, config=fast)
        assert run.code == 0, run.stderr
        assert_stamped(report, daisy)
        assert record_of(crash_dir)["phase"] == "sent"


def test_full_state_dir_is_a_failed_report_with_the_reason_not_a_traceback(daisy, crash_dir, report, fast):
    state = state_dir_of(crash_dir)
    with tiny_filesystem(state):
        (state / "reports").mkdir(mode=0o700)
        fill(state, inodes=False)
        run = upload_all(crash_dir, daisy.url, config=fast)
        assert "Traceback" not in run.stderr
        assert run.code == 1
        (entry,) = run.json["reports"]
        assert entry["state"] == "failed" and "No space left on device" in entry["detail"]


def file_size_limit(limit: int):
    """A preexec_fn: writes past *limit* bytes fail with EFBIG (SIGXFSZ ignored, so no signal kills it)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_state_writes_failing_with_efbig_send_nothing_and_lose_nothing(daisy, crash_dir, report, fast):
    """The same as a full state dir, where mounting is not possible: records (~300 bytes) cannot be written."""
    run = upload_all(crash_dir, daisy.url, config=fast, preexec_fn=file_size_limit(64))
    assert run.code == 1
    assert "File too large" in run.stdout + run.stderr
    assert daisy.reports == []
    assert_pending(report)
    assert list((state_dir_of(crash_dir) / "reports").iterdir()) == []  # the temporary was removed

    run = upload_all(crash_dir, daisy.url, config=fast)
    assert run.code == 0, run.stderr
    assert_stamped(report, daisy)


def test_full_crash_dir_cannot_mark_the_report_still_sends_it_and_says_so(daisy, tmp_path, fast):
    """A stamp that cannot be written never fails delivery (issue 11 vuln 6: another user's directory
    under the stamp's name would otherwise block the report forever); the record knows it went."""
    with tiny_filesystem(tmp_path / "crash", inodes=64) as crash_dir:
        crash_dir.chmod(0o3777)
        report = write(crash_dir / NAME, crash("app"))
        fillers = fill(crash_dir)

        run = upload_all(crash_dir, daisy.url, config=fast)

        assert run.code == 0, run.stderr
        (entry,) = run.json["reports"]
        assert entry["state"] == "sent"
        warning = [line for line in run.stderr.splitlines() if "cannot stamp it for upload" in line]
        assert warning and "No space left on device" in warning[0], run.stderr
        assert statuses(daisy) == [200]
        assert record_of(crash_dir)["phase"] == "sent"

        unfill(fillers)
        run = upload_all(crash_dir, daisy.url, config=fast)
        assert run.code == 0, run.stderr
        assert statuses(daisy) == [200]  # not sent again; stamped now
        assert report.with_suffix(".uploaded").read_text() == daisy.reports[0].oops_id


def test_full_crash_dir_cannot_stamp_uploaded_says_so_and_a_rerun_stamps_without_resending(
    daisy, tmp_path, fast
):
    with tiny_filesystem(tmp_path / "crash", inodes=64) as crash_dir:
        crash_dir.chmod(0o3777)
        report = write(crash_dir / NAME, crash("app"))
        report.with_suffix(".upload").touch()  # marked by a UI before the disk filled
        fillers = fill(crash_dir)

        run = upload_all(crash_dir, daisy.url, config=fast)

        assert statuses(daisy) == [200]
        errors = [line for line in run.stderr.splitlines() if ".uploaded stamp failed" in line]
        assert errors and "No space left on device" in errors[0], run.stderr
        assert not report.with_suffix(".uploaded").exists()
        assert record_of(crash_dir)["phase"] == "sent"  # the state knows it went

        unfill(fillers)
        run = upload_all(crash_dir, daisy.url, config=fast)
        assert run.code == 0, run.stderr
        assert statuses(daisy) == [200]  # stamped now, not sent again
        assert report.with_suffix(".uploaded").read_text() == daisy.reports[0].oops_id


def test_core_retry_on_a_full_crash_dir_neither_resends_the_report_nor_loses_its_id(
    core_daisy, tmp_path, fast
):
    with tiny_filesystem(tmp_path / "crash") as crash_dir:
        crash_dir.chmod(0o3777)
        report = write(crash_dir / NAME, crash("app", CoreDump=b"\x7fELF\x02\x01" + os.urandom(4096)))
        core_daisy.script(Respond(500), endpoint="core")
        upload_all(crash_dir, core_daisy.url, config=fast)  # sent; the core is pending
        oops_id = report.with_suffix(".uploaded").read_text()
        fillers = fill(crash_dir, inodes=False)  # empty files can still be made; stamps with an id cannot
        upload_all(crash_dir, core_daisy.url, config=fast)  # retries the core
        unfill(fillers)
        upload_all(crash_dir, core_daisy.url, config=fast)
        assert [r.status for r in core_daisy.reports] == [200]
        assert report.with_suffix(".uploaded").read_text() == oops_id


# -- 13. expiry --------------------------------------------------------------------------------


def test_report_failing_past_expire_after_expires_for_good(daisy, crash_dir, report, tmp_path):
    config = write_config(tmp_path / "expire.conf", **FAST, expire_after=1)
    daisy.script(*[Respond(503, "down for maintenance")] * 200)
    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=config)
    assert run.code == 1
    (entry,) = run.json["reports"]
    assert entry["state"] == "expired" and "503: down for maintenance" in entry["detail"]
    assert run.seconds < 20  # final once expired: the run does not wait out its timeout
    posts = len(daisy.reports)
    assert posts >= 2 and set(statuses(daisy)) == {503}
    assert status_json(crash_dir)[NAME]["state"] == "expired"

    daisy.script()  # the server recovers; the expired report still stays put
    again = upload_all(crash_dir, daisy.url, "--timeout", "20", config=config)
    assert again.code == 1 and again.json["reports"][0]["state"] == "expired"
    assert len(daisy.reports) == posts
    assert_pending(report)


# -- 14. crashd status explains every report ----------------------------------------------------


def test_status_explains_every_report_in_text_and_json(daisy, crash_dir, fast):
    write(crash_dir / "_usr_bin_good.0.crash", crash("good"))
    write(crash_dir / "_usr_bin_nopkg.0.crash", {k: v for k, v in crash("nopkg").items() if k != "Package"})
    (crash_dir / "_usr_bin_broken.0.crash").write_bytes(b"ProblemType: Crash\n\nDate: x\n")
    write(crash_dir / "bash.0.crash", {"ProblemType": "Bug", "Package": "bash 5"})
    (crash_dir / "_etc_shadow.0.crash").symlink_to("/etc/shadow")
    assert upload_all(crash_dir, daisy.url, config=fast).code == 1  # the rejected and the invalid

    write(crash_dir / "_usr_bin_flaky.0.crash", crash("flaky"))
    daisy.stop()  # only the new one is attempted: the others are final or sent before
    assert upload_all(crash_dir, daisy.url, config=fast).json["failed"] == 1
    write(crash_dir / "_usr_bin_fresh.0.crash", crash("fresh"))
    write(crash_dir / "_usr_bin_asked.0.crash", crash("asked"))
    (crash_dir / "_usr_bin_asked.0.upload").touch()

    listed = crashd("status", crash_dir, "--json")
    assert listed.code == 0, listed.stderr
    s = listed.reports()
    fresh = s["_usr_bin_fresh.0.crash"]  # nobody marked it, and automatic reporting is off by default
    assert fresh["state"] == "held" and "automatic reporting is off" in fresh["detail"]
    assert (s["_usr_bin_asked.0.crash"]["state"], s["_usr_bin_asked.0.crash"]["detail"]) == (
        "queued", "marked for upload",
    )  # fmt: skip
    good = s["_usr_bin_good.0.crash"]
    assert good["state"] == "sent" and good["oops_id"] == (crash_dir / "_usr_bin_good.0.uploaded").read_text()
    flaky = s["_usr_bin_flaky.0.crash"]
    assert flaky["state"] in ("queued", "failed")  # waiting for its next attempt after a failure
    assert flaky["attempts"] == 1 and flaky["next_attempt"] and "refused" in flaky["detail"].lower()
    rejected = s["_usr_bin_nopkg.0.crash"]
    assert (rejected["state"], rejected["detail"]) == ("rejected", "400: Incomplete crash report.")
    broken = s["_usr_bin_broken.0.crash"]
    assert broken["state"] == "invalid" and "line 2: an empty line" in broken["detail"]
    shadow = s["_etc_shadow.0.crash"]
    assert shadow["state"] == "invalid" and "is a symbolic link" in shadow["detail"]
    bug = s["bash.0.crash"]
    assert bug["state"] == "skipped" and "ProblemType Bug is not sent" in bug["detail"]
    assert len(s) == 8

    text = crashd("status", crash_dir)
    assert text.code == 0
    lines = {line.split()[1]: line for line in text.stdout.splitlines()}
    assert set(lines) == set(s)
    for name, entry in s.items():
        assert lines[name].split()[0] == entry["state"]
        if entry["detail"]:
            assert f"({entry['detail']})" in lines[name], lines[name]
    assert f"OOPS {good['oops_id']}" in lines["_usr_bin_good.0.crash"]
    assert "1 attempt" in lines["_usr_bin_flaky.0.crash"]
    assert (
        time.strftime("next %Y-%m-%d ", time.localtime(flaky["next_attempt"]))
        in lines["_usr_bin_flaky.0.crash"]
    )
    assert TOKEN not in text.stdout


# -- one report's trouble is that report's state, never the run's (issue 11) ------------------


@pytest.mark.parametrize("retry_after", ["²", "³", "Mon, 99 Feb 2024 00:00:00 GMT"])
def test_a_retry_after_float_cannot_read_costs_a_retry_not_the_run(daisy, crash_dir, fast, retry_after):
    """`str.isdigit()` takes "²"; `float()` then raised and aborted root's upload-all with a traceback."""
    write(crash_dir / NAME, crash("app"))
    write(crash_dir / "_usr_bin_other.0.crash", crash("other"))
    daisy.script(Respond(503, "busy", {"Retry-After": retry_after}))

    run = upload_all(crash_dir, daisy.url, "--timeout", "20", config=fast)

    assert run.code == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(statuses(daisy)) == [200, 200, 503]  # the refused one retried, in this very run
    assert {entry["state"] for entry in run.reports().values()} == {"sent"}


def test_a_report_name_with_no_room_for_its_stamps_is_sent_without_them(daisy, crash_dir, fast):
    """255 characters is as long as a name gets: `.upload` cannot exist beside it (ENAMETOOLONG). Its
    delivery record has a bounded name (issue 11 robustness 2), so it is sent, once, without stamps."""
    long_name = "_usr_bin_" + "x" * (255 - len("_usr_bin_") - len(".0.crash")) + ".0.crash"
    write(crash_dir / long_name, crash("long"))
    write(crash_dir / NAME, crash("app"))

    run = upload_all(crash_dir, daisy.url, config=fast)

    assert "Traceback" not in run.stderr, run.stderr
    reports = run.reports()
    assert reports[NAME]["state"] == "sent", reports
    assert reports[long_name]["state"] == "sent", reports
    again = upload_all(crash_dir, daisy.url, config=fast)
    assert again.code == 0 and len(daisy.reports) == 2, again.stderr  # its record says sent: not resent


REWRITE_HOOK = """
def add_info(report, ui=None):
    # The report's owner rewrites it in place while root holds it open: shorter, as if truncated.
    with open({path!r}, "r+b") as f:
        f.truncate(12)
    report["Seen"] = "yes"
"""


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory a hook's user can reach whatever other runs do to pytest's shared 0700 base."""
    path = Path(tempfile.mkdtemp(prefix="crashd-faults-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_report_rewritten_in_place_while_its_hooks_run_fails_alone(daisy, world_dir, make_user):
    """The owner (or their hook) cutting the file short under root: IndexError in Report.text aborted
    root's upload-all before; now it is that report's failed state, and the others go out."""
    user = make_user()
    crash_dir = world_dir / "crash"
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    hooks = world_dir / "hooks"
    hooks.mkdir(mode=0o755)
    victim = crash_dir / f"_usr_bin_app.{user.pw_uid}.crash"
    (hooks / "app.py").write_text(REWRITE_HOOK.format(path=str(victim)))
    write(victim, crash("app", Package="app 1.0", Padding="p" * 100_000), (user.pw_uid, user.pw_gid))
    write(crash_dir / "_usr_bin_other.0.crash", crash("other"))
    config = write_config(world_dir / "crashd.conf", **FAST, hook_dirs=str(hooks))

    run = upload_all(crash_dir, daisy.url, config=config)

    assert "Traceback" not in run.stderr, run.stderr
    reports = run.reports()
    assert reports["_usr_bin_other.0.crash"]["state"] == "sent", reports
    # Failed (the IndexError named), or read again as the stub it now is: either way, that report alone.
    victim_state = reports[victim.name]
    assert victim_state["state"] in ("failed", "skipped"), (reports, run.stderr)
    if victim_state["state"] == "failed":
        assert f"{victim.name}: crashd could not process it: IndexError" in run.stderr
    else:
        assert "without a ProblemType" in victim_state["detail"], victim_state
    assert [r.document["ExecutablePath"] for r in daisy.reports] == ["/usr/bin/other"]
