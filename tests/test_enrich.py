"""Collection runs a report's hooks once, as its owner, and writes what they add into the report."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashd
from crashd.enrich import Packages
from crashd.report import read_report
from tests.crashd_run import write_config
from tests.daisy import DaisyServer
from tests.test_faults import upload_all
from tests.test_upload_all import crash, write

HOOK = """
import os
def add_info(report, ui=None):
    report["EnrichedBy"] = "uid %d" % os.getuid()
    report["Multi"] = "line one\\nline two"
"""


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory every throwaway user can reach (pytest's tmp_path lives under a 0700 parent)."""
    path = Path(tempfile.mkdtemp(prefix="crashd-enrich-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def setup(world_dir: Path, make_user):
    crash_dir = world_dir / "crash"
    crash_dir.mkdir()
    crash_dir.chmod(0o3777)
    hooks = world_dir / "hooks"
    hooks.mkdir(mode=0o755)
    user = make_user()
    config = write_config(world_dir / "crashd.conf", hook_dirs=str(hooks))
    return crash_dir, hooks, user, config


def test_hooks_run_once_as_the_owner_and_their_fields_are_sent(setup):
    crash_dir, hooks, user, config = setup
    (hooks / "app.py").write_text(HOOK)
    core = os.urandom(20_000)
    report = write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="app 1.0", CoreDump=core),
        (user.pw_uid, user.pw_gid),
    )
    report.chmod(0o640)
    with DaisyServer(core_policy="always") as daisy:
        run = upload_all(crash_dir, daisy.url, config=config)
        assert run.code == 0, run.stderr
        document = daisy.reports[0].document
        assert document["EnrichedBy"] == f"uid {user.pw_uid}"  # as the crashing user, never root
        assert document["Multi"] == "line one\nline two"
        assert document["_HooksRun"] == "yes"
        assert daisy.cores[0].decoded_sha256 == hashlib.sha256(core).hexdigest()  # the core, untouched

        st = report.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (user.pw_uid, user.pw_gid, 0o640)
        with report.open("rb") as f:
            stored = read_report(f)
            assert stored.text_bytes("EnrichedBy") == f"uid {user.pw_uid}".encode()
            assert b"".join(stored.chunks("CoreDump")) == core
        assert not [p for p in crash_dir.iterdir() if p.name.startswith(".")]  # no temporary left behind

        (hooks / "app.py").write_text(HOOK.replace("EnrichedBy", "Again"))
        report.with_suffix(".upload").touch()  # asked again: sent again, but not enriched again
        assert upload_all(crash_dir, daisy.url, config=config).code == 0
        assert "Again" not in daisy.reports[-1].document


def test_unreportable_reason_makes_the_report_invalid(setup):
    crash_dir, hooks, user, config = setup
    (hooks / "app.py").write_text('def add_info(report):\n    report["UnreportableReason"] = "not ours"\n')
    write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="app 1.0"),
        (user.pw_uid, user.pw_gid),
    )
    with DaisyServer() as daisy:
        run = upload_all(crash_dir, daisy.url, config=config)
        (entry,) = run.json["reports"]
        assert entry["state"] == "invalid" and "not ours" in entry["detail"]
        assert daisy.reports == []


def test_a_package_name_that_would_name_a_path_is_invalid(setup):
    crash_dir, _hooks, user, config = setup
    write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="../../x 1"),
        (user.pw_uid, user.pw_gid),
    )
    with DaisyServer() as daisy:
        (entry,) = upload_all(crash_dir, daisy.url, config=config).json["reports"]
        assert entry["state"] == "invalid" and "Package" in entry["detail"]
        assert daisy.reports == []


def test_reports_already_collected_by_apport_are_left_as_they_are(setup):
    crash_dir, hooks, user, config = setup
    (hooks / "app.py").write_text(HOOK)
    report = write(
        crash_dir / f"_usr_bin_app.{user.pw_uid}.crash",
        crash("app", Package="app 1.0", Dependencies="libc6 2.39"),
        (user.pw_uid, user.pw_gid),
    )
    before = report.read_bytes()
    with DaisyServer() as daisy:
        assert upload_all(crash_dir, daisy.url, config=config).code == 0
        assert "EnrichedBy" not in daisy.reports[0].document
    assert report.read_bytes() == before


def test_a_report_no_hook_applies_to_gets_crashds_fields_and_no_hook_process(setup, world_dir: Path):
    """Issue 15: what the built-in hooks added comes from the daemon's own process; nothing starts.

    ``hook_python`` is a wrapper that leaves a mark whenever anything runs it: crashd's check of the
    interpreter (as root) or the hook child (as the user). The second report, with a hook that
    applies, is the control: the same check sees that child.
    """
    crash_dir, hooks, user, _config = setup
    marks = world_dir / "marks"
    marks.mkdir()
    marks.chmod(0o1777)
    python = world_dir / "python3"
    python.write_text(f'#!/bin/sh\necho started >> {marks}/started\nexec /usr/bin/python3 "$@"\n')
    python.chmod(0o755)
    config = write_config(world_dir / "spy.conf", hook_dirs=str(hooks), hook_python=str(python))
    dpkg = Packages().installed().get("dpkg")
    if dpkg is None or not Path("/usr/bin/dpkg").exists():
        pytest.skip("needs dpkg installed")
    spec = {  # as a crash handler writes it: no Dependencies, and none of the system's fields
        "ProblemType": "Crash",
        "Date": "Sat Nov 21 21:00:00 2026 spec",
        "ExecutablePath": "/usr/bin/dpkg",
        "Package": f"dpkg {dpkg.version}",
        "Signal": "11",
    }
    report = write(crash_dir / f"_usr_bin_dpkg.{user.pw_uid}.crash", spec, (user.pw_uid, user.pw_gid))
    with DaisyServer() as daisy:
        run = upload_all(crash_dir, daisy.url, config=config)
        assert run.code == 0, run.stderr
        document = daisy.reports[0].document
        assert any(line.startswith("libc6 ") for line in document["Dependencies"].splitlines())
        assert document["Architecture"] == dpkg.architecture
        assert document["Uname"] == " ".join((os.uname().sysname, os.uname().release, os.uname().machine))
        assert document["DistroRelease"].strip()
        assert document["CrashdVersion"] == crashd.__version__
        assert document["_HooksRun"] == "yes"
        with report.open("rb") as f:  # written back once: it is not enriched again
            stored = read_report(f)
        assert stored.text_bytes("_HooksRun") == b"yes" and stored.text_bytes("Dependencies")
        assert not (marks / "started").exists()  # no interpreter check, no hook child

        (hooks / "dpkg.py").write_text(HOOK)
        write(
            crash_dir / f"_usr_bin_dpkg-again.{user.pw_uid}.crash",
            {**spec, "Date": "Sat Nov 21 21:00:01 2026 spec"},
            (user.pw_uid, user.pw_gid),
        )
        assert upload_all(crash_dir, daisy.url, config=config).code == 0
        assert daisy.reports[-1].document["EnrichedBy"] == f"uid {user.pw_uid}"
        assert (marks / "started").exists()  # the same check sees the hook child start
