"""Duplicate collapse and the disk budget end to end: real files, `crashd upload-all` and the real daemon,
the loopback daisy recording what arrives (issue 16 item 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crashd.config import load_settings
from crashd.spool import Spool
from crashd.state import StateStore
from crashd.tidy import Tidy, disk_use, read_ledger
from tests.daemon_run import TOKEN, crash, drop, run_daemon, wait_until
from tests.daisy import DaisyServer
from tests.test_cli import REPO

MiB = 1 << 20
LOOP = 1000


@pytest.fixture
def daisy():
    with DaisyServer(core_policy="never") as server:
        yield server


def looping(name: str, i: int) -> dict:
    """One crash of a crash loop: the same signature every time, a different Date and pid."""
    return crash(name, StacktraceTop="loop_body ()\nmain ()", Date=f"Fri Dec  4 16:{i // 60:02d}:{i % 60:02d} 2026",
                 ProcStatus=f"Name:\t{name}\nPid:\t{1000 + i}")  # fmt: skip


def write_loop(crash_dir: Path, count: int, *, start: int = 0, base: float = 1_700_000_000) -> list[Path]:
    """*count* crashes of one program, as separate report files written one second apart from *base*."""
    paths = []
    for i in range(start, start + count):
        path = drop(crash_dir / f"_usr_bin_loop-{i:04d}.0.crash", looping("loop", i))
        os.utime(path, (base + i, base + i))
        paths.append(path)
    return paths


def crashd(crash_dir: Path, state_dir: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CRASH_DB_URL", "APPORT_REPORT_DIR")}
    env |= {"PYTHONPATH": str(REPO), "CRASH_DB_IDENTIFIER": TOKEN}
    head = [sys.executable, "-m", "crashd", "-v"] + (["--config", str(config)] if config else [])
    command, *rest = args
    where = ["--crash-dir", str(crash_dir), "--state-dir", str(state_dir)]
    return subprocess.run([*head, command, *where, *rest], capture_output=True, text=True, env=env, timeout=300)


def reports(crash_dir: Path) -> list[str]:
    return sorted(path.name for path in crash_dir.glob("*.crash"))


def test_a_crash_loop_of_1000_leaves_one_report_sent_once_with_its_count(daisy, crash_dir, state_dir):
    write_loop(crash_dir, LOOP)
    result = crashd(crash_dir, state_dir, "upload-all", "--json", "--url", daisy.url)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["sent"], len(summary["reports"])) == (1, 1), summary
    assert reports(crash_dir) == ["_usr_bin_loop-0000.0.crash"]  # the first crash is the one kept
    assert sorted(p.name for p in crash_dir.iterdir()) == [
        "_usr_bin_loop-0000.0.crash", "_usr_bin_loop-0000.0.upload", "_usr_bin_loop-0000.0.uploaded",
    ]  # fmt: skip
    assert len(daisy.reports) == 1
    document = daisy.reports[0].document
    assert (document["CrashCounter"], document["DuplicatesCollapsed"]) == (str(LOOP), str(LOOP - 1))
    assert document["Date"] == looping("loop", 0)["Date"]
    status = crashd(crash_dir, state_dir, "status")
    assert f"_usr_bin_loop-0000.0.crash: {LOOP - 1} duplicate(s) collapsed" in status.stdout, status.stdout
    assert result.stderr.count("removed: duplicate of _usr_bin_loop-0000.0.crash") == LOOP - 1  # one line each


def test_after_the_kept_report_was_sent_duplicates_are_counted_and_removed_not_sent(daisy, crash_dir, state_dir):
    write_loop(crash_dir, 3)
    assert crashd(crash_dir, state_dir, "upload-all", "--url", daisy.url).returncode == 0
    assert len(daisy.reports) == 1
    write_loop(crash_dir, 4, start=10)  # the loop goes on after the report went out
    result = crashd(crash_dir, state_dir, "upload-all", "--json", "--url", daisy.url)
    assert result.returncode == 0, result.stderr
    assert len(daisy.reports) == 1, "a duplicate of a sent crash was sent again"
    assert reports(crash_dir) == ["_usr_bin_loop-0000.0.crash"]
    status = json.loads(crashd(crash_dir, state_dir, "status", "--json").stdout)
    (group,) = status["duplicates"]
    assert (group["kept"], group["sent"], group["collapsed"], group["after_sent"]) == (
        "_usr_bin_loop-0000.0.crash", True, 2, 4,
    )  # fmt: skip
    assert {entry["name"] for entry in status["removed"]} >= {f"_usr_bin_loop-{i:04d}.0.crash" for i in range(10, 14)}


def test_a_new_crash_replacing_the_sent_report_under_its_name_is_counted_not_sent(daisy, crash_dir, state_dir):
    (kept,) = write_loop(crash_dir, 1, base=time.time() - 60)
    assert crashd(crash_dir, state_dir, "upload-all", "--url", daisy.url).returncode == 0
    uploaded = (crash_dir / "_usr_bin_loop-0000.0.uploaded").stat().st_mtime_ns
    drop(kept, looping("loop", 1))  # as place_report does once a report was sent: a newer file
    assert kept.stat().st_mtime_ns > uploaded
    assert crashd(crash_dir, state_dir, "upload-all", "--url", daisy.url).returncode == 0
    assert len(daisy.reports) == 1
    assert list(crash_dir.iterdir()) == []  # the duplicate and the stamps of the sent file are gone
    (group,) = read_ledger(state_dir).groups.values()
    assert group.after_sent == 1


def test_other_programs_versions_and_stacks_are_not_collapsed(daisy, crash_dir, state_dir):
    drop(crash_dir / "_usr_bin_a.0.crash", looping("a", 0))
    drop(crash_dir / "_usr_bin_a-new.0.crash", {**looping("a", 1), "Package": "a 2.0"})
    drop(crash_dir / "_usr_bin_a-other.0.crash", {**looping("a", 2), "StacktraceTop": "other ()\nmain ()"})
    drop(crash_dir / "_usr_bin_b.0.crash", looping("b", 3))
    drop(crash_dir / "_usr_bin_nosig.0.crash", crash("nosig"))
    drop(crash_dir / "_usr_bin_nosig-2.0.crash", crash("nosig"))
    result = crashd(crash_dir, state_dir, "upload-all", "--json", "--url", daisy.url)
    assert json.loads(result.stdout)["sent"] == 6, result.stderr
    assert len(reports(crash_dir)) == 6
    assert all("DuplicatesCollapsed" not in r.document for r in daisy.reports)


def test_another_users_crash_of_the_same_program_is_never_collapsed(daisy, crash_dir, state_dir, make_user):
    user = make_user()
    drop(crash_dir / "_usr_bin_loop.0.crash", looping("loop", 0))
    drop(crash_dir / f"_usr_bin_loop.{user.pw_uid}.crash", looping("loop", 1), owner=(user.pw_uid, user.pw_gid))
    result = crashd(crash_dir, state_dir, "upload-all", "--json", "--url", daisy.url)
    assert json.loads(result.stdout)["sent"] == 2, result.stderr
    assert reports(crash_dir) == sorted(["_usr_bin_loop.0.crash", f"_usr_bin_loop.{user.pw_uid}.crash"])


def unique_reports(crash_dir: Path, count: int, size: int) -> list[str]:
    """*count* different crashes of about *size* bytes each, oldest first."""
    names = []
    for i in range(count):
        path = drop(crash_dir / f"_usr_bin_big{i:03d}.0.crash", crash(f"big{i:03d}", Filler=os.urandom(size // 2).hex()))
        os.utime(path, (1_700_000_000 + i, 1_700_000_000 + i))
        names.append(path.name)
    return names


def newest_within(crash_dir: Path, names: list[str], budget: int) -> list[str]:
    kept, used = [], 0
    for name in reversed(names):
        used += disk_use((crash_dir / name).stat())
        if used > budget:
            break
        kept.append(name)
    return sorted(kept)


def test_the_budget_keeps_the_newest_unique_crashes_and_nothing_over_it(daisy, crash_dir, state_dir, tmp_path):
    config = tmp_path / "crashd.conf"
    config.write_text("[crashd]\nmax_use = 10M\n")
    names = unique_reports(crash_dir, 50, MiB)  # 50 MiB arrives
    expected = newest_within(crash_dir, names, 10 * MiB)
    assert len(expected) in (9, 10)  # 1 MiB each, give or take a block
    result = crashd(crash_dir, state_dir, "upload-all", "--json", "--url", daisy.url, config=config)
    assert result.returncode == 0, result.stderr
    assert reports(crash_dir) == expected
    assert sum(disk_use(path.stat()) for path in crash_dir.glob("*.crash")) <= 10 * MiB
    assert sorted(r.document["ExecutablePath"] for r in daisy.reports) == [
        "/usr/bin/" + name.split(".")[0].removeprefix("_usr_bin_") for name in expected
    ]
    assert result.stderr.count("over the 10485760-byte budget (unsent, over the budget)") == 50 - len(expected)
    status = crashd(crash_dir, state_dir, "status", config=config).stdout
    assert f"{names[0]}: removed " in status, status


def test_the_budget_removes_sent_reports_before_any_unsent_one(daisy, crash_dir, state_dir, tmp_path):
    config = tmp_path / "crashd.conf"
    config.write_text("[crashd]\nmax_use = 4M\n")
    old = unique_reports(crash_dir, 3, MiB)
    assert crashd(crash_dir, state_dir, "upload-all", "--url", daisy.url, config=config).returncode == 0
    for i, name in enumerate(["_usr_bin_new0.0.crash", "_usr_bin_new1.0.crash"]):  # newer, unsent, held
        drop(crash_dir / name, crash(f"new{i}", Filler=os.urandom(MiB // 2).hex()))
    with Spool(crash_dir) as spool:
        settings = load_settings(config)
        tidy = Tidy(spool, StateStore.open(state_dir), state_dir, max_use=settings.max_use)
        removed = tidy.sweep()
    assert removed <= set(old) and len(removed) >= 1  # only sent ones went
    assert {"_usr_bin_new0.0.crash", "_usr_bin_new1.0.crash"} <= set(reports(crash_dir))
    assert sum(disk_use(path.stat()) for path in crash_dir.glob("*.crash")) <= 4 * MiB


# -- new reports judged alone (the daemon's path) ------------------------------------------------------


class Counted(Tidy):
    """A Tidy that counts its full sweeps."""

    sweeps = 0

    def sweep(self, busy=()):  # type: ignore[no-untyped-def]
        self.sweeps += 1
        return super().sweep(busy)


def test_a_new_unique_report_is_admitted_without_a_sweep_and_a_duplicate_is_swept(crash_dir, state_dir):
    write_loop(crash_dir, 1)
    unique_reports(crash_dir, 2, 1024)
    with Spool(crash_dir) as spool:
        tidy = Counted(spool, StateStore.open(state_dir), state_dir)
        assert tidy((), set()) == set() and tidy.sweeps == 1  # the first look is always a sweep
        fresh = drop(crash_dir / "_usr_bin_other.0.crash", crash("other", StacktraceTop="other ()\nmain ()"))
        assert tidy((), {fresh.name}) == set() and tidy.sweeps == 1  # judged alone: unique
        (again,) = write_loop(crash_dir, 1, start=1)  # a second crash of the loop: the sweep collapses it
        assert tidy((), {again.name}) == {again.name} and tidy.sweeps == 2
        assert not again.exists()
        (third,) = write_loop(crash_dir, 1, start=2)  # and a duplicate of a report that came alone
        twin = drop(crash_dir / "_usr_bin_other2.0.crash", crash("other", StacktraceTop="other ()\nmain ()"))
        os.utime(twin, (fresh.stat().st_mtime + 1,) * 2)
        assert tidy((), {twin.name}) == {twin.name, third.name} and tidy.sweeps == 3  # the loop's third, too
        assert not twin.exists() and not third.exists()


def test_only_a_sweep_vouches_for_the_reports_made_before_it(crash_dir, state_dir):
    """The daemon takes a report a rescan meets for tidied when it is older than the last *sweep*
    (``swept_ns``): an admission judges only the reports it is given, so it must not move that mark —
    else a crash-loop duplicate whose event was not read yet was sent beside the kept report."""
    with Spool(crash_dir) as spool:
        tidy = Counted(spool, StateStore.open(state_dir), state_dir)
        tidy((), None)
        swept = tidy.swept_ns
        (unread,) = write_loop(crash_dir, 1)  # made after the sweep; the daemon has not read its event
        fresh = drop(crash_dir / "_usr_bin_other.0.crash", crash("other", StacktraceTop="other ()\nmain ()"))
        assert tidy((), {fresh.name}) == set() and tidy.sweeps == 1  # admitted alone
        assert tidy.swept_ns == swept <= unread.stat().st_ctime_ns  # still new to the tidy
        tidy((), {unread.name, fresh.name})  # both again: one has a known name now, so a sweep decides
        assert tidy.sweeps == 2 and tidy.swept_ns >= swept


def test_a_new_report_over_the_room_left_is_swept(crash_dir, state_dir, tmp_path):
    unique_reports(crash_dir, 3, MiB)
    with Spool(crash_dir) as spool:
        tidy = Counted(spool, StateStore.open(state_dir), state_dir, max_use="4M")
        tidy((), None)
        names = unique_reports(crash_dir, 5, MiB)[3:]  # _usr_bin_big003 and 004: 2 MiB more than fits
        tidy((), set(names))
        assert tidy.sweeps == 2
    assert sum(disk_use(path.stat()) for path in crash_dir.glob("*.crash")) <= 4 * MiB


def test_a_new_report_over_max_size_is_not_read_by_admit(crash_dir, state_dir):
    write_loop(crash_dir, 1)
    with Spool(crash_dir) as spool:
        tidy = Counted(spool, StateStore.open(state_dir), state_dir)
        tidy((), None)
        (big,) = unique_reports(crash_dir, 1, 64 * 1024)
        assert not tidy.admit({big}, max_size=1024)  # the daemon's loop reads only small files
        assert tidy.admit({big})


def test_a_replaced_report_is_swept(crash_dir, state_dir):
    (first,) = write_loop(crash_dir, 1)
    with Spool(crash_dir) as spool:
        tidy = Counted(spool, StateStore.open(state_dir), state_dir)
        tidy((), None)
        drop(first, crash("else", StacktraceTop="else ()\nmain ()"))  # a new crash under a known name
        tidy((), {first.name})
        assert tidy.sweeps == 2


# -- the daemon ---------------------------------------------------------------------------------------


@pytest.fixture
def automatic(state_dir: Path) -> Path:
    from crashd.consent import set_preference

    set_preference(state_dir, "AutomaticallyReportCrashes", True, config=None)
    return state_dir


def test_the_daemon_collapses_a_crash_loop_found_at_start(daisy, crash_dir, automatic):
    write_loop(crash_dir, LOOP)
    with run_daemon(crash_dir, automatic, daisy.url, "--once") as daemon:
        assert daemon.wait_exit(120) == 0, daemon.stderr
    assert reports(crash_dir) == ["_usr_bin_loop-0000.0.crash"]
    assert len(daisy.reports) == 1
    document = daisy.reports[0].document
    assert (document["CrashCounter"], document["DuplicatesCollapsed"]) == (str(LOOP), str(LOOP - 1))


def test_the_daemon_sends_a_live_crash_loop_once_and_counts_every_crash(daisy, crash_dir, automatic):
    count = 200
    with run_daemon(crash_dir, automatic, daisy.url, "--idle-timeout", "60") as daemon:
        for i in range(count):
            drop(crash_dir / f"_usr_bin_loop-{i:04d}.0.crash", looping("loop", i))
        assert wait_until(lambda: len(reports(crash_dir)) == 1 and len(daisy.reports) == 1, 60), daemon.stderr
        assert wait_until(lambda: (crash_dir / "_usr_bin_loop-0000.0.uploaded").exists(), 30), daemon.stderr
        assert daemon.terminate() == 0
    (group,) = read_ledger(automatic).groups.values()
    sent = int(daisy.reports[0].document.get("DuplicatesCollapsed", "0"))
    assert sent + group.after_sent == count - 1  # every crash counted: before the upload, or after it
    assert reports(crash_dir) == ["_usr_bin_loop-0000.0.crash"]


def test_the_daemon_keeps_the_newest_unique_crashes_within_the_budget(daisy, crash_dir, state_dir, tmp_path):
    config = tmp_path / "crashd.conf"
    config.write_text("[crashd]\nmax_use = 10M\n")
    with run_daemon(crash_dir, state_dir, daisy.url, "--idle-timeout", "60", config=config) as daemon:
        names = []
        for i in range(50):  # 50 MiB arrives while the daemon runs; held (automatic reporting is off)
            names.append(drop(crash_dir / f"_usr_bin_big{i:03d}.0.crash",
                              crash(f"big{i:03d}", Filler=os.urandom(MiB // 2).hex())).name)  # fmt: skip
        each = max(disk_use(path.stat()) for path in crash_dir.glob("*.crash"))
        expected = sorted(names[-(10 * MiB // each) :])
        assert wait_until(lambda: reports(crash_dir) == expected, 60), (reports(crash_dir), daemon.stderr)
        assert daemon.terminate() == 0
        assert daemon.stderr.count("over the 10485760-byte budget") == 50 - len(expected)
    assert sum(disk_use(path.stat()) for path in crash_dir.glob("*.crash")) <= 10 * MiB
    assert len(daisy.reports) == 0


# -- removal acts only on the file judged -------------------------------------------------------------


def test_remove_takes_the_judged_report_and_its_safe_stamps_only(crash_dir, tmp_path):
    report = drop(crash_dir / "_usr_bin_x.0.crash", crash("x"))
    (crash_dir / "_usr_bin_x.0.upload").touch()
    outside = tmp_path / "outside"
    outside.write_text("keep me")
    (crash_dir / "_usr_bin_x.0.uploaded").symlink_to(outside)  # planted: never followed, never removed
    with Spool(crash_dir) as spool, spool.open_report("_usr_bin_x.0.crash") as opened:
        assert spool.remove(opened)
        assert not spool.remove(opened)  # gone: nothing else is touched under its name
    assert sorted(p.name for p in crash_dir.iterdir()) == ["_usr_bin_x.0.uploaded"]
    assert outside.read_text() == "keep me"
    assert not report.exists()


def test_remove_refuses_a_name_that_now_is_another_file(crash_dir):
    drop(crash_dir / "_usr_bin_x.0.crash", crash("x"))
    with Spool(crash_dir) as spool, spool.open_report("_usr_bin_x.0.crash") as opened:
        newer = drop(crash_dir / "_usr_bin_x.0.crash", crash("x", Date="later"))  # a new crash took the name
        assert not spool.remove(opened)
    assert newer.exists()
